//! The leader's rules as a pure engine: events in, actions out.
//!
//! The leader's shell (the product's `leader` module) owns the sockets, the clock and the
//! authority that fences; it feeds every event to [`Engine::handle`], calls [`Engine::advance`],
//! and performs the [`Action`]s it takes from [`Engine::take_actions`], in order. The engine
//! decides everything else, and each rule below is unit-tested with times the test chooses:
//! - **Group commit.** Client requests queued while a batch replicates go out together once it
//!   commits; membership changes go out at once. A batch is committed when every member has
//!   acknowledged its version (the original hand-in's rule: replicas are updated before the
//!   client is answered), and only then are its replies released.
//! - **Fence, then remove.** A member that stops acknowledging for longer than the timeout, or
//!   stays away that long, or whose stream ends, is fenced through the authority
//!   ([`Action::Fence`]); its removal is committed only once the fence is confirmed
//!   ([`Event::Fenced`]). A member that cannot be fenced stays, and commits wait for it: a
//!   member dropped while it can still act could later lead with a stale state.
//! - **A stalled leader forgives.** A tick that comes much later than scheduled means the
//!   leader itself was paused or starved; the silence it would measure is its own, so every
//!   follower's clock restarts instead of being fenced.
//! - **Closed is committed.** A read that would first see the deadline pass, and the first tick
//!   after it, commit the auction clock ([`ChangeKind::Tick`]), so a successor cannot say
//!   "open" again (docs/design.md, "Time").
//! - **Leaving drains.** A leader asked to stop refuses new requests, answers those it took,
//!   then tells every replica it leaves ([`Message::Leaving`]) and stops.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::auction::{Decision, Observation, Op};
use crate::replication::{
    Change, ChangeKind, ClockReading, ClusterState, ConnId, Followers, Lateness, Member,
};
use crate::types::{AuctionLength, Millis, NodeId, RequestId};

/// The log target of auction events: an auction opened or closed (INFO), a bid accepted
/// (DEBUG, so that the busiest path logs nothing unless asked to). Show them all with
/// `RUST_LOG=info,auction::events=debug`.
pub const EVENTS: &str = "auction::events";

/// The leader's timing.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How often the leader tells idle replicas it is alive.
    pub heartbeat: Duration,
    /// How long a member may leave a message unacknowledged (or stay away after a failover)
    /// before it is fenced and removed. Replicas use the same value to give up on a silent
    /// leader.
    pub timeout: Duration,
    /// How long the leader's shell keeps polling its sockets instead of sleeping after each
    /// small batch of a run; zero never. The engine does not use it.
    pub spin: Duration,
}

/// How a read is confirmed before it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    /// From the leader's committed state: sound where a fence stops the deposed leader's
    /// process (one host: SIGKILL), so no deposed leader is left to answer.
    Local,
    /// Through the members: a read waits until every member acknowledged a message sent after
    /// it arrived (a barrier, batched with the changes). A deposed leader cannot get that ack
    /// from the member that replaced it, so it never answers from its old state
    /// (docs/design.md, "Multi-host mode").
    Barrier,
}

/// A request the engine orders: a change, or a linearizable read.
#[derive(Debug)]
pub enum Request {
    /// A change of the auction; `id` makes it exactly-once (`None` for the terminal).
    Change { id: Option<RequestId>, op: Op },
    /// The current result.
    Read,
}

/// The answer to a [`Request`], released once its batch is committed.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Decision(Decision, Observation),
    Result(Observation),
}

/// What the shell learned about a process that used a joiner's id before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// It is gone: it can act no more (as good as a confirmed fence).
    Gone,
    /// It is alive.
    Alive,
    /// Whether it lives cannot be told now.
    Unknown(String),
}

/// Why a node may not join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinRefusal {
    /// It claims the leader's own id.
    LeadersId(NodeId),
    /// Another live process uses its id.
    InUse { id: NodeId, pid: u32 },
    /// Whether the process that used its id lives cannot be told yet.
    Unchecked { id: NodeId, why: String },
}

impl std::fmt::Display for JoinRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LeadersId(id) => write!(f, "node id {id} is the leader's own id"),
            Self::InUse { id, pid } => write!(f, "node id {id} is already in use by pid {pid}"),
            Self::Unchecked { id, why } => {
                write!(
                    f,
                    "cannot check the process that used node id {id} yet: {why}"
                )
            }
        }
    }
}

/// What reaches the engine.
#[derive(Debug)]
pub enum Event<R> {
    /// A client or the terminal asks; `reply` is the shell's token for the answer.
    Request { request: Request, reply: R },
    /// A replica opened a stream and proved who it is. `displaced` holds every other process
    /// that used its id ([`Engine::displaced_by`]) and what the shell found about each.
    Join {
        conn: ConnId,
        node: Member,
        displaced: Vec<(Member, Probe)>,
    },
    /// A replica acknowledged message `seq` of its stream, having applied `version`.
    Ack {
        conn: ConnId,
        seq: u64,
        version: u64,
    },
    /// A replica stream ended.
    Gone { conn: ConnId },
    /// A replica said it leaves on purpose, and its stream ends.
    Left { conn: ConnId },
    /// The stream could not take another message: the replica is hopelessly behind.
    Backlogged { conn: ConnId },
    /// The authority recorded `node` as a member: its join may be committed.
    Admitted { node: Member },
    /// The authority could not record `node` as a member.
    AdmitFailed { node: Member, why: String },
    /// The authority confirmed that `node` can act no more.
    Fenced { node: Member },
    /// The authority could not fence `node`.
    FenceFailed { node: Member, why: String },
    /// The heartbeat timer fired; it was due at `scheduled`.
    Tick { scheduled: Instant },
    /// The authority says another node leads now: this leader stops at once, answering nothing
    /// more (what it has not committed, the new leader decides; clients retry there).
    Deposed,
    /// The node was asked to stop: drain, then hand over.
    Stop,
}

/// A message on one replica stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The whole state, first on every stream.
    Snapshot(Box<ClusterState>),
    /// The leader is alive; its auction clock reads `clock`.
    Heartbeat { clock: Millis },
    /// The leader leaves on purpose: take over once its process is gone, without fencing it.
    Leaving,
}

/// One batch of changes, sent to every replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Append {
    pub generation: crate::replication::Generation,
    pub epoch: u64,
    /// The version the first change makes.
    pub first_version: u64,
    pub changes: Vec<Change>,
}

/// What the shell must do, in the order given.
#[derive(Debug)]
pub enum Action<R> {
    /// Send `message` as message `seq` of stream `conn`.
    Send {
        conn: ConnId,
        seq: u64,
        message: Message,
    },
    /// Send `append` on each stream, as the message numbered beside it.
    Append {
        to: Vec<(ConnId, u64)>,
        append: Append,
    },
    /// Answer a request; its batch is committed.
    Reply { to: R, reply: Reply },
    /// Refuse a request undecided here (this leader is leaving, or was deposed); the client
    /// may send it again elsewhere, with the same id.
    Refuse { to: R },
    /// Refuse a joining node and close its stream.
    RefuseJoin { conn: ConnId, why: JoinRefusal },
    /// Record `node`, which holds the state, as a member with the authority, then report
    /// [`Event::Admitted`] or [`Event::AdmitFailed`].
    Admit { node: Member },
    /// Fence `node` through the authority, then report [`Event::Fenced`] or
    /// [`Event::FenceFailed`].
    Fence { node: Member },
    /// The members changed (published for the replica port's admission checks).
    Members(Vec<Member>),
    /// A batch of `requests` client requests was formed (for the shell's polling policy).
    Batch { requests: usize },
    /// Handed over: the shell stops acting.
    Stop,
}

/// A batch whose replies wait for every member to apply `version` (and, for a read barrier,
/// to acknowledge the message numbered beside its stream).
#[derive(Debug)]
struct Round<R> {
    version: u64,
    barrier: Vec<(ConnId, u64)>,
    replies: Vec<(R, Reply)>,
}

/// The leader's state and rules. `R` is the shell's token for where a reply goes.
#[derive(Debug)]
pub struct Engine<R> {
    me: Member,
    state: ClusterState,
    /// The auction clock when this node took the lead (or founded), on this node's monotonic
    /// clock: the leader advances the auction clock by monotonic time only, so no step of the
    /// wall clock moves a deadline (docs/design.md, "Time").
    clock: ClockReading,
    followers: Followers<()>,
    timing: Timing,
    /// How reads are confirmed.
    reads: Reads,
    /// Requests that arrived since the last batch went out.
    queued: Vec<(Request, R)>,
    /// Membership and clock changes that arrived since the last batch went out.
    queued_changes: Vec<ChangeKind>,
    /// Batches sent and not yet acknowledged by every member, oldest first.
    rounds: VecDeque<Round<R>>,
    /// Members whose fence was asked for and is not yet confirmed or failed.
    fencing: Vec<Member>,
    /// Joiners whose admission was asked for and is not yet recorded or failed.
    admitting: Vec<Member>,
    /// Set once the node was asked to stop: until then, the leader answers what it has taken
    /// (every batch in flight must commit), refuses what comes new, then hands over.
    leaving_by: Option<Instant>,
    /// Handed over: nothing more happens.
    stopped: bool,
    /// What the shell must do next.
    actions: Vec<Action<R>>,
}

impl<R> Engine<R> {
    /// The engine of a leader `me` on `state`, whose auction clock resumes from `clock`.
    /// `initial` changes (opening the first auction, or taking over from a failed leader) form
    /// the first batch, at the first [`Engine::advance`]. `reads` says how reads are confirmed.
    pub fn new(
        me: Member,
        state: ClusterState,
        clock: ClockReading,
        initial: Vec<ChangeKind>,
        timing: Timing,
        reads: Reads,
    ) -> Self {
        Self {
            me,
            state,
            clock,
            followers: Followers::default(),
            timing,
            reads,
            queued: Vec::new(),
            queued_changes: initial,
            rounds: VecDeque::new(),
            fencing: Vec::new(),
            admitting: Vec::new(),
            leaving_by: None,
            stopped: false,
            actions: Vec::new(),
        }
    }

    /// The replicated state as this leader has applied it (committed or not).
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// This leader's identity.
    pub fn me(&self) -> Member {
        self.me
    }

    /// The auction clock at `now`: monotonic time since this node took the lead, never behind
    /// the state's own clock.
    pub fn clock_at(&self, now: Instant) -> Millis {
        self.clock.at(now).max(self.state.clock)
    }

    /// Whether the engine handed over and does nothing more.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Whether every request taken has been answered and every change committed.
    pub fn drained(&self) -> bool {
        self.rounds.is_empty() && self.queued.is_empty() && self.queued_changes.is_empty()
    }

    /// The actions decided since the last call, in the order the shell must perform them.
    pub fn take_actions(&mut self) -> Vec<Action<R>> {
        std::mem::take(&mut self.actions)
    }

    /// The other processes that used `node`'s id: the one streaming under it, the one listed
    /// as a member. The shell probes each before it reports the [`Event::Join`].
    pub fn displaced_by(&self, node: &Member) -> Vec<Member> {
        let attached = self
            .followers
            .conn_of(node.id)
            .and_then(|c| self.followers.get(c))
            .map(|f| f.node);
        let listed = self.state.member(node.id).copied();
        let mut displaced: Vec<Member> = [attached, listed]
            .into_iter()
            .flatten()
            .filter(|old| old != node)
            .collect();
        displaced.dedup();
        displaced
    }

    /// Takes one event that happened at `now`.
    pub fn handle(&mut self, event: Event<R>, now: Instant) {
        if self.stopped {
            if let Event::Request { reply, .. } = event {
                self.actions.push(Action::Refuse { to: reply });
            }
            return;
        }
        match event {
            Event::Request { reply, .. } if self.leaving_by.is_some() => {
                self.actions.push(Action::Refuse { to: reply });
            }
            Event::Request { request, reply } => self.queued.push((request, reply)),
            Event::Join {
                conn,
                node,
                displaced,
            } => self.on_join(conn, node, displaced, now),
            Event::Ack { conn, seq, version } => self.on_ack(conn, seq, version),
            Event::Gone { conn } => {
                if let Some(f) = self.followers.detach(conn) {
                    if self.state.has_member(&f.node) {
                        warn!(node = %f.node.id, "member's stream ended");
                        self.fence(f.node);
                    } else {
                        debug!(node = %f.node.id, "joining node's stream ended");
                    }
                }
            }
            Event::Left { conn } => {
                if let Some(f) = self.followers.detach(conn) {
                    if self.state.has_member(&f.node) {
                        info!(node = %f.node.id, "member left");
                        self.queue_leave(f.node);
                    } else {
                        debug!(node = %f.node.id, "joining node left");
                    }
                }
            }
            Event::Backlogged { conn } => {
                if let Some(f) = self.followers.get(conn) {
                    let node = f.node;
                    warn!(node = %node.id, "replica is too far behind");
                    if self.state.has_member(&node) {
                        self.fence(node);
                    } else {
                        self.followers.detach(conn);
                    }
                }
            }
            Event::Admitted { node } => {
                self.admitting.retain(|m| *m != node);
                let synced = self
                    .followers
                    .conn_of(node.id)
                    .and_then(|c| self.followers.get(c))
                    .is_some_and(|f| f.node == node && f.synced());
                if synced && !self.state.has_member(&node) {
                    info!(node = %node.id, "adding member");
                    self.queued_changes.push(ChangeKind::Join(node));
                }
            }
            Event::AdmitFailed { node, why } => {
                self.admitting.retain(|m| *m != node);
                warn!(node = %node.id, "cannot record the member: {why}");
                if let Some(conn) = self.followers.conn_of(node.id)
                    && self.followers.get(conn).is_some_and(|f| f.node == node)
                {
                    self.followers.detach(conn);
                    let why = JoinRefusal::Unchecked { id: node.id, why };
                    self.actions.push(Action::RefuseJoin { conn, why });
                }
            }
            Event::Fenced { node } => {
                self.fencing.retain(|m| *m != node);
                self.on_fenced(node);
            }
            Event::FenceFailed { node, why } => {
                self.fencing.retain(|m| *m != node);
                error!(node = %node.id, pid = node.pid, "cannot fence, keeping the member: {why}");
            }
            Event::Tick { scheduled } => self.on_tick(scheduled, now),
            Event::Deposed => {
                warn!("another node leads now: stopping without answering");
                let pending: Vec<R> = self
                    .queued
                    .drain(..)
                    .map(|(_, to)| to)
                    .chain(
                        self.rounds
                            .drain(..)
                            .flat_map(|r| r.replies.into_iter().map(|(to, _)| to)),
                    )
                    .collect();
                for to in pending {
                    self.actions.push(Action::Refuse { to });
                }
                self.queued_changes.clear();
                self.stopped = true;
                self.actions.push(Action::Stop);
            }
            Event::Stop => {
                if self.leaving_by.is_none() {
                    info!("leaving: answering the requests in flight, then handing over");
                    self.leaving_by = Some(now + self.timing.timeout);
                }
            }
        }
    }

    /// Sends the next batch, then releases the replies of committed batches; a leader that is
    /// leaving hands over once drained (or once its time is up).
    ///
    /// Client requests go out one batch at a time: those that arrive while a batch replicates
    /// wait and go out together once it commits, so under load batches grow with the load
    /// instead of waking every replica once per leader wake-up (group commit). Membership
    /// changes go out at once, because a batch that waits for a fenced member commits only
    /// when that member's removal is in the state.
    pub fn advance(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        let committed = self.take_committed();
        let requests_may_go = self.rounds.is_empty() && !self.queued.is_empty();
        if requests_may_go || !self.queued_changes.is_empty() {
            self.send_batch(now);
        }
        // The next batch is on its way to the replicas before the replies are written, so the
        // replicas apply it while the leader answers.
        for round in committed {
            self.release(round);
        }
        // With no follower to wait for, a batch is committed as soon as it is applied.
        for round in self.take_committed() {
            self.release(round);
        }
        if let Some(by) = self.leaving_by
            && (self.drained() || now >= by)
        {
            self.hand_over(now);
        }
    }

    fn release(&mut self, round: Round<R>) {
        for (to, reply) in round.replies {
            self.actions.push(Action::Reply { to, reply });
        }
    }

    /// Tells every replica that this leader leaves on purpose, so that the first member in line
    /// takes over as soon as this process is gone, without fencing it.
    fn hand_over(&mut self, now: Instant) {
        if !self.drained() {
            warn!("leaving with requests unanswered: their clients will send them again");
        }
        let conns: Vec<ConnId> = self.followers.iter_mut().map(|(c, _)| c).collect();
        for conn in conns {
            self.send(conn, Message::Leaving, now);
        }
        info!("handed over");
        self.stopped = true;
        self.actions.push(Action::Stop);
    }

    fn on_join(
        &mut self,
        conn: ConnId,
        node: Member,
        displaced: Vec<(Member, Probe)>,
        now: Instant,
    ) {
        if node.id == self.me.id {
            return self.refuse_join(conn, node, JoinRefusal::LeadersId(node.id));
        }
        // Another process under this id, connected or listed: only a dead one gives way.
        for (old, probe) in &displaced {
            match probe {
                Probe::Gone => {}
                Probe::Alive => {
                    let why = JoinRefusal::InUse {
                        id: node.id,
                        pid: old.pid,
                    };
                    return self.refuse_join(conn, node, why);
                }
                Probe::Unknown(why) => {
                    let why = JoinRefusal::Unchecked {
                        id: node.id,
                        why: why.clone(),
                    };
                    return self.refuse_join(conn, node, why);
                }
            }
        }
        for (old, _) in displaced {
            self.on_fenced(old);
        }
        // The same process opened a new stream: the old one is dead to it.
        if let Some(old) = self.followers.conn_of(node.id) {
            self.followers.detach(old);
        }
        info!(node = %node.id, pid = node.pid, version = self.state.version, "sending state");
        self.followers.attach(conn, node, ());
        self.send(conn, Message::Snapshot(Box::new(self.state.clone())), now);
        // The state's clock is that of its last change; the replica also needs the clock now.
        self.send(conn, self.heartbeat(now), now);
    }

    fn refuse_join(&mut self, conn: ConnId, node: Member, why: JoinRefusal) {
        warn!(node = %node.id, pid = node.pid, "refused: {why}");
        self.actions.push(Action::RefuseJoin { conn, why });
    }

    fn on_ack(&mut self, conn: ConnId, seq: u64, version: u64) {
        let first = self.followers.on_ack(conn, seq, version);
        if first && let Some(f) = self.followers.get(conn) {
            let node = f.node;
            if self.state.has_member(&node) {
                info!(node = %node.id, version, "member rejoined");
            } else if !self.admitting.contains(&node) {
                info!(node = %node.id, version, "state sync done, admitting the member");
                self.admitting.push(node);
                self.actions.push(Action::Admit { node });
            }
        }
    }

    /// Asks the authority to fence `node`, once; its removal waits for the confirmation.
    fn fence(&mut self, node: Member) {
        if self.fencing.contains(&node) {
            return;
        }
        self.fencing.push(node);
        self.actions.push(Action::Fence { node });
    }

    /// `node` can act no more: its stream (if still attached) is dropped and its removal is
    /// queued, unless a later process under its id already replaced it.
    fn on_fenced(&mut self, node: Member) {
        if let Some(conn) = self.followers.conn_of(node.id)
            && self.followers.get(conn).is_some_and(|f| f.node == node)
        {
            self.followers.detach(conn);
        }
        self.queue_leave(node);
    }

    /// Queues the removal of `node`, if it is (still) the member under its id and no later
    /// process's join under that id is queued (a join replaces the member of its id).
    fn queue_leave(&mut self, node: Member) {
        let replaced = self
            .queued_changes
            .iter()
            .any(|c| matches!(c, ChangeKind::Join(m) if m.id == node.id));
        let leave = ChangeKind::Leave(node.id);
        if self.state.member(node.id) == Some(&node)
            && !replaced
            && !self.queued_changes.contains(&leave)
        {
            info!(node = %node.id, "removing member");
            self.queued_changes.push(leave);
        }
    }

    fn heartbeat(&self, now: Instant) -> Message {
        Message::Heartbeat {
            clock: self.clock_at(now),
        }
    }

    /// `scheduled` is when the tick was due. A tick that comes much later means the leader was
    /// stalled (paused or starved): the silence it would measure is its own, so every follower
    /// gets a fresh window instead of being fenced.
    fn on_tick(&mut self, scheduled: Instant, now: Instant) {
        // The deadline passed since the last change: the close goes into the state now, so
        // every member holds it (and it is logged) without waiting for a reader.
        let auction = &self.state.machine.auction;
        if auction.is_open(self.state.clock) && !auction.is_open(self.clock_at(now)) {
            self.queued_changes.push(ChangeKind::Tick);
        }
        let late_by = now.saturating_duration_since(scheduled);
        if late_by > self.timing.heartbeat {
            warn!(
                ?late_by,
                "the leader was stalled; restarting the followers' clocks"
            );
            self.followers.forgive(now);
        }
        let conns: Vec<ConnId> = self.followers.iter_mut().map(|(c, _)| c).collect();
        for conn in conns {
            self.send(conn, self.heartbeat(now), now);
        }
        let timeout = crate::follower::member_timeout(&self.timing, self.reads);
        for (node, why) in self.followers.late(&self.state, now, timeout) {
            match why {
                Lateness::Unresponsive => warn!(node = %node.id, "member stopped acknowledging"),
                Lateness::Absent => warn!(node = %node.id, "member did not rejoin"),
            }
            self.fence(node);
        }
    }

    /// Numbers one message of stream `conn` and queues it.
    fn send(&mut self, conn: ConnId, message: Message, now: Instant) {
        if let Some(seq) = self.followers.on_sent(conn, now) {
            self.actions.push(Action::Send { conn, seq, message });
        }
    }

    /// Takes the rounds that every member has acknowledged, oldest first.
    fn take_committed(&mut self) -> Vec<Round<R>> {
        let mut committed = Vec::new();
        while let Some(round) = self.rounds.front() {
            let barrier_passed = round
                .barrier
                .iter()
                .all(|(conn, seq)| self.followers.get(*conn).is_none_or(|f| f.acked >= *seq));
            if !barrier_passed || !self.followers.committed(&self.state, round.version) {
                break;
            }
            committed.extend(self.rounds.pop_front());
        }
        committed
    }

    fn send_batch(&mut self, at: Instant) {
        let now = self.clock_at(at);
        let (generation, epoch) = (self.state.generation, self.state.epoch);
        let first_version = self.state.version + 1;
        let mut changes = Vec::new();
        // A read must not say "closed" because of a clock reading that no member holds: a
        // successor resuming from an earlier reading would say "open" again. So a read that
        // would see the deadline pass commits the clock with it.
        let auction = &self.state.machine.auction;
        let reads = self.queued.iter().any(|(r, _)| matches!(r, Request::Read));
        if reads && auction.is_open(self.state.clock) && !auction.is_open(now) {
            self.queued_changes.push(ChangeKind::Tick);
        }
        // Only joins, leaves and a new leader change the members: no copy of them per batch.
        let membership_changes = self.queued_changes.iter().any(|k| {
            matches!(
                k,
                ChangeKind::Join(_) | ChangeKind::Leave(_) | ChangeKind::Lead { .. }
            )
        });
        for kind in std::mem::take(&mut self.queued_changes) {
            let change = Change { at: now, kind };
            self.apply(&change);
            changes.push(change);
        }
        if membership_changes {
            self.actions
                .push(Action::Members(self.state.members.clone()));
        }
        let mut replies = Vec::with_capacity(self.queued.len());
        for (request, to) in std::mem::take(&mut self.queued) {
            let reply = match request {
                Request::Change { id, op } => {
                    let change = Change {
                        at: now,
                        kind: ChangeKind::Client { id, op },
                    };
                    let decision = self
                        .apply(&change)
                        // Invariant: a client change always yields a decision.
                        .expect("client changes are decided");
                    changes.push(change);
                    Reply::Decision(decision, self.state.machine.auction.observe(now))
                }
                Request::Read => Reply::Result(self.state.machine.auction.observe(now)),
            };
            replies.push((to, reply));
        }
        // Reads through the members: a batch of reads alone still goes out, empty, as a
        // barrier that every member must acknowledge.
        let barrier = reads && self.reads == Reads::Barrier;
        let mut sent_to = Vec::new();
        if !changes.is_empty() || barrier {
            debug!(
                version = self.state.version,
                changes = changes.len(),
                "replicating"
            );
            let conns: Vec<ConnId> = self.followers.iter_mut().map(|(c, _)| c).collect();
            let to: Vec<(ConnId, u64)> = conns
                .into_iter()
                .filter_map(|c| self.followers.on_sent(c, at).map(|seq| (c, seq)))
                .collect();
            if !to.is_empty() {
                if barrier {
                    sent_to.clone_from(&to);
                }
                self.actions.push(Action::Append {
                    to,
                    append: Append {
                        generation,
                        epoch,
                        first_version,
                        changes,
                    },
                });
            }
        }
        self.actions.push(Action::Batch {
            requests: replies.len(),
        });
        self.rounds.push_back(Round {
            version: self.state.version,
            barrier: sent_to,
            replies,
        });
    }

    /// Applies `change` and logs what it did to the auction under [`EVENTS`]: an auction
    /// opened, a bid accepted (at DEBUG: while that is filtered out, it costs one cached check
    /// per accepted bid), an auction closed, by an operator or by its deadline. A retried
    /// request gets its first decision again and changes nothing, so it is not logged again.
    fn apply(&mut self, change: &Change) -> Option<Decision> {
        let before = &self.state.machine.auction;
        let was = (
            before.number,
            before.is_open(self.state.clock),
            before.highest.as_ref().map(|b| b.amount),
        );
        let decision = self.state.apply(change);
        let a = &self.state.machine.auction;
        let (number, open) = (a.number, a.is_open(self.state.clock));
        if number != was.0 {
            let length = match &change.kind {
                ChangeKind::Client {
                    op: Op::Start { duration },
                    ..
                } => Duration::from_millis(duration.as_millis()),
                _ => Duration::ZERO,
            };
            info!(target: EVENTS, auction = number, duration = ?length, "auction opened");
        } else if let Some(b) = &a.highest
            && Some(b.amount) != was.2
        {
            debug!(target: EVENTS, auction = number, bidder = %b.bidder, amount = %b.amount, "bid accepted");
        }
        if was.1 && !open {
            match &a.highest {
                Some(b) => info!(
                    target: EVENTS,
                    auction = number,
                    winner = %b.bidder,
                    amount = %b.amount,
                    "auction closed"
                ),
                None => info!(target: EVENTS, auction = number, "auction closed without bids"),
            }
        }
        decision
    }
}

/// The change that opens an auction of `duration`.
pub fn start_change(duration: AuctionLength) -> ChangeKind {
    ChangeKind::Client {
        id: None,
        op: Op::Start { duration },
    }
}

#[cfg(test)]
// An `Instant` cannot be made without reading the clock: tests read it once for an origin and
// choose every other time from it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::replication::Generation;
    use crate::types::{Amount, BidderId, Credential};

    const HEARTBEAT: Duration = Duration::from_millis(50);
    const TIMEOUT: Duration = Duration::from_millis(800);

    fn node(id: u16) -> Member {
        Member {
            id: NodeId(id),
            pid: 1000 + u32::from(id),
            start_time: 7,
        }
    }

    /// A test's clock: an origin read once, and times chosen from it.
    struct Clock(Instant);

    impl Clock {
        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    /// An engine leading node 1, founded with an open hour-long auction, its first batch
    /// committed; replies are tagged with a number.
    fn leader(clock: &Clock) -> Engine<u32> {
        let me = node(1);
        let timing = Timing {
            heartbeat: HEARTBEAT,
            timeout: TIMEOUT,
            spin: Duration::ZERO,
        };
        let reading = ClockReading {
            clock: Millis(0),
            at: clock.at(0),
        };
        let opening = start_change(AuctionLength::from_secs(3600).unwrap());
        let mut e = Engine::new(
            me,
            ClusterState::founded(me, Generation(9)),
            reading,
            vec![opening],
            timing,
            Reads::Local,
        );
        e.advance(clock.at(0));
        e.take_actions();
        e
    }

    /// Node `id` joins on stream `conn` and acknowledges its snapshot: a member from then on.
    fn join(e: &mut Engine<u32>, clock: &Clock, ms: u64, id: u16, conn: ConnId) {
        e.handle(
            Event::Join {
                conn,
                node: node(id),
                displaced: Vec::new(),
            },
            clock.at(ms),
        );
        let version = e.state().version;
        e.handle(
            Event::Ack {
                conn,
                seq: 2,
                version,
            },
            clock.at(ms),
        );
        e.handle(Event::Admitted { node: node(id) }, clock.at(ms));
        e.advance(clock.at(ms));
        // The Join change goes out to every follower, the joiner among them.
        ack_all(e, clock, ms);
        assert!(e.state().has_member(&node(id)));
    }

    /// Stream `conn` acknowledges message `seq`, having applied `version`, at `ms`.
    fn ack(e: &mut Engine<u32>, clock: &Clock, conn: ConnId, seq: u64, version: u64, ms: u64) {
        e.handle(Event::Ack { conn, seq, version }, clock.at(ms));
    }

    /// A client asks `request` at `ms`; its reply is tagged `tag`.
    fn ask(e: &mut Engine<u32>, clock: &Clock, request: Request, tag: u32, ms: u64) {
        e.handle(
            Event::Request {
                request,
                reply: tag,
            },
            clock.at(ms),
        );
    }

    /// Every stream acknowledges everything sent on it (its last seq, the leader's version).
    fn ack_all(e: &mut Engine<u32>, clock: &Clock, ms: u64) {
        let version = e.state().version;
        for (conn, seq) in sent(&e.take_actions()) {
            e.handle(Event::Ack { conn, seq, version }, clock.at(ms));
        }
        e.advance(clock.at(ms));
    }

    /// The last seq sent on each stream among `actions`.
    fn sent(actions: &[Action<u32>]) -> Vec<(ConnId, u64)> {
        let mut last: Vec<(ConnId, u64)> = Vec::new();
        let mut note = |conn: ConnId, seq: u64| match last.iter_mut().find(|(c, _)| *c == conn) {
            Some(entry) => entry.1 = entry.1.max(seq),
            None => last.push((conn, seq)),
        };
        for a in actions {
            match a {
                Action::Send { conn, seq, .. } => note(*conn, *seq),
                Action::Append { to, .. } => to.iter().for_each(|(c, s)| note(*c, *s)),
                _ => {}
            }
        }
        last
    }

    fn replies(actions: &[Action<u32>]) -> Vec<u32> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Reply { to, .. } => Some(*to),
                _ => None,
            })
            .collect()
    }

    fn fences(actions: &[Action<u32>]) -> Vec<Member> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Fence { node, .. } => Some(*node),
                _ => None,
            })
            .collect()
    }

    fn bid(amount: u64) -> Request {
        Request::Change {
            id: None,
            op: Op::Bid {
                bidder: BidderId::new("ada").unwrap(),
                amount: Amount::new(amount).unwrap(),
                credential: Credential([1; 32]),
            },
        }
    }

    /// Ticks every heartbeat from `from` to `to` (ms), on time.
    fn tick_until(e: &mut Engine<u32>, clock: &Clock, from: u64, to: u64) -> Vec<Action<u32>> {
        let mut actions = Vec::new();
        let mut t = from;
        while t <= to {
            e.handle(
                Event::Tick {
                    scheduled: clock.at(t),
                },
                clock.at(t),
            );
            e.advance(clock.at(t));
            actions.extend(e.take_actions());
            t += HEARTBEAT.as_millis() as u64;
        }
        actions
    }

    #[test]
    fn a_client_is_answered_only_after_every_member_acked() {
        let clock = Clock(Instant::now());
        let mut e = leader(&clock);
        join(&mut e, &clock, 10, 2, 20);
        join(&mut e, &clock, 20, 3, 30);
        ask(&mut e, &clock, bid(5), 1, 30);
        e.advance(clock.at(30));
        let actions = e.take_actions();
        assert!(replies(&actions).is_empty(), "nobody acked yet");
        let version = e.state().version;
        let seqs = sent(&actions);
        assert_eq!(seqs.len(), 2, "the batch went to both members");
        ack(&mut e, &clock, seqs[0].0, seqs[0].1, version, 31);
        e.advance(clock.at(31));
        assert!(
            replies(&e.take_actions()).is_empty(),
            "one member of two acked"
        );
        ack(&mut e, &clock, seqs[1].0, seqs[1].1, version, 32);
        e.advance(clock.at(32));
        assert_eq!(replies(&e.take_actions()), [1], "both acked: answered");
    }

    #[test]
    fn a_joiner_counts_for_commits_from_the_moment_it_has_the_state() {
        let clock = Clock(Instant::now());
        let mut e = leader(&clock);
        join(&mut e, &clock, 10, 2, 20);
        // Node 3 streams, but has not acknowledged its snapshot: a commit does not wait for it.
        e.handle(
            Event::Join {
                conn: 30,
                node: node(3),
                displaced: Vec::new(),
            },
            clock.at(20),
        );
        e.take_actions();
        ask(&mut e, &clock, bid(5), 1, 21);
        e.advance(clock.at(21));
        let actions = e.take_actions();
        let to_2 = sent(&actions).into_iter().find(|(c, _)| *c == 20).unwrap();
        let version = e.state().version;
        ack(&mut e, &clock, 20, to_2.1, version, 22);
        e.advance(clock.at(22));
        assert_eq!(replies(&e.take_actions()), [1], "the only member acked");
        // Node 3 applies its snapshot: it is synced, the authority records it, and its Join is
        // the next change. From now on, a commit waits for it too.
        ack(&mut e, &clock, 30, 2, version, 23);
        assert!(
            matches!(e.take_actions().as_slice(), [Action::Admit { node: n }] if *n == node(3))
        );
        e.handle(Event::Admitted { node: node(3) }, clock.at(23));
        ask(&mut e, &clock, bid(6), 2, 23);
        e.advance(clock.at(23));
        let actions = e.take_actions();
        assert!(e.state().has_member(&node(3)));
        let version = e.state().version;
        let seqs = sent(&actions);
        let seq_2 = seqs.iter().find(|(c, _)| *c == 20).unwrap().1;
        ack(&mut e, &clock, 20, seq_2, version, 24);
        e.advance(clock.at(24));
        assert!(
            replies(&e.take_actions()).is_empty(),
            "the joiner has not acked it"
        );
        let seq_3 = seqs.iter().find(|(c, _)| *c == 30).unwrap().1;
        ack(&mut e, &clock, 30, seq_3, version, 25);
        e.advance(clock.at(25));
        assert_eq!(replies(&e.take_actions()), [2]);
    }

    #[test]
    fn a_member_is_never_removed_before_its_fence_is_confirmed() {
        let clock = Clock(Instant::now());
        let mut e = leader(&clock);
        join(&mut e, &clock, 10, 2, 20);
        e.handle(Event::Gone { conn: 20 }, clock.at(100));
        e.advance(clock.at(100));
        let actions = e.take_actions();
        assert_eq!(fences(&actions), [node(2)]);
        assert!(
            e.state().has_member(&node(2)),
            "not removed before the fence"
        );
        // The fence fails: the member stays, and a client's bid waits for it.
        e.handle(
            Event::FenceFailed {
                node: node(2),
                why: "EPERM".into(),
            },
            clock.at(101),
        );
        ask(&mut e, &clock, bid(5), 1, 101);
        e.advance(clock.at(101));
        let actions = e.take_actions();
        assert!(replies(&actions).is_empty());
        assert!(e.state().has_member(&node(2)));
        // Later ticks ask again (the member is absent past the timeout); once confirmed, the
        // removal is committed and the bid answered.
        let actions = tick_until(&mut e, &clock, 150, 1000);
        assert!(fences(&actions).contains(&node(2)), "fenced again");
        assert!(e.state().has_member(&node(2)));
        e.handle(Event::Fenced { node: node(2) }, clock.at(1001));
        e.advance(clock.at(1001));
        let actions = e.take_actions();
        assert_eq!(replies(&actions), [1]);
        assert!(!e.state().has_member(&node(2)));
    }

    #[test]
    fn a_silent_member_is_fenced_after_the_timeout_and_not_before() {
        let clock = Clock(Instant::now());
        let mut e = leader(&clock);
        join(&mut e, &clock, 0, 2, 20);
        // From 0 on, node 2 acknowledges nothing more.
        let ms = TIMEOUT.as_millis() as u64;
        let before = tick_until(&mut e, &clock, 50, ms);
        assert!(
            fences(&before).is_empty(),
            "silent for no more than the timeout"
        );
        let after = tick_until(&mut e, &clock, ms + 50, ms + 100);
        assert_eq!(fences(&after), [node(2)], "silent past the timeout");
    }

    /// Across hosts the leader gives up on a silent member two heartbeats before the timeout, so
    /// that it has removed a member cut off from it before that member gives up on the leader
    /// (`follower::silence_limit`).
    #[test]
    fn across_hosts_a_silent_member_is_fenced_two_heartbeats_before_the_timeout() {
        let clock = Clock(Instant::now());
        let mut e = leader(&clock);
        e.reads = Reads::Barrier;
        join(&mut e, &clock, 0, 2, 20);
        let ms = (TIMEOUT - 2 * HEARTBEAT).as_millis() as u64;
        let before = tick_until(&mut e, &clock, 50, ms);
        assert!(fences(&before).is_empty(), "silent for no more than that");
        let after = tick_until(&mut e, &clock, ms + 50, ms + 100);
        assert_eq!(
            fences(&after),
            [node(2)],
            "silent past it, before the timeout"
        );
    }

    #[test]
    fn a_stalled_tick_fences_nobody() {
        let clock = Clock(Instant::now());
        let mut e = leader(&clock);
        join(&mut e, &clock, 0, 2, 20);
        // A heartbeat at 50 ms, whose ack is on its way when the leader is paused for 5 s: its
        // next tick, due at 100 ms, comes at 5,100 ms.
        tick_until(&mut e, &clock, 50, 50);
        e.handle(
            Event::Tick {
                scheduled: clock.at(100),
            },
            clock.at(5_100),
        );
        e.advance(clock.at(5_100));
        assert!(fences(&e.take_actions()).is_empty());
        // The member answers the heartbeat at once: nothing is late afterwards either.
        ack_all(&mut e, &clock, 5_110);
        let later = tick_until(&mut e, &clock, 5_150, 5_600);
        assert!(fences(&later).is_empty());
    }

    #[test]
    fn a_member_that_leaves_on_purpose_is_removed_unfenced() {
        let clock = Clock(Instant::now());
        let mut e = leader(&clock);
        join(&mut e, &clock, 0, 2, 20);
        e.handle(Event::Left { conn: 20 }, clock.at(1));
        e.advance(clock.at(1));
        let actions = e.take_actions();
        assert!(
            fences(&actions).is_empty(),
            "a member that leaves is not fenced"
        );
        assert!(!e.state().has_member(&node(2)));
    }

    #[test]
    fn a_read_that_sees_the_deadline_pass_commits_the_clock_first() {
        let clock = Clock(Instant::now());
        let mut e = leader(&clock);
        let opened = e.state().version;
        // The auction lasts an hour; an hour and a second later, a read.
        let late = 3_601_000;
        ask(&mut e, &clock, Request::Read, 1, late);
        e.advance(clock.at(late));
        let actions = e.take_actions();
        assert_eq!(e.state().version, opened + 1, "a clock tick was committed");
        let view = actions.iter().find_map(|a| match a {
            Action::Reply {
                reply: Reply::Result(v),
                ..
            } => Some(v.clone()),
            _ => None,
        });
        assert!(!view.expect("answered").open);
        // Once committed, the next read needs no new change.
        ask(&mut e, &clock, Request::Read, 2, late + 1);
        e.advance(clock.at(late + 1));
        assert_eq!(e.state().version, opened + 1);
    }

    #[test]
    fn a_deadline_that_passes_is_committed_at_the_next_heartbeat() {
        let clock = Clock(Instant::now());
        let mut e = leader(&clock);
        let opened = e.state().version;
        tick_until(&mut e, &clock, 3_599_950, 3_599_950);
        assert_eq!(e.state().version, opened, "still open");
        tick_until(&mut e, &clock, 3_600_000, 3_600_000);
        assert_eq!(e.state().version, opened + 1, "the close is committed");
        assert!(!e.state().machine.auction.is_open(e.state().clock));
    }

    #[test]
    fn a_leader_without_followers_answers_at_once() {
        let clock = Clock(Instant::now());
        let mut e = leader(&clock);
        ask(&mut e, &clock, bid(5), 1, 1);
        e.advance(clock.at(1));
        let actions = e.take_actions();
        assert_eq!(replies(&actions), [1]);
        assert!(matches!(
            actions.iter().find(|a| matches!(a, Action::Reply { .. })),
            Some(Action::Reply {
                reply: Reply::Decision(Ok(()), _),
                ..
            })
        ));
    }

    #[test]
    fn a_join_under_a_live_members_id_is_refused_and_a_dead_ones_replaced() {
        let clock = Clock(Instant::now());
        let mut e = leader(&clock);
        join(&mut e, &clock, 0, 2, 20);
        let mut impostor = node(2);
        impostor.pid = 4242;
        assert_eq!(e.displaced_by(&impostor), [node(2)]);
        e.handle(
            Event::Join {
                conn: 21,
                node: impostor,
                displaced: vec![(node(2), Probe::Alive)],
            },
            clock.at(1),
        );
        let actions = e.take_actions();
        assert!(matches!(
            actions.as_slice(),
            [Action::RefuseJoin {
                conn: 21,
                why: JoinRefusal::InUse { pid: 1002, .. }
            }]
        ));
        assert!(e.state().has_member(&node(2)));
        // The old process died: the new one under its id takes its place.
        e.handle(
            Event::Join {
                conn: 22,
                node: impostor,
                displaced: vec![(node(2), Probe::Gone)],
            },
            clock.at(2),
        );
        let version = e.state().version;
        ack(&mut e, &clock, 22, 2, version, 2);
        e.handle(Event::Admitted { node: impostor }, clock.at(2));
        e.advance(clock.at(2));
        ack_all(&mut e, &clock, 3);
        assert!(e.state().has_member(&impostor));
        assert!(!e.state().has_member(&node(2)));
    }

    #[test]
    fn a_leaving_leader_refuses_new_requests_answers_those_taken_then_hands_over() {
        let clock = Clock(Instant::now());
        let mut e = leader(&clock);
        join(&mut e, &clock, 0, 2, 20);
        ask(&mut e, &clock, bid(5), 1, 1);
        e.advance(clock.at(1));
        let taken = e.take_actions();
        e.handle(Event::Stop, clock.at(2));
        ask(&mut e, &clock, bid(6), 2, 2);
        e.advance(clock.at(2));
        let actions = e.take_actions();
        assert!(matches!(actions.as_slice(), [Action::Refuse { to: 2 }]));
        assert!(!e.stopped(), "a request in flight");
        let version = e.state().version;
        for (conn, seq) in sent(&taken) {
            e.handle(Event::Ack { conn, seq, version }, clock.at(3));
        }
        e.advance(clock.at(3));
        let actions = e.take_actions();
        assert_eq!(replies(&actions), [1]);
        assert!(actions.iter().any(|a| matches!(
            a,
            Action::Send {
                message: Message::Leaving,
                ..
            }
        )));
        assert!(matches!(actions.last(), Some(Action::Stop)));
        assert!(e.stopped());
    }

    /// With reads through the members, a read waits for every member's ack of a barrier sent
    /// after it arrived, even when nothing changed: a deposed leader, whose members have moved
    /// on, never answers from its old state.
    #[test]
    fn a_barrier_read_is_answered_only_after_every_member_acked_a_later_message() {
        let clock = Clock(Instant::now());
        let mut e = leader(&clock);
        e.reads = Reads::Barrier;
        join(&mut e, &clock, 0, 2, 20);
        ask(&mut e, &clock, Request::Read, 1, 1);
        e.advance(clock.at(1));
        let actions = e.take_actions();
        assert!(replies(&actions).is_empty(), "not from memory");
        let barrier = sent(&actions);
        assert_eq!(barrier.len(), 1, "an empty append went out: {actions:?}");
        let version = e.state().version;
        // An ack of an earlier message does not pass the barrier.
        ack(&mut e, &clock, 20, barrier[0].1 - 1, version, 2);
        e.advance(clock.at(2));
        assert!(replies(&e.take_actions()).is_empty());
        ack(&mut e, &clock, 20, barrier[0].1, version, 3);
        e.advance(clock.at(3));
        assert_eq!(replies(&e.take_actions()), [1]);
    }

    #[test]
    fn a_joiner_is_a_member_only_once_the_authority_recorded_it() {
        let clock = Clock(Instant::now());
        let mut e = leader(&clock);
        e.handle(
            Event::Join {
                conn: 20,
                node: node(2),
                displaced: Vec::new(),
            },
            clock.at(1),
        );
        let version = e.state().version;
        ack(&mut e, &clock, 20, 2, version, 1);
        e.advance(clock.at(1));
        assert!(!e.state().has_member(&node(2)), "not before it is recorded");
        e.handle(
            Event::AdmitFailed {
                node: node(2),
                why: "etcd unreachable".into(),
            },
            clock.at(2),
        );
        e.advance(clock.at(2));
        let actions = e.take_actions();
        assert!(!e.state().has_member(&node(2)));
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::RefuseJoin { conn: 20, .. })),
            "the joiner is sent away to try again: {actions:?}"
        );
    }

    /// A deposed leader answers nothing more, not even what it applied: its batch may not be
    /// committed; the client retries at the new leader with the same id.
    #[test]
    fn a_deposed_leader_answers_nothing_and_stops() {
        let clock = Clock(Instant::now());
        let mut e = leader(&clock);
        join(&mut e, &clock, 0, 2, 20);
        ask(&mut e, &clock, bid(5), 1, 1);
        e.advance(clock.at(1));
        e.take_actions();
        ask(&mut e, &clock, bid(6), 2, 2);
        e.handle(Event::Deposed, clock.at(2));
        e.advance(clock.at(2));
        let actions = e.take_actions();
        assert!(replies(&actions).is_empty(), "{actions:?}");
        let refused: Vec<u32> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Refuse { to } => Some(*to),
                _ => None,
            })
            .collect();
        assert_eq!(refused, [2, 1]);
        assert!(matches!(actions.last(), Some(Action::Stop)));
        assert!(e.stopped());
        // Acks that come late change nothing.
        let version = e.state().version;
        ack(&mut e, &clock, 20, 99, version, 3);
        e.advance(clock.at(3));
        assert!(e.take_actions().is_empty());
    }
}
