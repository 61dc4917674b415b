//! `auction-demo --etcd`: the multi-host mode on one machine. An etcd of one member on
//! 127.0.0.10 (ports 2379 for clients, 2380 for peers), node N on 127.0.0.(10 + N), and
//! partitions between those addresses in an nftables table of the demo's own.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use auction::cluster::{Proc, Transcript};
use auction::etcd_process::{self, Member};
use auction::netfilter::Partitions;

/// etcd's address: no node's, so a cut can tell etcd's packets from the nodes'.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 10);
/// etcd's client port, at [`ETCD_IP`].
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port, at [`ETCD_IP`] (one member: nothing dials it, but etcd listens on it).
pub const ETCD_PEER_PORT: u16 = 2380;
/// The cluster's key prefix in etcd (`--cluster`).
pub const CLUSTER: &str = "demo";
/// Where the clients of this host dial from: a cut "from everyone" cuts it too.
const CLIENTS_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// How long an etcd may take to become healthy.
const ETCD_READY: Duration = Duration::from_secs(30);

/// etcd's client URL, for `--etcd`.
pub fn etcd_url() -> String {
    format!("http://{}", SocketAddr::from((ETCD_IP, ETCD_CLIENT_PORT)))
}

/// Node `id`'s own address, 127.0.0.(10 + id); `None` past 127.0.0.254.
pub fn node_ip(id: u16) -> Option<IpAddr> {
    let last = u8::try_from(id).ok()?.checked_add(10)?;
    (id >= 1 && last < 255).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
}

/// The `etcd` program in `PATH`, looked up before anything starts.
///
/// # Errors
/// There is none: the message names Debian's package.
pub fn etcd_program() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(missing_etcd)
}

/// The error when no etcd program is found.
fn missing_etcd() -> anyhow::Error {
    anyhow::anyhow!(
        "auction-demo --etcd needs etcd, and no `etcd` program is in PATH: \
         apt-get install {} (Debian's package)",
        etcd_process::PACKAGE
    )
}

/// The demo's etcd: one member, its data in a temporary directory removed when it is dropped
/// (after the process is killed).
pub struct DemoEtcd {
    proc: Proc,
    /// Declared after `proc`, so the directory outlives the process.
    dir: tempfile::TempDir,
}

impl DemoEtcd {
    /// Starts etcd (`program`, from [`etcd_program`]) and waits until it is healthy, at most 30 s; its log
    /// (errors only) goes to `transcript` under `etcd`.
    ///
    /// # Errors
    /// The etcd program is missing (the message names Debian's package), the directory could
    /// not be made, or etcd exited or was not healthy in time.
    pub async fn start(program: &Path, transcript: &Transcript) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("auction-demo-etcd-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .context("making etcd's data directory")?;
        let peer = SocketAddr::from((ETCD_IP, ETCD_PEER_PORT));
        let initial_cluster = format!("etcd=http://{peer}");
        let token = format!("auction-demo-{}", std::process::id());
        // Its warnings at every start (a simple auth token, say) would only be noise here.
        let extra = ["--log-level=error".to_string()];
        let client = SocketAddr::from((ETCD_IP, ETCD_CLIENT_PORT));
        let member = Member {
            program,
            name: "etcd",
            data_dir: dir.path(),
            client,
            peer,
            initial_cluster: &initial_cluster,
            token: &token,
            // Its data dies with the demo anyway.
            no_fsync: true,
            extra_args: &extra,
        };
        let proc = match member.spawn(member.command(), transcript) {
            Ok(proc) => proc,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing_etcd()),
            Err(e) => return Err(e).context("starting etcd"),
        };
        let mut etcd = Self { proc, dir };
        let deadline = Instant::now() + ETCD_READY;
        loop {
            if let Some(status) = etcd.proc.exit_status() {
                bail!("etcd {}; its log above says why", crate::ended(status));
            }
            if etcd_process::healthy(client).await {
                return Ok(etcd);
            }
            if Instant::now() >= deadline {
                bail!("etcd was not healthy within {ETCD_READY:?}; its log above says why");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its data directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// How etcd ended, if it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.proc.exit_status()
    }
}

impl Drop for DemoEtcd {
    fn drop(&mut self) {
        if let Err(e) = etcd_process::kill_and_reap(&mut self.proc, Duration::from_secs(10)) {
            eprintln!("auction-demo: etcd: {e}");
        }
    }
}

/// The demo's cuts between its nodes, etcd and this host's clients: an nftables table
/// `inet auction_demo_<pid>`, made at the first cut and removed at `heal` and when the value is
/// dropped (the demo's end, however it ends short of SIGKILL).
pub struct Network {
    /// Every node's address, by id.
    nodes: BTreeMap<u16, IpAddr>,
    /// The table, while something is cut.
    partitions: Option<Partitions>,
    /// The nodes cut off, each from everyone (`true`) or from etcd only.
    cut: BTreeMap<u16, bool>,
}

impl Network {
    /// Nothing cut yet, between `nodes` (by id), etcd and this host's clients.
    pub fn new(nodes: BTreeMap<u16, IpAddr>) -> Self {
        Self {
            nodes,
            partitions: None,
            cut: BTreeMap::new(),
        }
    }

    /// The table's name.
    pub fn table() -> String {
        format!("auction_demo_{}", std::process::id())
    }

    /// Cuts node `id` off from everyone (the other nodes, etcd and this host's clients), or from
    /// etcd only; says what it did, or why not.
    pub fn partition(&mut self, id: u16, etcd_only: bool) -> Result<String, String> {
        let Some(&ip) = self.nodes.get(&id) else {
            let ids: Vec<String> = self.nodes.keys().map(u16::to_string).collect();
            return Err(format!(
                "the demo runs no node {id}; its nodes are {}",
                ids.join(", ")
            ));
        };
        if !rustix::process::geteuid().is_root() {
            return Err(
                "partition needs root: it writes nftables rules (CAP_NET_ADMIN); \
                 run the demo as root (sudo) to cut the network; everything else works without"
                    .into(),
            );
        }
        let mut others: Vec<IpAddr> = vec![IpAddr::V4(ETCD_IP)];
        if !etcd_only {
            others.push(IpAddr::V4(CLIENTS_IP));
            others.extend(self.nodes.values().filter(|&&a| a != ip));
        }
        let partitions = match &mut self.partitions {
            Some(p) => p,
            None => self
                .partitions
                .insert(Partitions::new(Self::table()).map_err(|e| format!("cannot cut: {e}"))?),
        };
        partitions
            .cut(&[ip], &others)
            .map_err(|e| format!("cannot cut: {e}"))?;
        let everyone = *self.cut.get(&id).unwrap_or(&false) || !etcd_only;
        self.cut.insert(id, everyone);
        let list: Vec<String> = others.iter().map(ToString::to_string).collect();
        Ok(if etcd_only {
            format!(
                "cut node {id} ({ip}) off from etcd ({ETCD_IP}): it still hears and is heard by \
                 the nodes; heal mends it"
            )
        } else {
            format!(
                "cut node {id} ({ip}) off from everyone: the other nodes, etcd and this host's \
                 clients ({}); heal mends it",
                list.join(", ")
            )
        })
    }

    /// Removes every cut (and the table); returns the nodes that were cut off.
    pub fn heal(&mut self) -> BTreeSet<u16> {
        // Dropping it removes the table.
        self.partitions = None;
        std::mem::take(&mut self.cut).into_keys().collect()
    }

    /// How node `id` is cut off, for `nodes`: `, cut off from everyone`, `, cut off from etcd`,
    /// or nothing.
    pub fn describe_cut(&self, id: u16) -> &'static str {
        match self.cut.get(&id) {
            Some(true) => ", cut off from everyone",
            Some(false) => ", cut off from etcd",
            None => "",
        }
    }

    /// Whether anything is cut now.
    pub fn is_cut(&self) -> bool {
        !self.cut.is_empty()
    }
}
