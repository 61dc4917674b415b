//! `auction-node`: one node of the replicated auction, leader or replica.

use std::io::{BufRead, IsTerminal};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use auction::auth::AuthDir;
use auction::authority::SingleHost;
use auction::console;
use auction::etcd::access::{EtcdAccess, EtcdArgs};
use auction::etcd::authority::EtcdAuthority;
use auction::etcd::registry::{NodeRecord, Registry};
use auction::leader::Timing;
use auction::limits::Limits;
use auction::node::{self, Config, Role, Shutdown};
use auction::server::Directory;
use auction::types::{AuctionLength, NodeId};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// Every request allocates a little on its way through gRPC, and mimalloc does that more
/// cheaply than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One node of the replicated auction. The first node becomes the leader; nodes started later
/// join as replicas and take over if the leader fails. Type `help` for the terminal commands.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// This node's id: 5400 for the first node, then 5401, 5402, ... It names the node; it is
    /// not a port it listens on. `--port` is the same option, under the name the original
    /// hand-in's commands use.
    #[arg(long, alias = "port")]
    id: u16,
    /// Port on which the leader serves clients. With --etcd: every node serves clients there,
    /// on its --host, and one that does not lead names the leader to the client.
    #[arg(long, default_value_t = 5000)]
    client_port: u16,
    /// Port on which the leader serves replicas; holding it is being the leader.
    #[arg(long, default_value_t = 5400)]
    leader_port: u16,
    /// Address every node binds and dials; all nodes of a cluster must use the same one. With
    /// --etcd: this node's own address, where it binds both ports and from which it dials.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Multi-host mode: found a new cluster in place of the one etcd names, whose members are
    /// all dead (their state is lost with them). Refused while its leader still answers.
    #[arg(long, requires = "etcd")]
    new_cluster: bool,
    /// Length in seconds of the auction that a new cluster opens, and of `start` without SECS.
    #[arg(long, default_value_t = 120)]
    duration: u64,
    /// Milliseconds between the leader's heartbeats.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Milliseconds without an answer after which the leader fences a replica, or replicas
    /// fence the leader.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Microseconds the leader keeps polling its sockets instead of sleeping after each batch of
    /// at most 4 requests, from the 4th such batch in a row on, so that it is awake when the
    /// answers and the next request arrive. Trades CPU for latency at light load (up to a core
    /// while requests trickle in); 0 turns it off.
    #[arg(long, default_value_t = auction::spin::DEFAULT_SPIN_US)]
    spin_us: u64,
    /// Milliseconds each place in the line of succession waits before taking over.
    #[arg(long, default_value_t = 20)]
    stagger_ms: u64,
    /// The directory with the cluster secret and the operator token, created with random ones
    /// if missing; only its owner may read it. Default: ~/.auction. The secret may come from
    /// $AUCTION_CLUSTER_SECRET instead.
    #[arg(long, env = "AUCTION_AUTH_DIR")]
    auth_dir: Option<PathBuf>,
    /// Serve both ports over TLS, and dial the leader over TLS, with the certificate in
    /// AUTH_DIR/tls.pem (a self-signed one for localhost is created if missing). All nodes of a
    /// cluster must agree.
    #[arg(long)]
    tls: bool,
    /// Client connections the leader keeps open at once; more are closed when accepted.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Requests per second one client session may send; more are refused, unapplied.
    #[arg(long, default_value_t = Limits::default().session_rate)]
    session_rate: u32,
}

fn config(args: &Args) -> anyhow::Result<Config> {
    if args.client_port == args.leader_port {
        bail!("--client-port and --leader-port must differ");
    }
    if args.client_port == 0 || args.leader_port == 0 {
        bail!("--client-port and --leader-port must be fixed port numbers, not 0");
    }
    let spin = Duration::from_micros(args.spin_us);
    if spin > auction::spin::MAX_SPIN {
        bail!(
            "--spin-us must be at most {}",
            auction::spin::MAX_SPIN.as_micros()
        );
    }
    if args.max_connections == 0 || args.session_rate == 0 {
        bail!("--max-connections and --session-rate must be above 0");
    }
    if args.heartbeat_ms == 0 || args.timeout_ms < 2 * args.heartbeat_ms {
        bail!("--timeout-ms must be at least twice --heartbeat-ms, and --heartbeat-ms above 0");
    }
    let duration = AuctionLength::from_secs(args.duration).context("--duration")?;
    // Last, so options that cannot work never create secrets.
    let auth = AuthDir::new(match &args.auth_dir {
        Some(dir) => dir.clone(),
        None => AuthDir::default_path()?,
    });
    Ok(Config {
        secret: auth.cluster_secret()?,
        tls: if args.tls { Some(auth.tls()?) } else { None },
        operator: auth.operator_token()?.credential(),
        id: NodeId(args.id),
        host: args.host,
        client_port: args.client_port,
        leader_port: args.leader_port,
        duration,
        limits: Limits {
            max_connections: args.max_connections,
            session_rate: args.session_rate,
            ..Limits::default()
        },
        timing: Timing {
            heartbeat: Duration::from_millis(args.heartbeat_ms),
            timeout: Duration::from_millis(args.timeout_ms),
            spin,
        },
        stagger: Duration::from_millis(args.stagger_ms),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    // etcd's options first, so options that cannot work never create secrets.
    let started = args
        .etcd
        .access()
        .context("--etcd")
        .and_then(|etcd| start(&args, config(&args)?, etcd));
    match started {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: &Args, cfg: Config, etcd: Option<EtcdAccess>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    tracing::info!(
        id = args.id,
        pid = std::process::id(),
        "auction-node starting"
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(cfg, etcd, args.etcd.cluster.clone(), args.new_cluster))
}

async fn run(
    cfg: Config,
    etcd: Option<EtcdAccess>,
    cluster: String,
    new_cluster: bool,
) -> anyhow::Result<()> {
    let role = Arc::new(Mutex::new(Role::Starting));
    let (stop, shutdown) = Shutdown::new();
    // The terminal: a plain thread, because a blocked read of stdin must not hold up exit.
    let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel();
    // Every line is read as bytes, so one that is not UTF-8 (Latin-1 text, half a character
    // left by a backspace) is reported and skipped rather than ending the terminal.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut bytes = Vec::new();
        loop {
            bytes.clear();
            match stdin.read_until(b'\n', &mut bytes) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8(std::mem::take(&mut bytes)).map_err(|_| ());
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // How long a node asked to stop may take to leave: a leader answers what is in flight and
    // hands over, a member tells the leader it leaves; each waits at most the timeout.
    let patience = cfg.timing.timeout + Duration::from_secs(1);
    let mut node = if let Some(etcd) = etcd {
        // Several hosts: etcd decides who leads and who is a member.
        let registry = Registry::connect(&etcd, &cluster, Some(cfg.host)).context("--etcd")?;
        let me = NodeRecord {
            id: cfg.id.0,
            replica: cfg.leader_addr(),
            client: cfg.client_addr(),
        };
        // A member takes over from a later leader it could not follow only once that leader,
        // working, would have removed it.
        let patience = auction_core::follower::silence_limit(
            &cfg.timing,
            auction_core::engine::Reads::Barrier,
        );
        let mut authority = EtcdAuthority::new(registry, me).with_patience(patience);
        if new_cluster {
            authority = authority.replacing_a_dead_cluster();
        }
        let authority = Arc::new(authority);
        authority
            .register()
            .await
            .context("registering this node in etcd")?;
        let directory = Directory::new(authority.clone(), cfg.id, cfg.client_addr());
        terminal(lines, role.clone(), cfg.duration, directory);
        tokio::spawn(node::run(cfg, authority, role, shutdown))
    } else {
        // One host: leadership is the replica port, membership a member mark, fencing a pidfd.
        let authority = Arc::new(SingleHost {
            leader_addr: cfg.leader_addr(),
        });
        let directory = Directory::new(authority.clone(), cfg.id, cfg.client_addr());
        terminal(lines, role.clone(), cfg.duration, directory);
        tokio::spawn(node::run(cfg, authority, role, shutdown))
    };
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("listening for Ctrl-C")?,
        _ = terminate.recv() => {}
        r = &mut node => return r.context("node task failed")?.map_err(Into::into),
    }
    tracing::info!("shutting down (Ctrl-C again to stop at once)");
    let _ = stop.send(true);
    tokio::select! {
        r = &mut node => r.context("node task failed")?.map_err(Into::into),
        () = tokio::time::sleep(patience) => {
            tracing::warn!("did not leave within {patience:?}; stopping");
            Ok(())
        }
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Answers the terminal's commands, one per line of `lines`, about the node's `role`.
fn terminal(
    mut lines: tokio::sync::mpsc::UnboundedReceiver<Result<String, ()>>,
    role: Arc<Mutex<Role>>,
    duration: AuctionLength,
    directory: Directory,
) {
    tokio::spawn(async move {
        while let Some(line) = lines.recv().await {
            let mut out = std::io::stdout();
            let Ok(line) = line else {
                use std::io::Write;
                let _ = writeln!(out, "ignored a line that is not UTF-8 text");
                continue;
            };
            let result = match console::parse(line.trim_end_matches(['\n', '\r'])) {
                Ok(Some(command)) => {
                    console::execute(command, &role, duration, &directory, &mut out).await
                }
                Ok(None) => Ok(()),
                Err(message) => {
                    use std::io::Write;
                    writeln!(out, "{message}")
                }
            };
            if result.is_err() {
                break;
            }
        }
    });
}
