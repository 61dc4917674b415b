//! A short fault run in multi-host mode inside the normal test suite: three nodes, each on a
//! loopback address of its own, a three-member etcd deciding who leads, eight clients, and at
//! random moments kills and pauses of nodes, partitions (the leader cut off from its members, a
//! replica cut off from all, a node or every node cut off from etcd), etcd's leader killed and
//! etcd restarted. A failing run names its seed; `auction-soak --etcd --seed SEED --runs 1`
//! replays it.
//!
//! A `harness = false` binary (as `netlab.rs`): `main` enters a private network namespace
//! before any thread exists. Needs root, `ip` (iproute2), `nft` (nftables) and `etcd`
//! (etcd-server); without them the test fails and says what is missing, it never skips.

use std::process::ExitCode;
use std::time::Duration;

use auction_lab::nemesis::{Config, FaultKind, Mode, run};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let tests = vec![Trial::test(
        "multi_host_fault_run_passes_the_checker",
        || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
            runtime.block_on(multi_host_fault_run(3))
        },
    )];
    auction_lab::netns::run_tests("nemesis_etcd", &args, tests)
}

async fn multi_host_fault_run(seed: u64) -> Result<(), Failed> {
    let mut cfg = Config::new(&*auction_lab::harness::NODE, seed);
    cfg.mode = Mode::MultiHost;
    cfg.kinds = FaultKind::MULTI_HOST.to_vec();
    cfg.faults_for = Duration::from_secs(15);
    cfg.timeout_ms = auction_lab::harness::TIMEOUT_MS;
    cfg.scratch_dir = env!("CARGO_TARGET_TMPDIR").into();
    let report = run(&cfg).await;
    let known = report.ops - report.unknown;
    eprintln!(
        "seed {seed}: {} ops ({} unknown), faults {:?}, {} auctions, recovery {:?}",
        report.ops,
        report.unknown,
        report
            .faults
            .iter()
            .map(|f| f.kind.key())
            .collect::<Vec<_>>(),
        report.auctions.len(),
        report.recovery
    );
    if !report.passed() {
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("nemesis-etcd-seed-{seed}.log"));
        let _ = std::fs::write(&path, report.transcript.join("\n"));
        return Err(format!(
            "seed {seed} failed (replay with auction-soak --etcd --seed {seed}; transcript in \
             {}):\n{}\n\nauctions and faults:\n{}",
            path.display(),
            report.problems.join("\n"),
            report.timeline()
        )
        .into());
    }
    if known < 300 {
        return Err(format!("too few answered operations: {known}").into());
    }
    let network = report
        .faults
        .iter()
        .filter(|f| FaultKind::NETWORK.contains(&f.kind))
        .count();
    if report.faults.len() < 5 || network == 0 {
        return Err(format!("too few faults, or no network fault: {:?}", report.faults).into());
    }
    if report.auctions.len() < 2 || report.unclosed != 0 {
        return Err(format!(
            "too few auctions, or some never seen closed: {:?}, {} unclosed",
            report.auctions, report.unclosed
        )
        .into());
    }
    Ok(())
}
