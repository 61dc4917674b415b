//! Fault runs: a real three-node cluster, concurrent clients that bid and read while every
//! operation is recorded, and a nemesis that kills and pauses nodes and kills clients at random
//! moments. Every choice comes from one seed, so a failing run names the seed that replays it.
//!
//! At the end of a run: the history must be linearizable; every acknowledged bid must be
//! reflected in the final state; all members must hold identical states; no process may have
//! panicked; and replaying each session's last bid must return its first outcome.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::process::Signal;
use tokio::time::Instant;

use crate::auction::Decision;
use crate::checker;
use crate::client::{Client, ClientError};
use crate::cluster::{LocalCluster, Spec, Transcript, leader_of};
use crate::history::{Call, Op, ReadView, Return};
use crate::pb;
use crate::types::{Amount, BidderId, RequestId, Token};

/// The node ids of the cluster, as in the seed.
const NODES: [u16; 3] = [5400, 5401, 5402];

/// A small, fast, seedable generator (SplitMix64): runs must replay exactly from their seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

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
}

impl FaultKind {
    pub const ALL: [Self; 9] = [
        Self::KillLeader,
        Self::KillReplica,
        Self::PauseLeaderShort,
        Self::PauseLeaderLong,
        Self::PauseReplicaShort,
        Self::PauseReplicaLong,
        Self::KillDuringFailover,
        Self::PauseDuringFailover,
        Self::KillClient,
    ];

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
        }
    }
}

/// One injected fault.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: FaultKind,
    /// Since the start of the run.
    pub at: Duration,
    pub target: String,
}

/// How to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    /// How long faults are injected; clients go on a little longer while the cluster heals.
    pub faults_for: Duration,
    pub clients: usize,
    pub node_bin: PathBuf,
    pub heartbeat_ms: u64,
    pub timeout_ms: u64,
}

impl Config {
    /// Ten seconds of faults against 8 clients, with a 50 ms heartbeat and a 500 ms timeout.
    pub fn new(node_bin: impl Into<PathBuf>, seed: u64) -> Self {
        Self {
            seed,
            faults_for: Duration::from_secs(10),
            clients: 8,
            node_bin: node_bin.into(),
            heartbeat_ms: 50,
            timeout_ms: 500,
        }
    }
}

/// What a run saw and found.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub ops: usize,
    /// Operations whose outcome is unknown.
    pub unknown: usize,
    pub faults: Vec<Fault>,
    /// For each fault, the time from the fault to the first definite answer to a bid sent after
    /// it; `None` if no bid was answered before the run ended.
    pub recovery: Vec<(FaultKind, Option<Duration>)>,
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
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Figures over many runs: what a soak reports.
#[derive(Debug, Default)]
pub struct Summary {
    pub runs: usize,
    /// Seeds of the runs that found a problem.
    pub failed: Vec<u64>,
    pub ops: usize,
    pub unknown: usize,
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
}

impl Summary {
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
             retries), every one with its first outcome; longest check of a history: {:.2} s",
            self.replayed,
            self.replayed_after_retries,
            self.longest_check.as_secs_f64()
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "| fault | count | time from the fault to the next answered bid: median | p99 | max |"
        )?;
        writeln!(f, "| --- | ---: | ---: | ---: | ---: |")?;
        let ms = |d: Option<Duration>| {
            d.map_or_else(
                || "-".to_string(),
                |d| format!("{:.0} ms", d.as_secs_f64() * 1e3),
            )
        };
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
    ops: Vec<Op>,
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
        problems: Vec::new(),
        check_time: Duration::ZERO,
        replayed: 0,
        replayed_after_retries: 0,
        transcript: Vec::new(),
    };
    let mut cluster = match start_cluster(cfg).await {
        Ok(c) => c,
        Err(e) => {
            report
                .problems
                .push(format!("the cluster did not start: {e}"));
            return report;
        }
    };
    let addr = cluster.spec.client_addr();
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let kills: Vec<Arc<AtomicBool>> = (0..cfg.clients)
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let tasks: Vec<_> = (0..cfg.clients)
        .map(|i| {
            let seed = cfg.seed ^ (i as u64 + 1).wrapping_mul(0x5851_f42d_4c95_7f2d);
            let (stop, kill) = (stop.clone(), kills[i].clone());
            tokio::spawn(client_loop(i, addr, seed, t0, stop, kill))
        })
        .collect();

    let mut rng = Rng::new(cfg.seed);
    while t0.elapsed() < cfg.faults_for {
        // Every iteration draws the same numbers, whatever it then does, so a seed replays the
        // same choices even when timing makes a fault impossible.
        let draws = Draws::new(&mut rng);
        tokio::time::sleep(Duration::from_millis(300 + draws.gap % 700)).await;
        restart_dead(&mut cluster);
        if let Some(fault) = inject(&mut cluster, cfg, &draws, &kills, t0).await {
            report.faults.push(fault);
        }
    }

    // Heal: resume everything and bring the dead back until all three are members again.
    for id in NODES {
        let _ = cluster.signal(id, Signal::CONT);
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
    // The final read, part of the history like any other.
    let mut reader = Client::new(addr, Duration::from_secs(10));
    let invoked = t0.elapsed();
    let final_view = reader.result().await;
    match &final_view {
        Ok(view) => ops.push(Op {
            client: u32::MAX,
            auction: 1,
            call: Call::Read,
            invoked,
            returned: Some(t0.elapsed()),
            ret: Return::Read(read_view(view)),
        }),
        Err(e) => report.problems.push(format!("the final read failed: {e}")),
    }
    ops.sort_by_key(|op| op.invoked);
    report.ops = ops.len();
    report.unknown = ops.iter().filter(|op| !op.is_known()).count();
    report.recovery = recovery(&report.faults, &ops);

    let started = std::time::Instant::now();
    let checked = checker::check(&ops);
    report.check_time = started.elapsed();
    if let Err(v) = checked {
        report
            .problems
            .push(format!("the history is not linearizable:\n{v}"));
    }
    if let Ok(view) = &final_view {
        check_acknowledged(&ops, view, &mut report.problems);
    }
    check_same_state(&mut cluster, &mut report.problems).await;
    let (replayed, retried) = check_replays(addr, &last_bids, &mut report.problems).await;
    report.replayed = replayed;
    report.replayed_after_retries = retried;
    if let Ok(before) = &final_view {
        let mut reader = Client::new(addr, Duration::from_secs(10));
        match reader.result().await {
            Ok(after) if read_view(&after) == read_view(before) => {}
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
    report.transcript = cluster.transcript.lines();
    report
}

async fn start_cluster(cfg: &Config) -> Result<LocalCluster, String> {
    let mut spec = Spec::on_free_ports(&cfg.node_bin).map_err(|e| e.to_string())?;
    spec.node_args = vec![
        "--heartbeat-ms".into(),
        cfg.heartbeat_ms.to_string(),
        "--timeout-ms".into(),
        cfg.timeout_ms.to_string(),
        "--duration".into(),
        "36000".into(),
    ];
    let mut cluster = LocalCluster::new(spec, Transcript::new(false));
    cluster.start_nodes(&NODES, Duration::from_secs(20)).await?;
    Ok(cluster)
}

/// Restarts dead nodes until all are members again, for at most 30 s.
async fn heal(cluster: &mut LocalCluster) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        restart_dead(cluster);
        let last = match cluster.status(Duration::from_millis(500)).await {
            Ok(s) if s.members.len() == NODES.len() && leader_of(&s).is_some() => return Ok(()),
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
}

impl Draws {
    fn new(rng: &mut Rng) -> Self {
        Self {
            gap: rng.next_u64(),
            kind: rng.next_u64(),
            target: rng.next_u64(),
            pause: rng.next_u64(),
            between: rng.next_u64(),
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

/// Injects the fault `draws` chooses, if the cluster's state allows it. Pauses are waited out
/// here: their length is the fault.
async fn inject(
    cluster: &mut LocalCluster,
    cfg: &Config,
    draws: &Draws,
    kills: &[Arc<AtomicBool>],
    t0: Instant,
) -> Option<Fault> {
    let kind = FaultKind::ALL[(draws.kind % FaultKind::ALL.len() as u64) as usize];
    let at = t0.elapsed();
    if kind == FaultKind::KillClient {
        let i = (draws.target % kills.len() as u64) as usize;
        kills[i].store(true, Ordering::SeqCst);
        return Some(Fault {
            kind,
            at,
            target: format!("client {i}"),
        });
    }
    // Node faults need to know who leads.
    let status = cluster.status(Duration::from_millis(300)).await.ok()?;
    let leader = leader_of(&status)?;
    // Members whose process runs now: the same pid, not a restarted process with the same id.
    let members: Vec<u16> = status
        .members
        .iter()
        .filter_map(|m| {
            let id = u16::try_from(m.id).ok()?;
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
    let at = t0.elapsed();
    let target = match kind {
        FaultKind::KillClient => unreachable!("handled above"),
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
    };
    Some(Fault { kind, at, target })
}

async fn pause(cluster: &LocalCluster, id: u16, length: Duration) {
    if cluster.signal(id, Signal::STOP).is_ok() {
        tokio::time::sleep(length).await;
        let _ = cluster.signal(id, Signal::CONT);
    }
}

fn read_view(view: &pb::AuctionView) -> ReadView {
    let highest = match (
        BidderId::new(view.highest_bidder.clone()),
        Amount::new(view.highest_bid),
    ) {
        (Ok(who), Ok(amount)) => Some((who, amount)),
        _ => None,
    };
    ReadView {
        number: view.number,
        open: view.open,
        highest,
        bidders: view.bidders,
    }
}

/// One client process after another (a killed one is replaced by a new one with a new
/// session), bidding a little above the highest bid it knows, or reading, until `stop`.
async fn client_loop(
    index: usize,
    addr: SocketAddr,
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
    let token = match Token::random() {
        Ok(t) => t,
        Err(e) => {
            log.problems.push(format!("client {index}: no token: {e}"));
            return log;
        }
    };
    let new_client = || {
        let mut c = Client::new(addr, Duration::from_secs(5));
        c.set_token(bidder.clone(), token.clone());
        c
    };
    let mut process = u32::try_from(index).unwrap_or(u32::MAX);
    let mut client = new_client();
    let mut known = 0u64;
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
        let (returned, ret) = match answer {
            None => (None, Return::Unknown),
            Some(Ok((ret, highest))) => {
                known = known.max(highest);
                (Some(t0.elapsed()), ret)
            }
            Some(Err(ClientError::Exception { .. })) => (None, Return::Unknown),
            Some(Err(e)) => {
                log.problems.push(format!("client {process}: {e}"));
                (None, Return::Unknown)
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
        log.ops.push(Op {
            client: process,
            auction: 1,
            call,
            invoked,
            returned,
            ret,
        });
        let answered_after_retries = log.ops.last().is_some_and(|op| {
            matches!(op.call, Call::Bid { .. }) && op.is_known() && client.last_attempts() > 1
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

async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Performs one call; returns its outcome and the highest bid the answer showed.
async fn perform(client: &mut Client, call: &Call) -> Result<(Return, u64), ClientError> {
    match call {
        Call::Bid { bidder, amount } => {
            let o = client.bid(bidder, *amount).await?;
            Ok((Return::Bid(o.decision), o.auction.highest_bid))
        }
        Call::Read | Call::Expire => {
            let view = client.result().await?;
            Ok((Return::Read(read_view(&view)), view.highest_bid))
        }
    }
}

/// For each fault, the time to the first definite answer to a bid sent after it.
fn recovery(faults: &[Fault], ops: &[Op]) -> Vec<(FaultKind, Option<Duration>)> {
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

fn check_acknowledged(ops: &[Op], view: &pb::AuctionView, problems: &mut Vec<String>) {
    let max_acked = ops
        .iter()
        .filter_map(|op| match (&op.call, &op.ret) {
            (Call::Bid { amount, .. }, Return::Bid(Ok(()))) => Some(amount.get()),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    if view.highest_bid < max_acked {
        problems.push(format!(
            "an acknowledged bid of {max_acked} is lost: the final highest bid is {}",
            view.highest_bid
        ));
    }
}

/// Asks every node's terminal for its state's version and digest, until the versions agree,
/// then compares the digests.
async fn check_same_state(cluster: &mut LocalCluster, problems: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
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

/// Replays each session's last bid with its own request id: exactly-once must give back the
/// first outcome. Returns how many bids were replayed, and how many of those had needed retries.
async fn check_replays(
    addr: SocketAddr,
    last_bids: &[LastBid],
    problems: &mut Vec<String>,
) -> (usize, usize) {
    let url = format!("http://{addr}");
    let patience = Duration::from_secs(10);
    let connected = tokio::time::timeout(patience, pb::auction_client::AuctionClient::connect(url));
    let Ok(Ok(mut c)) = connected.await else {
        problems.push("cannot connect to replay requests".into());
        return (0, 0);
    };
    let (mut replayed, mut retried) = (0, 0);
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
            problems.push(format!(
                "request {:?} first got {first:?}, and {again:?} when replayed",
                bid.id
            ));
        }
    }
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
        let bid = |invoked: u64, returned: Option<u64>| Op {
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
}
