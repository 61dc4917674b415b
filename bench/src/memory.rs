//! A node's resident memory under a long run: many accepted bids from many distinct sessions and
//! bidders, against a cluster this process starts. Sessions are carried in each request, so a
//! few streams can speak for thousands of clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use auction::cluster::{LocalCluster, Spec, Transcript, leader_of};
use auction::pb::{self, SessionRequest, auction_client::AuctionClient, session_request};

/// The token of every bidder here: this measures memory, not who may bid.
const TOKEN: &str = "memory-benchmark-token-memory-benchmark-token";

/// What to run.
#[derive(Clone, Debug)]
pub struct MemorySpec {
    pub node_bin: std::path::PathBuf,
    /// Distinct client sessions, each with its own bidder name.
    pub sessions: u64,
    /// Accepted bids in all: clients bid until this many were accepted.
    pub bids: u64,
    /// Streams carrying them.
    pub streams: u64,
}

/// The leader's resident memory as the bids went in.
#[derive(Debug, Serialize)]
pub struct MemoryReport {
    pub sessions: u64,
    /// Bids sent, and bids accepted (the rest lost a race to a higher bid).
    pub sent: u64,
    pub accepted: u64,
    /// Resident memory before any bid, and after each tenth of the accepted bids, in KiB.
    pub rss_kib: Vec<u64>,
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
        writeln!(
            f,
            "{} accepted bids ({} sent) from {} sessions: leader resident memory",
            self.accepted, self.sent, self.sessions
        )?;
        let steps: Vec<String> = self.rss_kib.iter().map(|k| mib(*k)).collect();
        writeln!(f, "before, then after each tenth: {}", steps.join(", "))
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// The resident memory of whichever node leads now.
async fn leader_rss(cluster: &mut LocalCluster) -> anyhow::Result<u64> {
    let status = cluster.status(Duration::from_secs(5)).await?;
    let leader = leader_of(&status);
    let pid = cluster.node(leader).context("no leader process")?.pid();
    rss_kib(pid)
}

/// Runs the measurement.
///
/// # Errors
/// The cluster could not be started, or a stream failed.
pub async fn memory(spec: &MemorySpec) -> anyhow::Result<MemoryReport> {
    if spec.sessions < spec.streams {
        // Otherwise one session's bids travel on several streams and overtake each other.
        bail!("there must be at least as many sessions as streams");
    }
    let mut cluster_spec = Spec::on_free_ports(&spec.node_bin)?;
    cluster_spec.node_args = vec!["--duration".into(), "36000".into()];
    let mut cluster = LocalCluster::new(cluster_spec, Transcript::new(false));
    cluster
        .start_nodes(&[5400, 5401, 5402], Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    let mut rss = vec![leader_rss(&mut cluster).await?];
    let url = format!("http://{}", cluster.spec.client_addr());
    // Every bid sent takes the next number: its amount, and (spread over the sessions) its
    // session and that session's sequence number.
    let sent = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    for step in 1..=10u64 {
        let goal = spec.bids * step / 10;
        let mut tasks = Vec::new();
        for _ in 0..spec.streams {
            let (url, sent, accepted) = (url.clone(), sent.clone(), accepted.clone());
            let sessions = spec.sessions;
            tasks.push(tokio::spawn(async move {
                let mut client = AuctionClient::connect(url).await?;
                let (tx, rx) = mpsc::channel(16);
                let mut replies = client.session(ReceiverStream::new(rx)).await?.into_inner();
                while accepted.load(Ordering::Relaxed) < goal {
                    let n = sent.fetch_add(1, Ordering::Relaxed);
                    let session = 1 + n % sessions;
                    let bid = pb::BidRequest {
                        id: Some(pb::RequestId {
                            session,
                            seq: 1 + n / sessions,
                        }),
                        bidder: format!("c{session}"),
                        amount: n + 1,
                        token: TOKEN.into(),
                    };
                    let request = SessionRequest {
                        tag: n,
                        op: Some(session_request::Op::Bid(bid)),
                    };
                    tx.send(request).await?;
                    let reply = replies.message().await?.context("stream ended")?;
                    if let Some(pb::session_reply::Reply::Decision(d)) = reply.reply
                        && d.decision.is_some_and(|d| d.accepted)
                    {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        rss.push(leader_rss(&mut cluster).await?);
    }
    for id in cluster.running() {
        cluster.kill(id).await;
    }
    Ok(MemoryReport {
        sessions: spec.sessions,
        sent: sent.load(Ordering::Relaxed),
        accepted: accepted.load(Ordering::Relaxed),
        rss_kib: rss,
    })
}
