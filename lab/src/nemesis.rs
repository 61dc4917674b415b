//! Fault runs: a real three-node cluster, concurrent clients that bid and read while every
//! operation is recorded, and a nemesis that kills and pauses nodes, kills clients, steps the
//! nodes' wall clock and deletes the cluster's files in /tmp, at random moments. Every choice
//! comes from one seed, so a failing run names the seed that replays it.
//!
//! In [`Mode::MultiHost`] the same run goes against nodes on loopback addresses of their own with
//! a three-member etcd deciding who leads, and the nemesis also cuts the network between them
//! and breaks etcd ([`FaultKind::NETWORK`], module `network`); the clients are given every
//! node's address.
//!
//! A run goes through several short auctions: the founder opens the first (`--duration`), and
//! an operator task opens each next one soon after it has seen the previous one closed. Each
//! auction's end is recorded as an operation ([`Call::Expire`]) whose window is when its
//! deadline may pass, so the checker catches an auction that closes early or late.
//!
//! At the end of a run: the history must be linearizable; in every auction seen closed, the
//! winner must be its highest acknowledged bid, and the final read must reflect the final
//! auction's; all members must hold identical states; no process may have panicked; and
//! replaying each session's last bid must return its first outcome.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::process::Signal;
use tokio::time::Instant;

use crate::checker;
use crate::fake_clock::FakeClock;
use crate::history::{Call, DEADLINE, FINAL_READER, Operation, ReadView, Return};
use auction::auction::{Decision, Refusal};
use auction::client::{Client, ClientError};
use auction::cluster::{LocalCluster, Spec, Transcript, leader_of};
use auction::pb;
use auction::types::{Amount, BidderId, RequestId, Token};
use auction::view::View;

mod host;
mod network;
mod operator;

pub use host::MAX_CLOCK_OFFSET_SECS;
use host::{Host, RunDir, delete_artefacts};
use network::Network;
use operator::{Operator, OperatorLog};

/// The node ids of the cluster, as in the original hand-in.
const NODES: [u16; 3] = [5400, 5401, 5402];

/// How late an auction may be seen to close. An auction of duration D whose start returned at
/// time R (on the run's monotonic clock) must be closed for every read invoked after
/// R + D + this bound; its [`Call::Expire`] operation ends there.
///
/// Why it can be late at all: the auction clock is replicated state that only the leader
/// advances, by the monotonic time elapsed since its last tick, and a successor resumes it from
/// the last reading it saw plus the time it has measured since. So the auction clock never runs
/// faster than real time, and falls behind only across a failover, by about one heartbeat each.
/// Add the scheduling delays of a loaded 2-core host, and the few failovers the nemesis can put
/// inside one auction, some of them with the successor paused or killed in turn.
///
/// The figure, 1 s plus 3 times the node timeout (2.5 s at the runs' 500 ms), is a first and
/// generous one; the soak reports the close lag it observes (the first read that saw an auction
/// closed, minus R + D) so that it can be replaced by a measured one.
pub const CLOSE_BOUND: CloseBound = CloseBound {
    fixed: Duration::from_secs(1),
    timeouts: 3,
};

/// How early an auction may close, by real time, before its start was invoked plus its
/// duration: the auction clock counts whole milliseconds, so a deadline can pass up to one
/// millisecond before the real duration has.
pub const CLOCK_RESOLUTION: Duration = Duration::from_millis(1);

/// A bound that grows with the nodes' timeout: `fixed + timeouts × timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseBound {
    /// The part that does not depend on the timeout.
    pub fixed: Duration,
    /// How many node timeouts are added to it.
    pub timeouts: u32,
}

impl CloseBound {
    /// The bound for nodes whose `--timeout-ms` is `timeout`.
    pub fn for_timeout(self, timeout: Duration) -> Duration {
        self.fixed
            .saturating_add(timeout.saturating_mul(self.timeouts))
    }
}

/// Durations of the auctions the operator opens, in milliseconds (the first auction's, from
/// `--duration`, is in whole seconds within the same range).
const AUCTION_MS: std::ops::RangeInclusive<u64> = 2000..=5000;

/// A small, fast, seedable generator (SplitMix64): runs must replay exactly from their seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose numbers follow from `seed` alone.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo)
        }
    }

    /// One of `items`, or `None` if there are none.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.range(0, items.len() as u64) as usize)
        }
    }
}

/// The faults the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    KillLeader,
    KillReplica,
    /// SIGSTOP then SIGCONT, shorter than half the timeout.
    PauseLeaderShort,
    /// SIGSTOP for longer than the timeout: the leader is fenced.
    PauseLeaderLong,
    PauseReplicaShort,
    PauseReplicaLong,
    /// Kill the leader, then kill the next in line while it takes over.
    KillDuringFailover,
    /// Kill the leader, then pause the next in line while it takes over.
    PauseDuringFailover,
    /// A client process dies in the middle of a request.
    KillClient,
    /// Every node's wall clock steps forward (at most a day from the real one), as after an NTP
    /// step or `date -s`; the monotonic clock runs on.
    StepClockForward,
    /// Every node's wall clock steps back, sometimes to the real time, at most a day before it.
    StepClockBack,
    /// Kill the leader, then step the wall clock (either way) while the next in line takes over.
    StepClockDuringFailover,
    /// Delete the cluster's files in /tmp (as systemd-tmpfiles does); there may be none.
    DeleteArtefacts,
    /// Delete the cluster's files in /tmp, kill the leader and restart it at once, so that it
    /// looks for a cluster while the next in line takes over.
    DeleteArtefactsDuringFailover,
    /// Multi-host: cut the leader off from its members (not from etcd) past the timeout, then
    /// heal.
    IsolateLeader,
    /// Multi-host: cut a replica off from the other nodes and from etcd past the timeout, then
    /// heal.
    IsolateReplica,
    /// Multi-host: cut one node (leader or replica) off from etcd only, then heal.
    CutFromEtcd,
    /// Multi-host: kill -9 etcd's own leader (of three members); it is restarted later.
    KillEtcdLeader,
    /// Multi-host: every node cut off from every etcd member for a while, then heal.
    EtcdUnreachable,
    /// Multi-host: every etcd member restarted, one after the other.
    RestartEtcd,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [Self; 20] = [
        Self::KillLeader,
        Self::KillReplica,
        Self::PauseLeaderShort,
        Self::PauseLeaderLong,
        Self::PauseReplicaShort,
        Self::PauseReplicaLong,
        Self::KillDuringFailover,
        Self::PauseDuringFailover,
        Self::KillClient,
        Self::StepClockForward,
        Self::StepClockBack,
        Self::StepClockDuringFailover,
        Self::DeleteArtefacts,
        Self::DeleteArtefactsDuringFailover,
        Self::IsolateLeader,
        Self::IsolateReplica,
        Self::CutFromEtcd,
        Self::KillEtcdLeader,
        Self::EtcdUnreachable,
        Self::RestartEtcd,
    ];

    /// The kinds of a single-host run by default, in the order a draw picks them: every kind but
    /// the [`FaultKind::NETWORK`] ones.
    pub const SINGLE_HOST: [Self; 14] = [
        Self::KillLeader,
        Self::KillReplica,
        Self::PauseLeaderShort,
        Self::PauseLeaderLong,
        Self::PauseReplicaShort,
        Self::PauseReplicaLong,
        Self::KillDuringFailover,
        Self::PauseDuringFailover,
        Self::KillClient,
        Self::StepClockForward,
        Self::StepClockBack,
        Self::StepClockDuringFailover,
        Self::DeleteArtefacts,
        Self::DeleteArtefactsDuringFailover,
    ];

    /// The kinds of a multi-host run by default, in the order a draw picks them: kills and
    /// pauses of nodes and clients (the successor during a failover too), and the
    /// [`FaultKind::NETWORK`] ones. Clock steps and /tmp deletions are left to single-host runs.
    pub const MULTI_HOST: [Self; 15] = [
        Self::KillLeader,
        Self::KillReplica,
        Self::PauseLeaderShort,
        Self::PauseLeaderLong,
        Self::PauseReplicaShort,
        Self::PauseReplicaLong,
        Self::KillDuringFailover,
        Self::PauseDuringFailover,
        Self::KillClient,
        Self::IsolateLeader,
        Self::IsolateReplica,
        Self::CutFromEtcd,
        Self::KillEtcdLeader,
        Self::EtcdUnreachable,
        Self::RestartEtcd,
    ];

    /// The faults of the network and of etcd: multi-host runs only.
    pub const NETWORK: [Self; 6] = [
        Self::IsolateLeader,
        Self::IsolateReplica,
        Self::CutFromEtcd,
        Self::KillEtcdLeader,
        Self::EtcdUnreachable,
        Self::RestartEtcd,
    ];

    /// The faults that break the host rather than processes: wall clock steps and deleted
    /// files.
    pub const HOST: [Self; 5] = [
        Self::StepClockForward,
        Self::StepClockBack,
        Self::StepClockDuringFailover,
        Self::DeleteArtefacts,
        Self::DeleteArtefactsDuringFailover,
    ];

    /// A short name for command lines, like `step-clock-back`.
    pub fn key(self) -> &'static str {
        match self {
            Self::KillLeader => "kill-leader",
            Self::KillReplica => "kill-replica",
            Self::PauseLeaderShort => "pause-leader-short",
            Self::PauseLeaderLong => "pause-leader-long",
            Self::PauseReplicaShort => "pause-replica-short",
            Self::PauseReplicaLong => "pause-replica-long",
            Self::KillDuringFailover => "kill-during-failover",
            Self::PauseDuringFailover => "pause-during-failover",
            Self::KillClient => "kill-client",
            Self::StepClockForward => "step-clock-forward",
            Self::StepClockBack => "step-clock-back",
            Self::StepClockDuringFailover => "step-clock-during-failover",
            Self::DeleteArtefacts => "delete-artefacts",
            Self::DeleteArtefactsDuringFailover => "delete-artefacts-during-failover",
            Self::IsolateLeader => "isolate-leader",
            Self::IsolateReplica => "isolate-replica",
            Self::CutFromEtcd => "cut-from-etcd",
            Self::KillEtcdLeader => "kill-etcd-leader",
            Self::EtcdUnreachable => "etcd-unreachable",
            Self::RestartEtcd => "restart-etcd",
        }
    }

    /// The kind whose [`FaultKind::key`] is `key`.
    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.key() == key)
    }

    /// A name for people.
    pub fn name(self) -> &'static str {
        match self {
            Self::KillLeader => "kill -9 leader",
            Self::KillReplica => "kill -9 replica",
            Self::PauseLeaderShort => "pause leader (short)",
            Self::PauseLeaderLong => "pause leader (long)",
            Self::PauseReplicaShort => "pause replica (short)",
            Self::PauseReplicaLong => "pause replica (long)",
            Self::KillDuringFailover => "kill leader, then successor",
            Self::PauseDuringFailover => "kill leader, pause successor",
            Self::KillClient => "kill client mid-request",
            Self::StepClockForward => "wall clock steps forward",
            Self::StepClockBack => "wall clock steps back",
            Self::StepClockDuringFailover => "kill leader, step wall clock",
            Self::DeleteArtefacts => "delete /tmp files",
            Self::DeleteArtefactsDuringFailover => "delete /tmp files, kill and restart leader",
            Self::IsolateLeader => "leader cut off from members",
            Self::IsolateReplica => "replica cut off from all",
            Self::CutFromEtcd => "node cut off from etcd",
            Self::KillEtcdLeader => "kill -9 etcd's leader",
            Self::EtcdUnreachable => "etcd unreachable",
            Self::RestartEtcd => "etcd restarted",
        }
    }
}

/// One injected fault.
#[derive(Clone, Debug)]
pub struct Fault {
    /// What was done.
    pub kind: FaultKind,
    /// Since the start of the run.
    pub at: Duration,
    /// To whom (or, for a clock step, from which offset to which).
    pub target: String,
}

/// How to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Every random choice of the run follows from it.
    pub seed: u64,
    /// How long faults are injected; clients go on a little longer while the cluster heals.
    pub faults_for: Duration,
    /// Concurrent clients.
    pub clients: usize,
    /// The `auction-node` binary.
    pub node_bin: PathBuf,
    /// The nodes' `--heartbeat-ms`.
    pub heartbeat_ms: u64,
    /// The nodes' `--timeout-ms`.
    pub timeout_ms: u64,
    /// Whether each node gets a /tmp of its own ([`Spec::private_tmp`]), as services with
    /// systemd's `PrivateTmp=yes` do: then no file in /tmp can tell nodes about each other.
    pub private_tmp: bool,
    /// Where each run makes a directory of its own for the file that holds the nodes' wall
    /// clock offset. The nodes must see it, so with `private_tmp` it must be outside /tmp.
    pub scratch_dir: PathBuf,
    /// The kinds of fault the nemesis draws from (each iteration draws the same numbers
    /// whatever the set, so a seed replays with the same set).
    pub kinds: Vec<FaultKind>,
    /// One host, or several with etcd.
    pub mode: Mode,
}

/// How the cluster of a run is laid out, and so which faults it can have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Every node on 127.0.0.1, the host deciding who leads (ports, SIGKILL).
    #[default]
    SingleHost,
    /// Each node on a loopback address of its own and a three-member etcd deciding who leads,
    /// with cuts between them ([`FaultKind::NETWORK`]). The process must be in a private
    /// network namespace ([`crate::netns::enter_private`]).
    MultiHost,
}

impl Config {
    /// Ten seconds of every kind of single-host fault against 8 clients, with a 50 ms heartbeat and a
    /// 500 ms timeout, nodes sharing /tmp, and the run's files in the temporary directory.
    pub fn new(node_bin: impl Into<PathBuf>, seed: u64) -> Self {
        Self {
            seed,
            faults_for: Duration::from_secs(10),
            clients: 8,
            node_bin: node_bin.into(),
            heartbeat_ms: 50,
            timeout_ms: 500,
            private_tmp: false,
            scratch_dir: std::env::temp_dir(),
            kinds: FaultKind::SINGLE_HOST.to_vec(),
            mode: Mode::SingleHost,
        }
    }

    /// [`CLOSE_BOUND`] for these nodes' timeout.
    pub fn close_bound(&self) -> Duration {
        CLOSE_BOUND.for_timeout(Duration::from_millis(self.timeout_ms))
    }
}

/// One auction of a run, and when the request that opened it was sent and answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuctionRecord {
    /// Its number, from the answer.
    pub number: u64,
    /// How long it runs.
    pub duration: Duration,
    /// When the start was invoked, since the start of the run (for the first auction: when the
    /// founder was started).
    pub start_invoked: Duration,
    /// When the start returned (for the first auction: when the founder first answered);
    /// `None` if no answer said it had started, though it may have.
    pub start_returned: Option<Duration>,
}

impl AuctionRecord {
    /// When its deadline may pass, at the earliest and at the latest (`None`: no bound).
    pub fn close_window(&self, bound: Duration) -> (Duration, Option<Duration>) {
        let earliest = (self.start_invoked + self.duration).saturating_sub(CLOCK_RESOLUTION);
        let latest = self.start_returned.map(|r| r + self.duration + bound);
        (earliest, latest)
    }

    /// Its end as an operation of the history: unreturned if its window outlives the history
    /// (which ends at `history_end`), since the deadline may then still be ahead.
    fn expire(&self, bound: Duration, history_end: Duration) -> Operation {
        let (earliest, latest) = self.close_window(bound);
        let returned = latest.filter(|l| *l <= history_end);
        Operation {
            client: DEADLINE,
            auction: self.number,
            call: Call::Expire,
            invoked: earliest,
            returned,
            ret: if returned.is_some() {
                Return::Expired
            } else {
                Return::Unknown
            },
        }
    }
}

/// What a run saw and found.
#[derive(Debug)]
pub struct Report {
    /// The run's seed.
    pub seed: u64,
    /// Client operations recorded (the deadlines of auctions not counted).
    pub ops: usize,
    /// Operations whose outcome is unknown.
    pub unknown: usize,
    /// Every fault injected, in order.
    pub faults: Vec<Fault>,
    /// For each fault, the time from the fault to the first definite answer to a bid sent after
    /// it; `None` if no bid was answered before the run ended.
    pub recovery: Vec<(FaultKind, Option<Duration>)>,
    /// The auctions of the run, in order.
    pub auctions: Vec<AuctionRecord>,
    /// For each auction that a read saw closed: the first such read's return, minus the
    /// start's return plus the duration (zero if earlier).
    pub close_lags: Vec<Duration>,
    /// Auctions whose start was answered but that no read saw closed.
    pub unclosed: usize,
    /// The [`CLOSE_BOUND`] of the run.
    pub close_bound: Duration,
    /// Everything that went wrong; empty when the run passed.
    pub problems: Vec<String>,
    /// How long the linearizability check took.
    pub check_time: Duration,
    /// Sessions whose last bid was replayed, and how many of those had needed retries (across a
    /// failover) to get their first answer.
    pub replayed: usize,
    pub replayed_after_retries: usize,
    /// Every node's and client's output.
    pub transcript: Vec<String>,
}

impl Report {
    /// Whether the run found nothing wrong.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// The auctions and faults of the run, one a line, in order, for a person reading a
    /// failure.
    pub fn timeline(&self) -> String {
        let mut lines: Vec<(Duration, String)> = self
            .auctions
            .iter()
            .map(|a| {
                let returned = a
                    .start_returned
                    .map_or_else(|| "never".into(), |r| format!("{:.3}s", r.as_secs_f64()));
                let (earliest, latest) = a.close_window(self.close_bound);
                let latest =
                    latest.map_or_else(|| "-".into(), |l| format!("{:.3}s", l.as_secs_f64()));
                (
                    a.start_invoked,
                    format!(
                        "{:.3}s auction {} of {:.3}s started (answered {returned}); its \
                         deadline passes within [{:.3}s, {latest}]",
                        a.start_invoked.as_secs_f64(),
                        a.number,
                        a.duration.as_secs_f64(),
                        earliest.as_secs_f64()
                    ),
                )
            })
            .chain(self.faults.iter().map(|f| {
                let line = format!("{:.3}s {}: {}", f.at.as_secs_f64(), f.kind.name(), f.target);
                (f.at, line)
            }))
            .collect();
        lines.sort();
        lines
            .into_iter()
            .map(|(_, l)| l)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Figures over many runs: what a soak reports.
#[derive(Debug, Default)]
pub struct Summary {
    /// Runs added.
    pub runs: usize,
    /// Seeds of the runs that found a problem.
    pub failed: Vec<u64>,
    /// Client operations, and those with an unknown outcome.
    pub ops: usize,
    pub unknown: usize,
    /// Faults injected, per kind.
    pub faults: BTreeMap<FaultKind, usize>,
    /// Recovery times per fault kind.
    pub recovery: BTreeMap<FaultKind, Vec<Duration>>,
    /// Faults after which no bid was answered before the run ended.
    pub unrecovered: BTreeMap<FaultKind, usize>,
    /// The longest linearizability check of a run.
    pub longest_check: Duration,
    /// Last bids of sessions replayed at the end of runs, and those among them that had needed
    /// retries to get their first answer.
    pub replayed: usize,
    pub replayed_after_retries: usize,
    /// Auctions run, and those that no read saw closed.
    pub auctions: usize,
    pub unclosed: usize,
    /// The close lag of every auction seen closed (see [`Report::close_lags`]).
    pub close_lags: Vec<Duration>,
    /// The largest [`CLOSE_BOUND`] of the runs.
    pub close_bound: Duration,
}

impl Summary {
    /// Adds one run's figures.
    pub fn add(&mut self, report: &Report) {
        self.runs += 1;
        if !report.passed() {
            self.failed.push(report.seed);
        }
        self.ops += report.ops;
        self.unknown += report.unknown;
        for f in &report.faults {
            *self.faults.entry(f.kind).or_default() += 1;
        }
        for (kind, time) in &report.recovery {
            match time {
                Some(t) => self.recovery.entry(*kind).or_default().push(*t),
                None => *self.unrecovered.entry(*kind).or_default() += 1,
            }
        }
        self.longest_check = self.longest_check.max(report.check_time);
        self.replayed += report.replayed;
        self.replayed_after_retries += report.replayed_after_retries;
        self.auctions += report.auctions.len();
        self.unclosed += report.unclosed;
        self.close_lags.extend(&report.close_lags);
        self.close_bound = self.close_bound.max(report.close_bound);
    }
}

/// The value below which `p` percent of `sorted` lie (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Option<Duration>| {
            d.map_or_else(
                || "-".to_string(),
                |d| format!("{:.0} ms", d.as_secs_f64() * 1e3),
            )
        };
        writeln!(
            f,
            "{} runs, {} operations ({} with unknown outcome), {} faults, {} violations",
            self.runs,
            self.ops,
            self.unknown,
            self.faults.values().sum::<usize>(),
            self.failed.len()
        )?;
        writeln!(
            f,
            "{} requests replayed with their first id ({} of them first answered after \
             retries); longest check of a history: {:.2} s",
            self.replayed,
            self.replayed_after_retries,
            self.longest_check.as_secs_f64()
        )?;
        let mut lags = self.close_lags.clone();
        lags.sort();
        writeln!(
            f,
            "{} auctions ({} never seen closed); close lag, from the start's answer plus the \
             duration to the first read that saw it closed: median {}, max {} (bound {})",
            self.auctions,
            self.unclosed,
            ms(percentile(&lags, 50.0)),
            ms(lags.last().copied()),
            ms(Some(self.close_bound))
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "| fault | count | time from the fault to the next answered bid: median | p99 | max |"
        )?;
        writeln!(f, "| --- | ---: | ---: | ---: | ---: |")?;
        for (kind, count) in &self.faults {
            let mut times = self.recovery.get(kind).cloned().unwrap_or_default();
            times.sort();
            let unrecovered = self.unrecovered.get(kind).copied().unwrap_or(0);
            let note = if unrecovered > 0 {
                format!(" ({unrecovered} without a later bid)")
            } else {
                String::new()
            };
            writeln!(
                f,
                "| {} | {count}{note} | {} | {} | {} |",
                kind.name(),
                ms(percentile(&times, 50.0)),
                ms(percentile(&times, 99.0)),
                ms(times.last().copied())
            )?;
        }
        if !self.failed.is_empty() {
            writeln!(f)?;
            writeln!(f, "failed seeds: {:?}", self.failed)?;
        }
        Ok(())
    }
}

/// The last bid of a client session: what exactly-once must answer again.
#[derive(Clone, Debug)]
struct LastBid {
    id: RequestId,
    bidder: BidderId,
    amount: Amount,
    /// The bidder's token, which the replay must carry too.
    token: Token,
    ret: Return,
    /// Whether the first answer took more than one attempt.
    retried: bool,
}

/// What one client task recorded.
#[derive(Debug, Default)]
struct ClientLog {
    ops: Vec<Operation>,
    last_bids: Vec<LastBid>,
    problems: Vec<String>,
}

/// Runs one fault run.
pub async fn run(cfg: &Config) -> Report {
    let mut report = Report {
        seed: cfg.seed,
        ops: 0,
        unknown: 0,
        faults: Vec::new(),
        recovery: Vec::new(),
        auctions: Vec::new(),
        close_lags: Vec::new(),
        unclosed: 0,
        close_bound: cfg.close_bound(),
        problems: Vec::new(),
        check_time: Duration::ZERO,
        replayed: 0,
        replayed_after_retries: 0,
        transcript: Vec::new(),
    };
    let t0 = Instant::now();
    // Every node runs on one wall clock whose offset file is in the run's own directory.
    let clock = RunDir::create(cfg).and_then(|dir| {
        FakeClock::new(dir.path().join("wall-clock-offset"))
            .map(|clock| (dir, clock))
            .map_err(|e| e.to_string())
    });
    let (_run_dir, clock) = match clock {
        Ok(c) => c,
        Err(e) => {
            report
                .problems
                .push(format!("the cluster did not start: {e}"));
            return report;
        }
    };
    let mut operator_rng = Rng::new(cfg.seed ^ 0x6f70_6572_6174_6f72);
    let first_secs = operator_rng.range(*AUCTION_MS.start() / 1000, *AUCTION_MS.end() / 1000 + 1);
    let transcript = Transcript::new(false);
    let mut network = match cfg.mode {
        Mode::SingleHost => None,
        Mode::MultiHost => match Network::start(cfg.seed, &transcript).await {
            Ok(n) => Some(n),
            Err(e) => {
                report
                    .problems
                    .push(format!("the network did not start: {e}"));
                report.transcript = transcript.lines();
                return report;
            }
        },
    };
    let started = start_cluster(cfg, &clock, network.as_ref(), transcript, first_secs, t0).await;
    let (mut cluster, first) = match started {
        Ok(c) => c,
        Err((e, transcript)) => {
            // What the nodes said when they gave up, if they did.
            let errors: Vec<&String> = transcript
                .iter()
                .filter(|l| l.contains("] error: "))
                .take(3)
                .collect();
            report.problems.push(format!(
                "the cluster did not start: {e}{}",
                errors.iter().fold(String::new(), |text, l| text + "\n" + l)
            ));
            report.transcript = transcript;
            return report;
        }
    };
    let addrs = cluster.spec.client_addrs();
    let faults_until = t0.elapsed() + cfg.faults_for;
    let stop = Arc::new(AtomicBool::new(false));
    let kills: Vec<Arc<AtomicBool>> = (0..cfg.clients)
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let tasks: Vec<_> = (0..cfg.clients)
        .map(|i| {
            let seed = cfg.seed ^ (i as u64 + 1).wrapping_mul(0x5851_f42d_4c95_7f2d);
            let (stop, kill, addrs) = (stop.clone(), kills[i].clone(), addrs.clone());
            tokio::spawn(client_loop(i, addrs, seed, t0, stop, kill))
        })
        .collect();
    let operator = Operator {
        client: cluster.client(Duration::from_secs(5)),
        t0,
        rng: operator_rng,
        bound: cfg.close_bound(),
        log: OperatorLog::default(),
    };
    let operator = tokio::spawn(operator.run(first, faults_until, stop.clone()));

    let mut host = Host {
        clock,
        offset: 0,
        leader_port: cluster.spec.leader_port,
        errors: Vec::new(),
    };
    let mut rng = Rng::new(cfg.seed);
    while t0.elapsed() < faults_until {
        // Every iteration draws the same numbers, whatever it then does, so a seed replays the
        // same choices even when timing makes a fault impossible.
        let draws = Draws::new(&mut rng);
        tokio::time::sleep(Duration::from_millis(300 + draws.gap % 700)).await;
        restart_dead(&mut cluster);
        if let Some(net) = &mut network
            && let Err(e) = net.recover().await
        {
            host.errors.push(e);
        }
        let mut surface = Surface {
            cluster: &mut cluster,
            host: &mut host,
            network: network.as_mut(),
        };
        if let Some(fault) = inject(&mut surface, cfg, &draws, &kills, t0).await {
            report.faults.push(fault);
        }
    }
    report.problems.append(&mut host.errors);

    // Heal: resume everything, mend the network, and bring the dead back until all three are
    // members again.
    for id in NODES {
        let _ = cluster.signal(id, Signal::CONT);
    }
    if let Some(net) = &mut network
        && let Err(e) = net.heal().await
    {
        report
            .problems
            .push(format!("the network did not heal: {e}"));
    }
    if let Err(e) = heal(&mut cluster).await {
        report
            .problems
            .push(format!("the cluster did not heal: {e}"));
    }
    // The clients go on against the healed cluster, so every member applies many changes
    // itself, not only a snapshot, before the states are compared.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let mut ops = Vec::new();
    let mut last_bids = Vec::new();
    for task in tasks {
        match task.await {
            Ok(log) => {
                ops.extend(log.ops);
                last_bids.extend(log.last_bids);
                report.problems.extend(log.problems);
            }
            Err(e) => report.problems.push(format!("a client task failed: {e}")),
        }
    }
    // The operator has started no auction since the faults ended; it returns once it has seen
    // the last one closed, or once that is overdue.
    match operator.await {
        Ok(log) => {
            ops.extend(log.ops);
            report.auctions = log.auctions;
            report.problems.extend(log.problems);
        }
        Err(e) => report
            .problems
            .push(format!("the operator task failed: {e}")),
    }
    // The final read, part of the history like any other.
    let mut reader = Client::with_addresses(addrs.clone(), Duration::from_secs(10));
    let invoked = t0.elapsed();
    let final_view = reader.result().await.map(|v| read_view(&v));
    match &final_view {
        Ok(view) => ops.push(Operation {
            client: FINAL_READER,
            auction: view.number,
            call: Call::Read,
            invoked,
            returned: Some(t0.elapsed()),
            ret: Return::Read(view.clone()),
        }),
        Err(e) => report.problems.push(format!("the final read failed: {e}")),
    }
    let history_end = t0.elapsed();
    let bound = cfg.close_bound();
    ops.extend(report.auctions.iter().map(|a| a.expire(bound, history_end)));
    ops.sort_by_key(|op| op.invoked);
    let clients_ops = || ops.iter().filter(|op| op.call != Call::Expire);
    report.ops = clients_ops().count();
    report.unknown = clients_ops().filter(|op| !op.is_known()).count();
    report.recovery = recovery(&report.faults, &ops);
    (report.close_lags, report.unclosed) = close_lags(&report.auctions, &ops);

    let started = std::time::Instant::now();
    let checked = checker::check(&ops);
    report.check_time = started.elapsed();
    if let Err(v) = checked {
        report
            .problems
            .push(format!("the history is not linearizable:\n{v}"));
    }
    check_acknowledged(&ops, final_view.as_ref().ok(), &mut report.problems);
    check_same_state(&mut cluster, &mut report.problems).await;
    let (replayed, retried) = check_replays(&addrs, &last_bids, &mut report.problems).await;
    report.replayed = replayed;
    report.replayed_after_retries = retried;
    if let Ok(before) = &final_view {
        let mut reader = Client::with_addresses(addrs.clone(), Duration::from_secs(10));
        match reader.result().await.map(|v| read_view(&v)) {
            // The auction may have closed in between; nothing else may have changed.
            Ok(after)
                if (&after.number, &after.highest, after.bidders)
                    == (&before.number, &before.highest, before.bidders)
                    && (before.open || !after.open) => {}
            Ok(after) => report.problems.push(format!(
                "replaying requests changed the auction: {before:?} became {after:?}"
            )),
            Err(e) => report
                .problems
                .push(format!("the read after the replays failed: {e}")),
        }
    }
    let panics = cluster.transcript.panics();
    if !panics.is_empty() {
        report
            .problems
            .push(format!("processes panicked: {panics:#?}"));
    }
    for id in cluster.running() {
        cluster.kill(id).await;
    }
    // etcd goes after the nodes, so none of them waits for it on the way out.
    drop(network);
    report.transcript = cluster.transcript.lines();
    report
}

/// Starts the cluster on `clock` (across the hosts of `network`, if given), its output in
/// `transcript`: the founder opens the first auction, of `first_secs`, and the others join.
/// Returns it with the first auction. On failure, says why, with the transcript.
async fn start_cluster(
    cfg: &Config,
    clock: &FakeClock,
    network: Option<&Network>,
    transcript: Transcript,
    first_secs: u64,
    t0: Instant,
) -> Result<(LocalCluster, AuctionRecord), (String, Vec<String>)> {
    let mut spec = Spec::on_free_ports(&cfg.node_bin).map_err(|e| (e.to_string(), Vec::new()))?;
    spec.node_args = vec![
        "--heartbeat-ms".into(),
        cfg.heartbeat_ms.to_string(),
        "--timeout-ms".into(),
        cfg.timeout_ms.to_string(),
        "--duration".into(),
        first_secs.to_string(),
    ];
    spec.node_env = clock.env();
    spec.private_tmp = cfg.private_tmp;
    if let Some(network) = network {
        network.configure(&mut spec);
    }
    let mut cluster = LocalCluster::new(spec, transcript);
    let patience = Duration::from_secs(20);
    let (&founder, others) = NODES.split_first().expect("three nodes");
    let started = async {
        let invoked = t0.elapsed();
        cluster.start(founder).map_err(|e| e.to_string())?;
        let status = cluster
            .wait_for(patience, |s| leader_of(s) == founder)
            .await
            .map_err(|e| e.to_string())?;
        let first = AuctionRecord {
            number: status.auction.number,
            duration: Duration::from_secs(first_secs),
            start_invoked: invoked,
            start_returned: Some(t0.elapsed()),
        };
        for &id in others {
            cluster
                .start_member(id, patience)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(first)
    };
    let started = started.await;
    match started {
        Ok(first) => Ok((cluster, first)),
        Err(e) => {
            for id in cluster.running() {
                cluster.kill(id).await;
            }
            Err((e, cluster.transcript.lines()))
        }
    }
}

/// Restarts dead nodes until all are members again, for at most 30 s.
async fn heal(cluster: &mut LocalCluster) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        restart_dead(cluster);
        let last = match cluster.status(Duration::from_millis(500)).await {
            Ok(s) if s.members.len() == NODES.len() => return Ok(()),
            Ok(s) => format!("{s:?}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn restart_dead(cluster: &mut LocalCluster) {
    let running = cluster.running();
    for id in NODES {
        if !running.contains(&id) {
            let _ = cluster.start(id);
        }
    }
}

/// The random numbers one nemesis iteration uses, all drawn up front.
struct Draws {
    gap: u64,
    kind: u64,
    target: u64,
    pause: u64,
    between: u64,
    /// How far a clock step goes, and what sort of step it is (see [`Host::step`]); bit 8 of
    /// `step_mode` is the direction of a step during a failover.
    step: u64,
    step_mode: u64,
}

impl Draws {
    fn new(rng: &mut Rng) -> Self {
        Self {
            gap: rng.next_u64(),
            kind: rng.next_u64(),
            target: rng.next_u64(),
            pause: rng.next_u64(),
            between: rng.next_u64(),
            step: rng.next_u64(),
            step_mode: rng.next_u64(),
        }
    }

    fn pause(&self, timeout_ms: u64, long: bool) -> Duration {
        Duration::from_millis(if long {
            timeout_ms * 3 / 2 + self.pause % (timeout_ms * 3 / 2)
        } else {
            20 + self.pause % (timeout_ms / 2 - 20)
        })
    }
}

/// What the nemesis can break: the nodes, the host they share, and (across hosts) the network
/// and etcd.
struct Surface<'a> {
    cluster: &'a mut LocalCluster,
    host: &'a mut Host,
    /// `None` in a single-host run, which has no network faults.
    network: Option<&'a mut Network>,
}

/// Injects the fault `draws` chooses, if the cluster's state allows it. Pauses and cuts are
/// waited out here: their length is the fault.
async fn inject(
    surface: &mut Surface<'_>,
    cfg: &Config,
    draws: &Draws,
    kills: &[Arc<AtomicBool>],
    t0: Instant,
) -> Option<Fault> {
    let Surface {
        cluster,
        host,
        network,
    } = surface;
    let kind = *cfg
        .kinds
        .get((draws.kind % cfg.kinds.len().max(1) as u64) as usize)?;
    let mut at = t0.elapsed();
    // A cut lasts past the timeout, so that it deposes or removes someone; etcd stays out of
    // reach longer, past a node's requests to it.
    let hold = draws.pause(cfg.timeout_ms, true);
    let etcd_hold = Duration::from_millis(1000 + draws.pause % 3000);
    // Faults that need not know who leads.
    let target = match kind {
        FaultKind::KillClient => {
            let i = (draws.target % kills.len() as u64) as usize;
            kills[i].store(true, Ordering::SeqCst);
            Some(format!("client {i}"))
        }
        FaultKind::StepClockForward | FaultKind::StepClockBack => Some(host.step(
            kind == FaultKind::StepClockForward,
            draws.step,
            draws.step_mode,
        )?),
        FaultKind::DeleteArtefacts => {
            let n = delete_artefacts(host.leader_port);
            Some(format!("{n} files"))
        }
        FaultKind::KillEtcdLeader => {
            let net = network.as_deref_mut()?;
            Some(match net.kill_etcd_leader().await {
                Ok(i) => format!("etcd-{i}"),
                Err(e) => {
                    host.errors.push(format!("killing etcd's leader: {e}"));
                    return None;
                }
            })
        }
        FaultKind::EtcdUnreachable => {
            let net = network.as_deref_mut()?;
            let cut = network_fault(host, net.cut_from_etcd(&NODES, etcd_hold).await)?;
            at = cut.saturating_duration_since(t0);
            Some(format!("every node, for {} ms", etcd_hold.as_millis()))
        }
        FaultKind::RestartEtcd => {
            let net = network.as_deref_mut()?;
            network_fault(host, net.restart_etcd().await)?;
            Some("every member".into())
        }
        _ => None,
    };
    if let Some(target) = target {
        return Some(Fault { kind, at, target });
    }
    // Node faults need to know who leads.
    let status = cluster.status(Duration::from_millis(300)).await.ok()?;
    let leader = leader_of(&status);
    // Members whose process runs now: the same pid, not a restarted process with the same id.
    let members: Vec<u16> = status
        .members
        .iter()
        .filter_map(|m| {
            let id = m.id.0;
            let node = cluster.node(id)?;
            (node.pid() == m.pid && !node.exited()).then_some(id)
        })
        .collect();
    // Followers in succession order: the first one takes over.
    let followers: Vec<u16> = members.iter().copied().filter(|id| *id != leader).collect();
    let pick = |from: &[u16]| -> Option<u16> {
        (!from.is_empty()).then(|| from[(draws.target % from.len() as u64) as usize])
    };
    // The failure model promises nothing once no member survives: a fault must leave at least
    // one running member outside its targets.
    let survives = |targets: &[u16]| members.iter().any(|m| !targets.contains(m));
    let timeout = cfg.timeout_ms;
    let mut at = t0.elapsed();
    let target = match kind {
        FaultKind::KillClient
        | FaultKind::StepClockForward
        | FaultKind::StepClockBack
        | FaultKind::DeleteArtefacts
        | FaultKind::KillEtcdLeader
        | FaultKind::EtcdUnreachable
        | FaultKind::RestartEtcd => unreachable!("handled above"),
        FaultKind::IsolateLeader => {
            let net = network.as_deref_mut()?;
            if followers.is_empty() {
                return None;
            }
            let cut = network_fault(host, net.isolate_from_nodes(leader, hold).await)?;
            at = cut.saturating_duration_since(t0);
            format!("node {leader}, for {} ms", hold.as_millis())
        }
        FaultKind::IsolateReplica => {
            let net = network.as_deref_mut()?;
            let id = pick(&followers)?;
            if !survives(&[id]) {
                return None;
            }
            let cut = network_fault(host, net.isolate(id, hold).await)?;
            at = cut.saturating_duration_since(t0);
            format!("node {id}, for {} ms", hold.as_millis())
        }
        FaultKind::CutFromEtcd => {
            let net = network.as_deref_mut()?;
            let id = pick(&members)?;
            let cut = network_fault(host, net.cut_from_etcd(&[id], hold).await)?;
            at = cut.saturating_duration_since(t0);
            format!("node {id}, for {} ms", hold.as_millis())
        }
        FaultKind::KillLeader => {
            if !survives(&[leader]) {
                return None;
            }
            cluster.kill(leader).await;
            format!("node {leader}")
        }
        FaultKind::KillReplica => {
            let id = pick(&followers)?;
            if !survives(&[id]) {
                return None;
            }
            cluster.kill(id).await;
            format!("node {id}")
        }
        FaultKind::PauseLeaderShort | FaultKind::PauseLeaderLong => {
            let long = kind == FaultKind::PauseLeaderLong;
            if long && !survives(&[leader]) {
                return None;
            }
            pause(cluster, leader, draws.pause(timeout, long)).await;
            format!("node {leader}")
        }
        FaultKind::PauseReplicaShort | FaultKind::PauseReplicaLong => {
            let id = pick(&followers)?;
            let long = kind == FaultKind::PauseReplicaLong;
            if long && !survives(&[id]) {
                return None;
            }
            pause(cluster, id, draws.pause(timeout, long)).await;
            format!("node {id}")
        }
        FaultKind::KillDuringFailover | FaultKind::PauseDuringFailover => {
            let next = *followers.first()?;
            if !survives(&[leader, next]) {
                return None;
            }
            cluster.kill(leader).await;
            tokio::time::sleep(Duration::from_millis(draws.between % 30)).await;
            if kind == FaultKind::KillDuringFailover {
                cluster.kill(next).await;
            } else {
                pause(cluster, next, draws.pause(timeout, true)).await;
            }
            format!("node {leader}, then node {next}")
        }
        FaultKind::StepClockDuringFailover => {
            if !survives(&[leader]) {
                return None;
            }
            cluster.kill(leader).await;
            tokio::time::sleep(Duration::from_millis(draws.between % 30)).await;
            let forward = draws.step_mode & 0x100 != 0;
            // At the edge of its range the clock steps the other way.
            let step = host
                .step(forward, draws.step, draws.step_mode)
                .or_else(|| host.step(!forward, draws.step, draws.step_mode))
                .unwrap_or_else(|| "no step".into());
            format!("node {leader}, then {step}")
        }
        FaultKind::DeleteArtefactsDuringFailover => {
            if !survives(&[leader]) {
                return None;
            }
            let n = delete_artefacts(host.leader_port);
            cluster.kill(leader).await;
            let restarted = match cluster.start(leader) {
                Ok(()) => "restarted at once",
                Err(_) => "not restarted",
            };
            format!("{n} files, then node {leader} ({restarted})")
        }
    };
    Some(Fault { kind, at, target })
}

/// What a network fault returned if it was made; else `None`, with the error among the run's
/// problems (the lab failed, not the cluster).
fn network_fault<T>(host: &mut Host, done: Result<T, String>) -> Option<T> {
    done.map_err(|e| host.errors.push(e)).ok()
}

async fn pause(cluster: &LocalCluster, id: u16, length: Duration) {
    if cluster.signal(id, Signal::STOP).is_ok() {
        tokio::time::sleep(length).await;
        let _ = cluster.signal(id, Signal::CONT);
    }
}

/// What the checker compares of a view.
fn read_view(view: &View) -> ReadView {
    ReadView {
        number: view.number,
        open: view.open,
        highest: view.highest.as_ref().map(|h| (h.bidder.clone(), h.amount)),
        bidders: view.bidders,
    }
}

/// One client process after another (a killed one is replaced by a new one with a new
/// session), bidding a little above the highest bid it knows, or reading, until `stop`.
async fn client_loop(
    index: usize,
    addrs: Vec<SocketAddr>,
    seed: u64,
    t0: Instant,
    stop: Arc<AtomicBool>,
    kill: Arc<AtomicBool>,
) -> ClientLog {
    let mut log = ClientLog::default();
    let mut rng = Rng::new(seed);
    let Ok(bidder) = BidderId::new(format!("c{index}")) else {
        return log;
    };
    // One token for the bidder's whole life, whichever client process bids for it.
    let token = match auction::host::random_token() {
        Ok(t) => t,
        Err(e) => {
            log.problems.push(format!("client {index}: no token: {e}"));
            return log;
        }
    };
    let new_client = || {
        let mut c = Client::with_addresses(addrs.clone(), Duration::from_secs(5));
        c.set_token(bidder.clone(), token.clone());
        c
    };
    let mut process = u32::try_from(index).unwrap_or(u32::MAX);
    let mut client = new_client();
    let mut known = 0u64;
    // The latest auction an answer named: the earliest a later request can take effect in.
    let mut seen = 0u64;
    while !stop.load(Ordering::SeqCst) {
        // A little think time, so a run records thousands of operations, not tens of thousands.
        tokio::time::sleep(Duration::from_millis(rng.range(2, 12))).await;
        let call = if rng.range(0, 10) < 7 {
            match Amount::new(known + rng.range(1, 4)) {
                Ok(amount) => Call::Bid {
                    bidder: bidder.clone(),
                    amount,
                },
                Err(_) => Call::Read,
            }
        } else {
            Call::Read
        };
        // A client to be killed dies within its next request, while the request is in flight.
        let dies_in = kill
            .load(Ordering::SeqCst)
            .then(|| Duration::from_micros(rng.range(0, 2000)));
        let invoked = t0.elapsed();
        let answer = tokio::select! {
            answer = perform(&mut client, &call) => Some(answer),
            () = sleep_or_never(dies_in) => None,
        };
        let killed = answer.is_none();
        if killed {
            kill.store(false, Ordering::SeqCst);
        }
        let before = seen;
        let (returned, ret, auction) = match answer {
            None => (None, Return::Unknown, None),
            Some(Ok(done)) => {
                known = known.max(done.highest);
                seen = seen.max(done.number);
                let auction = match &done.ret {
                    Return::Bid(decision) => {
                        bid_auction(decision, done.number, before, client.last_attempts())
                    }
                    _ => Some(done.number),
                };
                (Some(t0.elapsed()), done.ret, auction)
            }
            Some(Err(ClientError::Exception { .. })) => (None, Return::Unknown, None),
            Some(Err(e)) => {
                log.problems.push(format!("client {process}: {e}"));
                (None, Return::Unknown, None)
            }
        };
        if let Call::Bid { bidder, amount } = &call
            && let Some(id) = client.last_request()
        {
            log.last_bids.retain(|b| b.id.session != id.session);
            log.last_bids.push(LastBid {
                id,
                bidder: bidder.clone(),
                amount: *amount,
                token: token.clone(),
                ret: ret.clone(),
                retried: client.last_attempts() > 1,
            });
        }
        let answered_after_retries = matches!(call, Call::Bid { .. })
            && returned.is_some()
            && ret != Return::Unknown
            && client.last_attempts() > 1;
        // An answer whose auction is unclear is recorded as unknown: it may have taken effect
        // in any auction from the one the client had seen on.
        let (auction, returned, ret) = match auction {
            Some(a) => (a, returned, ret),
            None => (before, None, Return::Unknown),
        };
        log.ops.push(Operation {
            client: process,
            auction,
            call,
            invoked,
            returned,
            ret,
        });
        if killed {
            // The client process died: its successor starts a new session.
            client = new_client();
            process = process.saturating_add(1000);
        } else if answered_after_retries {
            // A bid answered only after retries (across a failover) stays its session's last,
            // so the replay at the end checks its exactly-once answer.
            client = new_client();
        }
    }
    log
}

/// The auction a bid's answer is about. A refusal names it. Otherwise the answer shows the
/// auction as it was when the answer was made, which for a request retried across a failover
/// may be after the decision (exactly-once returns the first decision): then the auction is
/// sure only if it is still the one the client had seen before it sent the bid (`before`).
fn bid_auction(decision: &Decision, shown: u64, before: u64, attempts: u32) -> Option<u64> {
    match decision {
        Err(
            Refusal::Closed { auction }
            | Refusal::NotHigher { auction, .. }
            | Refusal::StillOpen { auction },
        ) => Some(*auction),
        _ if attempts <= 1 || shown == before => Some(shown),
        _ => None,
    }
}

async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// What a call got back: its outcome, and the auction the answer showed.
struct Done {
    ret: Return,
    /// The auction's number and highest bid.
    number: u64,
    highest: u64,
}

/// Performs one call.
async fn perform(client: &mut Client, call: &Call) -> Result<Done, ClientError> {
    match call {
        Call::Bid { bidder, amount } => {
            let o = client.bid(bidder, *amount).await?;
            Ok(Done {
                ret: Return::Bid(o.decision),
                number: o.auction.number,
                highest: o.auction.highest_amount().unwrap_or(0),
            })
        }
        Call::Read | Call::Expire => {
            let view = client.result().await?;
            Ok(Done {
                ret: Return::Read(read_view(&view)),
                number: view.number,
                highest: view.highest_amount().unwrap_or(0),
            })
        }
    }
}

/// For each fault, the time to the first definite answer to a bid sent after it.
fn recovery(faults: &[Fault], ops: &[Operation]) -> Vec<(FaultKind, Option<Duration>)> {
    faults
        .iter()
        .map(|f| {
            let first = ops
                .iter()
                .filter(|op| matches!(op.call, Call::Bid { .. }) && op.invoked >= f.at)
                .filter(|op| op.is_known())
                .filter_map(|op| op.returned)
                .min();
            (f.kind, first.map(|t| t.saturating_sub(f.at)))
        })
        .collect()
}

/// For each auction that a read saw closed (and whose start was answered), the first such
/// read's return minus the start's return plus the duration (zero if earlier); and how many
/// auctions no read saw closed.
fn close_lags(auctions: &[AuctionRecord], ops: &[Operation]) -> (Vec<Duration>, usize) {
    let mut first_closed: BTreeMap<u64, Duration> = BTreeMap::new();
    for op in ops {
        if let (Return::Read(view), Some(returned)) = (&op.ret, op.returned)
            && !view.open
        {
            let first = first_closed.entry(view.number).or_insert(returned);
            *first = (*first).min(returned);
        }
    }
    let mut lags = Vec::new();
    let mut unclosed = 0;
    for a in auctions {
        match first_closed.get(&a.number) {
            Some(seen) => {
                if let Some(returned) = a.start_returned {
                    lags.push(seen.saturating_sub(returned + a.duration));
                }
            }
            None if a.start_returned.is_some() => unclosed += 1,
            // A start without an answer may not have opened the auction at all.
            None => {}
        }
    }
    (lags, unclosed)
}

/// Every acknowledged bid must be in the auction it was made in: each auction seen closed was
/// won by its highest acknowledged bid (or by a higher bid whose outcome is unknown), and the
/// final read shows the latest auction, with at least its highest acknowledged bid.
fn check_acknowledged(
    ops: &[Operation],
    final_view: Option<&ReadView>,
    problems: &mut Vec<String>,
) {
    let mut acked: BTreeMap<u64, Amount> = BTreeMap::new();
    let mut made: HashSet<(&BidderId, Amount)> = HashSet::new();
    for op in ops {
        if let Call::Bid { bidder, amount } = &op.call {
            match &op.ret {
                Return::Bid(Ok(())) => {
                    let top = acked.entry(op.auction).or_insert(*amount);
                    *top = (*top).max(*amount);
                    made.insert((bidder, *amount));
                }
                Return::Unknown => {
                    made.insert((bidder, *amount));
                }
                _ => {}
            }
        }
    }
    // How each auction ended: its last read that saw it closed; for the final one, the final
    // read.
    let mut ended: BTreeMap<u64, (Duration, &ReadView)> = BTreeMap::new();
    for op in ops {
        if let (Return::Read(view), Some(returned)) = (&op.ret, op.returned)
            && !view.open
            && ended.get(&view.number).is_none_or(|(r, _)| *r < returned)
        {
            ended.insert(view.number, (returned, view));
        }
    }
    if let Some(view) = final_view {
        ended.insert(view.number, (Duration::MAX, view));
    }
    for (number, (_, view)) in &ended {
        let top = acked.get(number);
        let won = view.highest.as_ref().map(|(who, amount)| (who, *amount));
        let how = if view.open { "is open" } else { "closed" };
        if let Some(top) = top
            && won.is_none_or(|(_, amount)| amount < *top)
        {
            problems.push(format!(
                "an acknowledged bid of {top} in auction {number} is lost: it {how} with {:?}",
                view.highest
            ));
        }
        if let Some((who, amount)) = won
            && top.is_none_or(|top| amount > *top)
            && !made.contains(&(who, amount))
        {
            problems.push(format!(
                "auction {number} {how} with {amount} by {who}, which no client bid"
            ));
        }
    }
    let latest = ops
        .iter()
        .filter(|op| op.is_known() && op.call != Call::Expire)
        .map(|op| op.auction)
        .max();
    if let (Some(view), Some(latest)) = (final_view, latest)
        && view.number < latest
    {
        problems.push(format!(
            "the final read shows auction {}, but auction {latest} was seen before",
            view.number
        ));
    }
}

/// Asks every node's terminal for its state's version and digest, until the versions agree,
/// then compares the digests.
async fn check_same_state(cluster: &mut LocalCluster, problems: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // A node may still exit after the heal: across hosts, a leader paused until the heal
        // learns on waking that it was replaced, and exits by design. It starts again and
        // rejoins, as during the run.
        restart_dead(cluster);
        let mut seen = BTreeMap::new();
        for id in NODES {
            let Some(node) = cluster.node(id) else {
                continue;
            };
            if node.send_line("status").await.is_err() {
                continue;
            }
            if let Some(line) = node.next_line(Duration::from_secs(5)).await
                && let Some(vd) = version_and_digest(&line)
            {
                seen.insert(id, vd);
            }
        }
        let versions: Vec<u64> = seen.values().map(|(v, _)| *v).collect();
        let agreed = seen.len() == NODES.len() && versions.windows(2).all(|w| w[0] == w[1]);
        if agreed {
            let digests: Vec<&String> = seen.values().map(|(_, d)| d).collect();
            if digests.windows(2).any(|w| w[0] != w[1]) {
                problems.push(format!("members hold different states: {seen:?}"));
            }
            return;
        }
        if Instant::now() >= deadline {
            problems.push(format!("members did not reach one version: {seen:?}"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads "version V, digest D" from a node's status line.
fn version_and_digest(line: &str) -> Option<(u64, String)> {
    let rest = &line[line.find("version ")? + "version ".len()..];
    let (version, rest) = rest.split_once(", digest ")?;
    let digest: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    Some((version.parse().ok()?, digest))
}

/// Replays each session's last bid with its own request id, at the leader (the one address of
/// one host; across hosts, where every node takes connections, the leader's, as a status
/// names it, then the others): exactly-once must give back the first outcome. Returns how many
/// bids were replayed, and how many of those had needed retries.
async fn check_replays(
    addrs: &[SocketAddr],
    last_bids: &[LastBid],
    problems: &mut Vec<String>,
) -> (usize, usize) {
    let patience = Duration::from_secs(10);
    let leader = Client::with_addresses(addrs.to_vec(), patience)
        .status()
        .await
        .ok()
        .and_then(|s| s.leader_addr);
    let order: Vec<SocketAddr> = leader
        .into_iter()
        .chain(addrs.iter().copied().filter(|a| Some(*a) != leader))
        .collect();
    let connect = async {
        for addr in &order {
            let url = format!("http://{addr}");
            if let Ok(c) = pb::auction_client::AuctionClient::connect(url).await {
                return Some(c);
            }
        }
        None
    };
    let Ok(Some(mut c)) = tokio::time::timeout(patience, connect).await else {
        problems.push(format!("cannot connect to {addrs:?} to replay requests"));
        return (0, 0);
    };
    let (mut replayed, mut retried) = (0, 0);
    // The first few differences are enough to read; the rest are counted.
    let mut differ = Vec::new();
    for bid in last_bids {
        let Return::Bid(first) = &bid.ret else {
            continue;
        };
        let request = pb::BidRequest {
            id: Some(bid.id.into()),
            bidder: bid.bidder.to_string(),
            amount: bid.amount.get(),
            token: bid.token.expose().to_string(),
        };
        let again: Option<Decision> = match tokio::time::timeout(patience, c.bid(request)).await {
            Ok(Ok(reply)) => reply
                .into_inner()
                .decision
                .and_then(|d| Decision::try_from(d).ok()),
            Ok(Err(e)) => {
                problems.push(format!("replaying {:?} failed: {e}", bid.id));
                continue;
            }
            Err(_) => {
                problems.push(format!("replaying {:?} got no answer", bid.id));
                continue;
            }
        };
        replayed += 1;
        retried += usize::from(bid.retried);
        if again.as_ref() != Some(first) {
            differ.push(format!(
                "request {:?} first got {first:?}, and {again:?} when replayed",
                bid.id
            ));
        }
    }
    const SHOWN: usize = 5;
    if differ.len() > SHOWN {
        let more = differ.len() - SHOWN;
        differ.truncate(SHOWN);
        differ.push(format!(
            "... and {more} more of the {replayed} replayed requests got another outcome"
        ));
    }
    problems.extend(differ);
    (replayed, retried)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_replay_from_their_seed() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        let mut r = Rng::new(1);
        assert!((0..100).all(|_| (3..9).contains(&r.range(3, 9))));
        assert_eq!(r.range(4, 4), 4);
    }

    #[test]
    fn fault_kinds_have_keys_and_each_mode_draws_only_its_own() {
        for kind in FaultKind::ALL {
            assert_eq!(FaultKind::from_key(kind.key()), Some(kind));
            // Every kind is drawn in one mode or the other.
            assert!(
                FaultKind::SINGLE_HOST.contains(&kind) || FaultKind::MULTI_HOST.contains(&kind),
                "{kind:?}"
            );
        }
        assert!(
            FaultKind::SINGLE_HOST
                .iter()
                .all(|k| !FaultKind::NETWORK.contains(k))
        );
        assert!(
            FaultKind::MULTI_HOST
                .iter()
                .all(|k| !FaultKind::HOST.contains(k))
        );
        assert!(
            FaultKind::NETWORK
                .iter()
                .all(|k| FaultKind::MULTI_HOST.contains(k))
        );
        // The single-host default is every kind but the network's, as before there were any.
        assert_eq!(
            FaultKind::SINGLE_HOST.len() + FaultKind::NETWORK.len(),
            FaultKind::ALL.len()
        );
        assert_eq!(Config::new("n", 1).kinds, FaultKind::SINGLE_HOST.to_vec());
        assert_eq!(Config::new("n", 1).mode, Mode::SingleHost);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let ms = Duration::from_millis;
        let v: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&v, 50.0), Some(ms(50)));
        assert_eq!(percentile(&v, 99.0), Some(ms(99)));
        assert_eq!(percentile(&v, 100.0), Some(ms(100)));
        assert_eq!(percentile(&[ms(7)], 99.0), Some(ms(7)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn status_lines_give_their_version_and_digest() {
        let leader = "leader 5400, next in line [5401], epoch 2, version 17, digest 00ab12cd34ef5678; auction 1";
        assert_eq!(
            version_and_digest(leader),
            Some((17, "00ab12cd34ef5678".to_string()))
        );
        let replica = "this node is a replica; node 5400 leads (epoch 2, version 17, digest 00ab12cd34ef5678). Type";
        assert_eq!(version_and_digest(replica), version_and_digest(leader));
        assert_eq!(version_and_digest("this node is starting"), None);
    }

    #[test]
    fn recovery_is_measured_to_the_first_answered_bid_sent_after_the_fault() {
        let ms = Duration::from_millis;
        let bid = |invoked: u64, returned: Option<u64>| Operation {
            client: 1,
            auction: 1,
            call: Call::Bid {
                bidder: BidderId::new("a").unwrap(),
                amount: Amount::new(1).unwrap(),
            },
            invoked: ms(invoked),
            returned: returned.map(ms),
            ret: if returned.is_some() {
                Return::Bid(Ok(()))
            } else {
                Return::Unknown
            },
        };
        let ops = [
            bid(90, Some(300)),
            bid(110, None),
            bid(120, Some(160)),
            bid(130, Some(150)),
        ];
        let faults = [Fault {
            kind: FaultKind::KillLeader,
            at: ms(100),
            target: String::new(),
        }];
        assert_eq!(
            recovery(&faults, &ops),
            vec![(FaultKind::KillLeader, Some(ms(50)))]
        );
    }

    #[test]
    fn a_bid_is_placed_in_the_auction_its_answer_surely_names() {
        let ok: Decision = Ok(());
        // Answered at the first attempt: the auction shown.
        assert_eq!(bid_auction(&ok, 3, 2, 1), Some(3));
        // After retries: sure only if the client had seen that auction already.
        assert_eq!(bid_auction(&ok, 3, 3, 2), Some(3));
        assert_eq!(bid_auction(&ok, 3, 2, 2), None);
        // A refusal names its auction.
        let closed = Err(Refusal::Closed { auction: 2 });
        assert_eq!(bid_auction(&closed, 3, 1, 5), Some(2));
    }

    #[test]
    fn an_auctions_deadline_passes_within_its_window() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let a = AuctionRecord {
            number: 2,
            duration: s(3),
            start_invoked: s(10),
            start_returned: Some(ms(10_050)),
        };
        let bound = CLOSE_BOUND.for_timeout(ms(500));
        assert_eq!(bound, ms(2500));
        assert_eq!(a.close_window(bound), (ms(12_999), Some(ms(15_550))));
        let e = a.expire(bound, s(20));
        assert_eq!((e.call, e.auction), (Call::Expire, 2));
        assert_eq!((e.returned, e.ret), (Some(ms(15_550)), Return::Expired));
        // A window that outlives the history leaves the deadline unreturned.
        let e = a.expire(bound, s(15));
        assert_eq!((e.returned, e.ret), (None, Return::Unknown));
        // As does a start without an answer.
        let lost = AuctionRecord {
            start_returned: None,
            ..a
        };
        assert_eq!(lost.expire(bound, s(100)).returned, None);
    }

    #[test]
    fn close_lags_run_from_the_start_answer_plus_the_duration() {
        let ms = Duration::from_millis;
        let record = |number, returned| AuctionRecord {
            number,
            duration: ms(2000),
            start_invoked: ms(0),
            start_returned: Some(ms(returned)),
        };
        let read = |number, open, returned| Operation {
            client: 1,
            auction: number,
            call: Call::Read,
            invoked: ms(returned - 1),
            returned: Some(ms(returned)),
            ret: Return::Read(ReadView {
                number,
                open,
                highest: None,
                bidders: 0,
            }),
        };
        let ops = [
            read(1, true, 2090),
            read(1, false, 2150),
            read(1, false, 2120),
            read(2, false, 1500),
        ];
        let auctions = [record(1, 100), record(2, 0), record(3, 0)];
        assert_eq!(
            close_lags(&auctions, &ops),
            (vec![ms(20), Duration::ZERO], 1)
        );
    }

    #[test]
    fn a_lost_or_invented_winner_is_caught() {
        let ms = Duration::from_millis;
        let c = |name: &str| BidderId::new(name).unwrap();
        let bid = |auction, name: &str, amount, ret| Operation {
            client: 1,
            auction,
            call: Call::Bid {
                bidder: c(name),
                amount: Amount::new(amount).unwrap(),
            },
            invoked: ms(1),
            returned: Some(ms(2)),
            ret,
        };
        let closed_read = |auction, highest: Option<(&str, u64)>| Operation {
            client: 2,
            auction,
            call: Call::Read,
            invoked: ms(5),
            returned: Some(ms(6)),
            ret: Return::Read(ReadView {
                number: auction,
                open: false,
                highest: highest.map(|(n, a)| (c(n), Amount::new(a).unwrap())),
                bidders: 1,
            }),
        };
        let ok = || Return::Bid(Ok(()));
        let good = [
            bid(1, "a", 10, ok()),
            bid(1, "b", 12, Return::Unknown),
            closed_read(1, Some(("b", 12))),
            bid(2, "a", 3, ok()),
        ];
        let fin = ReadView {
            number: 2,
            open: true,
            highest: Some((c("a"), Amount::new(3).unwrap())),
            bidders: 1,
        };
        let mut problems = Vec::new();
        check_acknowledged(&good, Some(&fin), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        // Auction 1 lost the bid of 10.
        let lost = [bid(1, "a", 10, ok()), closed_read(1, Some(("a", 9)))];
        check_acknowledged(&lost, None, &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("bid of 10 in auction 1 is lost"));
        // Auction 1 was won by a bid nobody made.
        problems.clear();
        let invented = [bid(1, "a", 10, ok()), closed_read(1, Some(("z", 50)))];
        check_acknowledged(&invented, None, &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("50 by z, which no client bid"));
        // The final read went back to an older auction.
        problems.clear();
        let older = ReadView { number: 1, ..fin };
        check_acknowledged(&good, Some(&older), &mut problems);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("but auction 2 was seen")),
            "{problems:?}"
        );
    }
}
