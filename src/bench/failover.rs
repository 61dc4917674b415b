//! Leader failover times under load, against a cluster this process starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::client::Client;
use crate::nemesis::percentile;
use crate::types::{Amount, BidderId};

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
    cluster.start_nodes(&NODES, patience).await?;

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
    let mut sorted: Vec<Duration> = times_ms
        .iter()
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .collect();
    sorted.sort();
    let rank = |p: f64| percentile(&sorted, p).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Ok(FailoverReport {
        mode: spec.mode,
        faults: times_ms.len(),
        median_ms: rank(50.0),
        p99_ms: rank(99.0),
        max_ms: rank(100.0),
        times_ms,
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
