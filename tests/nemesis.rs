//! Short fault runs inside the normal test suite: a real three-node cluster, eight clients, and
//! random kills and pauses of leaders, replicas and clients. A failing run prints its seed; the
//! same seed replays it: `cargo run --release --bin auction-soak -- --seed SEED --runs 1`.

mod common;

use std::time::Duration;

use auction::nemesis::{Config, run};

async fn fault_run(seed: u64) {
    let mut cfg = Config::new(common::NODE, seed);
    cfg.faults_for = Duration::from_secs(12);
    let report = run(&cfg).await;
    let kinds: std::collections::BTreeSet<_> = report.faults.iter().map(|f| f.kind).collect();
    eprintln!(
        "seed {seed}: {} ops ({} unknown), {} faults of {} kinds, checked in {:?}",
        report.ops,
        report.unknown,
        report.faults.len(),
        kinds.len(),
        report.check_time
    );
    if !report.passed() {
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("nemesis-seed-{seed}.log"));
        let _ = std::fs::write(&path, report.transcript.join("\n"));
        panic!(
            "seed {seed} failed (replay with --seed {seed}; transcript in {}):\n{}",
            path.display(),
            report.problems.join("\n")
        );
    }
    assert!(report.ops > 200, "too few operations: {}", report.ops);
    assert!(
        report.faults.len() >= 5,
        "too few faults: {:?}",
        report.faults
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_run_seed_1() {
    fault_run(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_run_seed_2() {
    fault_run(2).await;
}
