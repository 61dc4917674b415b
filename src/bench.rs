//! Load generation for `auction-bench`: closed loop (each client sends its next request when the
//! last is answered) or open loop (requests on a fixed schedule, latency counted from when each
//! was due, so a slow server cannot hide its queueing), with latencies in an HDR histogram.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::client::Client;
use crate::pb::{self, EchoMessage, echo_client::EchoClient};
use crate::types::{Amount, BidderId};

/// What is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The auction, with this workload.
    Auction(Workload),
    /// The echo service, one unary call per request: the floor for unary gRPC.
    EchoUnary,
    /// The echo service, one bidirectional stream per client: the floor for streams.
    EchoStream,
}

/// What each auction client does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Every request is a bid on the one auction, amounts from a shared counter so they keep
    /// rising while clients race each other.
    Contended,
    /// 80% bids as above, 20% result reads.
    Mix8020,
}

/// How to load the server.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub server: std::net::SocketAddr,
    pub clients: usize,
    pub duration: Duration,
    /// Total requests per second for an open loop; `None` for a closed loop.
    pub rate: Option<f64>,
    pub target: Target,
    /// How long clients keep retrying one request before it counts as an error.
    pub retry_budget: Duration,
}

/// Counters shared with whoever shows progress.
#[derive(Debug, Default)]
pub struct Progress {
    pub bids: AtomicU64,
    pub reads: AtomicU64,
    pub errors: AtomicU64,
}

/// The outcome of a load run.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub clients: usize,
    pub secs: f64,
    /// Bids answered (accepted or refused) per second.
    pub bids_per_s: f64,
    pub reads_per_s: f64,
    /// Requests that got no answer within the retry budget.
    pub errors: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Latencies of the answered requests, microseconds.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

/// Runs `spec` and returns what it measured. `progress` counts as it goes.
pub async fn run(spec: &LoadSpec, progress: Arc<Progress>) -> LoadReport {
    let amounts = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let per_client_interval = spec
        .rate
        .map(|r| Duration::from_secs_f64(spec.clients as f64 / r.max(1e-3)));
    let tasks: Vec<_> = (0..spec.clients)
        .map(|i| {
            let (amounts, stop, progress) = (amounts.clone(), stop.clone(), progress.clone());
            let spec = spec.clone();
            tokio::spawn(async move {
                let mut hist = new_histogram();
                let mut worker = match Worker::connect(&spec, i).await {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!("client {i} could not connect: {e}");
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                        return hist;
                    }
                };
                // Open loop: client i starts at its own offset in the interval, and each request
                // counts from when it was due.
                let mut due = per_client_interval
                    .map(|iv| start + iv.mul_f64(i as f64 / spec.clients as f64));
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let sent = match (due.as_mut(), per_client_interval) {
                        (Some(d), Some(iv)) => {
                            let this = *d;
                            tokio::time::sleep_until(this).await;
                            *d += iv;
                            this
                        }
                        _ => Instant::now(),
                    };
                    n += 1;
                    match worker.once(n, &amounts).await {
                        Ok(kind) => {
                            let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                            let _ = hist.record(us.max(1));
                            let counter = match kind {
                                Kind::Read => &progress.reads,
                                Kind::Bid => &progress.bids,
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(()) => {
                            progress.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                hist
            })
        })
        .collect();
    tokio::time::sleep(spec.duration).await;
    stop.store(true, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    let mut histogram = new_histogram();
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = histogram.add(&h);
        }
    }
    let bids = progress.bids.load(Ordering::Relaxed);
    let reads = progress.reads.load(Ordering::Relaxed);
    LoadReport {
        clients: spec.clients,
        secs,
        bids_per_s: bids as f64 / secs,
        reads_per_s: reads as f64 / secs,
        errors: progress.errors.load(Ordering::Relaxed),
        p50_us: histogram.value_at_quantile(0.50),
        p90_us: histogram.value_at_quantile(0.90),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
        histogram,
    }
}

/// What a request was, for the counters.
enum Kind {
    Bid,
    Read,
}

/// One load client and its connection.
enum Worker {
    Auction {
        client: Box<Client>,
        name: BidderId,
        workload: Workload,
    },
    EchoUnary(EchoClient<Channel>),
    EchoStream {
        requests: mpsc::Sender<EchoMessage>,
        replies: Streaming<EchoMessage>,
    },
}

/// An echo payload about the size of a bid's bidder and amount.
const ECHO_PAYLOAD: &[u8] = b"bench17:123456789";

impl Worker {
    async fn connect(spec: &LoadSpec, i: usize) -> Result<Self, String> {
        let echo = || async {
            let url = format!("http://{}", spec.server);
            EchoClient::connect(url).await.map_err(|e| e.to_string())
        };
        Ok(match spec.target {
            Target::Auction(workload) => Self::Auction {
                client: Box::new(Client::new(spec.server, spec.retry_budget)),
                name: BidderId::new(format!("bench{i}")).map_err(|e| e.to_string())?,
                workload,
            },
            Target::EchoUnary => Self::EchoUnary(echo().await?),
            Target::EchoStream => {
                let (requests, rx) = mpsc::channel(16);
                let replies = echo()
                    .await?
                    .stream(ReceiverStream::new(rx))
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                Self::EchoStream { requests, replies }
            }
        })
    }

    /// One request; `Err` when it got no answer.
    async fn once(&mut self, n: u64, amounts: &AtomicU64) -> Result<Kind, ()> {
        match self {
            Self::Auction {
                client,
                name,
                workload,
            } => {
                if *workload == Workload::Mix8020 && n.is_multiple_of(5) {
                    return client.result().await.map(|_| Kind::Read).map_err(|_| ());
                }
                let amount =
                    Amount::new(amounts.fetch_add(1, Ordering::Relaxed) + 1).map_err(|_| ())?;
                client
                    .bid(name, amount)
                    .await
                    .map(|_| Kind::Bid)
                    .map_err(|_| ())
            }
            Self::EchoUnary(c) => {
                let m = EchoMessage {
                    tag: n,
                    payload: ECHO_PAYLOAD.to_vec(),
                };
                c.unary(m).await.map(|_| Kind::Bid).map_err(|_| ())
            }
            Self::EchoStream { requests, replies } => {
                let m = EchoMessage {
                    tag: n,
                    payload: ECHO_PAYLOAD.to_vec(),
                };
                requests.send(m).await.map_err(|_| ())?;
                match replies.message().await {
                    Ok(Some(_)) => Ok(Kind::Bid),
                    _ => Err(()),
                }
            }
        }
    }
}

/// The echo service: answers each message with itself.
#[derive(Debug, Default)]
pub struct EchoService;

#[tonic::async_trait]
impl pb::echo_server::Echo for EchoService {
    type StreamStream = Streaming<EchoMessage>;

    async fn unary(
        &self,
        req: tonic::Request<EchoMessage>,
    ) -> Result<tonic::Response<EchoMessage>, Status> {
        Ok(tonic::Response::new(req.into_inner()))
    }

    async fn stream(
        &self,
        req: tonic::Request<Streaming<EchoMessage>>,
    ) -> Result<tonic::Response<Self::StreamStream>, Status> {
        Ok(tonic::Response::new(req.into_inner()))
    }
}

/// Serves the echo service on `listener` until `shutdown` resolves.
///
/// # Errors
/// The server fails.
pub async fn serve_echo(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(pb::echo_server::EchoServer::new(EchoService))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits: valid bounds, so creation cannot fail.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| format!("{:.3} ms", us as f64 / 1000.0);
        writeln!(
            f,
            "{} clients, {:.1} s: {:.0} bids/s, {:.0} reads/s, {} errors",
            self.clients, self.secs, self.bids_per_s, self.reads_per_s, self.errors
        )?;
        writeln!(f, "| p50 | p90 | p99 | p99.9 | max |")?;
        writeln!(f, "| ---: | ---: | ---: | ---: | ---: |")?;
        writeln!(
            f,
            "| {} | {} | {} | {} | {} |",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us)
        )
    }
}

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

/// Time from each fault to the first acknowledged bid sent after it.
#[derive(Debug, Serialize)]
pub struct FailoverReport {
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
            "{} leader failovers ({:?}): time from the fault to the first acknowledged bid sent after it",
            self.faults, self.mode
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

/// Starts a three-node cluster, loads it with contended bids, and takes its leader down
/// `spec.faults` times, one fault at a time, restarting the dead node after each.
///
/// # Errors
/// The cluster could not be started or did not heal between faults.
pub async fn failover(spec: &FailoverSpec) -> Result<FailoverReport, String> {
    use crate::cluster::{LocalCluster, Spec, Transcript, leader_of};
    use rustix::process::Signal;

    const NODES: [u16; 3] = [5400, 5401, 5402];
    let patience = Duration::from_secs(30);
    let mut cluster_spec = Spec::on_free_ports(&spec.node_bin).map_err(|e| e.to_string())?;
    cluster_spec.node_args = spec.node_args.clone();
    cluster_spec
        .node_args
        .extend(["--duration".into(), "36000".into()]);
    let mut cluster = LocalCluster::new(cluster_spec, Transcript::new(false));
    cluster.start(NODES[0]).map_err(|e| e.to_string())?;
    cluster
        .wait_for(patience, |s| leader_of(s) == Some(NODES[0]))
        .await?;
    for id in &NODES[1..] {
        cluster.start_member(*id, patience).await?;
    }

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let amounts = Arc::new(AtomicU64::new(0));
    // The send time (µs since start) of the latest-sent bid that was acknowledged.
    let latest_acked = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..spec.clients)
        .map(|i| {
            let (stop, amounts, latest) = (stop.clone(), amounts.clone(), latest_acked.clone());
            let mut client = Client::new(cluster.spec.client_addr(), Duration::from_secs(30));
            tokio::spawn(async move {
                let name = BidderId::new(format!("bench{i}")).expect("valid name");
                // (sent, answered) of each acknowledged bid, µs since start.
                let mut acked: Vec<(u64, u64)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(amount) = Amount::new(amounts.fetch_add(1, Ordering::Relaxed) + 1)
                    else {
                        break;
                    };
                    let sent = micros(start.elapsed());
                    if client.bid(&name, amount).await.is_ok() {
                        acked.push((sent, micros(start.elapsed())));
                        latest.fetch_max(sent, Ordering::Relaxed);
                    }
                }
                acked
            })
        })
        .collect();

    let mut fault_times = Vec::with_capacity(spec.faults);
    for _ in 0..spec.faults {
        let healthy = cluster
            .wait_for(patience, |s| s.members.len() == NODES.len())
            .await?;
        let leader = leader_of(&healthy).ok_or("no leader")?;
        // Some steady load before the fault.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let at = micros(start.elapsed());
        match spec.mode {
            FaultMode::Kill => cluster.kill(leader).await,
            FaultMode::Stop => cluster
                .signal(leader, Signal::STOP)
                .map_err(|e| e.to_string())?,
        }
        fault_times.push(at);
        // Recovered once a bid sent after the fault is acknowledged.
        let deadline = Instant::now() + patience;
        while latest_acked.load(Ordering::Relaxed) < at {
            if Instant::now() >= deadline {
                return Err(format!(
                    "no bid was acknowledged within {patience:?} of a fault"
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // A stopped leader has been fenced (killed); bring the node back either way.
        let deadline = Instant::now() + patience;
        while cluster.node(leader).is_some_and(|p| !p.exited()) {
            if Instant::now() >= deadline {
                return Err(format!("node {leader} was not fenced"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cluster.start(leader).map_err(|e| e.to_string())?;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.map_err(|e| e.to_string())?);
    }
    for id in cluster.running() {
        cluster.kill(id).await;
    }
    let times_ms: Vec<f64> = fault_times
        .iter()
        .map(|&at| {
            let first = acked
                .iter()
                .filter(|(sent, _)| *sent >= at)
                .map(|(_, done)| *done)
                .min()
                .unwrap_or(at);
            (first - at) as f64 / 1000.0
        })
        .collect();
    let mut sorted = times_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let r = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted
            .get(r.clamp(1, sorted.len().max(1)) - 1)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(FailoverReport {
        mode: spec.mode,
        faults: times_ms.len(),
        median_ms: rank(50.0),
        p99_ms: rank(99.0),
        max_ms: sorted.last().copied().unwrap_or(0.0),
        times_ms,
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
