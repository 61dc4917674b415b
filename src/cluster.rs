//! Real node processes on this host, started and broken on purpose: the demo and the end-to-end
//! tests drive the cluster through this module, so both exercise exactly the shipped binaries.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::auth::AuthDir;
use crate::client::{Client, ClientError};
use crate::types::NodeId;
use crate::view::Status;

/// Why a cluster did not come up as asked.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// [`LocalCluster::start_nodes`] was given no node.
    #[error("no nodes to start")]
    NoNodes,
    /// A node's process could not be started.
    #[error("cannot start node {id}: {source}")]
    Start { id: u16, source: std::io::Error },
    /// A node to wait for was never started.
    #[error("node {id} was never started")]
    NotStarted { id: u16 },
    /// A node exited instead of becoming a member.
    #[error("node {id} exited instead of becoming a member; last status: {last}")]
    Exited {
        id: u16,
        /// The last status seen, or why none was.
        last: String,
    },
    /// The leader's status did not come to satisfy the condition in time.
    #[error("condition not met within {timeout:?}; last: {last}")]
    Timeout {
        timeout: Duration,
        /// The last status seen, or why none was.
        last: String,
    },
}

/// Every output line of every process, in the order they arrived, each prefixed with its
/// process's name. Optionally echoed to stdout, or shown another way, as it arrives.
#[derive(Clone, Debug, Default)]
pub struct Transcript {
    lines: Arc<Mutex<Vec<String>>>,
    echo: bool,
    show: Show,
}

/// Shows one line of a transcript: the process's name and the line.
type ShowLine = dyn Fn(&str, &str) + Send + Sync;

/// Shows each line of a transcript as it arrives.
#[derive(Clone, Default)]
struct Show(Option<Arc<ShowLine>>);

impl std::fmt::Debug for Show {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Show(..)" } else { "None" })
    }
}

impl Transcript {
    pub fn new(echo: bool) -> Self {
        Self {
            lines: Arc::default(),
            echo,
            show: Show::default(),
        }
    }

    /// A transcript that hands each line, with its process's name, to `show` as it arrives
    /// (instead of printing it), for a terminal that formats lines its own way.
    pub fn showing(show: impl Fn(&str, &str) + Send + Sync + 'static) -> Self {
        Self {
            show: Show(Some(Arc::new(show))),
            ..Self::new(false)
        }
    }

    /// Adds one line under `name`.
    pub fn push(&self, name: &str, line: &str) {
        if let Some(show) = &self.show.0 {
            show(name, line);
        }
        let line = format!("[{name}] {line}");
        if self.echo {
            println!("{line}");
        }
        // Invariant: no code panics while holding this lock, so it is never poisoned.
        self.lines.lock().expect("transcript lock").push(line);
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("transcript lock").clone()
    }

    /// Lines that show a process panicked.
    pub fn panics(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.contains("panicked at"))
            .collect()
    }
}

/// One child process with its stdin open and its output read line by line.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    /// Lines the process wrote to stdout (its answers), for whoever waits on them.
    stdout: mpsc::UnboundedReceiver<String>,
}

impl Proc {
    /// Spawns `cmd` with piped stdio; every output line goes to `transcript` under `name`.
    ///
    /// The process dies with this one, however this one ends (even by SIGKILL): the kernel
    /// sends it SIGKILL when its parent goes. Linux ties that to the thread that spawned it, so
    /// spawn from a thread that lives as long as the process is needed (the main thread, a
    /// test's thread, a runtime's worker), never from `spawn_blocking`.
    ///
    /// # Errors
    /// The process could not be started.
    pub fn spawn(mut cmd: Command, name: &str, transcript: &Transcript) -> std::io::Result<Self> {
        // A process group of its own, so Ctrl-Z or Ctrl-C in the terminal reaches only the
        // process that reads it, never every node at once.
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let parent = rustix::process::getpid();
        // SAFETY: between fork and exec the closure makes only async-signal-safe system calls
        // (prctl, getppid) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                // The parent may have died before the line above: then nobody would send it.
                if rustix::process::getppid() != Some(parent) {
                    return Err(rustix::io::Errno::SRCH.into());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("child exited at once"))?;
        let (tx, stdout) = mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            let (t, n, tx) = (transcript.clone(), name.to_string(), tx);
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    t.push(&n, &line);
                    let _ = tx.send(line);
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let (t, n) = (transcript.clone(), name.to_string());
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    t.push(&n, &line);
                }
            });
        }
        Ok(Self {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            pid,
            stdout,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Types one line into the process.
    ///
    /// # Errors
    /// The process's stdin is closed.
    pub async fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin closed"))?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await
    }

    /// Types raw bytes into the process, as a terminal or a pipe may send them (not always
    /// UTF-8).
    ///
    /// # Errors
    /// The process's stdin is closed.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin closed"))?;
        stdin.write_all(bytes).await?;
        stdin.flush().await
    }

    /// Closes the process's stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next line the process writes to stdout, if one comes within `timeout`.
    pub async fn next_line(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.stdout.recv())
            .await
            .ok()
            .flatten()
    }

    /// Sends `signal` to the process.
    ///
    /// # Errors
    /// The signal could not be sent.
    pub fn signal(&self, signal: Signal) -> std::io::Result<()> {
        let pid = i32::try_from(self.pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| std::io::Error::other("bad pid"))?;
        kill_process(pid, signal).map_err(Into::into)
    }

    /// Whether the process has exited (it is reaped if so).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// How the process ended, once it has (it is reaped if so).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to exit, at most `timeout`. Returns its exit code if it exited.
    pub async fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// SIGKILLs the process and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// The program `name` in the same directory as the running one (cargo builds all of the crate's
/// binaries side by side).
///
/// # Errors
/// The program is not there.
pub fn sibling_binary(name: &str) -> std::io::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} not found; build all binaries first: cargo build --release",
                path.display()
            ),
        ))
    }
}

/// Picks a port that is free right now on 127.0.0.1, below the range the kernel hands out to
/// outgoing connections (`net.ipv4.ip_local_port_range`): a node on 127.0.0.x dials from its
/// own address, each connection taking a port of that range there, and a listener bound later
/// on that address and port would fail (seen in the multi-host soak). Falls back to a port the
/// kernel picks when that range leaves no room below it.
///
/// # Errors
/// No port could be bound.
pub fn free_port() -> std::io::Result<u16> {
    /// The lowest port picked: above the well-known and registered ports services use.
    const FLOOR: u16 = 10_000;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if low > FLOOR + 1_000 {
        for _ in 0..100 {
            let mut bytes = [0; 2];
            crate::host::fill_random(&mut bytes)?;
            let port = FLOOR + u16::from_le_bytes(bytes) % (low - FLOOR);
            if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// How to start the cluster's nodes.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The `auction-node` binary.
    pub node_bin: PathBuf,
    pub client_port: u16,
    pub leader_port: u16,
    /// More `auction-node` arguments, for example shorter timeouts.
    pub node_args: Vec<String>,
    /// The `RUST_LOG` for the nodes.
    pub log_filter: String,
    /// The nodes' and clients' `--auth-dir`: the cluster secret and the operator token.
    pub auth_dir: PathBuf,
    /// Whether the auth dir is this cluster's own, to be removed with it.
    pub owns_auth_dir: bool,
    /// Whether nodes serve TLS (`--tls`), and clients dial with it.
    pub tls: bool,
    /// More environment for every node, for example a [`FakeClock`]'s.
    pub node_env: Vec<(String, String)>,
    /// Whether each node gets a /tmp of its own, empty at its start, as a service with
    /// systemd's `PrivateTmp=yes` does: it runs in a mount namespace of its own with a fresh
    /// tmpfs on /tmp (util-linux's `unshare`; needs root, as a service manager has: in a user
    /// namespace of its own, a node could not check the processes of the others, and fencing
    /// refuses what it cannot check). The nodes then take the cluster secret and the operator
    /// token from the environment, since the auth dir may be in /tmp.
    pub private_tmp: bool,
    /// Multi-host mode: each node's own address (`--host`), by id. Empty: every node shares
    /// 127.0.0.1, as on one host.
    pub hosts: BTreeMap<u16, IpAddr>,
}

impl Spec {
    /// A spec on two ports that are free now, with secrets of its own (in a new private
    /// directory under the temporary directory), so clusters can run side by side.
    ///
    /// # Errors
    /// No free port could be found, or the directory could not be created.
    pub fn on_free_ports(node_bin: impl Into<PathBuf>) -> std::io::Result<Self> {
        static CLUSTERS: AtomicU64 = AtomicU64::new(0);
        let client_port = free_port()?;
        let mut leader_port = free_port()?;
        while leader_port == client_port {
            leader_port = free_port()?;
        }
        let auth_dir = std::env::temp_dir().join(format!(
            "auction-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&auth_dir)?;
        Ok(Self {
            node_bin: node_bin.into(),
            client_port,
            leader_port,
            node_args: Vec::new(),
            log_filter: "info".into(),
            auth_dir,
            owns_auth_dir: true,
            tls: false,
            node_env: Vec::new(),
            private_tmp: false,
            hosts: BTreeMap::new(),
        })
    }

    /// Where clients reach the leader: the client port on 127.0.0.1 (one host), or on the first
    /// node's own address (several hosts; [`Spec::client_addrs`] lists them all).
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addrs()[0]
    }

    /// The client port on every address a node may serve it: 127.0.0.1 on one host, each
    /// node's own address on several.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        if self.hosts.is_empty() {
            vec![SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                self.client_port,
            )]
        } else {
            self.hosts
                .values()
                .map(|ip| SocketAddr::new(*ip, self.client_port))
                .collect()
        }
    }
}

/// A set of node processes sharing one pair of well-known ports.
#[derive(Debug)]
pub struct LocalCluster {
    pub spec: Spec,
    pub transcript: Transcript,
    nodes: BTreeMap<u16, Proc>,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.spec.owns_auth_dir {
            let _ = std::fs::remove_dir_all(&self.spec.auth_dir);
        }
    }
}

impl LocalCluster {
    pub fn new(spec: Spec, transcript: Transcript) -> Self {
        Self {
            spec,
            transcript,
            nodes: BTreeMap::new(),
        }
    }

    /// Starts node `id` (its `--port`).
    ///
    /// # Errors
    /// The process could not be started.
    pub fn start(&mut self, id: u16) -> std::io::Result<()> {
        let mut cmd = if self.spec.private_tmp {
            let auth = AuthDir::new(&self.spec.auth_dir);
            let secret = auth.cluster_secret().map_err(std::io::Error::other)?;
            let operator = auth.operator_token().map_err(std::io::Error::other)?;
            // unshare and sh exec in turn, so the pid spawned is the node's own.
            if !rustix::process::geteuid().is_root() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "a node with a private /tmp needs root (unshare --mount): run the tests as root",
                ));
            }
            let mut cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg(r#"mount -t tmpfs tmpfs /tmp && exec "$0" "$@""#)
                .arg(&self.spec.node_bin)
                .env(crate::auth::SECRET_ENV, secret.token().expose())
                .env(crate::auth::OPERATOR_ENV, operator.expose());
            cmd
        } else {
            Command::new(&self.spec.node_bin)
        };
        cmd.arg("--port")
            .arg(id.to_string())
            .arg("--client-port")
            .arg(self.spec.client_port.to_string())
            .arg("--leader-port")
            .arg(self.spec.leader_port.to_string())
            .args(&self.spec.node_args)
            .args(self.spec.tls.then_some("--tls"))
            .args(
                self.spec
                    .hosts
                    .get(&id)
                    .map(|ip| ["--host".to_string(), ip.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .env("AUCTION_AUTH_DIR", &self.spec.auth_dir)
            .env("RUST_LOG", &self.spec.log_filter)
            .envs(self.spec.node_env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_BACKTRACE");
        let proc = Proc::spawn(cmd, &format!("node {id}"), &self.transcript)?;
        self.nodes.insert(id, proc);
        Ok(())
    }

    pub fn node(&mut self, id: u16) -> Option<&mut Proc> {
        self.nodes.get_mut(&id)
    }

    /// Ids of the started nodes whose process has not exited.
    pub fn running(&mut self) -> Vec<u16> {
        self.nodes
            .iter_mut()
            .filter_map(|(id, p)| (!p.exited()).then_some(*id))
            .collect()
    }

    /// SIGKILLs node `id` and reaps it.
    pub async fn kill(&mut self, id: u16) {
        if let Some(p) = self.nodes.get_mut(&id) {
            p.kill().await;
        }
    }

    /// Sends `signal` to node `id`.
    ///
    /// # Errors
    /// No such node, or the signal could not be sent.
    pub fn signal(&self, id: u16, signal: Signal) -> std::io::Result<()> {
        self.nodes
            .get(&id)
            .ok_or_else(|| std::io::Error::other(format!("no node {id}")))?
            .signal(signal)
    }

    /// A client of this cluster with the given retry budget, and the operator token.
    pub fn client(&self, retry_budget: Duration) -> Client {
        let mut client = Client::with_addresses(self.spec.client_addrs(), retry_budget);
        let auth = AuthDir::new(&self.spec.auth_dir);
        // Without it, start and close are refused, which says what went wrong.
        if let Ok(token) = auth.operator_token() {
            client.set_operator_token(token);
        }
        // The certificate the nodes serve (created here if the nodes have not yet, as they
        // would: this module starts them), of which the client keeps only what it trusts.
        // Without it, nothing answers, which says what went wrong.
        if self.spec.tls
            && let Ok(tls) = auth.tls()
        {
            client.set_tls(tls.trust());
        }
        client
    }

    /// How long one status request of a wait may take: 500 ms per address a node may serve
    /// clients on, since a paused node's address takes that long to give up on.
    fn status_budget(&self) -> Duration {
        Duration::from_millis(500) * u32::try_from(self.spec.client_addrs().len()).unwrap_or(1)
    }

    /// The leader's status.
    ///
    /// # Errors
    /// No leader answered within `budget`, or its answer was malformed (as for
    /// [`Client::status`]).
    pub async fn status(&self, budget: Duration) -> Result<Status, ClientError> {
        self.client(budget).status().await
    }

    /// Polls the leader's status until `pred` holds, for at most `timeout`.
    ///
    /// # Errors
    /// [`ClusterError::Timeout`], with the last status seen (or the last error), when the
    /// deadline passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Status) -> bool,
    ) -> Result<Status, ClusterError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut client = self.client(self.status_budget());
        loop {
            let last = match client.status().await {
                Ok(s) if pred(&s) => return Ok(s),
                Ok(s) => format!("{s:?}"),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Timeout { timeout, last });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts `ids[0]` as the founding leader, then every other id as a member, in order, each
    /// within `patience`.
    ///
    /// # Errors
    /// [`ClusterError::NoNodes`] for no ids; [`ClusterError::Start`] when a node could not be
    /// started; [`ClusterError::Timeout`] when one did not lead or join in time.
    pub async fn start_nodes(
        &mut self,
        ids: &[u16],
        patience: Duration,
    ) -> Result<(), ClusterError> {
        let (&first, rest) = ids.split_first().ok_or(ClusterError::NoNodes)?;
        self.start(first)
            .map_err(|source| ClusterError::Start { id: first, source })?;
        self.wait_for(patience, |s| leader_of(s) == first).await?;
        for &id in rest {
            self.start_member(id, patience).await?;
        }
        Ok(())
    }

    /// Starts node `id` (again, if it ran before) and waits until the leader lists this very
    /// process as a member ([`LocalCluster::wait_members`]).
    ///
    /// # Errors
    /// [`ClusterError::Start`] when the node could not be started; [`ClusterError::Exited`] when
    /// it exited; [`ClusterError::Timeout`] when it did not become a member within `timeout`.
    pub async fn start_member(
        &mut self,
        id: u16,
        timeout: Duration,
    ) -> Result<Status, ClusterError> {
        self.start(id)
            .map_err(|source| ClusterError::Start { id, source })?;
        self.wait_members(&[id], timeout).await
    }

    /// Waits until the leader lists the current process of every node in `ids` (its id and its
    /// pid) as a member, for at most `timeout`: a restarted node counts once its new process has
    /// joined, never on the strength of its old one. Fails as soon as one of those processes
    /// exits instead. With every started node in `ids`, this waits until the cluster is whole.
    ///
    /// # Errors
    /// [`ClusterError::NotStarted`] for an id never started; [`ClusterError::Exited`] when one
    /// of the processes exited; [`ClusterError::Timeout`] when they were not all members in time,
    /// with the last status seen.
    pub async fn wait_members(
        &mut self,
        ids: &[u16],
        timeout: Duration,
    ) -> Result<Status, ClusterError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut client = self.client(self.status_budget());
        loop {
            let mut pids = Vec::with_capacity(ids.len());
            for &id in ids {
                let node = self.nodes.get(&id).ok_or(ClusterError::NotStarted { id })?;
                pids.push((u32::from(id), node.pid()));
            }
            let last = match client.status().await {
                Ok(s)
                    if pids.iter().all(|&(id, pid)| {
                        s.members
                            .iter()
                            .any(|m| u32::from(m.id.0) == id && m.pid == pid)
                    }) =>
                {
                    return Ok(s);
                }
                Ok(s) => format!("{s:?}"),
                Err(e) => e.to_string(),
            };
            for &id in ids {
                if self.nodes.get_mut(&id).is_some_and(Proc::exited) {
                    return Err(ClusterError::Exited { id, last });
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Timeout { timeout, last });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Whether node `id` is a member in `status`.
pub fn is_member(status: &Status, id: u16) -> bool {
    status.is_member(NodeId(id))
}

/// The leader's id in `status`.
pub fn leader_of(status: &Status) -> u16 {
    status.leader.id.0
}
