//! The leader's shell: one task owns the leader's [`Engine`], feeds it every event (client
//! requests, replica joins, acks, the heartbeat timer), and performs the actions it decides:
//! sending on replica streams, answering clients, fencing through the [`Authority`]. The rules
//! themselves (group commit, fence before removal, forgiveness after a stall) live in the
//! engine, in `auction-core`, where they are unit-tested without sockets or clocks. No lock is
//! needed: the task owns everything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use auction_core::engine::{self, Action, Engine, Message};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;
use tracing::{info, warn};

use crate::auction::Decision;
use crate::authority::{Authority, AuthorityError, Fenced};
use crate::digest;
use crate::host::wall_clock_ms;
use crate::pb::{self, AuctionView, FromLeader, from_leader};
use crate::replication::{ChangeKind, ClockReading, ClusterState, ConnId, Member};
use crate::spin::Spin;
use crate::types::RequestId;
use crate::view;

pub use auction_core::engine::{EVENTS, Timing, start_change};

/// How many messages may wait for one replica before it counts as hopelessly behind. A replica
/// that stops reading is fenced by the ack timeout long before a healthy one fills this.
pub(crate) const OUTBOUND_CAPACITY: usize = 16 * 1024;

/// A request from a client or from the leader's own terminal.
#[derive(Debug)]
pub enum Request {
    /// A change of the auction; `id` makes it exactly-once (`None` for the terminal).
    Change {
        id: Option<RequestId>,
        op: crate::auction::Op,
    },
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
pub(crate) type SessionSlot = mpsc::OwnedPermit<Result<pb::SessionReply, Status>>;

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
                        pb::session_reply::Reply::Decision(crate::view::decision_reply(&d, view))
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
pub(crate) type Outbound = mpsc::Sender<Result<FromLeader, Status>>;

/// A replica that proved it holds the cluster secret, as the leader task keeps it.
#[derive(Debug)]
pub(crate) struct Peer {
    /// The outbound half of its stream.
    pub outbound: Outbound,
}

/// What reaches the leader task.
#[derive(Debug)]
pub(crate) enum Event {
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
    pub(crate) async fn send(&self, event: Event) -> Result<(), Status> {
        self.events
            .send(event)
            .await
            .map_err(|_| Status::unavailable("the leader is shutting down"))
    }
}

/// Starts the leader task on `state` and returns its handle. The auction clock resumes from
/// `clock`. `initial` changes (opening the first auction, or taking over from a failed leader)
/// form the first batch. Members are fenced through `authority`. The task ends when `shutdown`
/// resolves (after draining and handing over) or every handle is dropped.
pub fn spawn<A: Authority>(
    me: Member,
    state: ClusterState,
    clock: ClockReading,
    initial: Vec<ChangeKind>,
    timing: Timing,
    authority: Arc<A>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> LeaderHandle {
    let (tx, rx) = mpsc::channel(4096);
    let (members, members_rx) = watch::channel(state.members.clone());
    let (learned, learned_rx) = mpsc::unbounded_channel();
    let leader = Leader {
        engine: Engine::new(me, state, clock, initial, timing, A::READS),
        timing,
        peers: HashMap::new(),
        authority,
        members,
        spin: Spin::spawn(timing.spin),
        learned,
    };
    tokio::spawn(leader.run(rx, learned_rx, shutdown));
    LeaderHandle {
        events: tx,
        members: members_rx,
    }
}

/// The leader task's state: the engine, and what it needs to carry out the engine's actions.
struct Leader<A> {
    engine: Engine<ReplyTo>,
    timing: Timing,
    /// The outbound half of every replica stream the engine knows, by connection.
    peers: HashMap<ConnId, Outbound>,
    /// Fences members, and tells whether a process that used a joiner's id lives.
    authority: Arc<A>,
    /// Publishes the members after every membership change.
    members: watch::Sender<Vec<Member>>,
    /// Keeps the thread polling for a while after runs of small batches, unless turned off.
    spin: Spin,
    /// Where the authority's answers (admitted, fenced, deposed) come back to the task.
    learned: mpsc::UnboundedSender<engine::Event<ReplyTo>>,
}

impl<A: Authority> Leader<A> {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut learned: mpsc::UnboundedReceiver<engine::Event<ReplyTo>>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        self.step().await;
        let state = self.engine.state();
        info!(
            epoch = state.epoch,
            version = state.version,
            members = ?state.members.iter().map(|m| m.id.0).collect::<Vec<_>>(),
            "leading"
        );
        // The first tick a heartbeat from now: a new leader has nobody to beat for yet.
        let first = tokio::time::Instant::now() + self.timing.heartbeat;
        let mut tick = tokio::time::interval_at(first, self.timing.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let mut stopping = false;
        loop {
            tokio::select! {
                // A node asked to stop answers what it took, then hands over and acts no more:
                // the task ends and the stream senders drop, which ends every replica stream.
                () = &mut shutdown, if !stopping => {
                    stopping = true;
                    self.engine.handle(engine::Event::Stop, Instant::now());
                }
                event = events.recv() => match event {
                    Some(event) => self.handle(event).await,
                    None => break,
                },
                // The task holds a sender, so this never ends while it runs.
                Some(event) = learned.recv() => self.engine.handle(event, Instant::now()),
                // Heartbeats, and fencing of members that fell silent or stayed away. Events
                // already queued (acks among them) are handled first, so they count.
                scheduled = tick.tick() => {
                    while let Ok(event) = events.try_recv() {
                        self.handle(event).await;
                    }
                    let tick = engine::Event::Tick { scheduled: scheduled.into_std() };
                    self.engine.handle(tick, Instant::now());
                }
            }
            // Everything already waiting joins the same batch.
            while let Ok(event) = events.try_recv() {
                self.handle(event).await;
            }
            self.step().await;
            if self.engine.stopped() {
                break;
            }
        }
        info!("stopped leading");
    }

    /// Hands one event to the engine; answers a status request itself (it is not ordered).
    async fn handle(&mut self, event: Event) {
        let now = Instant::now();
        let event = match event {
            Event::Request { request, reply } => match request {
                Request::Status(detail) => return reply.send(Reply::Status(self.status(detail))),
                Request::Change { id, op } => engine::Event::Request {
                    request: engine::Request::Change { id, op },
                    reply,
                },
                Request::Result => engine::Event::Request {
                    request: engine::Request::Read,
                    reply,
                },
            },
            Event::Join { conn, node, peer } => {
                let mut displaced = Vec::new();
                for old in self.engine.displaced_by(&node) {
                    displaced.push((old, self.authority.probe(&old).await));
                }
                self.peers.insert(conn, peer.outbound);
                engine::Event::Join {
                    conn,
                    node,
                    displaced,
                }
            }
            Event::Ack { conn, seq, version } => engine::Event::Ack { conn, seq, version },
            Event::Gone { conn } => {
                self.peers.remove(&conn);
                engine::Event::Gone { conn }
            }
            Event::Left { conn } => {
                self.peers.remove(&conn);
                engine::Event::Left { conn }
            }
        };
        self.engine.handle(event, now);
    }

    /// Lets the engine advance, and performs what it decides, until it decides nothing more.
    async fn step(&mut self) {
        self.engine.advance(Instant::now());
        loop {
            let actions = self.engine.take_actions();
            if actions.is_empty() {
                return;
            }
            let mut learned = Vec::new();
            let wall_now_ms = wall_clock_ms();
            for action in actions {
                if let Some(event) = self.perform(action, wall_now_ms).await {
                    learned.push(event);
                }
            }
            if learned.is_empty() {
                return;
            }
            let now = Instant::now();
            for event in learned {
                self.engine.handle(event, now);
            }
            self.engine.advance(now);
        }
    }

    /// Carries out one action; returns what it taught the engine, if anything.
    async fn perform(
        &mut self,
        action: Action<ReplyTo>,
        wall_now_ms: u64,
    ) -> Option<engine::Event<ReplyTo>> {
        match action {
            Action::Send { conn, seq, message } => {
                let msg = match message {
                    Message::Snapshot(state) => from_leader::Msg::Snapshot((&*state).into()),
                    Message::Heartbeat { clock } => {
                        from_leader::Msg::Heartbeat(pb::Heartbeat { clock_ms: clock.0 })
                    }
                    Message::Leaving => from_leader::Msg::Leaving(pb::Leaving {}),
                };
                self.send(conn, seq, msg)
            }
            Action::Append { to, append } => {
                let append = pb::Append {
                    first_version: append.first_version,
                    changes: append.changes.iter().map(Into::into).collect(),
                    generation: append.generation.0,
                    epoch: append.epoch,
                };
                let mut backlogged = None;
                if let Some((&(last, last_seq), others)) = to.split_last() {
                    for &(conn, seq) in others {
                        let msg = from_leader::Msg::Append(append.clone());
                        backlogged = backlogged.or(self.send(conn, seq, msg));
                    }
                    let msg = from_leader::Msg::Append(append);
                    backlogged = backlogged.or(self.send(last, last_seq, msg));
                }
                backlogged
            }
            Action::Reply { to, reply } => {
                to.send(match reply {
                    engine::Reply::Decision(d, view) => {
                        Reply::Decision(d, view::auction_view(view, wall_now_ms))
                    }
                    engine::Reply::Result(view) => {
                        Reply::Result(view::auction_view(view, wall_now_ms))
                    }
                });
                None
            }
            Action::Refuse { to } => {
                to.refuse(&Status::unavailable("the leader is leaving"));
                None
            }
            Action::RefuseJoin { conn, why } => {
                let status = match why {
                    engine::JoinRefusal::Unchecked { .. } => Status::unavailable(why.to_string()),
                    _ => Status::already_exists(why.to_string()),
                };
                if let Some(outbound) = self.peers.remove(&conn) {
                    let _ = outbound.try_send(Err(status));
                }
                None
            }
            // The authority may be a network away (etcd): its answers come back as events, so the
            // leader goes on beating and committing meanwhile. The engine asks once per node
            // until it has the answer.
            Action::Admit { node } => {
                let authority = self.authority.clone();
                self.learn(async move {
                    match authority.admit(&node).await {
                        Ok(()) => engine::Event::Admitted { node },
                        Err(AuthorityError::Deposed) => engine::Event::Deposed,
                        Err(e) => engine::Event::AdmitFailed {
                            node,
                            why: e.to_string(),
                        },
                    }
                });
                None
            }
            Action::Fence { node } => {
                let authority = self.authority.clone();
                self.learn(async move {
                    match authority.fence(&node).await {
                        Ok(fenced) => {
                            match fenced {
                                Fenced::Killed => {
                                    warn!(node = %node.id, pid = node.pid, "fenced (SIGKILL)");
                                }
                                Fenced::AlreadyGone => {
                                    info!(node = %node.id, pid = node.pid, "process is gone");
                                }
                                Fenced::Excluded => {
                                    warn!(node = %node.id, "fenced (no longer a member)");
                                }
                            }
                            engine::Event::Fenced { node }
                        }
                        Err(AuthorityError::Deposed) => engine::Event::Deposed,
                        Err(e) => engine::Event::FenceFailed {
                            node,
                            why: e.to_string(),
                        },
                    }
                });
                None
            }
            Action::Members(members) => {
                self.members.send_replace(members);
                None
            }
            Action::Batch { requests } => {
                self.spin.after_batch(requests);
                None
            }
            Action::Stop => None,
        }
    }

    /// Runs an authority call beside the leader task; its answer reaches the engine as an
    /// event, in the task's loop.
    fn learn(&self, call: impl Future<Output = engine::Event<ReplyTo>> + Send + 'static) {
        let learned = self.learned.clone();
        tokio::spawn(async move {
            // The leader task may have ended meanwhile: then nobody needs the answer.
            let _ = learned.send(call.await);
        });
    }

    /// Sends message `seq` on stream `conn`; a stream that cannot take it is reported.
    fn send(
        &mut self,
        conn: ConnId,
        seq: u64,
        msg: from_leader::Msg,
    ) -> Option<engine::Event<ReplyTo>> {
        let outbound = self.peers.get(&conn)?;
        let message = FromLeader {
            seq,
            msg: Some(msg),
        };
        match outbound.try_send(Ok(message)) {
            Ok(()) => None,
            // The stream task is gone; its Gone event is on the way.
            Err(mpsc::error::TrySendError::Closed(_)) => None,
            Err(mpsc::error::TrySendError::Full(_)) => Some(engine::Event::Backlogged { conn }),
        }
    }

    fn status(&self, detail: Detail) -> pb::StatusReply {
        let state = self.engine.state();
        let now = self.engine.clock_at(Instant::now());
        pb::StatusReply {
            leader: Some(self.engine.me().into()),
            members: state.members.iter().map(|m| (*m).into()).collect(),
            epoch: state.epoch,
            version: state.version,
            auction: Some(view::auction_view(
                state.machine.auction.observe(now),
                wall_clock_ms(),
            )),
            digest: match detail {
                Detail::Summary => 0,
                Detail::WithDigest => digest::of(state),
            },
            // Where the nodes serve clients: the client port's service fills it in.
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::authority::SingleHost;
    use crate::replication::Generation;
    use crate::types::{Amount, AuctionLength, BidderId, Credential, NodeId};

    /// The shell carries out the engine's actions: a leader alone in its cluster answers as soon
    /// as it has applied a request, not on its next heartbeat (an hour away here).
    #[tokio::test]
    async fn a_leader_without_followers_answers_at_once() {
        let me = Member {
            id: NodeId(1),
            pid: std::process::id(),
            start_time: 0,
        };
        let timing = Timing {
            heartbeat: Duration::from_secs(3600),
            timeout: Duration::from_secs(7200),
            spin: Duration::ZERO,
        };
        let opening = start_change(AuctionLength::from_secs(60).unwrap());
        let clock = ClockReading {
            clock: crate::types::Millis(0),
            at: Instant::now(),
        };
        let authority = Arc::new(SingleHost {
            leader_addr: "127.0.0.1:9".parse().unwrap(),
        });
        let leader = spawn(
            me,
            ClusterState::founded(me, Generation(1)),
            clock,
            vec![opening],
            timing,
            authority,
            std::future::pending(),
        );
        for amount in 1..=3 {
            let bid = Request::Change {
                id: None,
                op: crate::auction::Op::Bid {
                    bidder: BidderId::new("solo").unwrap(),
                    amount: Amount::new(amount).unwrap(),
                    credential: Credential([1; 32]),
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
