//! `auction-bench`: loads a running cluster with concurrent clients and reports throughput and
//! latency percentiles.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use auction_bench::{
    External, ExternalFailoverSpec, FailoverSpec, FaultMode, LoadSpec, MemorySpec, MultiHost,
    Progress, Target, Workload, failover, failover_external, memory, prepare, run, serve_echo,
};
use clap::{Parser, ValueEnum};

/// The load clients share the machine with the nodes they measure; mimalloc leaves more of it to
/// the nodes than the system allocator does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Loads the cluster at --server: a closed loop of --clients clients, or an open loop at --rate
/// requests per second, for --secs seconds. Progress goes to stderr every second; the result
/// is a table, or one JSON object with --json.
///
/// With --failover, it measures leader failovers under load instead: the time from each fault
/// to the first acknowledged bid that a client sent after it, --faults times. Of the auction (a
/// 3-node cluster it starts itself: --failover kill|stop), or of a Redis or etcd cluster that
/// already runs on this host, whose leader it kills -9:
///
///   --failover kill --target redis --sentinels HOST:PORT,...  (the primary the Sentinels name)
///
///   --failover kill --target etcd --server HOST:PORT,...  (every member; kills the Raft leader)
///
/// A Redis client asks the Sentinels for the primary, and asks again after any error; a Redis
/// bid there waits for one replica (WAIT 1). An etcd client moves to the next member after any
/// error. The bench does not restart a killed Redis or etcd server: once a bid sent after the
/// fault has been acknowledged, it prints `restart HOST:PORT` (the killed server's address) on
/// stdout, and waits up to 60 s for the cluster to be whole again before the next fault. For
/// Redis: every Sentinel knows the others, names the same primary, and sees it and every
/// replica up, and every replica is online on the primary. For etcd: every member names the same
/// leader. bench/compare.sh restarts each server with its original command line.
///
/// With --multi-host, the auction runs in multi-host mode instead: one local etcd and three
/// nodes, each on its own loopback address (127.0.0.31 to .33), started by the bench, for a
/// load run (without --server) or a failover run. --failover partition is multi-host only: it
/// cuts the leader off from the other nodes, etcd and the clients with nftables, inside a
/// network namespace of the bench's own (it needs root; the host's network is never touched).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The cluster's client address [default: 127.0.0.1:5000]. For the auction in multi-host
    /// mode: every node's client address, comma-separated. With --failover and --target etcd:
    /// every member's client address, comma-separated.
    #[arg(long, value_name = "HOST:PORT")]
    server: Option<String>,
    /// With --failover and --target redis: the Sentinels' addresses, comma-separated.
    #[arg(long, value_name = "HOST:PORT,...")]
    sentinels: Option<String>,
    /// With --sentinels: the name the Sentinels monitor the primary under.
    #[arg(long, default_value = "auction")]
    master: String,
    /// Concurrent clients, each with its own session.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Total requests per second (an open loop); without it, a closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// What each client does.
    #[arg(long, value_enum, default_value_t = WorkloadArg::Contended)]
    workload: WorkloadArg,
    /// What to load: the auction; the echo service (the transport's floor) with one unary call
    /// per request or one stream per client; or Redis or etcd for comparison.
    #[arg(long, value_enum, default_value_t = TargetArg::Auction)]
    target: TargetArg,
    /// Instead of loading anything, serve the echo service on this address until Ctrl-C.
    #[arg(long, value_name = "HOST:PORT")]
    serve_echo: Option<String>,
    /// Instead of loading --server: start a 3-node cluster (auction-node beside this binary),
    /// load it, and take its leader down --faults times (kill -9, or SIGSTOP). With --target
    /// redis or etcd: kill -9 the leader of that running cluster instead (see above).
    #[arg(long, value_enum)]
    failover: Option<FaultArg>,
    /// The auction in multi-host mode, started by the bench: one local etcd, three nodes on
    /// addresses of their own. Without --server, it is what a load run loads; with --failover,
    /// what loses its leader.
    #[arg(long)]
    multi_host: bool,
    /// Instead of loading --server: start a 3-node cluster, send --bids bids from --sessions
    /// distinct sessions and bidders, and report the leader's resident memory as they go in.
    #[arg(long)]
    memory: bool,
    /// Bids in all with --memory.
    #[arg(long, default_value_t = 1_000_000)]
    bids: u64,
    /// Distinct sessions (and bidders) with --memory.
    #[arg(long, default_value_t = 10_000)]
    sessions: u64,
    /// With --failover of the auction: how long a client waits for one attempt at a bid before
    /// it gives it up and starts a new session at the next address, in ms (a client of a leader
    /// that a partition cut off gets no error, only silence). Redis and etcd clients give up
    /// after 500 ms.
    #[arg(long, default_value_t = 500)]
    attempt_ms: u64,
    /// How many leader failures with --failover (a few suffice for Redis and etcd, whose
    /// clusters take seconds to fail over and to heal).
    #[arg(long, default_value_t = 20)]
    faults: usize,
    /// The nodes' --timeout-ms with --failover of the auction, and with --multi-host.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// The nodes' --heartbeat-ms with --failover of the auction, and with --multi-host.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// How long a request may be retried before it counts as an error, in ms.
    #[arg(long, default_value_t = 5000)]
    retry_ms: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FaultArg {
    /// kill -9 of the leader.
    Kill,
    /// SIGSTOP of the leader.
    Stop,
    /// The leader cut off from the other nodes, etcd and the clients (multi-host only; root).
    Partition,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TargetArg {
    Auction,
    EchoUnary,
    EchoStream,
    /// A Redis primary at --server, replicated to two replicas (bid: Lua script + WAIT 2).
    Redis,
    /// An etcd member at --server (bid: a Txn that puts only if the stored value is lower).
    Etcd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WorkloadArg {
    /// Every request bids on the one auction.
    Contended,
    /// 80% bids, 20% result reads.
    Mix,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // A network namespace of the bench's own, before any thread exists (only the calling thread
    // moves): the partitions' packet filters are written there, never in the host's.
    if args.failover == Some(FaultArg::Partition)
        && let Err(e) = auction_lab::netns::enter_private()
    {
        eprintln!("error: --failover partition needs a network namespace of its own: {e}");
        return ExitCode::FAILURE;
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(bench(args)))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `HOST:PORT,HOST:PORT,...` as addresses.
fn addresses(list: &str) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    list.split(',')
        .map(|a| auction::client::resolve(a.trim()).map_err(Into::into))
        .collect()
}

/// Asks whoever runs the bench to restart the killed server at `addr`. A closed stdout is
/// ignored: the bench then fails when the cluster does not heal.
fn print_restart(addr: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "restart {addr}").and_then(|()| out.flush());
}

/// The `auction-node` binary beside this one.
fn node_bin() -> anyhow::Result<std::path::PathBuf> {
    Ok(auction::cluster::sibling_binary("auction-node")?)
}

async fn bench(args: Args) -> anyhow::Result<()> {
    if let Some(addr) = &args.serve_echo {
        let listener =
            tokio::net::TcpListener::bind(auction::client::resolve(addr).context("--serve-echo")?)
                .await
                .with_context(|| format!("binding {addr}"))?;
        eprintln!("echo service on {}", listener.local_addr()?);
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        return serve_echo(listener, ctrl_c).await.map_err(Into::into);
    }
    if args.clients == 0 || args.secs == 0 {
        bail!("--clients and --secs must be at least 1");
    }
    if args.memory && (args.multi_host || args.failover.is_some()) {
        bail!("--memory starts a single-host cluster of its own: no --multi-host or --failover");
    }
    if args.memory {
        if args.sessions == 0 || args.bids == 0 {
            bail!("--sessions and --bids must be at least 1");
        }
        let spec = MemorySpec {
            node_bin: node_bin()?,
            sessions: args.sessions,
            bids: args.bids,
            streams: args.clients as u64,
        };
        let report = memory(&spec).await?;
        return show(&report, args.json);
    }
    if args.sentinels.is_some() && !matches!(args.target, TargetArg::Redis) {
        bail!("--sentinels goes with --target redis");
    }
    let multi_host = args.multi_host || args.failover == Some(FaultArg::Partition);
    if multi_host && !matches!(args.target, TargetArg::Auction) {
        bail!("--multi-host and --failover partition go with --target auction");
    }
    if args.multi_host && args.server.is_some() {
        bail!(
            "--multi-host starts its own cluster: give it no --server (to load a multi-host \
             cluster that runs already, give --server every node's client address instead)"
        );
    }
    if args.attempt_ms == 0 {
        bail!("--attempt-ms must be at least 1");
    }
    if let Some(mode) = args.failover {
        let report = match args.target {
            TargetArg::Auction => {
                let spec = FailoverSpec {
                    node_bin: node_bin()?,
                    clients: args.clients,
                    faults: args.faults,
                    mode: match mode {
                        FaultArg::Kill => FaultMode::Kill,
                        FaultArg::Stop => FaultMode::Stop,
                        FaultArg::Partition => FaultMode::Partition,
                    },
                    multi_host,
                    attempt: Duration::from_millis(args.attempt_ms),
                    node_args: vec![
                        "--timeout-ms".into(),
                        args.timeout_ms.to_string(),
                        "--heartbeat-ms".into(),
                        args.heartbeat_ms.to_string(),
                    ],
                };
                failover(&spec).await?
            }
            TargetArg::Redis | TargetArg::Etcd => {
                if mode != FaultArg::Kill {
                    bail!("--failover stop works only with --target auction");
                }
                let system = if matches!(args.target, TargetArg::Redis) {
                    let sentinels = args
                        .sentinels
                        .as_deref()
                        .context("--failover with --target redis needs --sentinels")?;
                    External::Redis {
                        sentinels: addresses(sentinels).context("--sentinels")?,
                        master: args.master.clone(),
                    }
                } else {
                    let servers = args
                        .server
                        .as_deref()
                        .context("--failover with --target etcd needs --server (every member)")?;
                    External::Etcd {
                        endpoints: addresses(servers).context("--server")?,
                    }
                };
                let spec = ExternalFailoverSpec {
                    system,
                    clients: args.clients,
                    faults: args.faults,
                    restart: print_restart,
                };
                failover_external(&spec).await?
            }
            TargetArg::EchoUnary | TargetArg::EchoStream => {
                bail!("--failover works with --target auction, redis or etcd")
            }
        };
        return show(&report, args.json);
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number");
    }
    // In multi-host mode, a cluster of the bench's own, kept until the run ends.
    let cluster = if args.multi_host {
        let node_args = [
            "--timeout-ms".into(),
            args.timeout_ms.to_string(),
            "--heartbeat-ms".into(),
            args.heartbeat_ms.to_string(),
        ];
        let cluster = MultiHost::start(&node_bin()?, &node_args, false, Duration::from_secs(60))
            .await
            .context("starting the multi-host cluster")?;
        Some(cluster)
    } else {
        None
    };
    let servers = match (&cluster, args.server.as_deref()) {
        (Some(cluster), _) => cluster.client_addrs(),
        (None, Some(list)) if matches!(args.target, TargetArg::Auction) => {
            addresses(list).context("--server")?
        }
        (None, server) => {
            vec![auction::client::resolve(server.unwrap_or("127.0.0.1:5000")).context("--server")?]
        }
    };
    let spec = LoadSpec {
        servers,
        clients: args.clients,
        duration: Duration::from_secs(args.secs),
        rate: args.rate,
        target: match args.target {
            TargetArg::Auction => Target::Auction,
            TargetArg::EchoUnary => Target::EchoUnary,
            TargetArg::EchoStream => Target::EchoStream,
            TargetArg::Redis => Target::Redis,
            TargetArg::Etcd => Target::Etcd,
        },
        workload: match args.workload {
            WorkloadArg::Contended => Workload::Contended,
            WorkloadArg::Mix => Workload::Mix8020,
        },
        retry_budget: Duration::from_millis(args.retry_ms),
    };
    prepare(&spec)
        .await
        .with_context(|| format!("preparing {:?}", spec.target))?;
    let progress = Arc::new(Progress::default());
    let shown = progress.clone();
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let (mut last, mut second) = (0, 0);
        loop {
            tick.tick().await;
            second += 1;
            let done = shown.bids.load(Ordering::Relaxed) + shown.reads.load(Ordering::Relaxed);
            eprintln!(
                "{second:>4} s  {:>9} requests/s  {} errors",
                done - last,
                shown.errors.load(Ordering::Relaxed)
            );
            last = done;
        }
    });
    let report = run(&spec, progress).await;
    ticker.abort();
    let report = report?;
    show(&report, args.json)
}

/// Prints a final report: one JSON object with `--json`, else its table.
fn show(report: &(impl serde::Serialize + std::fmt::Display), json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
