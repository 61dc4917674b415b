//! Short fault runs inside the normal test suite: a real three-node cluster, eight clients, a
//! few short auctions, and random kills and pauses of leaders, replicas and clients, steps of
//! the nodes' wall clock by up to a day, and deletions of the cluster's files in /tmp, during
//! failovers too. The second run gives each node a private /tmp. A failing run names its seed;
//! the same seed replays it: `cargo build --release && target/release/auction-soak --seed SEED
//! --runs 1` (add `--private-tmp` for the second run).
//!
//! The runs need Debian's `faketime` package (libfaketime), and root for the private /tmp
//! (util-linux's `unshare`). Without them they fail, saying so; they never skip.

use std::time::Duration;

use auction_lab::nemesis::{Config, run};

/// The longest any fault may keep bids from being answered, pauses included, before the run
/// counts as having lost progress. Generous: a loaded CI machine is slow.
const PROGRESS_BOUND: Duration = Duration::from_secs(10);

async fn fault_run(seed: u64, private_tmp: bool) {
    let mut cfg = Config::new(&*auction_lab::harness::NODE, seed);
    cfg.faults_for = Duration::from_secs(12);
    cfg.timeout_ms = auction_lab::harness::TIMEOUT_MS;
    cfg.private_tmp = private_tmp;
    // Outside /tmp, so that nodes with a private /tmp see the wall clock's offset file.
    cfg.scratch_dir = env!("CARGO_TARGET_TMPDIR").into();
    let report = run(&cfg).await;
    let known = report.ops - report.unknown;
    eprintln!(
        "seed {seed}{}: {} ops ({} unknown), {} faults, {} auctions (close lags {:?}, bound {:?}), \
         {} replays ({} after retries), checked in {:?}",
        if private_tmp { " (private /tmp)" } else { "" },
        report.ops,
        report.unknown,
        report.faults.len(),
        report.auctions.len(),
        report.close_lags,
        report.close_bound,
        report.replayed,
        report.replayed_after_retries,
        report.check_time
    );
    if !report.passed() {
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("nemesis-seed-{seed}.log"));
        let _ = std::fs::write(&path, report.transcript.join("\n"));
        panic!(
            "seed {seed} failed (replay with --seed {seed}; transcript in {}):\n{}\n\n\
             auctions and faults:\n{}",
            path.display(),
            report.problems.join("\n"),
            report.timeline()
        );
    }
    assert!(known > 500, "too few answered operations: {known}");
    assert!(
        report.faults.len() >= 5,
        "too few faults: {:?}",
        report.faults
    );
    assert!(
        report.auctions.len() >= 2 && report.unclosed == 0,
        "seed {seed}: too few auctions, or some never seen closed: {:?}, {} unclosed",
        report.auctions,
        report.unclosed
    );
    for (kind, recovery) in &report.recovery {
        let t = recovery.unwrap_or_else(|| panic!("seed {seed}: no bid answered after {kind:?}"));
        assert!(
            t < PROGRESS_BOUND,
            "seed {seed}: {kind:?} kept bids waiting {t:?}"
        );
    }
}

/// Held by each run: they go one after the other, since two clusters at once would starve a
/// 2-core machine, but each is a test of its own, so each reports its own failure.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_run_with_a_shared_tmp() {
    let _turn = ONE_AT_A_TIME.lock().await;
    fault_run(1, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_run_with_a_private_tmp_per_node() {
    let _turn = ONE_AT_A_TIME.lock().await;
    fault_run(2, true).await;
}
