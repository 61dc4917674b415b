//! `auction-demo --etcd`: the demo in multi-host mode, with an etcd it starts and nodes 1, 2, 3
//! on 127.0.0.11, .12 and .13. A bid is accepted, killing the leader shows a failover, a
//! partition of the leader makes another node lead, `heal` makes the cluster whole again, and no
//! nftables table of the demo's is left after it ends; without etcd, the demo names the package.
//!
//! A `harness = false` binary (like `lab/tests/netlab.rs`): `main` moves the process into a
//! private network namespace before any thread exists ([`auction_lab::netns::enter_private`]),
//! so the demo's fixed addresses and its packet filters never touch the host's network. Needs
//! root, `ip`, `nft` and `etcd`; without them every test fails and says what is missing.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use auction::cluster::{Proc, Transcript};
use auction_lab::harness::{DEMO, WAIT, wait_for_lines};
use auction_lab::netns;
use auction_lab::netns::trial;
use libtest_mimic::Arguments;
use rustix::process::Signal;
use tokio::process::Command;

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    // The demo's addresses are fixed (etcd on 127.0.0.10:2379, the nodes on .11 to .13): one
    // test at a time.
    args.test_threads = Some(1);
    let tests = vec![
        trial(
            "the_etcd_demo_fails_over_and_heals_a_partition",
            the_etcd_demo_fails_over_and_heals_a_partition,
        ),
        trial(
            "the_etcd_demo_without_etcd_names_the_package",
            the_etcd_demo_without_etcd_names_the_package,
        ),
    ];
    netns::run_tests("demo_etcd", &args, tests)
}

/// A running `auction-demo --etcd`, its output, and secrets of its own.
struct Demo {
    proc: Proc,
    out: Transcript,
    /// Removed when the demo is dropped.
    _auth_dir: tempfile::TempDir,
    /// Set when the test passed; otherwise the demo's output is printed when it is dropped.
    passed: bool,
}

impl Demo {
    /// Starts `auction-demo --etcd` with `path` as its `PATH` (where it finds etcd).
    fn spawn(path: &str) -> anyhow::Result<Self> {
        let auth_dir = tempfile::tempdir()?;
        let out = Transcript::new(false);
        let mut cmd = Command::new(&*DEMO);
        // Made by the nodes, private (its parent is readable by others).
        cmd.arg("--etcd")
            .env("AUCTION_AUTH_DIR", auth_dir.path().join("auth"))
            .env("PATH", path);
        let proc = Proc::spawn(cmd, "demo", &out).context("start the demo")?;
        Ok(Self {
            proc,
            out,
            _auth_dir: auth_dir,
            passed: false,
        })
    }

    /// Types one line into the demo.
    async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.proc
            .send_line(line)
            .await
            .with_context(|| format!("typing {line:?} into the demo"))
    }

    /// Waits until `count` lines of the demo's output contain `text`; returns the last.
    async fn wait_for(&self, count: usize, text: &str) -> String {
        let mut found = wait_for_lines(&self.out, count, |l| l.contains(text)).await;
        found.pop().unwrap_or_default()
    }

    /// How many lines of output contain `text` so far.
    fn count(&self, text: &str) -> usize {
        self.out.lines().iter().filter(|l| l.contains(text)).count()
    }

    /// Types `status` until the answer satisfies `pred` (within [`WAIT`]); returns it.
    async fn wait_status(&mut self, pred: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let seen = self.count("[demo] leader ") + self.count("[demo] no answer");
            self.send("status").await?;
            let answer = wait_for_lines(&self.out, seen + 1, |l| {
                l.contains("[demo] leader ") || l.contains("[demo] no answer")
            })
            .await
            .pop()
            .unwrap_or_default();
            if pred(&answer) {
                return Ok(answer);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the status never satisfied the test; the last: {answer}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if !self.passed {
            eprintln!("---- demo output ----");
            for line in self.out.lines() {
                eprintln!("{line}");
            }
        }
        // A failed test ends the demo as Ctrl-C would, so it removes its table and etcd's data
        // (`Proc` would SIGKILL it, which leaves both behind).
        if !self.proc.exited() && self.proc.signal(Signal::TERM).is_ok() {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !self.proc.exited() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// How many nodes follow the leader in a status line (`next in line [2, 3]`).
fn followers(status: &str) -> usize {
    status
        .split_once("next in line [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map_or(0, |(list, _)| {
            list.split(',').filter(|s| !s.trim().is_empty()).count()
        })
}

/// The leader's id in a status line (`leader 2, …`).
fn leader_in(status: &str) -> Option<u16> {
    let rest = status.split_once("leader ")?.1;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The new leader in a `failover: node N leads now, in place of node M` line.
fn new_leader(failover: &str) -> Option<u16> {
    let rest = failover.split_once("failover: node ")?.1;
    rest.split(' ').next()?.parse().ok()
}

/// The nftables tables of the namespace, as `nft list tables` prints them.
fn nft_tables() -> anyhow::Result<String> {
    auction::netfilter::nft(&["list", "tables"], None).context("nft list tables")
}

async fn the_etcd_demo_fails_over_and_heals_a_partition() -> anyhow::Result<()> {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut demo = Demo::spawn(&path)?;
    let table = format!("auction_demo_{}", demo.proc.pid());
    demo.wait_for(1, "[client] connected").await;
    // The banner's last line.
    demo.wait_for(1, "help lists every command").await;
    let banner = demo.out.lines().join("\n");
    for text in [
        "etcd at http://127.0.0.10:2379",
        "auction-client --server 127.0.0.11:5000,127.0.0.12:5000,127.0.0.13:5000",
    ] {
        ensure!(
            banner.contains(text),
            "no {text:?} in the banner:\n{banner}"
        );
    }
    demo.send("100").await?;
    demo.wait_for(1, "[client] bid: success").await;

    // Killing the leader (node 1, the founder): another takes over, and a bid is accepted.
    demo.send("kill").await?;
    let failover = demo.wait_for(1, "failover: node").await;
    ensure!(
        failover.contains("in place of node 1"),
        "after kill: {failover}"
    );
    demo.send("110").await?;
    demo.wait_for(2, "[client] bid: success").await;
    demo.send("restart 1").await?;
    demo.wait_status(|s| followers(s) == 2).await?;

    // Cutting the leader off from everyone: another node leads, and takes bids.
    demo.send("partition").await?;
    demo.wait_for(1, "[demo] cut node").await;
    ensure!(
        nft_tables()?.contains(&table),
        "no table {table} while a node is cut off"
    );
    demo.send("nodes").await?;
    demo.wait_for(1, "cut off from everyone").await;
    let failover = demo.wait_for(2, "failover: node").await;
    let leader = new_leader(&failover).with_context(|| format!("no leader in {failover:?}"))?;
    demo.send("120").await?;
    demo.wait_for(3, "[client] bid: success").await;

    // Healing: the table goes, and the cluster is whole again under the new leader.
    demo.send("heal").await?;
    demo.wait_for(1, "[demo] healed").await;
    ensure!(
        !nft_tables()?.contains(&table),
        "table {table} outlived heal"
    );
    let whole = demo
        .wait_status(|s| followers(s) == 2 && leader_in(s) == Some(leader))
        .await?;
    ensure!(whole.contains("highest bid 120"), "{whole}");

    // A cut still in force when the demo ends goes with it.
    let follower = (1..=3).find(|&id| id != leader).unwrap_or(1);
    demo.send(&format!("partition {follower} etcd")).await?;
    demo.wait_for(2, "[demo] cut node").await;
    ensure!(
        nft_tables()?.contains(&table),
        "no table {table} for the etcd cut"
    );
    demo.send("quit").await?;
    let status = demo
        .proc
        .wait(WAIT)
        .await
        .context("the demo did not end after quit")?;
    ensure!(status.success(), "the demo ended with {status}");
    let tables = nft_tables()?;
    ensure!(
        !tables.contains("auction_demo_"),
        "a table of the demo's outlived it:\n{tables}"
    );
    demo.passed = true;
    Ok(())
}

async fn the_etcd_demo_without_etcd_names_the_package() -> anyhow::Result<()> {
    // A PATH with no etcd in it (nor anything else: the demo finds its nodes beside itself).
    let empty = tempfile::tempdir()?;
    let mut demo = Demo::spawn(&empty.path().to_string_lossy())?;
    let status = demo
        .proc
        .wait(WAIT)
        .await
        .context("the demo did not exit without etcd")?;
    ensure!(status.code() == Some(1), "exit status {status}");
    demo.wait_for(1, "apt-get install etcd-server").await;
    let said = demo.out.lines().join("\n");
    ensure!(
        said.contains("auction-demo --etcd needs etcd"),
        "no clear message:\n{said}"
    );
    ensure!(
        !said.contains("[node "),
        "a node started without etcd:\n{said}"
    );
    demo.passed = true;
    Ok(())
}
