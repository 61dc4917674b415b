//! The leader: one task owns the replicated state and decides everything, so no lock is needed.
//! Client requests, replica joins and acks arrive as events on one channel. The leader applies
//! every request queued at that moment as one batch, pushes the batch to every replica stream,
//! and answers each request only when every member has acknowledged the batch's version (the
//! original hand-in's commit rule). One batch of requests replicates at a time; the next one gathers what
//! arrives meanwhile (group commit).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;
use tracing::{debug, error, info, warn};

use crate::auction::{Decision, Op};
use crate::host::wall_clock_ms;
use crate::pb::{self, AuctionView, FromLeader, from_leader};
use crate::process::{self, Fenced};
use crate::replication::{
    Change, ChangeKind, ClockReading, ClusterState, ConnId, Followers, Lateness, Member,
};
use crate::spin::Spin;
use crate::types::{AuctionLength, Millis, RequestId};

/// The log target of auction events: an auction opened or closed (INFO), a bid accepted
/// (DEBUG, so that the busiest path logs nothing unless asked to). Show them all with
/// `RUST_LOG=info,auction::events=debug`.
pub const EVENTS: &str = "auction::events";

/// How many messages may wait for one replica before it counts as hopelessly behind. A replica
/// that stops reading is fenced by the ack timeout long before a healthy one fills this.
pub const OUTBOUND_CAPACITY: usize = 16 * 1024;

/// The leader's timing.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How often the leader tells idle replicas it is alive.
    pub heartbeat: Duration,
    /// How long a member may leave a message unacknowledged (or stay away after a failover)
    /// before it is fenced and removed. Replicas use the same value to give up on a silent
    /// leader.
    pub timeout: Duration,
    /// How long the leader keeps polling its sockets instead of sleeping after each small batch
    /// of a run (see [`crate::spin`]); zero never.
    pub spin: Duration,
}

/// A request from a client or from the leader's own terminal.
#[derive(Debug)]
pub enum Request {
    /// A change of the auction; `id` makes it exactly-once (`None` for the terminal).
    Change { id: Option<RequestId>, op: Op },
    /// The current result: a linearizable read.
    Result,
    /// The cluster as the leader sees it (not linearizable: for people and tests).
    Status(Detail),
}

/// How much a status reply holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Who leads, the members, the versions and the auction: cheap, for anyone.
    Summary,
    /// Also the digest of the whole state, which costs a pass over all of it: only for the
    /// node's own terminal, so clients cannot make the leader do it.
    WithDigest,
}

/// The answer to a [`Request`].
#[derive(Debug)]
pub enum Reply {
    Decision(Decision, AuctionView),
    Result(AuctionView),
    Status(pb::StatusReply),
}

/// A slot reserved in a client session's bounded reply stream.
pub type SessionSlot = mpsc::OwnedPermit<Result<pb::SessionReply, Status>>;

/// Where a reply goes.
#[derive(Debug)]
pub enum ReplyTo {
    /// One waiting caller: a unary call, or the terminal.
    Caller(oneshot::Sender<Reply>),
    /// A client session stream, with the slot its reply will take: the session reserves the
    /// slot before it forwards the request, so a client that stops reading replies stops being
    /// read, and nothing piles up.
    Session { tag: u64, slot: SessionSlot },
}

impl ReplyTo {
    /// Refuses the request undecided, with `status`: the client may send it again elsewhere.
    pub fn refuse(self, status: &Status) {
        match self {
            // The caller hears UNAVAILABLE when its reply is dropped.
            Self::Caller(_) => {}
            Self::Session { tag, slot } => {
                slot.send(Ok(pb::SessionReply {
                    tag,
                    reply: Some(pb::session_reply::Reply::Error(pb::ErrorReply {
                        code: status.code() as i32,
                        message: status.message().to_string(),
                    })),
                }));
            }
        }
    }

    /// Delivers `reply`. A caller or session that went away no longer wants it.
    pub fn send(self, reply: Reply) {
        match self {
            Self::Caller(tx) => {
                let _ = tx.send(reply);
            }
            Self::Session { tag, slot } => {
                let reply = match reply {
                    Reply::Decision(d, view) => {
                        pb::session_reply::Reply::Decision(pb::decision_reply(&d, view))
                    }
                    Reply::Result(view) => pb::session_reply::Reply::Result(pb::ResultReply {
                        auction: Some(view),
                    }),
                    Reply::Status(_) => pb::session_reply::Reply::Error(pb::ErrorReply {
                        code: tonic::Code::Unimplemented as i32,
                        message: "status is not served on a session".into(),
                    }),
                };
                slot.send(Ok(pb::SessionReply {
                    tag,
                    reply: Some(reply),
                }));
            }
        }
    }
}

/// The outbound half of one replica stream.
pub type Outbound = mpsc::Sender<Result<FromLeader, Status>>;

/// A replica that proved it holds the cluster secret, as the leader task keeps it.
#[derive(Debug)]
pub struct Peer {
    /// The outbound half of its stream.
    pub outbound: Outbound,
    /// Its process, opened when it joined and checked to hold the stream's connection: fencing
    /// signals exactly this process.
    pub process: process::ProcessHandle,
}

/// What reaches the leader task.
#[derive(Debug)]
pub enum Event {
    Request {
        request: Request,
        reply: ReplyTo,
    },
    /// A replica opened a stream and proved who it is.
    Join {
        conn: ConnId,
        node: Member,
        peer: Peer,
    },
    Ack {
        conn: ConnId,
        seq: u64,
        version: u64,
    },
    /// A replica stream ended.
    Gone {
        conn: ConnId,
    },
    /// A replica said it leaves on purpose, and its stream ends.
    Left {
        conn: ConnId,
    },
}

/// A cheap handle to the leader task.
#[derive(Clone, Debug)]
pub struct LeaderHandle {
    events: mpsc::Sender<Event>,
    /// The members as of the leader's last batch.
    members: watch::Receiver<Vec<Member>>,
}

impl LeaderHandle {
    /// Whether this exact process (id, pid and start time) is a member.
    pub fn is_member(&self, node: &Member) -> bool {
        self.members.borrow().contains(node)
    }

    /// Sends `request` and waits for its reply.
    ///
    /// # Errors
    /// `UNAVAILABLE` when the leader task has stopped.
    pub async fn call(&self, request: Request) -> Result<Reply, Status> {
        let (reply, rx) = oneshot::channel();
        let reply = ReplyTo::Caller(reply);
        self.events
            .send(Event::Request { request, reply })
            .await
            .map_err(|_| Status::unavailable("the leader is shutting down"))?;
        rx.await
            .map_err(|_| Status::unavailable("the leader is shutting down"))
    }

    /// Resolves once the leader task has ended (it left, or failed).
    pub async fn stopped(&self) {
        self.events.closed().await;
    }

    /// Delivers a replication event.
    ///
    /// # Errors
    /// `UNAVAILABLE` when the leader task has stopped.
    pub async fn send(&self, event: Event) -> Result<(), Status> {
        self.events
            .send(event)
            .await
            .map_err(|_| Status::unavailable("the leader is shutting down"))
    }
}

/// A batch whose replies wait for every member to apply `version`.
struct Round {
    version: u64,
    replies: Vec<(ReplyTo, Reply)>,
}

impl Round {
    fn release(self) {
        for (to, reply) in self.replies {
            to.send(reply);
        }
    }
}

/// The leader task's state.
struct Leader {
    me: Member,
    state: ClusterState,
    /// The auction clock when this node took the lead (or founded), on this node's monotonic
    /// clock: the leader advances the auction clock by monotonic time only, so no step of the
    /// wall clock moves a deadline (docs/design.md, "Time").
    clock: ClockReading,
    followers: Followers<Peer>,
    timing: Timing,
    /// Requests that arrived since the last batch went out.
    queued: Vec<(Request, ReplyTo)>,
    /// Membership changes that arrived since the last batch went out.
    queued_changes: Vec<ChangeKind>,
    /// Batches sent and not yet acknowledged by every member, oldest first.
    rounds: VecDeque<Round>,
    /// Publishes the members after every membership change.
    members: watch::Sender<Vec<Member>>,
    /// Keeps the thread polling for a while after runs of small batches, unless turned off.
    spin: Spin,
    /// Set once the node was asked to stop: until then, the leader answers what it has taken
    /// (every batch in flight must commit), refuses what comes new, then hands over.
    leaving_by: Option<Instant>,
}

/// Starts the leader task on `state` and returns its handle. The auction clock resumes from
/// `clock`. `initial` changes (opening the first auction, or taking over from a failed leader)
/// form the first batch. The task ends when `shutdown` resolves or every handle is dropped.
pub fn spawn(
    me: Member,
    state: ClusterState,
    clock: ClockReading,
    initial: Vec<ChangeKind>,
    timing: Timing,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> LeaderHandle {
    let (tx, rx) = mpsc::channel(4096);
    let (members, members_rx) = watch::channel(state.members.clone());
    let leader = Leader {
        me,
        state,
        clock,
        followers: Followers::default(),
        timing,
        queued: Vec::new(),
        queued_changes: initial,
        rounds: VecDeque::new(),
        members,
        spin: Spin::spawn(timing.spin),
        leaving_by: None,
    };
    tokio::spawn(leader.run(rx, shutdown));
    LeaderHandle {
        events: tx,
        members: members_rx,
    }
}

impl Leader {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        self.advance();
        info!(
            epoch = self.state.epoch,
            version = self.state.version,
            members = ?member_ids(&self.state),
            "leading"
        );
        // The first tick a heartbeat from now: a new leader has nobody to beat for yet.
        let first = tokio::time::Instant::now() + self.timing.heartbeat;
        let mut tick = tokio::time::interval_at(first, self.timing.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                // A node asked to stop answers what it took, then hands over and acts no more:
                // the task ends and the stream senders drop, which ends every replica stream.
                () = &mut shutdown, if self.leaving_by.is_none() => {
                    info!("leaving: answering the requests in flight, then handing over");
                    self.leaving_by = Some(Instant::now() + self.timing.timeout);
                }
                event = events.recv() => match event {
                    Some(event) => self.handle(event),
                    None => break,
                },
                // Heartbeats, and fencing of members that fell silent or stayed away. Events
                // already queued (acks among them) are handled first, so they count.
                scheduled = tick.tick() => {
                    while let Ok(event) = events.try_recv() {
                        self.handle(event);
                    }
                    self.on_tick(scheduled.into_std(), Instant::now());
                }
            }
            // Everything already waiting joins the same batch.
            while let Ok(event) = events.try_recv() {
                self.handle(event);
            }
            self.advance();
            if let Some(by) = self.leaving_by
                && (self.drained() || Instant::now() >= by)
            {
                self.hand_over();
                break;
            }
        }
        info!("stopped leading");
    }

    /// Whether every request taken has been answered and every change committed.
    fn drained(&self) -> bool {
        self.rounds.is_empty() && self.queued.is_empty() && self.queued_changes.is_empty()
    }

    /// Tells every replica that this leader leaves on purpose, so that the first member in line
    /// takes over as soon as this process is gone, without fencing it.
    fn hand_over(&mut self) {
        if !self.drained() {
            warn!("leaving with requests unanswered: their clients will send them again");
        }
        let conns: Vec<ConnId> = self.followers.iter_mut().map(|(c, _)| c).collect();
        for conn in conns {
            self.send(conn, from_leader::Msg::Leaving(pb::Leaving {}));
        }
        info!("handed over");
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Request { request, reply } => match request {
                Request::Status(detail) => reply.send(Reply::Status(self.status(detail))),
                _ if self.leaving_by.is_some() => {
                    reply.refuse(&Status::unavailable("the leader is leaving"));
                }
                request => self.queued.push((request, reply)),
            },
            Event::Left { conn } => {
                if let Some(f) = self.followers.detach(conn) {
                    if self.state.has_member(&f.node) {
                        info!(node = %f.node.id, "member left");
                        if !self.queued_changes.contains(&ChangeKind::Leave(f.node.id)) {
                            self.queued_changes.push(ChangeKind::Leave(f.node.id));
                        }
                    } else {
                        debug!(node = %f.node.id, "joining node left");
                    }
                }
            }
            Event::Join { conn, node, peer } => self.on_join(conn, node, peer),
            Event::Ack { conn, seq, version } => {
                let first = self.followers.on_ack(conn, seq, version);
                if first && let Some(f) = self.followers.get(conn) {
                    let node = f.node;
                    if self.state.has_member(&node) {
                        info!(node = %node.id, version, "member rejoined");
                    } else {
                        info!(node = %node.id, version, "state sync done, adding member");
                        self.queued_changes.push(ChangeKind::Join(node));
                    }
                }
            }
            Event::Gone { conn } => {
                if let Some(f) = self.followers.detach(conn) {
                    if self.state.has_member(&f.node) {
                        warn!(node = %f.node.id, "member's stream ended");
                        self.remove(f.node, Some(&f.conn));
                    } else {
                        debug!(node = %f.node.id, "joining node's stream ended");
                    }
                }
            }
        }
    }

    fn on_join(&mut self, conn: ConnId, node: Member, peer: Peer) {
        let refuse = |status: Status| {
            warn!(node = %node.id, pid = node.pid, "refused: {}", status.message());
            let _ = peer.outbound.try_send(Err(status));
        };
        if node.id == self.me.id {
            return refuse(Status::already_exists(format!(
                "node id {} is the leader's own id",
                node.id
            )));
        }
        // Another process under this id, connected or listed: only a dead one gives way.
        let attached = self
            .followers
            .conn_of(node.id)
            .and_then(|c| self.followers.get(c))
            .map(|f| f.node);
        let listed = self.state.member(node.id).copied();
        for old in [attached, listed].into_iter().flatten() {
            if old == node {
                continue;
            }
            match process::ProcessHandle::open(&old) {
                Ok(None) => self.remove(old, None),
                Ok(Some(_)) => {
                    return refuse(Status::already_exists(format!(
                        "node id {} is already in use by pid {}",
                        node.id, old.pid
                    )));
                }
                Err(e) => {
                    return refuse(Status::unavailable(format!(
                        "cannot check the process that used node id {} yet: {e}",
                        node.id
                    )));
                }
            }
        }
        // The same process opened a new stream: the old one is dead to it.
        if let Some(old) = self.followers.conn_of(node.id) {
            self.followers.detach(old);
        }
        info!(node = %node.id, pid = node.pid, version = self.state.version, "sending state");
        self.followers.attach(conn, node, peer);
        let snapshot = from_leader::Msg::Snapshot((&self.state).into());
        self.send(conn, snapshot);
        // The state's clock is that of its last change; the replica also needs the clock now.
        self.send(conn, self.heartbeat());
    }

    /// The auction clock now: monotonic time since this node took the lead, never behind the
    /// state's own clock.
    fn now(&self) -> Millis {
        self.clock.at(Instant::now()).max(self.state.clock)
    }

    fn heartbeat(&self) -> from_leader::Msg {
        from_leader::Msg::Heartbeat(pb::Heartbeat {
            clock_ms: self.now().0,
        })
    }

    /// Fences `node`, then commits its removal. A member that could not be fenced stays: commits
    /// wait for it (safe), and the next tick tries again, because a member dropped while it can
    /// still act could later lead with a stale state.
    /// `detached` is the member's stream if it was already detached (its stream ended).
    fn remove(&mut self, node: Member, detached: Option<&Peer>) {
        let peer = detached.or_else(|| {
            self.followers
                .conn_of(node.id)
                .and_then(|c| self.followers.get(c))
                .filter(|f| f.node == node)
                .map(|f| &f.conn)
        });
        let fenced = match peer {
            // Through the handle taken when it joined.
            Some(p) => p.process.kill(),
            None => process::fence(&node),
        };
        match fenced {
            Ok(Fenced::Killed) => warn!(node = %node.id, pid = node.pid, "fenced (SIGKILL)"),
            Ok(Fenced::AlreadyGone) => info!(node = %node.id, pid = node.pid, "process is gone"),
            Err(e) => {
                error!(node = %node.id, pid = node.pid, "cannot fence, keeping the member: {e}");
                return;
            }
        }
        if let Some(conn) = self.followers.conn_of(node.id) {
            self.followers.detach(conn);
        }
        if self.state.member(node.id) == Some(&node)
            && !self.queued_changes.contains(&ChangeKind::Leave(node.id))
        {
            info!(node = %node.id, "removing member");
            self.queued_changes.push(ChangeKind::Leave(node.id));
        }
    }

    /// `scheduled` is when the tick was due. A tick that comes much later means this task was
    /// stalled (paused or starved): the silence it would measure is its own, so every follower
    /// gets a fresh window instead of being fenced.
    fn on_tick(&mut self, scheduled: Instant, now: Instant) {
        // The deadline passed since the last change: the close goes into the state now, so
        // every member holds it (and it is logged) without waiting for a reader.
        let auction = &self.state.machine.auction;
        if auction.is_open(self.state.clock) && !auction.is_open(self.now()) {
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
            self.send(conn, self.heartbeat());
        }
        for (node, why) in self.followers.late(&self.state, now, self.timing.timeout) {
            match why {
                Lateness::Unresponsive => warn!(node = %node.id, "member stopped acknowledging"),
                Lateness::Absent => warn!(node = %node.id, "member did not rejoin"),
            }
            self.remove(node, None);
        }
    }

    /// Sends one message on a replica stream; a stream that cannot take it is dropped.
    fn send(&mut self, conn: ConnId, msg: from_leader::Msg) {
        let Some(seq) = self.followers.on_sent(conn, Instant::now()) else {
            return;
        };
        let Some(f) = self.followers.get(conn) else {
            return;
        };
        let message = FromLeader {
            seq,
            msg: Some(msg),
        };
        match f.conn.outbound.try_send(Ok(message)) {
            Ok(()) => {}
            // The stream task is gone; its Gone event is on the way.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let node = f.node;
                warn!(node = %node.id, "replica is too far behind");
                if self.state.has_member(&node) {
                    self.remove(node, None);
                } else {
                    self.followers.detach(conn);
                }
            }
        }
    }

    /// Sends the next batch, then releases the replies of committed batches.
    ///
    /// Client requests go out one batch at a time: those that arrive while a batch replicates
    /// wait and go out together once it commits, so under load batches grow with the load
    /// instead of waking every replica once per leader wake-up (group commit). Membership
    /// changes go out at once, because a batch that waits for a fenced member commits only
    /// when that member's removal is in the state.
    fn advance(&mut self) {
        let committed = self.take_committed();
        let requests_may_go = self.rounds.is_empty() && !self.queued.is_empty();
        if requests_may_go || !self.queued_changes.is_empty() {
            self.send_batch();
        }
        // The next batch is on its way to the replicas before the replies are written, so the
        // replicas apply it while the leader answers.
        for round in committed {
            round.release();
        }
        // With no follower to wait for, a batch is committed as soon as it is applied.
        for round in self.take_committed() {
            round.release();
        }
    }

    /// Takes the rounds that every member has acknowledged, oldest first.
    fn take_committed(&mut self) -> Vec<Round> {
        let mut committed = Vec::new();
        while let Some(round) = self.rounds.front() {
            if !self.followers.committed(&self.state, round.version) {
                break;
            }
            committed.extend(self.rounds.pop_front());
        }
        committed
    }

    fn send_batch(&mut self) {
        let now = self.now();
        let (generation, epoch) = (self.state.generation, self.state.epoch);
        let first_version = self.state.version + 1;
        let mut changes = Vec::new();
        // A read must not say "closed" because of a clock reading that no member holds: a
        // successor resuming from an earlier reading would say "open" again. So a read that
        // would see the deadline pass commits the clock with it.
        let auction = &self.state.machine.auction;
        let reads = self
            .queued
            .iter()
            .any(|(r, _)| matches!(r, Request::Result));
        if reads && auction.is_open(self.state.clock) && !auction.is_open(now) {
            self.queued_changes.push(ChangeKind::Tick);
        }
        for kind in std::mem::take(&mut self.queued_changes) {
            let change = Change { at: now, kind };
            self.apply(&change);
            changes.push(change);
        }
        if !changes.is_empty() {
            self.members.send_replace(self.state.members.clone());
        }
        let mut replies = Vec::with_capacity(self.queued.len());
        for (request, tx) in std::mem::take(&mut self.queued) {
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
                    Reply::Decision(decision, self.view(now))
                }
                Request::Result => Reply::Result(self.view(now)),
                Request::Status(detail) => Reply::Status(self.status(detail)),
            };
            replies.push((tx, reply));
        }
        if !changes.is_empty() {
            debug!(
                version = self.state.version,
                changes = changes.len(),
                "replicating"
            );
            let append = pb::Append {
                first_version,
                changes: changes.iter().map(Into::into).collect(),
                generation: generation.0,
                epoch,
            };
            let conns: Vec<ConnId> = self.followers.iter_mut().map(|(c, _)| c).collect();
            if let Some((&last, others)) = conns.split_last() {
                for &conn in others {
                    self.send(conn, from_leader::Msg::Append(append.clone()));
                }
                self.send(last, from_leader::Msg::Append(append));
            }
        }
        self.spin.after_batch(replies.len());
        self.rounds.push_back(Round {
            version: self.state.version,
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

    fn view(&self, now: Millis) -> AuctionView {
        pb::auction_view(&self.state.machine.auction, now, wall_clock_ms())
    }

    fn status(&self, detail: Detail) -> pb::StatusReply {
        let now = self.now();
        pb::StatusReply {
            leader: Some(self.me.into()),
            members: self.state.members.iter().map(|m| (*m).into()).collect(),
            epoch: self.state.epoch,
            version: self.state.version,
            auction: Some(self.view(now)),
            digest: match detail {
                Detail::Summary => 0,
                Detail::WithDigest => pb::digest(&self.state),
            },
        }
    }
}

fn member_ids(state: &ClusterState) -> Vec<u16> {
    state.members.iter().map(|m| m.id.0).collect()
}

/// The change that opens an auction of `duration`.
pub fn start_change(duration: AuctionLength) -> ChangeKind {
    ChangeKind::Client {
        id: None,
        op: Op::Start { duration },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::Generation;
    use crate::types::{Amount, BidderId, NodeId};

    fn lone_member() -> Member {
        Member {
            id: NodeId(1),
            pid: std::process::id(),
            start_time: 0,
        }
    }

    fn quiet() -> Timing {
        Timing {
            heartbeat: Duration::from_secs(3600),
            timeout: Duration::from_secs(7200),
            spin: Duration::ZERO,
        }
    }

    /// A reading of `clock` taken `ago` before now.
    fn clock_at(clock: Millis, ago: Duration) -> ClockReading {
        let now = Instant::now();
        ClockReading {
            clock,
            at: now.checked_sub(ago).unwrap_or(now),
        }
    }

    /// The auction's deadline passed on the leader's clock, but no member holds a clock reading
    /// past it: before a read may say "closed", the leader commits the clock, so a successor
    /// cannot say "open" again.
    #[tokio::test]
    async fn a_read_that_sees_the_deadline_pass_commits_the_clock_first() {
        let me = lone_member();
        let mut state = ClusterState::founded(me, Generation(1));
        state.apply(&Change {
            at: Millis(0),
            kind: start_change(AuctionLength::from_secs(1).unwrap()),
        });
        let leader = spawn(
            me,
            state,
            // The clock read 0 five seconds ago: it reads 5,000 now, past the deadline (1,000).
            clock_at(Millis(0), Duration::from_secs(5)),
            Vec::new(),
            quiet(),
            std::future::pending(),
        );
        let status = |reply| match reply {
            Reply::Status(s) => s,
            other => panic!("{other:?}"),
        };
        let before = status(leader.call(Request::Status(Detail::Summary)).await.unwrap());
        let Reply::Result(view) = leader.call(Request::Result).await.unwrap() else {
            panic!("a result");
        };
        assert!(!view.open, "the deadline has passed");
        let after = status(leader.call(Request::Status(Detail::Summary)).await.unwrap());
        assert_eq!(after.version, before.version + 1, "the clock was committed");
        // Once committed, the next read needs no new change.
        leader.call(Request::Result).await.unwrap();
        let again = status(leader.call(Request::Status(Detail::Summary)).await.unwrap());
        assert_eq!(again.version, after.version);
    }

    /// The deadline passes while nobody reads: the leader commits the close at its next
    /// heartbeat, so every member holds it.
    #[tokio::test]
    async fn a_deadline_that_passes_is_committed_at_the_next_heartbeat() {
        let me = lone_member();
        let mut state = ClusterState::founded(me, Generation(1));
        state.apply(&Change {
            at: Millis(0),
            kind: start_change(AuctionLength::from_secs(1).unwrap()),
        });
        let version = state.version;
        let timing = Timing {
            heartbeat: Duration::from_millis(10),
            ..quiet()
        };
        let clock = clock_at(Millis(0), Duration::from_secs(5));
        let leader = spawn(me, state, clock, Vec::new(), timing, std::future::pending());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let Reply::Status(s) = leader.call(Request::Status(Detail::Summary)).await.unwrap()
            else {
                panic!("a status");
            };
            if s.version > version {
                assert_eq!(s.version, version + 1, "one tick");
                assert!(!s.auction.unwrap().open);
                break;
            }
            assert!(Instant::now() < deadline, "the close was never committed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A leader alone in its cluster answers as soon as it has applied a request, not on its
    /// next heartbeat.
    #[tokio::test]
    async fn a_leader_without_followers_answers_at_once() {
        let me = lone_member();
        let timing = quiet();
        let opening = start_change(AuctionLength::from_millis(60_000).unwrap());
        let leader = spawn(
            me,
            ClusterState::founded(me, Generation(1)),
            clock_at(Millis(0), Duration::ZERO),
            vec![opening],
            timing,
            std::future::pending(),
        );
        for amount in 1..=3 {
            let bid = Request::Change {
                id: None,
                op: Op::Bid {
                    bidder: BidderId::new("solo").unwrap(),
                    amount: Amount::new(amount).unwrap(),
                    credential: crate::types::Credential([1; 32]),
                },
            };
            let reply = tokio::time::timeout(Duration::from_secs(5), leader.call(bid))
                .await
                .expect("answered long before the next heartbeat")
                .unwrap();
            assert!(matches!(reply, Reply::Decision(Ok(()), _)), "{reply:?}");
        }
    }
}
