//! `auction-demo` as a newcomer meets it (issue #14): its nodes die with it, it refuses ports
//! another program holds, `close` and `start` work in it, and it tells the truth about its nodes.
//! Each test drives the real binary through its stdin, on ports that were free.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use auction::cluster::{Proc, Transcript, free_port};
use auction_lab::harness::{DEMO, WAIT, wait_for_lines};
use rustix::process::Signal;
use tokio::process::Command;

/// A running demo, its output and its ports. Its secrets are its own, not the user's.
struct Demo {
    proc: Proc,
    out: Transcript,
    client_port: u16,
    leader_port: u16,
    auth_dir: PathBuf,
}

impl Demo {
    /// Starts a demo and waits until its client is connected.
    async fn start() -> Self {
        let (client_port, leader_port) = two_free_ports();
        let auth_dir = std::env::temp_dir().join(format!("auction-demo-{client_port}"));
        let out = Transcript::new(false);
        let proc = Proc::spawn(
            demo_command(client_port, leader_port, &auth_dir),
            "demo",
            &out,
        )
        .expect("start the demo");
        let demo = Self {
            proc,
            out,
            client_port,
            leader_port,
            auth_dir,
        };
        demo.wait_for("[client] connected").await;
        demo
    }

    /// Types one line into the demo.
    async fn send(&mut self, line: &str) {
        self.proc.send_line(line).await.expect("the demo reads");
    }

    /// Waits until a line of the demo's output contains `text`, and returns it.
    async fn wait_for(&self, text: &str) -> String {
        wait_for_lines(&self.out, 1, |l| l.contains(text))
            .await
            .remove(0)
    }

    /// How many lines of output contain `text` so far.
    fn count(&self, text: &str) -> usize {
        self.out.lines().iter().filter(|l| l.contains(text)).count()
    }

    /// The pid of the demo's node `id`, from its command line.
    fn node_pid(&self, id: u16) -> u32 {
        let wanted = format!("--port\0{id}\0");
        children(self.proc.pid())
            .into_iter()
            .map(|(pid, _)| pid)
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&wanted))
            })
            .unwrap_or_else(|| panic!("the demo runs no node {id}"))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- demo output ----");
            for line in self.out.lines() {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.auth_dir);
    }
}

fn two_free_ports() -> (u16, u16) {
    let client_port = free_port().unwrap();
    let mut leader_port = free_port().unwrap();
    while leader_port == client_port {
        leader_port = free_port().unwrap();
    }
    (client_port, leader_port)
}

fn demo_command(client_port: u16, leader_port: u16, auth_dir: &PathBuf) -> Command {
    let mut cmd = Command::new(&*DEMO);
    cmd.args(["--client-port", &client_port.to_string()])
        .args(["--leader-port", &leader_port.to_string()])
        .env("AUCTION_AUTH_DIR", auth_dir);
    cmd
}

/// The pids of `parent`'s children, with their program names.
fn children(parent: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name: state, ppid, ...
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        if after.split_whitespace().nth(1) == Some(&parent.to_string()) {
            let name =
                stat[stat.find('(').map_or(0, |i| i + 1)..stat.rfind(')').unwrap_or(0)].to_string();
            found.push((pid, name));
        }
    }
    found
}

/// Whether `pid` is alive: it exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        !matches!(after.split_whitespace().next(), Some("Z" | "X"))
    })
}

/// SIGKILLs whichever of `pids` are still alive when dropped, so a failing test leaves no node
/// behind.
struct Leftovers(Vec<u32>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if alive(pid) {
                let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
    }
}

/// Ends the demo with `signal` and checks that every process it started ends too, and that its
/// ports are free again.
async fn the_demos_processes_die_with_it(signal: Signal) {
    let demo = Demo::start().await;
    let started = children(demo.proc.pid());
    let leftovers = Leftovers(started.iter().map(|(pid, _)| *pid).collect());
    let nodes = started.iter().filter(|(_, n)| n == "auction-node").count();
    assert_eq!(nodes, 3, "the demo's children: {started:?}");
    assert!(
        started.iter().any(|(_, n)| n == "auction-client"),
        "{started:?}"
    );
    demo.proc.signal(signal).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left: Vec<_> = started.iter().filter(|(pid, _)| alive(*pid)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still running after the demo got {signal:?}: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for port in [demo.client_port, demo.leader_port] {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        assert_eq!(auction::process::listener(addr).unwrap(), None, "{addr}");
    }
    drop(leftovers);
}

#[tokio::test]
async fn the_demos_nodes_die_with_it_when_its_terminal_closes() {
    the_demos_processes_die_with_it(Signal::HUP).await;
}

#[tokio::test]
async fn the_demos_nodes_die_with_it_when_it_is_killed() {
    the_demos_processes_die_with_it(Signal::KILL).await;
}

/// Runs a demo that must refuse to start; returns its stderr.
async fn refused_demo(client_port: u16, leader_port: u16) -> String {
    let auth_dir = std::env::temp_dir().join(format!("auction-demo-{client_port}"));
    let mut cmd = demo_command(client_port, leader_port, &auth_dir);
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("the demo refused at once")
        .unwrap();
    let _ = std::fs::remove_dir_all(auth_dir);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains("[node"), "no node started: {stdout}");
    stderr.into_owned()
}

#[tokio::test]
async fn the_demo_refuses_ports_another_program_holds_and_names_it() {
    let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let held_port = held.local_addr().unwrap().port();
    let me = format!("pid {} (", std::process::id());
    let (free, _) = two_free_ports();
    let stderr = refused_demo(held_port, free).await;
    assert!(
        stderr.contains(&me) && stderr.contains(&format!("port {held_port} (--client-port)")),
        "{stderr}"
    );
    assert!(stderr.contains("--leader-port PORT"), "{stderr}");
    let stderr = refused_demo(free, held_port).await;
    assert!(
        stderr.contains(&me) && stderr.contains(&format!("port {held_port} (--leader-port)")),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_second_demo_on_the_same_ports_refuses_to_start() {
    let mut first = Demo::start().await;
    let leader = first.node_pid(first.leader_port);
    let stderr = refused_demo(first.client_port, first.leader_port).await;
    assert!(
        stderr.contains(&format!("is held by pid {leader} (auction-node)")),
        "{stderr}"
    );
    // The first demo still has its leader.
    first.send("status").await;
    first
        .wait_for(&format!("leader {}, next in line", first.leader_port))
        .await;
}

#[tokio::test]
async fn close_and_start_in_the_demo_end_and_open_an_auction() {
    let mut demo = Demo::start().await;
    demo.send("100").await;
    demo.wait_for("[client] bid: success").await;
    demo.send("close").await;
    demo.wait_for("[demo] close: ok; auction 1 is closed: you won with 100")
        .await;
    demo.send("result").await;
    demo.wait_for("[client] result: auction 1 is closed: you won with 100")
        .await;
    demo.send("start 5").await;
    demo.wait_for("[demo] start: ok; auction 2 is open").await;
    // The nodes' log, as shown by default, tells the auction's story at a glance.
    for event in [
        "auction opened auction=1",
        "bid accepted auction=1 bidder=you amount=100",
        "auction closed auction=1 winner=you amount=100",
        "auction opened auction=2 duration=5s",
    ] {
        let line = demo.wait_for(event).await;
        let time = line.split_once("] ").map(|(_, rest)| rest);
        let time = time
            .and_then(|rest| rest.split_once("] "))
            .map(|(_, t)| &t[..12]);
        assert!(
            time.is_some_and(|t| t.as_bytes()[8] == b'.' && t[..8].split(':').count() == 3),
            "a short timestamp: {line}"
        );
    }
    assert_eq!(demo.count("DEBUG replicating"), 0, "no debug noise");
    // Auction 2 ends by itself after 5 s.
    let deadline = tokio::time::Instant::now() + WAIT;
    while demo.count("auction 2 is closed without bids") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "auction 2 did not end"
        );
        demo.send("result").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Another close is refused, and says why.
    demo.send("close").await;
    demo.wait_for("[demo] close: refused: auction 2 is closed")
        .await;
}

#[tokio::test]
async fn kill_stop_and_cont_of_a_node_the_demo_does_not_run_say_so() {
    let mut demo = Demo::start().await;
    let stranger = demo.leader_port + 9;
    for command in ["kill", "stop", "cont"] {
        demo.send(&format!("{command} {stranger}")).await;
    }
    let refused = format!("the demo runs no node {stranger}");
    wait_for_lines(&demo.out, 3, |l| l.contains(&refused)).await;
    assert_eq!(demo.count(&format!("kill -9 node {stranger}")), 0);
    // A node that it ran but that is gone is not killed twice.
    let last = demo.leader_port + 2;
    let pid = demo.node_pid(last);
    demo.send(&format!("kill {last}")).await;
    demo.wait_for(&format!("kill -9 node {last} (pid {pid})"))
        .await;
    demo.send(&format!("kill {last}")).await;
    demo.wait_for(&format!(
        "node {last} is not running: pid {pid} was killed by the demo"
    ))
    .await;
    demo.send("cont").await;
    demo.wait_for("no node is stopped").await;
    demo.send("kill x").await;
    demo.wait_for("node ids are numbers").await;
    demo.send("bogus").await;
    demo.wait_for("unknown command \"bogus\"").await;
}

#[tokio::test]
async fn a_stopped_leader_is_reported_fenced_and_cont_says_it_is_gone() {
    let mut demo = Demo::start().await;
    let leader = demo.leader_port;
    let pid = demo.node_pid(leader);
    demo.send("stop").await;
    demo.wait_for(&format!("stopped node {leader} (pid {pid})"))
        .await;
    // The next in line takes over and fences it: the demo says so by itself.
    demo.wait_for(&format!(
        "node {leader} (pid {pid}) was fenced (killed by SIGKILL"
    ))
    .await;
    demo.send("cont").await;
    demo.wait_for(&format!("node {leader} (pid {pid}) is gone"))
        .await;
    demo.send("status").await;
    demo.wait_for(&format!("leader {}", leader + 1)).await;
}
