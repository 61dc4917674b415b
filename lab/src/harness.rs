//! The end-to-end test harness the product's, the lab's and the bench's tests share: clusters
//! of the real `auction-node` binary on ports that were free, so tests run in parallel;
//! conditions are polled with deadlines, never slept on. Its checks panic: it is for tests.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use auction::cluster::{LocalCluster, Proc, Spec, Transcript, leader_of};
use auction::view::Status;
use tokio::process::Command;

/// The workspace's binaries, built beside the test (`cargo test` at the top builds them all).
pub static NODE: LazyLock<PathBuf> = LazyLock::new(|| binary("auction-node"));
pub static CLIENT: LazyLock<PathBuf> = LazyLock::new(|| binary("auction-client"));
pub static DEMO: LazyLock<PathBuf> = LazyLock::new(|| binary("auction-demo"));
pub static BENCH: LazyLock<PathBuf> = LazyLock::new(|| binary("auction-bench"));

/// The path of the workspace binary `name` in the test's target directory (a test runs from
/// `target/<profile>/deps/`, the binaries sit one level up).
///
/// # Panics
/// The binary is not built: run the tests with `cargo test` at the top of the workspace.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let found = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "{name} is not built next to {}: run `cargo test` at the top of the workspace",
            exe.display()
        )
    })
}

/// The longest any condition may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(20);
/// Node timeout used by the tests: short enough for quick failovers, long enough that a busy
/// 2-core machine does not fence healthy nodes.
pub const TIMEOUT_MS: u64 = 800;

/// A running cluster whose transcript is printed if the test fails.
pub struct Harness {
    pub cluster: LocalCluster,
}

impl Harness {
    /// Starts `ids[0]` as the founding leader, then each other id as a member, in order.
    pub async fn start(ids: &[u16]) -> Self {
        Self::start_with(ids, &[]).await
    }

    /// As [`Harness::start`], with more `auction-node` arguments for every node.
    pub async fn start_with(ids: &[u16], node_args: &[&str]) -> Self {
        Self::start_with_spec(Self::spec(node_args), ids).await
    }

    /// The spec [`Harness::start_with`] uses: ports that were free, the tests' heartbeat and
    /// timeout, then `node_args`. Change it (a fake clock, a private /tmp) and pass it to
    /// [`Harness::start_with_spec`].
    pub fn spec(node_args: &[&str]) -> Spec {
        let mut spec = Spec::on_free_ports(&*NODE).expect("free ports");
        spec.node_args = vec![
            "--heartbeat-ms".into(),
            "50".into(),
            "--timeout-ms".into(),
            TIMEOUT_MS.to_string(),
        ];
        spec.node_args
            .extend(node_args.iter().map(ToString::to_string));
        spec
    }

    /// The spec of a multi-host cluster named `cluster` in the etcd at `etcd_urls`, with the
    /// tests' heartbeat and timeout and more `node_args`: node 1, 2 or 3 on 127.0.0.(`base` +
    /// id), an address of the test's own, so tests run side by side.
    pub fn multi_host_spec(
        etcd_urls: &[String],
        cluster: &str,
        base: u8,
        node_args: &[&str],
    ) -> Spec {
        let urls = etcd_urls.join(",");
        let mut args = vec!["--etcd", urls.as_str(), "--cluster", cluster];
        args.extend_from_slice(node_args);
        let mut spec = Self::spec(&args);
        spec.hosts = (1..=3u8)
            .map(|i| {
                let ip = std::net::Ipv4Addr::new(127, 0, 0, base + i);
                (u16::from(i), std::net::IpAddr::V4(ip))
            })
            .collect();
        spec
    }

    /// As [`Harness::start`], with the nodes started as `spec` says.
    pub async fn start_with_spec(spec: Spec, ids: &[u16]) -> Self {
        let mut h = Self {
            cluster: LocalCluster::new(spec, Transcript::new(false)),
        };
        if let Err(e) = h.cluster.start_nodes(ids, WAIT).await {
            panic!("{e}");
        }
        h
    }

    /// Starts node `id` (again, if it ran before) and waits until the leader lists this very
    /// process as a member. Fails as soon as the process exits instead.
    pub async fn start_member(&mut self, id: u16) -> Status {
        self.cluster.start(id).expect("start node");
        self.wait_member(id).await
    }

    /// Waits until the leader lists node `id`'s current process (same pid) as a member. Fails as
    /// soon as the process exits instead.
    pub async fn wait_member(&mut self, id: u16) -> Status {
        match self.cluster.wait_members(&[id], WAIT).await {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    pub async fn wait_for(&self, pred: impl FnMut(&Status) -> bool) -> Status {
        match self.cluster.wait_for(WAIT, pred).await {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    pub async fn wait_leader(&self, id: u16) -> Status {
        self.wait_for(|s| leader_of(s) == id).await
    }

    /// Waits until node `id`'s process has exited (for example, fenced by SIGKILL).
    pub async fn wait_exited(&mut self, id: u16) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let node = self.cluster.node(id).expect("known node");
            if node.exited() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id} did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `auction-client --server <this cluster> ARGS` and returns (exit code, stdout, stderr).
    pub async fn client_cmd(&self, args: &[&str]) -> (i32, String, String) {
        let spec = &self.cluster.spec;
        run_client(&spec.client_addr().to_string(), &spec.auth_dir, args).await
    }

    /// Starts an interactive `auction-client --id ID` on this cluster.
    pub fn interactive_client(&self, id: &str) -> Proc {
        let mut cmd = Command::new(&*CLIENT);
        cmd.args(["--id", id, "--server"])
            .arg(self.cluster.spec.client_addr().to_string())
            .env("AUCTION_AUTH_DIR", &self.cluster.spec.auth_dir);
        Proc::spawn(cmd, &format!("client {id}"), &self.cluster.transcript).expect("client")
    }

    pub fn assert_no_panics(&self) {
        let panics = self.cluster.transcript.panics();
        assert!(panics.is_empty(), "a process panicked: {panics:#?}");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- cluster transcript ----");
            for line in self.cluster.transcript.lines() {
                eprintln!("{line}");
            }
        }
    }
}

/// Waits until `count` transcript lines satisfy `pred`, and returns them. Output reaches the
/// transcript through reader tasks, so a line can arrive after its process exited.
pub async fn wait_for_lines(
    transcript: &Transcript,
    count: usize,
    pred: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let lines = transcript.lines();
        let found: Vec<String> = lines.iter().filter(|l| pred(l)).cloned().collect();
        if found.len() >= count {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "{lines:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `auction-client --server SERVER ARGS` with the secrets in `auth_dir`.
pub async fn run_client(
    server: &str,
    auth_dir: &std::path::Path,
    args: &[&str],
) -> (i32, String, String) {
    run_client_with(server, auth_dir, args, &[]).await
}

/// As [`run_client`], with more environment (for example an operator token).
pub async fn run_client_with(
    server: &str,
    auth_dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let out = client_command(server, auth_dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run auction-client");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `auction-client --server SERVER` with the secrets in `auth_dir`, no operator token from the
/// test's own environment, and no backtraces: the arguments and the stdio are the caller's.
pub fn client_command(server: &str, auth_dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(&*CLIENT);
    cmd.arg("--server")
        .arg(server)
        .env("AUCTION_AUTH_DIR", auth_dir)
        .env_remove("AUCTION_OPERATOR_TOKEN")
        .env_remove("RUST_BACKTRACE");
    cmd
}

/// Reads one JSON object from a client's stdout.
pub fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout:?}"))
}
