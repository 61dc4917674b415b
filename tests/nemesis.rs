//! Short fault runs inside the normal test suite: a real three-node cluster, eight clients, and
//! random kills and pauses of leaders, replicas and clients. A failing run names its seed; the
//! same seed replays it: `cargo build --release && target/release/auction-soak --seed SEED --runs 1`.

mod common;

use std::time::Duration;

use auction::nemesis::{Config, run};

/// The longest any fault may keep bids from being answered, pauses included, before the run
/// counts as having lost progress. Generous: a loaded CI machine is slow.
const PROGRESS_BOUND: Duration = Duration::from_secs(10);

async fn fault_run(seed: u64) {
    let mut cfg = Config::new(common::NODE, seed);
    cfg.faults_for = Duration::from_secs(12);
    cfg.timeout_ms = common::TIMEOUT_MS;
    let report = run(&cfg).await;
    let known = report.ops - report.unknown;
    eprintln!(
        "seed {seed}: {} ops ({} unknown), {} faults, {} replays ({} after retries), checked in {:?}",
        report.ops,
        report.unknown,
        report.faults.len(),
        report.replayed,
        report.replayed_after_retries,
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
    assert!(known > 500, "too few answered operations: {known}");
    assert!(
        report.faults.len() >= 5,
        "too few faults: {:?}",
        report.faults
    );
    for (kind, recovery) in &report.recovery {
        let t = recovery.unwrap_or_else(|| panic!("seed {seed}: no bid answered after {kind:?}"));
        assert!(
            t < PROGRESS_BOUND,
            "seed {seed}: {kind:?} kept bids waiting {t:?}"
        );
    }
}

/// The runs go one after the other: two clusters at once would starve a 2-core machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_runs() {
    for seed in [1, 2] {
        fault_run(seed).await;
    }
}
