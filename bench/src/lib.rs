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
use tonic::Streaming;
use tonic::transport::Channel;

use auction::client::Client;

mod echo;
mod etcd_failover;
mod failover;
mod memory;
pub mod proto;
mod redis_failover;
mod resp;

use crate::proto::echo::{EchoMessage, echo_client::EchoClient};
use crate::proto::etcd::{self, kv_client::KvClient as EtcdClient};
use auction::types::{Amount, BidderId};
pub use echo::{EchoService, serve_echo};
pub use failover::{
    External, ExternalFailoverSpec, FailoverReport, FailoverSpec, FaultMode, failover,
    failover_external,
};
pub use memory::{MemoryReport, MemorySpec, memory};

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
    /// `WAIT 2 0` (pipelined): synchronous replication to two replicas, as the auction does.
    Redis,
    /// An etcd cluster: a bid is a Txn that puts only if the stored value is lower.
    Etcd,
}

/// The Redis bid: sets the highest bid and bidder only if the amount is higher.
const REDIS_BID: &str = "local cur = tonumber(redis.call('GET', KEYS[1]) or '0') \
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]); \
redis.call('SET', KEYS[2], ARGV[2]); return 1 end return 0";

/// The keys both stores use for the auction.
const KEY_HIGHEST: &[u8] = b"auction/highest";
const KEY_BIDDER: &[u8] = b"auction/bidder";

/// An amount as a fixed-width string, so byte order is numeric order (etcd compares bytes).
fn padded(amount: u64) -> Vec<u8> {
    format!("{amount:016}").into_bytes()
}

/// The etcd bid: a Txn that puts `amount` (and the bidder) only if the stored amount is lower.
fn etcd_bid(amount: u64, name: &[u8]) -> etcd::TxnRequest {
    let amount = padded(amount);
    let put = |key: &[u8], value: Vec<u8>| etcd::RequestOp {
        request: Some(etcd::request_op::Request::RequestPut(etcd::PutRequest {
            key: key.to_vec(),
            value,
        })),
    };
    etcd::TxnRequest {
        compare: vec![etcd::Compare {
            result: etcd::compare::CompareResult::Less as i32,
            target: etcd::compare::CompareTarget::Value as i32,
            key: KEY_HIGHEST.to_vec(),
            target_union: Some(etcd::compare::TargetUnion::Value(amount.clone())),
        }],
        success: vec![put(KEY_HIGHEST, amount), put(KEY_BIDDER, name.to_vec())],
        failure: Vec::new(),
    }
}

/// Resets the stores' auction before a run, so every run starts from the same state.
///
/// # Errors
/// The store cannot be reached.
pub async fn prepare(spec: &LoadSpec) -> Result<(), String> {
    match spec.target {
        Target::Redis => {
            let mut c = resp::Conn::connect(spec.server)
                .await
                .map_err(|e| e.to_string())?;
            c.call(&[b"DEL", KEY_HIGHEST, KEY_BIDDER])
                .await
                .map_err(|e| e.to_string())?;
        }
        Target::Etcd => {
            let mut kv = EtcdClient::connect(format!("http://{}", spec.server))
                .await
                .map_err(|e| e.to_string())?;
            let put = etcd::PutRequest {
                key: KEY_HIGHEST.to_vec(),
                value: padded(0),
            };
            kv.put(put).await.map_err(|e| e.to_string())?;
        }
        _ => {}
    }
    Ok(())
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
    pub server: std::net::SocketAddr,
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
                let mix = spec.workload == Workload::Mix8020;
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
                    match worker.once(n, &amounts, mix).await {
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
                            // The auction client reconnects by itself; the others start over.
                            if spec.target != Target::Auction {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                if let Ok(w) = Worker::connect(&spec, i).await {
                                    worker = w;
                                }
                            }
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
    },
    EchoUnary(EchoClient<Channel>),
    EchoStream {
        requests: mpsc::Sender<EchoMessage>,
        replies: Streaming<EchoMessage>,
    },
    Redis {
        conn: resp::Conn,
        sha: Vec<u8>,
        name: Vec<u8>,
    },
    Etcd {
        kv: EtcdClient<Channel>,
        name: Vec<u8>,
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
            Target::Auction => {
                let mut client = Box::new(Client::new(spec.server, spec.retry_budget));
                // Connected before the clock starts, like the other targets.
                client.result().await.map_err(|e| e.to_string())?;
                Self::Auction {
                    client,
                    // Unique per run: each client registers its name with a token of its own.
                    name: BidderId::new(format!("bench{}-{i}", std::process::id()))
                        .map_err(|e| e.to_string())?,
                }
            }
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
            Target::Redis => {
                let mut conn = resp::Conn::connect(spec.server)
                    .await
                    .map_err(|e| e.to_string())?;
                let sha = match conn.call(&[b"SCRIPT", b"LOAD", REDIS_BID.as_bytes()]).await {
                    Ok(resp::Value::Bulk(Some(sha))) => sha,
                    other => return Err(format!("SCRIPT LOAD answered {other:?}")),
                };
                Self::Redis {
                    conn,
                    sha,
                    name: format!("bench{i}").into_bytes(),
                }
            }
            Target::Etcd => Self::Etcd {
                kv: EtcdClient::connect(format!("http://{}", spec.server))
                    .await
                    .map_err(|e| e.to_string())?,
                name: format!("bench{i}").into_bytes(),
            },
        })
    }

    /// One request; `Err` when it got no answer. `mix` makes every fifth request a read.
    async fn once(&mut self, n: u64, amounts: &AtomicU64, mix: bool) -> Result<Kind, ()> {
        match self {
            Self::Auction { client, name } => {
                if mix && n.is_multiple_of(5) {
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
            Self::Redis { conn, sha, name } => {
                if mix && n.is_multiple_of(5) {
                    let v = conn.call(&[b"MGET", KEY_HIGHEST, KEY_BIDDER]).await;
                    return match v {
                        Ok(resp::Value::Array(Some(_))) => Ok(Kind::Read),
                        _ => Err(()),
                    };
                }
                let amount = (amounts.fetch_add(1, Ordering::Relaxed) + 1).to_string();
                let keys: &[&[u8]] = &[KEY_HIGHEST, KEY_BIDDER];
                let mut args: Vec<&[u8]> = vec![b"EVALSHA", sha, b"2"];
                args.extend_from_slice(keys);
                args.extend_from_slice(&[amount.as_bytes(), name]);
                conn.queue(&args).await.map_err(|_| ())?;
                conn.queue(&[b"WAIT", b"2", b"1000"])
                    .await
                    .map_err(|_| ())?;
                match conn.finish(2).await.map_err(|_| ())?.as_slice() {
                    // Accepted or refused, and on both replicas.
                    [resp::Value::Int(0 | 1), resp::Value::Int(acked)] if *acked >= 2 => {
                        Ok(Kind::Bid)
                    }
                    _ => Err(()),
                }
            }
            Self::Etcd { kv, name } => {
                if mix && n.is_multiple_of(5) {
                    let range = etcd::RangeRequest {
                        key: KEY_HIGHEST.to_vec(),
                        range_end: Vec::new(),
                    };
                    return kv.range(range).await.map(|_| Kind::Read).map_err(|_| ());
                }
                let txn = etcd_bid(amounts.fetch_add(1, Ordering::Relaxed) + 1, name);
                kv.txn(txn).await.map(|_| Kind::Bid).map_err(|_| ())
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
