//! `auction-demo`: a local cluster of real `auction-node` processes and an interactive
//! `auction-client`, in one terminal, where killing or pausing the leader is a command.
//! `--scenario seed` instead plays the seed's 12-step scenario and prints the transcript.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use auction::auth::AuthDir;
use auction::cluster::{LocalCluster, Proc, Spec, Transcript, leader_of, sibling_binary};
use clap::{Parser, ValueEnum};
use rustix::process::Signal;
use tokio::process::Command;

/// Starts a local cluster of real node processes and a client, in one terminal.
///
/// Type an amount to bid, `result` for the result, or a demo command: `kill [ID]` (kill -9 the
/// leader, or node ID), `stop [ID]` / `cont [ID]` (SIGSTOP / SIGCONT), `restart ID`, `nodes`,
/// `status`, `help`, `quit`.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// How many nodes to start.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// The client port of the cluster.
    #[arg(long, default_value_t = 5000)]
    client_port: u16,
    /// The replica port of the cluster; node ids count up from it, as in the seed.
    #[arg(long, default_value_t = 5400)]
    leader_port: u16,
    /// Length of the first auction, in seconds.
    #[arg(long, default_value_t = 300)]
    duration: u64,
    /// The bidder name of the demo's client.
    #[arg(long, default_value = "you")]
    id: String,
    /// Nodes serve TLS with a self-signed certificate (created in the auth dir), and the client
    /// dials with it.
    #[arg(long)]
    tls: bool,
    /// Play a scripted scenario instead of reading commands.
    #[arg(long)]
    scenario: Option<Scenario>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Scenario {
    /// The seed's 12 steps: two servers, one client, the leader crashes, a lower bid fails, the
    /// new leader closes the auction, the client reads the winner.
    Seed,
}

/// How long to wait for a process to answer one line.
const ANSWER: Duration = Duration::from_secs(10);

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
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let spec = Spec {
        node_bin: sibling_binary("auction-node")?,
        client_port: args.client_port,
        leader_port: args.leader_port,
        node_args: vec!["--duration".into(), args.duration.to_string()],
        log_filter: "info,auction=debug".into(),
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
    };
    let client_bin = sibling_binary("auction-client")?;
    let transcript = Transcript::new(true);
    let mut cluster = LocalCluster::new(spec, transcript.clone());
    let result = match args.scenario {
        Some(Scenario::Seed) => seed(&mut cluster, &client_bin).await,
        None => interactive(&mut cluster, &client_bin, &args).await,
    };
    for id in cluster.running() {
        cluster.kill(id).await;
    }
    result
}

fn client_proc(
    cluster: &LocalCluster,
    client_bin: &PathBuf,
    id: &str,
    name: &str,
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(client_bin);
    cmd.arg("--id")
        .arg(id)
        .arg("--server")
        .arg(cluster.spec.client_addr().to_string())
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
        .wait_for(Duration::from_secs(10), |s| leader_of(s) == Some(first))
        .await
        .map_err(|e| anyhow!(e))?;
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
        .wait_for(Duration::from_secs(10), |s| leader_of(s) == Some(second))
        .await
        .map_err(|e| anyhow!(e))?;
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

const HELP: &str = "an amount bids; result shows the result; kill [ID] kill -9s the leader (or \
node ID); stop [ID] / cont [ID] pause and resume; restart ID starts a node again; nodes lists \
the processes; status asks the leader; quit ends the demo";

async fn interactive(
    cluster: &mut LocalCluster,
    client_bin: &PathBuf,
    args: &Args,
) -> anyhow::Result<()> {
    let t = cluster.transcript.clone();
    let ids: Vec<u16> = (0..args.nodes).map(|i| args.leader_port + i).collect();
    say(&t, &format!("starting nodes {ids:?}"));
    cluster.start(ids[0])?;
    cluster
        .wait_for(Duration::from_secs(10), |s| leader_of(s) == Some(ids[0]))
        .await
        .map_err(|e| anyhow!(e))?;
    for &id in &ids[1..] {
        cluster.start(id)?;
        wait_member(cluster, id).await?;
    }
    let mut client = client_proc(cluster, client_bin, &args.id, "client")?;
    say(&t, HELP);
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The leader as last seen, for `kill` while the leader cannot answer.
    let mut leader = Some(ids[0]);
    loop {
        let line = tokio::select! {
            line = lines.recv() => match line {
                Some(line) => line,
                None => break,
            },
            // Ctrl-C ends the demo and, with it, every process it started.
            _ = tokio::signal::ctrl_c() => break,
        };
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or("").to_ascii_lowercase();
        let target: Option<u16> = match words.next().map(str::parse).transpose() {
            Ok(t) => t,
            Err(_) => {
                say(&t, "node ids are numbers");
                continue;
            }
        };
        if matches!(command.as_str(), "kill" | "stop" | "cont" | "status")
            && let Ok(s) = cluster.status(Duration::from_millis(300)).await
        {
            leader = leader_of(&s);
        }
        match command.as_str() {
            "quit" | "exit" => break,
            "help" => say(&t, HELP),
            "nodes" => say(&t, &format!("running: {:?}", cluster.running())),
            "status" => match cluster.status(Duration::from_secs(2)).await {
                Ok(s) => say(&t, &auction::console::describe_status(&s)),
                Err(e) => say(&t, &format!("no answer: {e}")),
            },
            "kill" | "stop" | "cont" => {
                let Some(id) = target.or(leader) else {
                    say(&t, "no leader known; name a node");
                    continue;
                };
                if command == "kill" {
                    say(&t, &format!("kill -9 node {id}"));
                    cluster.kill(id).await;
                } else {
                    let signal = if command == "stop" {
                        Signal::STOP
                    } else {
                        Signal::CONT
                    };
                    say(&t, &format!("{command} node {id}"));
                    if let Err(e) = cluster.signal(id, signal) {
                        say(&t, &format!("cannot signal node {id}: {e}"));
                    }
                }
            }
            "restart" => match target {
                Some(id) if cluster.running().contains(&id) => {
                    say(&t, &format!("node {id} is running"));
                }
                Some(id) => {
                    say(&t, &format!("starting node {id}"));
                    cluster.start(id)?;
                }
                None => say(&t, "restart which node? restart ID"),
            },
            _ => {
                t.push("client", &format!("> {line}"));
                client.send_line(&line).await?;
            }
        }
    }
    client.close_stdin();
    Ok(())
}
