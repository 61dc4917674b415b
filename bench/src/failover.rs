//! Leader failover times under load. One measurement for every system: clients keep bidding, the
//! leader is taken down, and the time runs from the fault to the first acknowledged bid that a
//! client sent after it. The auction runs as a cluster this process starts, on one host or in
//! multi-host mode with an etcd of its own ([`MultiHost`]), where the leader can also be cut off
//! by a partition ([`FaultMode::Partition`]); Redis (with Sentinel) and etcd run as clusters
//! someone else starts and restarts (see [`ExternalFailoverSpec`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use tokio::time::Instant;

use super::client::{AuctionBidder, Bidder, Patience};
use super::etcd::{EtcdBidder, EtcdCluster};
use super::multihost::{MultiHost, NODES};
use super::redis::{Primary, RedisBidder, RedisCluster, Wait};
use auction::cluster::LocalCluster;
use auction::process::Fenced;
use auction_lab::etcd::Etcd;
use auction_lab::nemesis::percentile;
use auction_lab::partition::Partitions;

/// How the leader is taken down in a failover measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultMode {
    /// kill -9.
    Kill,
    /// SIGSTOP: replicas must notice the silence and fence it.
    Stop,
    /// The leader is cut off by packet filters from the other nodes, from etcd and from the
    /// clients (multi-host mode only, in a private network namespace): its members must notice
    /// the silence and take over through etcd.
    Partition,
}

/// A failover measurement against a cluster this process starts.
#[derive(Clone, Debug)]
pub struct FailoverSpec {
    pub node_bin: std::path::PathBuf,
    pub clients: usize,
    pub faults: usize,
    pub mode: FaultMode,
    /// Extra `auction-node` arguments (timing).
    pub node_args: Vec<String>,
    /// Multi-host mode ([`MultiHost`]): one local etcd, each node on its own address. Always
    /// with [`FaultMode::Partition`], which needs the private network namespace
    /// ([`auction_lab::netns::enter_private`]).
    pub multi_host: bool,
    /// How long a client waits for one attempt at a bid before it gives it up and starts a new
    /// session at the next address.
    pub attempt: Duration,
}

/// A cluster someone else runs, whose leader a failover run kills -9.
#[derive(Clone, Debug)]
pub enum External {
    /// Redis with Sentinel: the Sentinels and the name they monitor the primary under. Clients
    /// ask the Sentinels for the primary, and ask again after any error.
    Redis {
        sentinels: Vec<SocketAddr>,
        master: String,
    },
    /// etcd: every member's client address. Clients move to the next member after any error.
    Etcd { endpoints: Vec<SocketAddr> },
}

/// A failover measurement against a Redis or etcd cluster that runs on this host. The killed
/// server is not restarted here: once a bid sent after the fault has been acknowledged,
/// `restart` is called with its address (`HOST:PORT`), whoever runs the cluster starts it again
/// with its own command line, and the next fault waits until the cluster is whole again.
#[derive(Clone, Debug)]
pub struct ExternalFailoverSpec {
    pub system: External,
    pub clients: usize,
    pub faults: usize,
    pub restart: fn(&str),
}

/// Time from each fault to the first acknowledged bid sent after it.
#[derive(Debug, Serialize)]
pub struct FailoverReport {
    /// `auction`, `redis` or `etcd`.
    pub target: &'static str,
    pub mode: FaultMode,
    pub faults: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Every measured time, in fault order.
    pub times_ms: Vec<f64>,
}

impl std::fmt::Display for FailoverReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} leader failovers of {} ({:?}): time from the fault to the first acknowledged bid sent after it",
            self.faults, self.target, self.mode
        )?;
        writeln!(f, "| median | p99 | max |")?;
        writeln!(f, "| ---: | ---: | ---: |")?;
        writeln!(
            f,
            "| {:.1} ms | {:.1} ms | {:.1} ms |",
            self.median_ms, self.p99_ms, self.max_ms
        )
    }
}

/// How long a cluster may take to heal, or to serve again after a fault, before the run fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// How long one bid is retried before it counts as not acknowledged.
const BID_BUDGET: Duration = Duration::from_secs(30);

/// The longest one attempt at a Redis or etcd bid (find the primary, connect, bid) may take
/// before the client gives it up and starts over: far above a bid's latency, well below
/// Sentinel's detection time or an election. (An etcd member whose leader died holds a
/// proposal until its own request timeout, seconds; a client gives up on it sooner.)
const ATTEMPT: Duration = Duration::from_millis(500);

/// How long the clients of a failover run try one bid.
const PATIENCE_PER_BID: Patience = Patience {
    attempt: ATTEMPT,
    budget: BID_BUDGET,
};

/// Steady load before each fault.
const BEFORE_FAULT: Duration = Duration::from_millis(300);

/// A cluster whose leader a failover run takes down.
pub(super) trait FaultTarget {
    /// Who leads.
    type Leader;
    /// Waits until every server is up and in the cluster, and returns the leader.
    async fn whole(&mut self, patience: Duration) -> anyhow::Result<Self::Leader>;
    /// Takes the leader down; returns the moment it did.
    async fn fault(&mut self, leader: &Self::Leader, mode: FaultMode) -> anyhow::Result<Instant>;
    /// Called once a bid sent after the fault was acknowledged: brings the old leader back, or
    /// has it brought back.
    async fn restore(&mut self, leader: Self::Leader, patience: Duration) -> anyhow::Result<()>;
}

/// Polls `check` (which names the leader of a whole cluster, or says what is missing) every
/// 100 ms, each poll for at most 2 s, until it succeeds or `patience` runs out.
pub(super) async fn until_whole<L, F, Fut>(
    what: &str,
    patience: Duration,
    mut check: F,
) -> anyhow::Result<L>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<L>>,
{
    let deadline = Instant::now() + patience;
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(2), check()).await {
            Ok(Ok(leader)) => return Ok(leader),
            Ok(Err(e)) => e,
            Err(_) => anyhow!("a server did not answer"),
        };
        if Instant::now() >= deadline {
            return Err(last.context(format!(
                "the {what} cluster was not whole within {patience:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a three-node cluster (on one host, or in multi-host mode with its etcd), loads it
/// with contended bids, and takes its leader down `spec.faults` times, one fault at a time,
/// bringing the old leader back after each.
///
/// # Errors
/// The cluster could not be started or did not heal between faults; with
/// [`FaultMode::Partition`], the packet filters could not be written (not in a private network
/// namespace, or no `nft`).
pub async fn failover(spec: &FailoverSpec) -> anyhow::Result<FailoverReport> {
    use auction::cluster::{Spec, Transcript};

    let partition = spec.mode == FaultMode::Partition;
    let multi_host = spec.multi_host || partition;
    let mut cluster = if multi_host {
        // Before the cluster, so a namespace that cannot take packet filters fails at once.
        let partitions = if partition {
            Some(Partitions::new().context("the packet filters of the partitions")?)
        } else {
            None
        };
        let MultiHost { nodes, etcd } =
            MultiHost::start(&spec.node_bin, &spec.node_args, partition, PATIENCE).await?;
        AuctionCluster {
            nodes,
            etcd: Some(etcd),
            partitions,
        }
    } else {
        let mut cluster_spec = Spec::on_free_ports(&spec.node_bin)?;
        cluster_spec.node_args = spec.node_args.clone();
        cluster_spec
            .node_args
            .extend(["--duration".into(), "36000".into()]);
        let mut nodes = LocalCluster::new(cluster_spec, Transcript::new(false));
        nodes
            .start_nodes(&NODES, PATIENCE)
            .await
            .map_err(anyhow::Error::msg)?;
        AuctionCluster {
            nodes,
            etcd: None,
            partitions: None,
        }
    };
    let servers = cluster.nodes.spec.client_addrs();
    let bidders = (0..spec.clients)
        .map(|i| {
            let patience = Patience {
                attempt: spec.attempt,
                budget: BID_BUDGET,
            };
            AuctionBidder::new(&servers, &format!("bench{i}"), patience)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let times = measure(&mut cluster, bidders, spec.faults, spec.mode).await;
    for id in cluster.nodes.running() {
        cluster.nodes.kill(id).await;
    }
    let target = if multi_host {
        "auction-multi-host"
    } else {
        "auction"
    };
    Ok(report(target, spec.mode, times?))
}

/// Loads a Redis or etcd cluster with contended bids and kills its leader `spec.faults` times,
/// one fault at a time; see [`ExternalFailoverSpec`] for how the killed server comes back.
///
/// # Errors
/// The cluster was not whole in time, or its leader could not be found or killed.
pub async fn failover_external(spec: &ExternalFailoverSpec) -> anyhow::Result<FailoverReport> {
    let names = (0..spec.clients).map(|i| format!("bench{i}"));
    let times = match &spec.system {
        External::Redis { sentinels, master } => {
            if sentinels.is_empty() {
                bail!("no Sentinel addresses");
            }
            let mut cluster = RedisCluster::new(sentinels.clone(), master.clone(), spec.restart);
            cluster.reset().await?;
            let bidders = names
                .enumerate()
                .map(|(i, name)| {
                    let primary = Primary::Sentinels {
                        sentinels: sentinels.clone(),
                        master: master.clone(),
                        first: i,
                    };
                    RedisBidder::new(primary, Wait::ONE_REPLICA, &name, PATIENCE_PER_BID)
                })
                .collect();
            measure(&mut cluster, bidders, spec.faults, FaultMode::Kill).await?
        }
        External::Etcd { endpoints } => {
            if endpoints.is_empty() {
                bail!("no etcd endpoints");
            }
            let mut cluster = EtcdCluster::new(endpoints, ATTEMPT, spec.restart)?;
            cluster.reset().await?;
            let bidders = names
                .enumerate()
                .map(|(i, name)| EtcdBidder::new(endpoints, &name, i, PATIENCE_PER_BID))
                .collect::<anyhow::Result<Vec<_>>>()?;
            measure(&mut cluster, bidders, spec.faults, FaultMode::Kill).await?
        }
    };
    let target = match spec.system {
        External::Redis { .. } => "redis",
        External::Etcd { .. } => "etcd",
    };
    Ok(report(target, FaultMode::Kill, times))
}

/// Keeps `bidders` bidding on rising amounts while `target`'s leader is taken down `faults`
/// times, one at a time, each once the cluster is whole. Returns, for each fault, the time in
/// ms from the fault to the first acknowledged bid sent after it.
async fn measure<T: FaultTarget, B: Bidder>(
    target: &mut T,
    bidders: Vec<B>,
    faults: usize,
    mode: FaultMode,
) -> anyhow::Result<Vec<f64>> {
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let amounts = Arc::new(AtomicU64::new(0));
    // The send time (µs since start) of the latest-sent bid that was acknowledged.
    let latest_acked = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = bidders
        .into_iter()
        .map(|mut bidder| {
            let (stop, amounts, latest) = (stop.clone(), amounts.clone(), latest_acked.clone());
            tokio::spawn(async move {
                // (sent, answered) of each acknowledged bid, µs since start.
                let mut acked: Vec<(u64, u64)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let amount = amounts.fetch_add(1, Ordering::Relaxed) + 1;
                    let sent = micros(start.elapsed());
                    match bidder.bid(amount).await {
                        Ok(()) => {
                            acked.push((sent, micros(start.elapsed())));
                            latest.fetch_max(sent, Ordering::Relaxed);
                        }
                        Err(e) => tracing::debug!("a bid was not acknowledged: {e:#}"),
                    }
                }
                acked
            })
        })
        .collect();

    let mut fault_times = Vec::with_capacity(faults);
    let outcome = async {
        for _ in 0..faults {
            let leader = target.whole(PATIENCE).await?;
            tokio::time::sleep(BEFORE_FAULT).await;
            let at = micros(
                target
                    .fault(&leader, mode)
                    .await?
                    .saturating_duration_since(start),
            );
            fault_times.push(at);
            // Recovered once a bid sent after the fault is acknowledged.
            let deadline = Instant::now() + PATIENCE;
            while latest_acked.load(Ordering::Relaxed) < at {
                if Instant::now() >= deadline {
                    bail!("no bid was acknowledged within {PATIENCE:?} of a fault");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            target.restore(leader, PATIENCE).await?;
        }
        Ok(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    if let Err(e) = outcome {
        for t in &tasks {
            t.abort();
        }
        return Err(e);
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await?);
    }
    Ok(fault_times
        .iter()
        .map(|&at| {
            let first = acked
                .iter()
                .filter(|(sent, _)| *sent >= at)
                .map(|(_, done)| *done)
                .min()
                .unwrap_or(at);
            first.saturating_sub(at) as f64 / 1000.0
        })
        .collect())
}

fn report(target: &'static str, mode: FaultMode, times_ms: Vec<f64>) -> FailoverReport {
    let mut sorted: Vec<Duration> = times_ms
        .iter()
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .collect();
    sorted.sort();
    let rank = |p: f64| percentile(&sorted, p).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    FailoverReport {
        target,
        mode,
        faults: times_ms.len(),
        median_ms: rank(50.0),
        p99_ms: rank(99.0),
        max_ms: rank(100.0),
        times_ms,
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The auction's three nodes, started here, on one host or on several (with their etcd).
struct AuctionCluster {
    nodes: LocalCluster,
    /// Multi-host mode: the etcd that decides who leads, kept as long as the nodes.
    etcd: Option<Etcd>,
    /// With [`FaultMode::Partition`]: the packet filters that cut the leader off.
    partitions: Option<Partitions>,
}

impl AuctionCluster {
    /// Every address the leader could reach or be reached from, but its own: the other nodes',
    /// etcd's, and 127.0.0.1, where this process's clients dial from.
    fn all_but(&self, leader: u16) -> Vec<IpAddr> {
        let mut others: Vec<IpAddr> = (self.nodes.spec.hosts.iter())
            .filter(|&(&id, _)| id != leader)
            .map(|(_, &ip)| ip)
            .collect();
        others.extend(self.etcd.iter().flat_map(Etcd::addrs));
        others.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        others.sort();
        others.dedup();
        others
    }
}

impl FaultTarget for AuctionCluster {
    type Leader = u16;

    async fn whole(&mut self, patience: Duration) -> anyhow::Result<u16> {
        let healthy = self
            .nodes
            .wait_members(&NODES, patience)
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(auction::cluster::leader_of(&healthy))
    }

    async fn fault(&mut self, leader: &u16, mode: FaultMode) -> anyhow::Result<Instant> {
        let at = Instant::now();
        match mode {
            FaultMode::Kill => self.nodes.kill(*leader).await,
            FaultMode::Stop => self.nodes.signal(*leader, rustix::process::Signal::STOP)?,
            FaultMode::Partition => {
                let others = self.all_but(*leader);
                let me = *self
                    .nodes
                    .spec
                    .hosts
                    .get(leader)
                    .context("a partition needs the nodes on addresses of their own")?;
                self.partitions
                    .as_mut()
                    .context("no packet filters to cut the leader off with")?
                    .cut(&[me], &others)
                    .with_context(|| format!("cutting {me} off"))?;
                // From the moment the cut is in force: a bid sent while `nft` ran may still
                // have been answered by the old leader.
                return Ok(Instant::now());
            }
        }
        Ok(at)
    }

    async fn restore(&mut self, leader: u16, patience: Duration) -> anyhow::Result<()> {
        if self.etcd.is_some() {
            // Across hosts nothing kills a deposed leader: it has been replaced, and it exits
            // only once it hears so. Killed here, so it restarts at once, then the network heals.
            self.nodes.kill(leader).await;
            if let Some(partitions) = &mut self.partitions {
                partitions.heal().context("healing the partition")?;
            }
        } else {
            // A stopped leader has been fenced (killed); bring the node back either way.
            let deadline = Instant::now() + patience;
            while self.nodes.node(leader).is_some_and(|p| !p.exited()) {
                if Instant::now() >= deadline {
                    bail!("node {leader} was not fenced");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(self.nodes.start(leader)?)
    }
}

/// Kills -9 the process that listens on `addr`, which must be a `program` (its
/// `/proc/PID/comm`); returns the moment of the signal. Signalled through a pidfd, opened and
/// checked before the signal, so a reused pid is never hit.
pub(super) fn kill_listener(addr: SocketAddr, program: &str) -> anyhow::Result<Instant> {
    let handle = auction::process::open_listener(addr, program)
        .with_context(|| format!("finding who listens on {addr}"))?
        .with_context(|| format!("no process of this user listens on {addr}"))?;
    let at = Instant::now();
    match handle
        .kill()
        .with_context(|| format!("killing the listener of {addr}"))?
    {
        Fenced::Killed => Ok(at),
        Fenced::AlreadyGone => bail!("the listener of {addr} exited before its kill"),
    }
}

/// Waits until nothing listens on `addr` (a killed server has closed its sockets), then asks
/// for it to be restarted.
pub(super) async fn request_restart(
    addr: SocketAddr,
    restart: fn(&str),
    patience: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    while auction::process::listener_pid(addr)?.is_some() {
        if Instant::now() >= deadline {
            bail!("{addr} is still listened on after its kill");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    restart(&addr.to_string());
    Ok(())
}
