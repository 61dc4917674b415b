//! Leader failover times under load. One measurement for every system: clients keep bidding, the
//! leader is taken down, and the time runs from the fault to the first acknowledged bid that a
//! client sent after it. The auction runs as a cluster this process starts; Redis (with
//! Sentinel) and etcd run as clusters someone else starts and restarts (see
//! [`ExternalFailoverSpec`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::etcd_failover::{EtcdBidder, EtcdCluster};
use super::redis_failover::{RedisCluster, SentinelClient};
use auction::client::{Client, FIRST_BACKOFF, MAX_BACKOFF};
use auction::cluster::LocalCluster;
use auction::types::{Amount, BidderId};
use auction_lab::nemesis::percentile;

/// How the leader is taken down in a failover measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultMode {
    /// kill -9.
    Kill,
    /// SIGSTOP: replicas must notice the silence and fence it.
    Stop,
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
pub(super) const BID_BUDGET: Duration = Duration::from_secs(30);

/// Steady load before each fault.
const BEFORE_FAULT: Duration = Duration::from_millis(300);

/// A cluster whose leader a failover run takes down.
pub(super) trait FaultTarget {
    /// Who leads.
    type Leader;
    /// Waits until every server is up and in the cluster, and returns the leader.
    async fn whole(&mut self, patience: Duration) -> Result<Self::Leader, String>;
    /// Takes the leader down; returns the moment it did.
    async fn fault(&mut self, leader: &Self::Leader, mode: FaultMode) -> Result<Instant, String>;
    /// Called once a bid sent after the fault was acknowledged: brings the old leader back, or
    /// has it brought back.
    async fn restore(&mut self, leader: Self::Leader, patience: Duration) -> Result<(), String>;
}

/// Polls `check` (which names the leader of a whole cluster, or says what is missing) every
/// 100 ms, each poll for at most 2 s, until it succeeds or `patience` runs out.
pub(super) async fn until_whole<L, F, Fut>(
    what: &str,
    patience: Duration,
    mut check: F,
) -> Result<L, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<L, String>>,
{
    let deadline = Instant::now() + patience;
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(2), check()).await {
            Ok(Ok(leader)) => return Ok(leader),
            Ok(Err(e)) => e,
            Err(_) => "a server did not answer".into(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "the {what} cluster was not whole within {patience:?}: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One client of the system under measurement.
pub(super) trait Bidder: Send + 'static {
    /// Bids `amount`, retrying across the failover for [`BID_BUDGET`]: `Ok(true)` once the bid
    /// is acknowledged (accepted or refused), `Ok(false)` if it never was, `Err` if this client
    /// cannot go on.
    fn bid(&mut self, amount: u64) -> impl Future<Output = Result<bool, String>> + Send;
}

/// Starts a three-node cluster, loads it with contended bids, and takes its leader down
/// `spec.faults` times, one fault at a time, restarting the dead node after each.
///
/// # Errors
/// The cluster could not be started or did not heal between faults.
pub async fn failover(spec: &FailoverSpec) -> Result<FailoverReport, String> {
    use auction::cluster::{Spec, Transcript};

    let mut cluster_spec = Spec::on_free_ports(&spec.node_bin).map_err(|e| e.to_string())?;
    cluster_spec.node_args = spec.node_args.clone();
    cluster_spec
        .node_args
        .extend(["--duration".into(), "36000".into()]);
    let mut cluster = AuctionCluster(LocalCluster::new(cluster_spec, Transcript::new(false)));
    cluster
        .0
        .start_nodes(&AuctionCluster::NODES, PATIENCE)
        .await
        .map_err(|e| e.to_string())?;
    let bidders = (0..spec.clients)
        .map(|i| {
            Ok(AuctionBidder {
                client: Client::new(cluster.0.spec.client_addr(), BID_BUDGET),
                name: BidderId::new(format!("bench{i}")).map_err(|e| e.to_string())?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let times = measure(&mut cluster, bidders, spec.faults, spec.mode).await;
    for id in cluster.0.running() {
        cluster.0.kill(id).await;
    }
    Ok(report("auction", spec.mode, times?))
}

/// Loads a Redis or etcd cluster with contended bids and kills its leader `spec.faults` times,
/// one fault at a time; see [`ExternalFailoverSpec`] for how the killed server comes back.
///
/// # Errors
/// The cluster was not whole in time, or its leader could not be found or killed.
pub async fn failover_external(spec: &ExternalFailoverSpec) -> Result<FailoverReport, String> {
    let names = (0..spec.clients).map(|i| format!("bench{i}").into_bytes());
    let times = match &spec.system {
        External::Redis { sentinels, master } => {
            if sentinels.is_empty() {
                return Err("no Sentinel addresses".into());
            }
            let mut cluster = RedisCluster::new(sentinels.clone(), master.clone(), spec.restart);
            cluster.reset().await?;
            let bidders = names
                .enumerate()
                .map(|(i, name)| SentinelClient::new(sentinels.clone(), master.clone(), name, i))
                .collect();
            measure(&mut cluster, bidders, spec.faults, FaultMode::Kill).await?
        }
        External::Etcd { endpoints } => {
            if endpoints.is_empty() {
                return Err("no etcd endpoints".into());
            }
            let mut cluster = EtcdCluster::new(endpoints, spec.restart)?;
            cluster.reset().await?;
            let bidders = names
                .enumerate()
                .map(|(i, name)| EtcdBidder::new(endpoints, name, i))
                .collect::<Result<Vec<_>, String>>()?;
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
) -> Result<Vec<f64>, String> {
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
                        Ok(true) => {
                            acked.push((sent, micros(start.elapsed())));
                            latest.fetch_max(sent, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!("a failover client stopped: {e}");
                            break;
                        }
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
                    return Err(format!(
                        "no bid was acknowledged within {PATIENCE:?} of a fault"
                    ));
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
        acked.extend(t.await.map_err(|e| e.to_string())?);
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

/// The auction's three nodes, started here.
struct AuctionCluster(LocalCluster);

impl AuctionCluster {
    const NODES: [u16; 3] = [5400, 5401, 5402];
}

impl FaultTarget for AuctionCluster {
    type Leader = u16;

    async fn whole(&mut self, patience: Duration) -> Result<u16, String> {
        let healthy = self
            .0
            .wait_for(patience, |s| s.members.len() == Self::NODES.len())
            .await
            .map_err(|e| e.to_string())?;
        Ok(auction::cluster::leader_of(&healthy))
    }

    async fn fault(&mut self, leader: &u16, mode: FaultMode) -> Result<Instant, String> {
        let at = Instant::now();
        match mode {
            FaultMode::Kill => self.0.kill(*leader).await,
            FaultMode::Stop => self
                .0
                .signal(*leader, rustix::process::Signal::STOP)
                .map_err(|e| e.to_string())?,
        }
        Ok(at)
    }

    async fn restore(&mut self, leader: u16, patience: Duration) -> Result<(), String> {
        // A stopped leader has been fenced (killed); bring the node back either way.
        let deadline = Instant::now() + patience;
        while self.0.node(leader).is_some_and(|p| !p.exited()) {
            if Instant::now() >= deadline {
                return Err(format!("node {leader} was not fenced"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.0.start(leader).map_err(|e| e.to_string())
    }
}

/// One auction client, with its own session.
struct AuctionBidder {
    client: Client,
    name: BidderId,
}

impl Bidder for AuctionBidder {
    async fn bid(&mut self, amount: u64) -> Result<bool, String> {
        let amount = Amount::new(amount).map_err(|e| e.to_string())?;
        Ok(self.client.bid(&self.name, amount).await.is_ok())
    }
}

/// Pauses between the attempts of one request, as long as the auction's own client's (without
/// its jitter): from [`FIRST_BACKOFF`], doubling up to [`MAX_BACKOFF`], until the budget is
/// spent.
pub(super) struct Backoff {
    next: Duration,
    deadline: Instant,
}

impl Backoff {
    pub(super) fn new(budget: Duration) -> Self {
        Self {
            next: FIRST_BACKOFF,
            deadline: Instant::now() + budget,
        }
    }

    /// Sleeps before the next attempt; `false`, without sleeping, once the budget is spent.
    pub(super) async fn wait(&mut self) -> bool {
        if Instant::now() + self.next >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        true
    }
}

/// Kills -9 the process that listens on `addr`, which must be a `program` (its
/// `/proc/PID/comm`); returns the moment of the signal. Signalled through a pidfd, opened and
/// checked before the signal, so a reused pid is never hit.
pub(super) fn kill_listener(addr: SocketAddr, program: &str) -> Result<Instant, String> {
    use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

    let pid = auction::process::listener_pid(addr)
        .map_err(|e| format!("finding who listens on {addr}: {e}"))?
        .ok_or_else(|| format!("no process of this user listens on {addr}"))?;
    let raw = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| format!("{pid} is not a pid"))?;
    let pidfd = pidfd_open(raw, PidfdFlags::empty()).map_err(|e| format!("pid {pid}: {e}"))?;
    // Checked with the pidfd open, so the name is that of the process the pidfd names.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim_end() != program {
        return Err(format!(
            "{addr} is held by pid {pid} ({}), not by {program}",
            comm.trim_end()
        ));
    }
    let at = Instant::now();
    pidfd_send_signal(&pidfd, Signal::KILL).map_err(|e| format!("killing pid {pid}: {e}"))?;
    Ok(at)
}

/// Waits until nothing listens on `addr` (a killed server has closed its sockets), then asks
/// for it to be restarted.
pub(super) async fn request_restart(
    addr: SocketAddr,
    restart: fn(&str),
    patience: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + patience;
    while auction::process::listener_pid(addr)
        .map_err(|e| e.to_string())?
        .is_some()
    {
        if Instant::now() >= deadline {
            return Err(format!("{addr} is still listened on after its kill"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    restart(&addr.to_string());
    Ok(())
}
