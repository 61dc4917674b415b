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
