//! Load generation for `auction-bench`: closed loop (each client sends its next request when the
//! last is answered) or open loop (requests on a fixed schedule, latency counted from when each
//! was due, so a slow server cannot hide its queueing), with latencies in an HDR histogram.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

mod client;
mod echo;
mod etcd;
mod failover;
mod memory;
mod multihost;
pub mod proto;
mod redis;
mod resp;

use client::{AuctionBidder, Bidder, Patience};
pub use echo::{EchoService, serve_echo};
pub use failover::{
    External, ExternalFailoverSpec, FailoverReport, FailoverSpec, FaultMode, failover,
    failover_external,
};
pub use memory::{MemoryReport, MemorySpec, memory};
pub use multihost::MultiHost;

/// What is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The auction.
    Auction,
    /// The echo service, one unary call per request: the floor for unary gRPC.
    EchoUnary,
    /// The echo service, one bidirectional stream per client: the floor for streams.
    EchoStream,
    /// A Redis primary: a bid is a Lua script that accepts only a higher amount, followed by
    /// `WAIT 2 1000` (pipelined): synchronous replication to two replicas, as the auction does.
    Redis,
    /// An etcd member: a bid is a Txn that puts only if the stored value is lower.
    Etcd,
}

/// The keys both stores use for the auction.
const KEY_HIGHEST: &[u8] = b"auction/highest";
const KEY_BIDDER: &[u8] = b"auction/bidder";

/// Resets the stores' auction before a run, so every run starts from the same state.
///
/// # Errors
/// The store cannot be reached.
pub async fn prepare(spec: &LoadSpec) -> anyhow::Result<()> {
    match spec.target {
        Target::Redis => redis::reset(spec.server()?).await,
        Target::Etcd => {
            let endpoint =
                tonic::transport::Endpoint::from_shared(format!("http://{}", spec.server()?))?;
            etcd::reset(endpoint.connect().await?).await
        }
        Target::Auction | Target::EchoUnary | Target::EchoStream => Ok(()),
    }
}

/// What each client does.
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
    /// Where to send requests: the one server of the echo service, Redis or etcd; for the
    /// auction, every address a node may serve clients on (one on one host; each node's in
    /// multi-host mode, where only the leader's answers).
    pub servers: Vec<std::net::SocketAddr>,
    pub clients: usize,
    pub duration: Duration,
    /// Total requests per second for an open loop; `None` for a closed loop.
    pub rate: Option<f64>,
    pub target: Target,
    /// What each client does (bids only, or bids and reads).
    pub workload: Workload,
    /// How long clients keep retrying one request before it counts as an error.
    pub retry_budget: Duration,
}

impl LoadSpec {
    /// The first of [`LoadSpec::servers`]: the only one, for any target but the auction.
    ///
    /// # Errors
    /// There is none.
    pub fn server(&self) -> anyhow::Result<std::net::SocketAddr> {
        self.servers
            .first()
            .copied()
            .ok_or_else(|| anyhow::anyhow!("no server address to load"))
    }
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
///
/// # Errors
/// The clients could not be made (a server address that makes no URI).
pub async fn run(spec: &LoadSpec, progress: Arc<Progress>) -> anyhow::Result<LoadReport> {
    let patience = Patience::within(spec.retry_budget);
    let server = spec.server()?;
    // Unique per run: each auction client registers its name with a token of its own.
    let name = |i: usize| format!("bench{}-{i}", std::process::id());
    let n = spec.clients;
    Ok(match spec.target {
        Target::Auction => {
            let clients = each(n, |i| AuctionBidder::new(&spec.servers, &name(i), patience))?;
            drive(spec, progress, clients).await
        }
        Target::EchoUnary => {
            let clients = each(n, |_| echo::EchoUnary::new(server))?;
            drive(spec, progress, clients).await
        }
        Target::EchoStream => {
            let clients = each(n, |_| echo::EchoStream::new(server))?;
            drive(spec, progress, clients).await
        }
        Target::Redis => {
            let primary = || redis::Primary::At(server);
            let wait = redis::Wait::BOTH_REPLICAS;
            let clients = each(n, |i| {
                Ok(redis::RedisBidder::new(primary(), wait, &name(i), patience))
            })?;
            drive(spec, progress, clients).await
        }
        Target::Etcd => {
            let clients = each(n, |i| {
                etcd::EtcdBidder::new(&[server], &name(i), 0, patience)
            })?;
            drive(spec, progress, clients).await
        }
    })
}

/// `n` clients, client `i` made by `make(i)`.
fn each<B>(n: usize, make: impl Fn(usize) -> anyhow::Result<B>) -> anyhow::Result<Vec<B>> {
    (0..n).map(make).collect()
}

/// Runs `spec` with `clients`, one task each.
async fn drive<B: Bidder>(spec: &LoadSpec, progress: Arc<Progress>, clients: Vec<B>) -> LoadReport {
    let amounts = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let per_client_interval = spec
        .rate
        .map(|r| Duration::from_secs_f64(spec.clients as f64 / r.max(1e-3)));
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let (amounts, stop, progress) = (amounts.clone(), stop.clone(), progress.clone());
            let spec = spec.clone();
            tokio::spawn(async move {
                let mut hist = new_histogram();
                let mix = spec.workload == Workload::Mix8020;
                // Connected before the clock starts.
                if let Err(e) = client.read().await {
                    tracing::warn!("client {i} could not connect: {e:#}");
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                    return hist;
                }
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
                            // Behind schedule, latency counts from when the request was due, so
                            // queueing is not hidden; on schedule, from now, so the timer's own
                            // millisecond granularity is not counted.
                            let now = Instant::now();
                            if now.saturating_duration_since(this) > Duration::from_millis(2) {
                                this
                            } else {
                                now
                            }
                        }
                        _ => Instant::now(),
                    };
                    n += 1;
                    let (answered, counter) = if mix && n.is_multiple_of(5) {
                        (client.read().await, &progress.reads)
                    } else {
                        let amount = amounts.fetch_add(1, Ordering::Relaxed) + 1;
                        (client.bid(amount).await, &progress.bids)
                    };
                    match answered {
                        Ok(()) => {
                            let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                            let _ = hist.record(us.max(1));
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::debug!("client {i}: {e:#}");
                            progress.errors.fetch_add(1, Ordering::Relaxed);
                            // The client starts over by itself; a pause keeps one whose server
                            // is gone from spinning.
                            tokio::time::sleep(Duration::from_millis(10)).await;
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
