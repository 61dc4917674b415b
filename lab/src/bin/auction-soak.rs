//! `auction-soak`: many fault runs in a row against real clusters, each checked for
//! linearizability (auctions closing neither early nor late included), lost bids, diverging
//! members, panics and exactly-once, with a summary of the faults, of how long the cluster took
//! to answer bids again after each kind, and of how late auctions were seen to close.
//!
//! The nodes run on a wall clock that the nemesis steps (Debian's `faketime` package must be
//! installed); `--private-tmp` gives each node a /tmp of its own (needs root).
//!
//! `--etcd` runs the cluster in multi-host mode instead: each node on a loopback address of its
//! own and a three-member etcd deciding who leads, inside a private network namespace that the
//! process enters first thing (root, `ip`, `nft` and `etcd` needed), with partitions and etcd
//! faults besides kills and pauses.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use auction_lab::nemesis::{Config, FaultKind, Mode, Summary, run};
use clap::Parser;

/// Runs seeded fault runs and reports. A failing run's transcript is written to --log-dir, and
/// `--seed SEED --runs 1` replays it.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// How many runs.
    #[arg(long, default_value_t = 200)]
    runs: u64,
    /// Seconds of faults per run.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// The first run's seed; run k uses seed + k.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Concurrent clients per run.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// The nodes' --timeout-ms.
    #[arg(long, default_value_t = 500)]
    timeout_ms: u64,
    /// The nodes' --heartbeat-ms.
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// Where transcripts of failing runs go.
    #[arg(long, default_value = "target/soak")]
    log_dir: PathBuf,
    /// Give each node a /tmp of its own, empty at its start, as systemd's PrivateTmp=yes does
    /// (needs root and util-linux's unshare).
    #[arg(long)]
    private_tmp: bool,
    /// The kinds of fault to inject, separated by commas: kill-leader, kill-replica,
    /// pause-leader-short, pause-leader-long, pause-replica-short, pause-replica-long,
    /// kill-during-failover, pause-during-failover, kill-client ("process": these nine);
    /// step-clock-forward, step-clock-back, step-clock-during-failover, delete-artefacts,
    /// delete-artefacts-during-failover ("host": these five, single-host only); isolate-leader,
    /// isolate-replica, cut-from-etcd, kill-etcd-leader, etcd-unreachable, restart-etcd
    /// ("network": these six, --etcd only). Default: process and host; with --etcd, process
    /// but the two during-failover ones, and network.
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Multi-host mode: each node on its own loopback address, a three-member etcd deciding who
    /// leads, partitions between them; in a private network namespace (needs root, iproute2,
    /// nftables and etcd-server).
    #[arg(long)]
    etcd: bool,
    /// Where each run keeps the file with the nodes' wall clock offset; the nodes must see it,
    /// so it must be outside /tmp with --private-tmp.
    #[arg(long, default_value = "target/soak/scratch")]
    scratch_dir: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Before any thread exists, or the runtime's threads would stay in the host's namespace.
    if args.etcd
        && let Err(e) = auction_lab::netns::enter_private()
    {
        eprintln!("error: --etcd: cannot enter a private network namespace: {e}");
        return ExitCode::from(2);
    }
    match tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(soak(args)))
    {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn soak(args: Args) -> anyhow::Result<bool> {
    let node_bin = auction::cluster::sibling_binary("auction-node")?;
    if args.clients == 0 || args.secs == 0 {
        bail!("--clients and --secs must be at least 1");
    }
    let (mode, default) = if args.etcd {
        (Mode::MultiHost, &FaultKind::MULTI_HOST[..])
    } else {
        (Mode::SingleHost, &FaultKind::SINGLE_HOST[..])
    };
    let mut kinds = Vec::new();
    for key in &args.faults {
        match key.as_str() {
            "process" => kinds.extend(
                FaultKind::ALL
                    .into_iter()
                    .filter(|k| !FaultKind::HOST.contains(k) && !FaultKind::NETWORK.contains(k)),
            ),
            "host" => kinds.extend(FaultKind::HOST),
            "network" => kinds.extend(FaultKind::NETWORK),
            _ => kinds.push(
                FaultKind::from_key(key)
                    .with_context(|| format!("--faults: no fault is called {key:?}"))?,
            ),
        }
    }
    for kind in &kinds {
        if args.etcd && FaultKind::HOST.contains(kind) {
            bail!(
                "--faults: {} is a single-host fault: drop it from --faults, or drop --etcd",
                kind.key()
            );
        }
        if !args.etcd && FaultKind::NETWORK.contains(kind) {
            bail!("--faults: {} needs --etcd (multi-host mode)", kind.key());
        }
    }
    if kinds.is_empty() {
        kinds = default.to_vec();
    }
    let mut summary = Summary::default();
    for k in 0..args.runs {
        let seed = args.seed + k;
        let mut cfg = Config::new(&node_bin, seed);
        cfg.faults_for = Duration::from_secs(args.secs);
        cfg.clients = args.clients;
        cfg.timeout_ms = args.timeout_ms;
        cfg.heartbeat_ms = args.heartbeat_ms;
        cfg.private_tmp = args.private_tmp;
        cfg.kinds.clone_from(&kinds);
        cfg.mode = mode;
        cfg.scratch_dir.clone_from(&args.scratch_dir);
        let report = run(&cfg).await;
        let max_lag = report.close_lags.iter().max().copied().unwrap_or_default();
        println!(
            "run {}/{} seed {seed}: {} ops ({} unknown), {} faults, {} auctions (longest close \
             lag {} ms), checked in {:.2}s: {}",
            k + 1,
            args.runs,
            report.ops,
            report.unknown,
            report.faults.len(),
            report.auctions.len(),
            max_lag.as_millis(),
            report.check_time.as_secs_f64(),
            if report.passed() { "ok" } else { "FAILED" }
        );
        if !report.passed() {
            std::fs::create_dir_all(&args.log_dir).context("creating --log-dir")?;
            let path = args.log_dir.join(format!("seed-{seed}.log"));
            let text = format!(
                "{}\n\nauctions and faults:\n{}\n\n{}\n",
                report.problems.join("\n"),
                report.timeline(),
                report.transcript.join("\n")
            );
            std::fs::write(&path, text).context("writing the transcript")?;
            println!("{}", report.problems.join("\n"));
            println!("transcript: {}", path.display());
        }
        summary.add(&report);
    }
    println!();
    print!("{summary}");
    Ok(summary.failed.is_empty())
}
