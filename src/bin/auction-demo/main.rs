//! `auction-demo`: a local cluster of real `auction-node` processes and an interactive
//! `auction-client`, in one terminal, where killing or pausing the leader is a command.
//! `--scenario seed` instead plays the original hand-in's 12-step scenario and prints the transcript.
//! `--etcd` runs the cluster in multi-host mode, with an etcd of its own ([`multi_host`]).

mod multi_host;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use auction::auth::AuthDir;
use auction::client::{Client, DEFAULT_RETRY_BUDGET};
use auction::cluster::{LocalCluster, Proc, Spec, Transcript, leader_of, sibling_binary};
use auction::console;
use auction::display::{describe_auction, describe_status};
use auction::types::{AuctionLength, BidderId};
use clap::{Parser, ValueEnum};
use multi_host::{DemoEtcd, Network};
use rustix::process::Signal;
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

/// Starts a local cluster of real node processes and a client, in one terminal.
///
/// Type an amount to bid, `result` for the result (the winner once the auction is closed),
/// `close` to end the auction now, `start [SECS]` to open the next one, or a demo command:
/// `kill [ID]` (kill -9 the leader, or node ID), `stop [ID]` / `cont [ID]` (SIGSTOP the leader /
/// SIGCONT the stopped node), `restart ID`, `nodes`, `status`, `help`, `quit`; with `--etcd`, also
/// `partition [ID] [etcd]` and `heal`.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// How many nodes to start.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// The client port of the cluster.
    #[arg(long, default_value_t = 5000)]
    client_port: u16,
    /// The replica port of the cluster; node ids count up from it, as in the original hand-in
    /// (with --etcd, node ids are 1, 2, 3, …, and each node has the port at its own address).
    #[arg(long, default_value_t = 5400)]
    leader_port: u16,
    /// Length of the first auction, and of `start` without SECS, in seconds.
    #[arg(long, default_value_t = 300)]
    duration: u64,
    /// The bidder name of the demo's client.
    #[arg(long, default_value = "you")]
    id: String,
    /// Nodes serve TLS with a self-signed certificate (created in the auth dir), and the client
    /// dials with it.
    #[arg(long)]
    tls: bool,
    /// The nodes' log filter, in RUST_LOG syntax. Default: INFO and the auction's events
    /// (auction opened, bid accepted, auction closed); with --scenario seed, also every
    /// replicated version (info,auction=debug).
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// Play a scripted scenario instead of reading commands.
    #[arg(long, conflicts_with = "etcd")]
    scenario: Option<Scenario>,
    /// Multi-host mode on this machine: the demo starts an etcd (Debian's etcd-server) on
    /// 127.0.0.10:2379 and nodes 1, 2, 3 on 127.0.0.11, .12 and .13, each with its own ports;
    /// etcd decides who leads. Adds `partition [ID] [etcd]` and `heal` (which need root).
    #[arg(long)]
    etcd: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Scenario {
    /// The original hand-in's 12 steps: two servers, one client, the leader crashes, a lower
    /// bid fails, the new leader closes the auction, the client reads the winner.
    Seed,
}

/// How long to wait for a process to answer one line.
const ANSWER: Duration = Duration::from_secs(10);

/// The nodes' log in the interactive demo: INFO, with every auction event (a bid accepted is
/// logged at DEBUG, so that a node run by hand does not log every bid).
const NODE_LOG: &str = "info,auction::events=debug";
/// The nodes' log in the hand-in's scenario, which log.txt records: also every replicated version.
const SEED_LOG: &str = "info,auction=debug";

fn main() -> ExitCode {
    let args = Args::parse();
    let run = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(args)));
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let ids = check_args(&args)?;
    // A missing etcd is said first: it is what to install, whatever else is wrong.
    let etcd_program = args.etcd.then(multi_host::etcd_program).transpose()?;
    check_ports(&args, &ids)?;
    let client_bin = sibling_binary("auction-client")?;
    // A prompt only when a person types at a terminal and reads the same one; otherwise each
    // command is echoed, so the output reads as a transcript.
    let terminal = args.scenario.is_none()
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal();
    let screen = Arc::new(Screen::new(terminal));
    let shown = screen.clone();
    let transcript = Transcript::showing(move |name, line| shown.show(name, line));
    let etcd = match &etcd_program {
        Some(program) => {
            say(
                &transcript,
                &format!("starting etcd at {}", multi_host::etcd_url()),
            );
            Some(DemoEtcd::start(program, &transcript).await?)
        }
        None => None,
    };
    let mut node_args = vec!["--duration".into(), args.duration.to_string()];
    let mut hosts = BTreeMap::new();
    if etcd.is_some() {
        node_args.extend([
            "--etcd".into(),
            multi_host::etcd_url(),
            "--cluster".into(),
            multi_host::CLUSTER.into(),
        ]);
        hosts = ids
            .iter()
            .filter_map(|&id| Some((id, multi_host::node_ip(id)?)))
            .collect();
    }
    let spec = Spec {
        node_bin: sibling_binary("auction-node")?,
        client_port: args.client_port,
        leader_port: args.leader_port,
        node_args,
        log_filter: args.log.clone().unwrap_or_else(|| {
            match args.scenario {
                Some(Scenario::Seed) => SEED_LOG,
                None => NODE_LOG,
            }
            .into()
        }),
        // The user's own secrets, so a client started by hand in another terminal finds the
        // operator token and its bidder tokens there too.
        auth_dir: match std::env::var_os("AUCTION_AUTH_DIR") {
            Some(dir) => dir.into(),
            None => AuthDir::default_path()?,
        },
        owns_auth_dir: false,
        tls: args.tls,
        node_env: Vec::new(),
        private_tmp: false,
        hosts,
    };
    let mut cluster = LocalCluster::new(spec, transcript.clone());
    let result = match args.scenario {
        Some(Scenario::Seed) => seed(&mut cluster, &client_bin).await,
        None => interactive(&mut cluster, &client_bin, &args, &ids, screen, etcd).await,
    };
    for id in cluster.running() {
        cluster.kill(id).await;
    }
    result
}

/// The ids of the nodes to start, once the options are known to work: what the nodes or the
/// client would refuse is refused here, before anything starts.
fn check_args(args: &Args) -> anyhow::Result<Vec<u16>> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if args.client_port == 0 || args.leader_port == 0 {
        bail!("--client-port and --leader-port must be fixed port numbers, not 0");
    }
    if args.client_port == args.leader_port {
        bail!("--client-port and --leader-port must differ");
    }
    AuctionLength::from_secs(args.duration).context("--duration")?;
    BidderId::new(&args.id).context("--id")?;
    if args.etcd {
        // Node N on 127.0.0.(10 + N).
        return (1..=args.nodes)
            .map(|id| multi_host::node_ip(id).map(|_| id))
            .collect::<Option<Vec<u16>>>()
            .ok_or_else(|| {
                anyhow!("with --etcd, node N runs on 127.0.0.(10 + N): --nodes 244 at most")
            });
    }
    (0..args.nodes)
        .map(|i| args.leader_port.checked_add(i))
        .collect::<Option<Vec<u16>>>()
        .ok_or_else(|| {
            anyhow!(
                "node ids count up from --leader-port: --nodes {} from {} go past 65535",
                args.nodes,
                args.leader_port
            )
        })
}

/// Refuses ports that another process holds: the demo's nodes would be refused, and its
/// commands would reach that process (another demo's cluster, say) instead.
fn check_ports(args: &Args, ids: &[u16]) -> anyhow::Result<()> {
    let mut wanted: Vec<(SocketAddr, String)> = Vec::new();
    let ips: Vec<IpAddr> = if args.etcd {
        let etcd = IpAddr::V4(multi_host::ETCD_IP);
        wanted.push((
            SocketAddr::new(etcd, multi_host::ETCD_CLIENT_PORT),
            "etcd's client port".into(),
        ));
        wanted.push((
            SocketAddr::new(etcd, multi_host::ETCD_PEER_PORT),
            "etcd's peer port".into(),
        ));
        ids.iter()
            .filter_map(|&id| multi_host::node_ip(id))
            .collect()
    } else {
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
    };
    for ip in ips {
        wanted.push((
            SocketAddr::new(ip, args.client_port),
            "--client-port".into(),
        ));
        wanted.push((
            SocketAddr::new(ip, args.leader_port),
            "--leader-port".into(),
        ));
    }
    let held: Vec<String> = wanted
        .into_iter()
        .filter_map(|(addr, what)| {
            // On one host every port is 127.0.0.1's; with --etcd each has its address.
            let at = if args.etcd {
                format!(" at {}", addr.ip())
            } else {
                String::new()
            };
            port_problem(addr)
                .map(|problem| format!("  port {}{at} ({what}) {problem}", addr.port()))
        })
        .collect();
    if held.is_empty() {
        return Ok(());
    }
    bail!(
        "the demo's ports are not free:\n{}\nend that program, or start the demo on other ports \
         with --client-port PORT --leader-port PORT",
        held.join("\n")
    )
}

/// Why the nodes could not bind `nodes`, if they could not: who holds it.
fn port_problem(nodes: SocketAddr) -> Option<String> {
    let port = nodes.port();
    match std::net::TcpListener::bind(nodes) {
        Ok(_) => return None,
        Err(e) if e.kind() != std::io::ErrorKind::AddrInUse => {
            return Some(format!("cannot be bound: {e}"));
        }
        Err(_) => {}
    }
    // The holder listens on the nodes' address, or on every address.
    let holder = [
        nodes,
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
    ]
    .into_iter()
    .find_map(|addr| auction::process::listener(addr).ok().flatten());
    Some(match holder {
        Some(l) if l.is_node => format!("is held by {l}, a node of another cluster"),
        Some(l) => format!("is held by {l}"),
        None => "is held by a process of another user".into(),
    })
}

/// The terminal: every line of every process, and the prompt below them when a person types.
struct Screen {
    /// Whether to show a prompt (a person types at this terminal).
    prompt: bool,
    /// Held while writing, so lines of different processes never mix.
    state: Mutex<ScreenState>,
}

#[derive(Default)]
struct ScreenState {
    /// The demo reads commands.
    reading: bool,
    /// The prompt is the last thing on the screen.
    prompted: bool,
    /// The demo is ending: what its nodes say as they go is not shown.
    done: bool,
}

const PROMPT: &str = "demo> ";

impl Screen {
    fn new(prompt: bool) -> Self {
        Self {
            prompt,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ScreenState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shows one line of process `name`, above the prompt. A closed terminal is no error: the
    /// demo ends anyway when its input does.
    fn show(&self, name: &str, line: &str) {
        let mut state = self.state();
        if state.done {
            return;
        }
        let mut out = std::io::stdout().lock();
        let line = short_time(line);
        let _ = if self.prompt && state.reading {
            // Over the prompt, then the prompt again below.
            state.prompted = true;
            write!(out, "\r\x1b[K[{name}] {line}\n{PROMPT}")
        } else {
            writeln!(out, "[{name}] {line}")
        };
        let _ = out.flush();
    }

    /// Shows the prompt, unless it is already the last thing on the screen.
    fn prompt(&self) {
        let mut state = self.state();
        state.reading = true;
        if self.prompt && !state.prompted {
            state.prompted = true;
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "{PROMPT}");
            let _ = out.flush();
        }
    }

    /// The person pressed Enter: the prompt has scrolled up.
    fn typed(&self) {
        self.state().prompted = false;
    }

    /// The demo ends: no more prompt, and no more lines.
    fn done(&self) {
        let mut state = self.state();
        if state.prompted {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[K");
            let _ = out.flush();
        }
        state.done = true;
    }
}

/// A node's log line with the date and the microseconds cut from its timestamp:
/// `2026-11-24T18:41:34.276556Z  INFO x` reads `18:41:34.276  INFO x` (UTC). Any other line is
/// left as it is.
fn short_time(line: &str) -> Cow<'_, str> {
    let short = || {
        let (stamp, rest) = line.split_once(' ')?;
        let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
        let (hms, fraction) = time.split_once('.')?;
        let digits =
            |s: &str, seps: &[u8]| s.bytes().all(|b| b.is_ascii_digit() || seps.contains(&b));
        let stamp = date.len() == 10
            && digits(date, b"-")
            && hms.len() == 8
            && digits(hms, b":")
            && fraction.len() >= 3
            && digits(fraction, b"");
        stamp.then(|| format!("{hms}.{} {rest}", &fraction[..3]))
    };
    short().map_or(Cow::Borrowed(line), Cow::Owned)
}

fn client_proc(
    cluster: &LocalCluster,
    client_bin: &PathBuf,
    id: &str,
    name: &str,
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(client_bin);
    // Every node's address in multi-host mode: only the leader serves clients.
    let servers: Vec<String> = cluster
        .spec
        .client_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    cmd.arg("--id")
        .arg(id)
        .arg("--server")
        .arg(servers.join(","))
        .args(cluster.spec.tls.then_some("--tls"))
        .env("AUCTION_AUTH_DIR", &cluster.spec.auth_dir);
    Proc::spawn(cmd, name, &cluster.transcript).context("starting auction-client")
}

/// Prints a line of the demo itself.
fn say(t: &Transcript, line: &str) {
    t.push("demo", line);
}

async fn wait_member(cluster: &mut LocalCluster, id: u16) -> anyhow::Result<()> {
    cluster
        .wait_for(Duration::from_secs(10), |s| {
            auction::cluster::is_member(s, id)
        })
        .await
        .map(|_| ())
        .map_err(|e| anyhow!("node {id} did not join: {e}"))
}

/// Types `line` into the client and waits for its answer.
async fn ask(t: &Transcript, client: &mut Proc, line: &str) -> anyhow::Result<String> {
    t.push(client.name(), &format!("> {line}"));
    client.send_line(line).await?;
    client
        .next_line(ANSWER)
        .await
        .ok_or_else(|| anyhow!("the client did not answer {line:?}"))
}

async fn seed(cluster: &mut LocalCluster, client_bin: &PathBuf) -> anyhow::Result<()> {
    let t = cluster.transcript.clone();
    let (first, second) = (cluster.spec.leader_port, cluster.spec.leader_port + 1);
    say(
        &t,
        &format!("1. start server {first} (leader), server {second} (replica) and client 1"),
    );
    cluster.start(first)?;
    cluster
        .wait_for(Duration::from_secs(10), |s| leader_of(s) == first)
        .await?;
    cluster.start(second)?;
    wait_member(cluster, second).await?;
    let mut client = client_proc(cluster, client_bin, "1", "client 1")?;
    // The client's greeting.
    client.next_line(ANSWER).await;
    say(
        &t,
        &format!("2. server {first} started auction 1 when it founded the cluster"),
    );
    say(
        &t,
        "3-4. client 1 bids 100; the leader replicates it to the replica, then answers",
    );
    let answer = ask(&t, &mut client, "100").await?;
    expect(&answer, "bid: success")?;
    say(&t, "5-6. client 1 asks for the result");
    expect(
        &ask(&t, &mut client, "result").await?,
        "highest bid 100 by 1",
    )?;
    say(&t, &format!("7. server {first} crashes (kill -9)"));
    cluster.kill(first).await;
    cluster
        .wait_for(Duration::from_secs(10), |s| leader_of(s) == second)
        .await?;
    say(
        &t,
        "8-9. client 1 bids a lower amount; the new leader refuses it",
    );
    expect(&ask(&t, &mut client, "50").await?, "bid: fail")?;
    say(
        &t,
        &format!("10. the new leader (server {second}) closes the auction from its terminal"),
    );
    let node = cluster
        .node(second)
        .ok_or_else(|| anyhow!("node {second} is gone"))?;
    t.push(node.name(), "> close");
    node.send_line("close").await?;
    let closed = node
        .next_line(ANSWER)
        .await
        .ok_or_else(|| anyhow!("node {second} did not answer close"))?;
    expect(&closed, "ok")?;
    say(&t, "11-12. client 1 asks for the result: the winner");
    expect(&ask(&t, &mut client, "result").await?, "1 won with 100")?;
    client.close_stdin();
    client.wait(ANSWER).await;
    say(&t, "done");
    Ok(())
}

fn expect(answer: &str, wanted: &str) -> anyhow::Result<()> {
    if answer.contains(wanted) {
        Ok(())
    } else {
        bail!("expected {wanted:?}, got {answer:?}")
    }
}

const HELP: &str = "\
commands:
  AMOUNT        bid that amount, a whole number (for example 100)
  result        the highest bid; the winner once the auction is closed
  close         end the open auction now
  start [SECS]  open the next auction, for SECS seconds (default: --duration)
  status        who leads, who is next in line, the auction
  nodes         the demo's node processes: pids, running, stopped or gone
  kill [ID]     kill -9 the leader, or node ID
  stop [ID]     pause the leader, or node ID (SIGSTOP); the others fence it
  cont [ID]     resume the stopped node, or node ID (SIGCONT)
  restart ID    start node ID again
  quit          end the demo and its nodes (also Ctrl-C or Ctrl-D)";

/// More commands with --etcd.
const HELP_ETCD: &str = "  \
  partition [ID]
                cut the leader, or node ID, off from everyone: the other nodes, etcd and
                this host's clients (needs root)
  partition [ID] etcd
                cut it off from etcd only
  heal          mend every cut; a node the cluster went on without is started again";

async fn interactive(
    cluster: &mut LocalCluster,
    client_bin: &PathBuf,
    args: &Args,
    ids: &[u16],
    screen: Arc<Screen>,
    etcd: Option<DemoEtcd>,
) -> anyhow::Result<()> {
    let t = cluster.transcript.clone();
    let names: Vec<String> = ids.iter().map(u16::to_string).collect();
    say(&t, &format!("starting nodes {}", names.join(", ")));
    cluster.start(ids[0])?;
    wait_started(cluster, ids[0], "lead", |s, pid| s.leader.pid == pid).await?;
    for &id in &ids[1..] {
        cluster.start(id)?;
        wait_started(cluster, id, "join", |s, pid| {
            s.members.iter().any(|m| m.id.0 == id && m.pid == pid)
        })
        .await?;
    }
    let mut client = client_proc(cluster, client_bin, &args.id, "client")?;
    // The client's greeting, before the banner.
    if client.next_line(ANSWER).await.is_none() {
        bail!("the client did not start; its output above says why");
    }
    let auction = cluster.status(DEFAULT_RETRY_BUDGET).await.map_or_else(
        |_| "the auction is open".into(),
        |s| describe_auction(&s.auction),
    );
    let others = match &names[1..] {
        [] => String::new(),
        rest => format!(", {}", rest.join(", ")),
    };
    let mut banner = vec![format!("nodes {} (leader){others} are up", names[0])];
    if let Some(etcd) = &etcd {
        let addrs: Vec<String> = cluster
            .spec
            .hosts
            .values()
            .map(ToString::to_string)
            .collect();
        let servers: Vec<String> = cluster
            .spec
            .client_addrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        banner.extend([
            format!(
                "multi-host mode: the nodes run at {}; etcd at {} decides who leads \
                 (cluster {:?}; its data in {}, removed at the end)",
                addrs.join(", "),
                multi_host::etcd_url(),
                multi_host::CLUSTER,
                etcd.dir().display()
            ),
            format!(
                "from another terminal: auction-client --server {}",
                servers.join(",")
            ),
        ]);
    }
    banner.extend([
        auction,
        format!("to bid as {:?}, type an amount, for example 100", args.id),
        "close ends the auction now; result then shows the winner".into(),
        "start [SECS] opens the next auction; kill, stop and cont break the leader".into(),
    ]);
    if etcd.is_some() {
        banner.push(
            "partition cuts the leader off from everyone (partition ID: node ID), heal mends it"
                .into(),
        );
        if !rustix::process::geteuid().is_root() {
            banner.push(
                "partition and heal need root (nftables); everything else works without".into(),
            );
        }
    }
    banner.push("help lists every command; quit ends the demo".into());
    for line in banner {
        say(&t, &line);
    }
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let cluster_hosts = cluster.spec.hosts.clone();
    let mut demo = Demo {
        operator: cluster.client(DEFAULT_RETRY_BUDGET),
        cluster,
        t,
        echo: !screen.prompt,
        client,
        ids: ids.iter().copied().collect(),
        killed: HashSet::new(),
        reported: HashSet::new(),
        stopped: Vec::new(),
        leader: Some(ids[0]),
        multi: etcd.map(|etcd| MultiHost {
            network: Network::new(cluster_hosts),
            etcd,
            rejoining: BTreeMap::new(),
        }),
    };
    // Each of these ends the demo and, with it, every process it started. Until now they
    // ended it at once, and its nodes with it (see `Proc::spawn`).
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    // Node deaths are noticed within this.
    let mut watch = tokio::time::interval(Duration::from_millis(100));
    let result = loop {
        screen.prompt();
        let line = tokio::select! {
            line = lines.recv() => match line {
                Some(line) => line,
                None => break Ok(()),
            },
            _ = interrupt.recv() => break Ok(()),
            _ = terminate.recv() => break Ok(()),
            _ = hangup.recv() => break Ok(()),
            _ = watch.tick() => match demo.watch() {
                Ok(()) => continue,
                Err(e) => break Err(e),
            },
        };
        screen.typed();
        let go_on = match demo.watch() {
            Ok(()) => demo.execute(&line).await,
            Err(e) => Err(e),
        };
        match go_on {
            Ok(true) => {}
            Ok(false) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    demo.client.close_stdin();
    let running: Vec<String> = demo.cluster.running().iter().map(u16::to_string).collect();
    if !running.is_empty() {
        demo.say(&format!("quitting: ending nodes {}", running.join(", ")));
    }
    screen.done();
    result
}

/// Waits until the leader's status, given node `id`'s pid, satisfies `started`. Fails at once
/// if the node exits, and after ten seconds.
async fn wait_started(
    cluster: &mut LocalCluster,
    id: u16,
    what: &str,
    started: impl Fn(&auction::view::Status, u32) -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut client = cluster.client(Duration::from_millis(500));
    loop {
        let node = cluster
            .node(id)
            .ok_or_else(|| anyhow!("node {id} was not started"))?;
        if let Some(status) = node.exit_status() {
            bail!("node {id} {}; its log above says why", ended(status));
        }
        let pid = node.pid();
        if client.status().await.is_ok_and(|s| started(&s, pid)) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("node {id} did not {what} within 10 s; its log above says why");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a process ended, for people.
fn ended(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(0), _) => "exited".into(),
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(9)) => "was killed by SIGKILL".into(),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended ({status})"),
    }
}

/// The interactive demo once its nodes and client run.
struct Demo<'a> {
    cluster: &'a mut LocalCluster,
    t: Transcript,
    /// Whether to echo each command (no person types at a terminal that shows it).
    echo: bool,
    client: Proc,
    /// For `start` and `close`, with the operator token.
    operator: Client,
    /// Every node id the demo started.
    ids: BTreeSet<u16>,
    /// Node pids the demo killed itself.
    killed: HashSet<u32>,
    /// Node pids whose end has been told.
    reported: HashSet<u32>,
    /// Nodes the demo stopped, as (id, pid), for `cont`.
    stopped: Vec<(u16, u32)>,
    /// The leader as last seen, for `kill` while the leader cannot answer.
    leader: Option<u16>,
    /// With --etcd: etcd and the network.
    multi: Option<MultiHost>,
}

/// What the demo adds with --etcd.
struct MultiHost {
    /// Killed when the demo ends (dropped).
    etcd: DemoEtcd,
    /// The cuts; its table is removed when the demo ends (dropped).
    network: Network,
    /// Nodes that were cut off until `heal`, with when that grace ends: one that exits by then
    /// (the cluster went on without it, and it learns so from etcd) is started again.
    rejoining: BTreeMap<u16, Instant>,
}

/// How long after `heal` a node that was cut off is started again when it exits.
const REJOIN_GRACE: Duration = Duration::from_secs(30);

impl Demo<'_> {
    fn say(&self, line: &str) {
        say(&self.t, line);
    }

    /// Tells of every node that ended since the last look.
    ///
    /// # Errors
    /// The client has ended: the demo cannot go on.
    fn watch(&mut self) -> anyhow::Result<()> {
        let mut news = Vec::new();
        for &id in &self.ids {
            let Some(node) = self.cluster.node(id) else {
                continue;
            };
            let pid = node.pid();
            if self.reported.contains(&pid) {
                continue;
            }
            if let Some(status) = node.exit_status() {
                self.reported.insert(pid);
                news.push(format!(
                    "node {id} (pid {pid}) {}",
                    self.end_of(pid, status)
                ));
            }
        }
        for line in news {
            self.say(&line);
        }
        self.rejoin();
        if let Some(multi) = &mut self.multi
            && let Some(status) = multi.etcd.exit_status()
        {
            bail!("etcd {}; its log above says why", ended(status));
        }
        if let Some(status) = self.client.exit_status() {
            bail!("the client {}; its output above says why", ended(status));
        }
        Ok(())
    }

    /// How node process `pid` ended, for people: a SIGKILL that the demo did not send is the
    /// cluster's fencing.
    fn end_of(&self, pid: u32, status: ExitStatus) -> String {
        if self.killed.contains(&pid) {
            "was killed by the demo (kill -9)".into()
        } else if status.signal() == Some(9) {
            "was fenced (killed by SIGKILL, not by the demo)".into()
        } else {
            ended(status)
        }
    }

    /// Runs one typed line. `Ok(false)` ends the demo.
    async fn execute(&mut self, line: &str) -> anyhow::Result<bool> {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else {
            return Ok(true);
        };
        let command = first.to_ascii_lowercase();
        // What looks like an amount goes to the client, which says what is wrong with it.
        let unsigned = first.strip_prefix(['+', '-']).unwrap_or(first);
        let for_client = command == "result" || unsigned.starts_with(|c: char| c.is_ascii_digit());
        if self.echo {
            let name = if for_client {
                self.client.name()
            } else {
                "demo"
            };
            self.t.push(name, &format!("> {line}"));
        }
        if for_client {
            let line = if command == "result" { "result" } else { line };
            self.client
                .send_line(line)
                .await
                .context("typing into the client")?;
            return Ok(true);
        }
        let rest: Vec<&str> = words.collect();
        match command.as_str() {
            "quit" | "exit" => return Ok(false),
            "help" | "?" if self.multi.is_some() => {
                self.say(&HELP.replace("  quit", &format!("{HELP_ETCD}\n  quit")));
            }
            "help" | "?" => self.say(HELP),
            "nodes" => self.nodes(),
            "status" => match self.cluster.status(Duration::from_secs(2)).await {
                Ok(s) => self.say(&describe_status(&s)),
                Err(e) => self.say(&format!("no answer: {e}")),
            },
            "close" | "start" => self.operate(line).await,
            "partition" => self.partition(&rest).await,
            "heal" => self.heal(),
            "kill" | "stop" | "cont" | "restart" => match target(&command, &rest) {
                Err(why) => self.say(&why),
                Ok(id) => match command.as_str() {
                    "kill" => self.kill(id).await,
                    "stop" => self.stop(id).await,
                    "cont" => self.cont(id),
                    _ => self.restart(id),
                },
            },
            _ => self.say(&format!("unknown command {first:?}; type help")),
        }
        Ok(true)
    }

    /// `start [SECS]` or `close`, sent as the operator.
    async fn operate(&mut self, line: &str) {
        let (name, outcome) = match console::parse(line) {
            Ok(Some(console::Command::Start(duration))) => {
                ("start", self.operator.start(duration).await)
            }
            Ok(Some(console::Command::Close)) => ("close", self.operator.close().await),
            Ok(_) => return self.say("type start [SECS] or close"),
            Err(why) => return self.say(&why),
        };
        match outcome {
            Ok(o) => match o.decision {
                Ok(()) => self.say(&format!("{name}: ok; {}", describe_auction(&o.auction))),
                Err(refusal) => self.say(&format!("{name}: refused: {refusal}")),
            },
            Err(e) => self.say(&format!("{name}: {e}")),
        }
    }

    /// The leader's id, asked now, or as last seen when it cannot answer.
    async fn leader(&mut self) -> Option<u16> {
        // Long enough to try every address past a cut-off node's (multi-host mode).
        let budget = if self.multi.is_some() {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(300)
        };
        if let Ok(s) = self.cluster.status(budget).await {
            self.leader = Some(leader_of(&s));
        }
        self.leader
    }

    /// Node `id`'s pid if it runs; otherwise says why not.
    fn running(&mut self, id: u16) -> Option<u32> {
        let ended = match self.cluster.node(id) {
            Some(node) if self.ids.contains(&id) => match node.exit_status() {
                None => return Some(node.pid()),
                Some(status) => (node.pid(), status),
            },
            _ => {
                let ids: Vec<String> = self.ids.iter().map(u16::to_string).collect();
                self.say(&format!(
                    "the demo runs no node {id}; its nodes are {}",
                    ids.join(", ")
                ));
                return None;
            }
        };
        let (pid, status) = ended;
        self.reported.insert(pid);
        self.say(&format!(
            "node {id} is not running: pid {pid} {}; restart {id} starts it again",
            self.end_of(pid, status)
        ));
        None
    }

    /// `id`, or the leader when none is named.
    async fn or_leader(&mut self, id: Option<u16>, command: &str) -> Option<u16> {
        if id.is_some() {
            return id;
        }
        let leader = self.leader().await;
        if leader.is_none() {
            self.say(&format!("no leader answers; name a node: {command} ID"));
        }
        leader
    }

    async fn kill(&mut self, id: Option<u16>) {
        let Some(id) = self.or_leader(id, "kill").await else {
            return;
        };
        let Some(pid) = self.running(id) else {
            return;
        };
        let leads = self.leads(id).await;
        self.say(&format!("kill -9 node {id} (pid {pid})"));
        self.killed.insert(pid);
        self.reported.insert(pid);
        self.not_rejoining(id);
        self.cluster.kill(id).await;
        if leads {
            self.watch_failover(id);
        }
    }

    /// Whether node `id` leads, as the leader says now or as last seen.
    async fn leads(&mut self, id: u16) -> bool {
        self.leader().await == Some(id)
    }

    /// Tells, in the background, which node leads once another than `old` does (within 30 s).
    fn watch_failover(&self, old: u16) {
        let t = self.t.clone();
        let spec = self.cluster.spec.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        tokio::spawn(async move {
            // A client of its own: it neither starts nor kills nodes.
            let cluster = LocalCluster::new(spec, t.clone());
            while tokio::time::Instant::now() < deadline {
                // A new session each time, which tries every address again (a cut-off node's
                // takes its connect timeout), rather than the one that answered last.
                if let Ok(s) = cluster.status(Duration::from_secs(2)).await
                    && leader_of(&s) != old
                {
                    let new = leader_of(&s);
                    return say(
                        &t,
                        &format!(
                            "failover: node {new} leads now, in place of node {old} (epoch {})",
                            s.epoch
                        ),
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            say(
                &t,
                &format!("no other node took over from node {old} within 30 s"),
            );
        });
    }

    /// `partition [ID] [etcd]`: cuts the leader, or node ID, off from everyone, or from etcd.
    async fn partition(&mut self, rest: &[&str]) {
        if self.multi.is_none() {
            return self.say("partition and heal need the multi-host demo: auction-demo --etcd");
        }
        let (id, etcd_only) = match rest {
            [] => (None, false),
            [word] if word.eq_ignore_ascii_case("etcd") => (None, true),
            [id] => (Some(*id), false),
            [id, word] if word.eq_ignore_ascii_case("etcd") => (Some(*id), true),
            _ => return self.say("type partition [ID] [etcd]; help says more"),
        };
        let id = match id.map(str::parse::<u16>) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => return self.say("node ids are numbers, like 2: partition 2"),
        };
        let Some(id) = self.or_leader(id, "partition").await else {
            return;
        };
        let leads = self.leads(id).await;
        let Some(multi) = &mut self.multi else {
            return;
        };
        let said = multi.network.partition(id, etcd_only);
        multi.rejoining.remove(&id);
        match said {
            Ok(line) => {
                self.say(&line);
                if leads && !etcd_only {
                    self.say(&format!(
                        "node {id} led: the others stop hearing it, and one takes over through etcd"
                    ));
                    self.watch_failover(id);
                }
            }
            Err(why) => self.say(&why),
        }
    }

    /// `heal`: mends every cut; the nodes that were cut off and then exit are started again.
    fn heal(&mut self) {
        let Some(multi) = &mut self.multi else {
            return self.say("partition and heal need the multi-host demo: auction-demo --etcd");
        };
        if !multi.network.is_cut() {
            return self.say("nothing is cut");
        }
        let cut = multi.network.heal();
        let until = Instant::now() + REJOIN_GRACE;
        for &id in &cut {
            multi.rejoining.insert(id, until);
        }
        let ids: Vec<String> = cut.iter().map(u16::to_string).collect();
        self.say(&format!(
            "healed: packets flow again (table inet {} removed); a node that was cut off ({}) \
             and that the cluster went on without exits once it hears etcd, and the demo starts \
             it again to rejoin",
            Network::table(),
            ids.join(", ")
        ));
        self.rejoin();
    }

    /// Starts again each node that was cut off until `heal` and has exited since.
    fn rejoin(&mut self) {
        let Some(multi) = &mut self.multi else {
            return;
        };
        let now = Instant::now();
        multi.rejoining.retain(|_, until| *until > now);
        let mut gone = Vec::new();
        for &id in multi.rejoining.keys() {
            if self.cluster.node(id).is_none_or(Proc::exited) {
                gone.push(id);
            }
        }
        for id in gone {
            if let Some(multi) = &mut self.multi {
                multi.rejoining.remove(&id);
            }
            self.say(&format!(
                "starting node {id} again, which was cut off: it rejoins the cluster"
            ));
            if let Err(e) = self.cluster.start(id) {
                self.say(&format!("cannot start node {id}: {e}"));
            }
        }
    }

    /// Node `id` is no longer started again automatically after a heal.
    fn not_rejoining(&mut self, id: u16) {
        if let Some(multi) = &mut self.multi {
            multi.rejoining.remove(&id);
        }
    }

    async fn stop(&mut self, id: Option<u16>) {
        let Some(id) = self.or_leader(id, "stop").await else {
            return;
        };
        let Some(pid) = self.running(id) else {
            return;
        };
        let leads = self.leads(id).await;
        self.not_rejoining(id);
        match self.cluster.signal(id, Signal::STOP) {
            Ok(()) => {
                self.say(&format!(
                    "stopped node {id} (pid {pid}); cont resumes it, unless it is fenced first"
                ));
                self.stopped.retain(|&(i, _)| i != id);
                self.stopped.push((id, pid));
                if leads {
                    self.watch_failover(id);
                }
            }
            Err(e) => self.say(&format!("cannot stop node {id}: {e}")),
        }
    }

    /// Resumes node `id`, or every node the demo stopped.
    fn cont(&mut self, id: Option<u16>) {
        let stopped = match id {
            Some(id) => match self.running(id) {
                Some(pid) => vec![(id, pid)],
                None => return,
            },
            None if self.stopped.is_empty() => {
                return self.say("no node is stopped; cont ID resumes node ID");
            }
            None => self.stopped.clone(),
        };
        for (id, pid) in stopped {
            self.stopped.retain(|&s| s != (id, pid));
            let node = self.cluster.node(id).filter(|n| n.pid() == pid);
            let Some(node) = node else {
                self.say(&format!("node {id} (pid {pid}) is gone"));
                continue;
            };
            if let Some(status) = node.exit_status() {
                self.reported.insert(pid);
                let line = format!(
                    "node {id} (pid {pid}) is gone: it {}; restart {id} starts it again",
                    self.end_of(pid, status)
                );
                self.say(&line);
                continue;
            }
            match self.cluster.signal(id, Signal::CONT) {
                Ok(()) => self.say(&format!("resumed node {id} (pid {pid})")),
                Err(e) => self.say(&format!("cannot resume node {id}: {e}")),
            }
        }
    }

    fn restart(&mut self, id: Option<u16>) {
        let Some(id) = id else {
            return self.say("restart which node? restart ID");
        };
        if self.multi.is_some() && !self.cluster.spec.hosts.contains_key(&id) {
            let ids: Vec<String> = self.cluster.spec.hosts.keys().map(u16::to_string).collect();
            return self.say(&format!(
                "the demo runs no node {id}; its nodes are {}",
                ids.join(", ")
            ));
        }
        self.not_rejoining(id);
        if let Some(node) = self.cluster.node(id)
            && !node.exited()
        {
            let pid = node.pid();
            return self.say(&format!("node {id} is running (pid {pid})"));
        }
        self.say(&format!("starting node {id}"));
        match self.cluster.start(id) {
            Ok(()) => {
                self.ids.insert(id);
            }
            Err(e) => self.say(&format!("cannot start node {id}: {e}")),
        }
    }

    /// Each node the demo started, with its pid and state.
    fn nodes(&mut self) {
        let mut lines = Vec::new();
        for &id in &self.ids {
            let Some(node) = self.cluster.node(id) else {
                continue;
            };
            let pid = node.pid();
            let state = match node.exit_status() {
                Some(status) => format!("gone: it {}", self.end_of(pid, status)),
                None if is_stopped(pid) => "stopped".into(),
                None => "running".into(),
            };
            let place = match (&self.multi, self.cluster.spec.hosts.get(&id)) {
                (Some(multi), Some(ip)) => {
                    format!(" at {ip}{}", multi.network.describe_cut(id))
                }
                _ => String::new(),
            };
            lines.push(format!("node {id}{place}: pid {pid}, {state}"));
        }
        for line in lines {
            self.say(&line);
        }
    }
}

/// The node id after `command`, if any.
fn target(command: &str, rest: &[&str]) -> Result<Option<u16>, String> {
    match rest {
        [] => Ok(None),
        [id] => id
            .parse()
            .map(Some)
            .map_err(|_| format!("node ids are numbers, like 5401: {command} 5401")),
        _ => Err(format!("{command} takes one node id at most; type help")),
    }
}

/// Whether process `pid` is stopped (by SIGSTOP), as `/proc/PID/stat` says.
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which may hold spaces and parentheses.
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| matches!(state, "T" | "t"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_timestamps_are_shortened_and_other_lines_kept() {
        assert_eq!(
            short_time("2026-11-24T18:41:34.276556Z  INFO leading epoch=1"),
            "18:41:34.276  INFO leading epoch=1"
        );
        assert_eq!(
            short_time("2026-11-24T18:41:34.276556Z DEBUG bid accepted"),
            "18:41:34.276 DEBUG bid accepted"
        );
        for line in ["ok: auction 1 is closed", "2026-11-24 x", "", "é T.Z x"] {
            assert_eq!(short_time(line), line);
        }
    }

    #[test]
    fn node_ids_parse_or_say_why() {
        assert_eq!(target("kill", &[]), Ok(None));
        assert_eq!(target("kill", &["5401"]), Ok(Some(5401)));
        assert!(target("kill", &["x"]).unwrap_err().contains("numbers"));
        assert!(target("kill", &["-1"]).is_err());
        assert!(target("kill", &["1", "2"]).unwrap_err().contains("at most"));
    }
}
