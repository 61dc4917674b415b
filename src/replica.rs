//! A replica's stream to the leader: join, prove and check the cluster secret, take the full
//! state, then apply every change in order and acknowledge it, until the leader fails, falls
//! silent or refuses us.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use tracing::{info, warn};

use crate::auth::ClusterSecret;
use crate::authority::{Authority, Fenced};
use crate::handshake::Joining;
use crate::leader::Timing;
use crate::pb::{self, FromReplica, from_leader, from_replica};
pub use auction_core::follower::{Held, LeaderStream, Received, StreamError};

use crate::replication::{Change, ClusterState, Generation, Member};
use crate::tls::{self, ServerTls};
use crate::types::Millis;
use auction_core::engine::Append;

/// The largest state a replica accepts in one message.
pub(crate) const MAX_STATE_BYTES: usize = 1 << 30;

/// Why following ended.
#[derive(Debug)]
pub enum FollowEnd {
    /// Nothing accepted the connection, or the handshake failed before any state arrived.
    Unreachable(String),
    /// Something accepts connections on the replica port but says nothing within the timeout.
    /// When the stream had delivered a state, `leader` is who sent it. A member has fenced it.
    Silent { leader: Option<Member> },
    /// The stream ended or broke: the leader is gone. `leader` is who had sent the state.
    Lost { leader: Option<Member> },
    /// The state made this replica a member, but it could not take its member mark: it has
    /// forgotten that state, so it is not a member here, and must join again.
    Unmarked(String),
    /// The proven leader offered a state that this member must not adopt: another cluster's, or
    /// older than the committed state this member holds. It acknowledged nothing of it.
    Stale { leader: Member, why: String },
    /// The leader said it leaves on purpose: it has committed what it answered and will not act
    /// again. `leader` is who had sent the state.
    Left { leader: Option<Member> },
    /// This node was asked to stop; a member has told the leader it leaves.
    Stopped,
    /// The leader refused this node for good (for example, its id is in use).
    Refused(Status),
    /// The node on the replica port could not prove that it holds the cluster secret: it is
    /// not this cluster's leader, and it gets nothing, not even this node's proof.
    Impostor(String),
}

/// A replica's state, shared with its terminal. Locked briefly per message, never across an
/// await.
pub type SharedState = Arc<Mutex<Option<Held>>>;

/// How often per heartbeat a replica checks whether the leader has been silent too long.
const SILENCE_CHECKS_PER_HEARTBEAT: u32 = 4;

/// How a replica reaches and checks its leader.
#[derive(Clone, Copy, Debug)]
pub struct Dial<'a> {
    /// The leader's replica port.
    pub leader_addr: SocketAddr,
    /// This node's own address, which its connections come from (so that a packet filter
    /// between hosts sees them as this host's).
    pub local: std::net::IpAddr,
    /// What the leader must prove it holds, and what this replica proves with.
    pub secret: &'a ClusterSecret,
    /// TLS to dial with, or plain HTTP/2.
    pub tls: Option<&'a ServerTls>,
    pub timing: Timing,
}

/// Follows the leader at `dial.leader_addr` as `me`, keeping `shared` up to date, until the
/// leader fails, leaves or refuses, or `stopping` resolves. When `me` becomes a member, it takes
/// its membership from the authority (kept in `membership`) before it acknowledges anything as
/// a member. A member fences a silent leader before it returns; a member told to stop tells the
/// leader it leaves.
pub async fn follow<A: Authority>(
    dial: Dial<'_>,
    me: Member,
    authority: &A,
    membership: &mut Option<A::Membership>,
    shared: &SharedState,
    stopping: impl Future<Output = ()>,
) -> FollowEnd {
    tokio::pin!(stopping);
    let (mut inbound, acks, proven) = tokio::select! {
        () = &mut stopping => return FollowEnd::Stopped,
        shaken = handshake(dial, me) => match shaken {
            Ok(link) => link,
            Err(end) => {
                // Whatever holds the replica port says nothing: a member fences it, so that it
                // can take over.
                if matches!(end, FollowEnd::Silent { leader: None }) && is_member(shared, &me) {
                    fence_silent_leader(authority, None).await;
                }
                return end;
            }
        },
    };
    let timing = dial.timing;
    let mut stream = LeaderStream::new(me, proven);
    let mut member = is_member(shared, &me);
    // Checked four times per heartbeat, so a silent leader is noticed at most a quarter of a
    // heartbeat after the timeout.
    let mut tick = tokio::time::interval(timing.heartbeat / SILENCE_CHECKS_PER_HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // A member waits for a working leader to remove it first where a fence only excludes
    // (auction_core::follower::silence_limit); a joiner, which never takes over, the timeout.
    let silence_limit = |member: bool| {
        if member {
            auction_core::follower::silence_limit(&timing, A::READS)
        } else {
            timing.timeout
        }
    };
    loop {
        let leader = stream.leader();
        let message = tokio::select! {
            biased;
            message = inbound.message() => match message {
                Err(status) => return refused_or(status, |_| FollowEnd::Lost { leader }),
                Ok(None) => return FollowEnd::Lost { leader },
                Ok(Some(m)) => m,
            },
            // Asked to stop: a member says it leaves, so the leader removes it without fencing
            // it, and waits (at most the timeout) until the leader has let it go.
            () = &mut stopping => {
                if member {
                    let leave = FromReplica {
                        msg: Some(from_replica::Msg::Leave(pb::Leave {})),
                    };
                    if acks.try_send(leave).is_ok() {
                        let _ = tokio::time::timeout(timing.timeout, async {
                            while let Ok(Some(_)) = inbound.message().await {}
                        })
                        .await;
                    }
                    info!("left the cluster");
                }
                return FollowEnd::Stopped;
            }
            // The leader's silence, measured on this replica's own ticks: a tick that comes
            // much later than due means this replica was stalled (paused, or starved), so the
            // silence was its own and the clock restarts.
            scheduled = tick.tick() => {
                let now = Instant::now();
                let late_by = now.saturating_duration_since(scheduled);
                if late_by > timing.heartbeat {
                    info!(?late_by, "this replica was stalled; restarting the leader's clock");
                    last_heard = now;
                } else if now.saturating_duration_since(last_heard) > silence_limit(member) {
                    if member {
                        // Fenced while this stream is still open, so a leader that was only
                        // slow never sees it end and fences this replica in return.
                        fence_silent_leader(authority, leader).await;
                    }
                    return FollowEnd::Silent { leader };
                }
                continue;
            }
        };
        last_heard = Instant::now();
        if matches!(message.msg, Some(from_leader::Msg::Leaving(_))) {
            return FollowEnd::Left { leader };
        }
        let seq = message.seq;
        // Invariant: no code panics while holding this lock, so it is never poisoned.
        let mut state = shared.lock().expect("state lock poisoned");
        let (version, joined) = match take_wire(
            &mut stream,
            &mut state,
            message.msg,
            Instant::now().into_std(),
        ) {
            Ok(current) => (current.version, !member && current.has_member(&me)),
            Err(StreamError::Stale(why)) => {
                return FollowEnd::Stale {
                    leader: proven,
                    why,
                };
            }
            Err(StreamError::Protocol(what)) => {
                warn!("protocol error from the leader: {what}");
                return FollowEnd::Lost {
                    leader: stream.leader(),
                };
            }
        };
        if joined {
            if membership.is_none() {
                match hold_membership(authority.join(), &mut state) {
                    Ok(m) => *membership = Some(m),
                    Err(end) => return end,
                }
            }
            info!(version, "now a member");
            member = true;
        }
        let ack = FromReplica {
            msg: Some(from_replica::Msg::Ack(pb::Ack { seq, version })),
        };
        drop(state);
        // Acks are cumulative: when the queue is full, the next ack carries this one.
        let _ = acks.try_send(ack);
    }
}

/// Opens a stream to the node on the replica port and runs the handshake: this replica's Join
/// and challenge, the leader's proof, this replica's proof. Returns the stream, the sender of
/// this replica's messages, and the proven leader.
///
/// # Errors
/// How following ended before any state arrived.
async fn handshake(
    dial: Dial<'_>,
    me: Member,
) -> Result<
    (
        tonic::Streaming<pb::FromLeader>,
        mpsc::Sender<FromReplica>,
        Member,
    ),
    FollowEnd,
> {
    let Dial {
        leader_addr,
        local,
        secret,
        tls,
        timing,
    } = dial;
    let joining = Joining::new(me)
        .map_err(|e| FollowEnd::Unreachable(format!("no randomness for a challenge: {e}")))?;
    let endpoint = tls::endpoint(leader_addr, tls)
        .map_err(|e| FollowEnd::Unreachable(e.to_string()))?
        .connect_timeout(timing.timeout)
        .tcp_nodelay(true)
        .local_address(Some(local));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| FollowEnd::Unreachable(e.to_string()))?;
    let mut client = pb::replication_client::ReplicationClient::new(channel)
        .max_decoding_message_size(MAX_STATE_BYTES);
    let (acks, rx) = mpsc::channel(1024);
    if acks.try_send(joining.join()).is_err() {
        return Err(FollowEnd::Unreachable("could not queue Join".into()));
    }
    let silent = || FollowEnd::Silent { leader: None };
    let response =
        match tokio::time::timeout(timing.timeout, client.follow(ReceiverStream::new(rx))).await {
            Err(_) => return Err(silent()),
            Ok(Err(status)) => {
                return Err(refused_or(status, |s| {
                    FollowEnd::Unreachable(s.to_string())
                }));
            }
            Ok(Ok(r)) => r,
        };
    let mut inbound = response.into_inner();
    // The leader proves itself first; only then does this replica answer with its own proof.
    let first = match tokio::time::timeout(timing.timeout, inbound.message()).await {
        Err(_) => return Err(silent()),
        Ok(Err(status)) => {
            return Err(refused_or(status, |s| {
                FollowEnd::Unreachable(s.to_string())
            }));
        }
        Ok(Ok(None)) => return Err(FollowEnd::Unreachable("the stream ended at once".into())),
        Ok(Ok(Some(first))) => first,
    };
    let (leader, prove) = joining.answer(secret, first).map_err(|why| {
        warn!("the node on the replica port is not this cluster's leader: {why}");
        FollowEnd::Impostor(why.to_string())
    })?;
    if acks.try_send(prove).is_err() {
        return Err(FollowEnd::Unreachable("could not queue the proof".into()));
    }
    Ok((inbound, acks, leader))
}

/// Lets a replica whose state has just listed it as a member act as one only if it took its
/// member mark (`taken`): a member holds its mark before its first ack as a member, so no node
/// can found a new cluster while it lives. If the mark could not be taken, the replica forgets
/// the state that lists it, so that it neither acknowledges as a member nor takes over from the
/// leader as one: it ends the stream and joins again, and the leader, whose commits wait for
/// its ack, fences it if the mark keeps failing.
///
/// # Errors
/// [`FollowEnd::Unmarked`] when the mark was not taken.
fn hold_membership<M>(taken: std::io::Result<M>, held: &mut Option<Held>) -> Result<M, FollowEnd> {
    taken.map_err(|e| {
        *held = None;
        FollowEnd::Unmarked(e.to_string())
    })
}

/// Reads one message of the leader from the wire, for [`LeaderStream::take`].
///
/// # Errors
/// [`StreamError::Protocol`] for what cannot come in a stream after its handshake: an invalid
/// snapshot or change, a second challenge, a `Leaving` ([`follow`] ends the stream on it before
/// it would come here), an empty message.
pub fn received(message: Option<from_leader::Msg>) -> Result<Received, StreamError> {
    let protocol = |why: String| StreamError::Protocol(why);
    match message {
        Some(from_leader::Msg::Snapshot(snapshot)) => ClusterState::try_from(snapshot)
            .map(Received::Snapshot)
            .map_err(|e| protocol(format!("bad snapshot: {e}"))),
        Some(from_leader::Msg::Append(append)) => {
            let changes = append
                .changes
                .into_iter()
                .map(Change::try_from)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| protocol(format!("bad change: {e}")))?;
            Ok(Received::Append(Append {
                generation: Generation(append.generation),
                epoch: append.epoch,
                first_version: append.first_version,
                changes,
            }))
        }
        Some(from_leader::Msg::Heartbeat(beat)) => Ok(Received::Heartbeat {
            clock: Millis(beat.clock_ms),
        }),
        Some(from_leader::Msg::Leaving(_)) => Err(protocol("the leader is leaving".into())),
        Some(from_leader::Msg::Challenge(_)) => {
            Err(protocol("a challenge after the handshake".into()))
        }
        None => Err(protocol("empty message".into())),
    }
}

/// Reads one message of the leader from the wire and has `stream` take it into `held` at `now`.
///
/// # Errors
/// As for [`received`] and [`LeaderStream::take`].
pub fn take_wire<'s>(
    stream: &mut LeaderStream,
    held: &'s mut Option<Held>,
    message: Option<from_leader::Msg>,
    now: std::time::Instant,
) -> Result<&'s ClusterState, StreamError> {
    stream.take(held, received(message)?, now)
}

/// Whether `me` is a member in `shared`.
pub fn is_member(shared: &SharedState, me: &Member) -> bool {
    // Invariant: no code panics while holding this lock, so it is never poisoned.
    shared
        .lock()
        .expect("state lock poisoned")
        .as_ref()
        .is_some_and(|h| h.state.has_member(me))
}

/// Fences a leader that fell silent, through the authority: the one that sent this stream's
/// state, or, if none did, whatever holds the leadership without answering.
pub(crate) async fn fence_silent_leader(authority: &impl Authority, leader: Option<Member>) {
    match leader {
        Some(l) => match authority.fence(&l).await {
            Ok(Fenced::Killed) => warn!(leader = %l.id, pid = l.pid, "fenced the silent leader"),
            Ok(Fenced::AlreadyGone | Fenced::Excluded) => {}
            Err(e) => warn!(leader = %l.id, "could not fence the silent leader: {e}"),
        },
        None => match authority.fence_holder().await {
            Ok(Some(pid)) => warn!(pid, "fenced the silent holder of the replica port"),
            Ok(None) => {}
            Err(e) => warn!("could not fence the holder of the replica port: {e}"),
        },
    }
}

fn refused_or(status: Status, otherwise: impl FnOnce(&Status) -> FollowEnd) -> FollowEnd {
    if status.code() == Code::AlreadyExists {
        FollowEnd::Refused(status)
    } else {
        otherwise(&status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::Generation;
    use crate::replication::{ChangeKind, ClockReading};
    use crate::types::NodeId;

    fn node(id: u16) -> Member {
        Member {
            id: NodeId(id),
            pid: 1000 + u32::from(id),
            start_time: 7,
        }
    }
    use crate::types::Millis;

    /// The cluster of these tests.
    const GEN: Generation = Generation(3);
    /// The replica under test, unless a test names another.
    const ME: u16 = 5409;

    fn snapshot(leader: u16) -> Option<from_leader::Msg> {
        snapshot_of(&ClusterState::founded(node(leader), GEN))
    }

    fn snapshot_of(state: &ClusterState) -> Option<from_leader::Msg> {
        Some(from_leader::Msg::Snapshot(state.into()))
    }

    /// Changes that add `ids` as members, from `first_version` on, in epoch 1.
    fn append(first_version: u64, ids: &[u16]) -> Option<from_leader::Msg> {
        let kinds = ids.iter().map(|&id| ChangeKind::Join(node(id))).collect();
        append_kinds(first_version, kinds)
    }

    fn append_kinds(first_version: u64, kinds: Vec<ChangeKind>) -> Option<from_leader::Msg> {
        append_in(GEN, 1, first_version, kinds)
    }

    fn append_in(
        generation: Generation,
        epoch: u64,
        first_version: u64,
        kinds: Vec<ChangeKind>,
    ) -> Option<from_leader::Msg> {
        let changes = kinds
            .into_iter()
            .map(|kind| {
                let change = Change {
                    at: Millis(1_000),
                    kind,
                };
                (&change).into()
            })
            .collect();
        Some(from_leader::Msg::Append(pb::Append {
            first_version,
            changes,
            generation: generation.0,
            epoch,
        }))
    }

    fn heartbeat() -> Option<from_leader::Msg> {
        heartbeat_at(0)
    }

    fn heartbeat_at(clock_ms: u64) -> Option<from_leader::Msg> {
        Some(from_leader::Msg::Heartbeat(pb::Heartbeat { clock_ms }))
    }

    /// Takes `message` now, with the error as text.
    fn take<'s>(
        stream: &mut LeaderStream,
        held: &'s mut Option<Held>,
        message: Option<from_leader::Msg>,
    ) -> Result<&'s ClusterState, String> {
        take_wire(stream, held, message, std::time::Instant::now()).map_err(|e| e.to_string())
    }

    fn stream_of(leader: u16) -> LeaderStream {
        LeaderStream::new(node(ME), node(leader))
    }

    /// A private address, so the marks of tests that run at once never meet.
    fn private_cluster() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    /// A replica that cannot take its member mark as it becomes a member must not act as one:
    /// with its state gone, `node::run` neither fences the leader nor takes over, but joins again.
    #[test]
    fn a_new_member_without_its_member_mark_forgets_the_state() {
        let member_state = || {
            let mut state = None;
            let mut stream = stream_of(5400);
            let version = take(&mut stream, &mut state, snapshot(5400))
                .unwrap()
                .version;
            let taken = take(&mut stream, &mut state, append(version + 1, &[5401]));
            assert!(taken.unwrap().has_member(&node(5401)));
            state
        };
        let shared = SharedState::new(Mutex::new(member_state()));
        let refused: std::io::Result<crate::process::MemberMark> =
            Err(std::io::Error::other("address in use"));
        let end = hold_membership(refused, &mut shared.lock().unwrap()).unwrap_err();
        assert!(matches!(end, FollowEnd::Unmarked(_)), "{end:?}");
        assert!(!is_member(&shared, &node(5401)));
        let shared = SharedState::new(Mutex::new(member_state()));
        let taken = crate::process::MemberMark::take(private_cluster());
        hold_membership(taken, &mut shared.lock().unwrap()).unwrap();
        assert!(is_member(&shared, &node(5401)));
    }

    #[test]
    fn takes_the_proven_leaders_snapshot_then_its_changes() {
        let mut stream = stream_of(5400);
        let mut state = None;
        assert_eq!(stream.leader(), None);
        let version = take(&mut stream, &mut state, snapshot(5400))
            .unwrap()
            .version;
        assert_eq!(stream.leader(), Some(node(5400)));
        let taken = take(&mut stream, &mut state, append(version + 1, &[5401, 5402])).unwrap();
        assert_eq!(taken.version, version + 2);
        assert!(taken.has_member(&node(5402)));
        assert_eq!(
            take(&mut stream, &mut state, heartbeat()).unwrap().version,
            version + 2
        );
    }

    #[test]
    fn refuses_a_snapshot_of_another_leader() {
        let mut stream = stream_of(5400);
        let mut state = None;
        let why = take(&mut stream, &mut state, snapshot(5401)).unwrap_err();
        assert!(why.contains("another leader"), "{why}");
        assert_eq!((stream.leader(), state), (None, None));
    }

    /// A member holds committed changes: an empty founder's state, another cluster's, or an
    /// older one of its own cluster never replaces them, and nothing of it is acknowledged.
    #[test]
    fn a_member_refuses_a_foreign_or_older_snapshot_and_keeps_its_state() {
        let mut mine = ClusterState::founded(node(5400), GEN);
        for kind in [ChangeKind::Join(node(ME)), ChangeKind::Tick] {
            mine.apply(&Change {
                at: Millis(2_000),
                kind,
            });
        }
        let held = Held {
            state: mine.clone(),
            clock: ClockReading {
                clock: Millis(2_000),
                at: std::time::Instant::now(),
            },
        };
        let empty_founder = ClusterState::founded(node(5400), Generation(99));
        let mut older = mine.clone();
        older.version -= 1;
        for offered in [empty_founder, older] {
            let mut state = Some(held.clone());
            let mut stream = stream_of(5400);
            let refused = take_wire(
                &mut stream,
                &mut state,
                snapshot_of(&offered),
                std::time::Instant::now(),
            );
            assert!(matches!(refused, Err(StreamError::Stale(_))), "{refused:?}");
            assert_eq!(state.as_ref(), Some(&held));
            assert_eq!(stream.leader(), None);
        }
        // A newer epoch of its own cluster is taken, even with fewer versions.
        let mut successor = mine.clone();
        successor.apply(&Change {
            at: Millis(2_000),
            kind: ChangeKind::Lead {
                leader: node(5400),
                epoch: 2,
            },
        });
        successor.version = 1;
        let mut state = Some(held.clone());
        assert!(take(&mut stream_of(5400), &mut state, snapshot_of(&successor)).is_ok());
        // A node that is not a member holds nothing committed: it takes any proven state.
        let mut state = Some(Held {
            state: ClusterState::founded(node(5400), GEN),
            ..held
        });
        let foreign = ClusterState::founded(node(5400), Generation(98));
        assert!(take(&mut stream_of(5400), &mut state, snapshot_of(&foreign)).is_ok());
    }

    #[test]
    fn refuses_changes_of_another_cluster_or_epoch() {
        let mut stream = stream_of(5400);
        let mut state = None;
        let version = take(&mut stream, &mut state, snapshot(5400))
            .unwrap()
            .version;
        let kinds = || vec![ChangeKind::Join(node(5401))];
        for (generation, epoch) in [(Generation(4), 1), (GEN, 2)] {
            let why = take(
                &mut stream,
                &mut state,
                append_in(generation, epoch, version + 1, kinds()),
            )
            .unwrap_err();
            assert!(why.contains("changes of generation"), "{why}");
        }
        assert!(
            take(
                &mut stream,
                &mut state,
                append_in(GEN, 1, version + 1, kinds())
            )
            .is_ok()
        );
    }

    /// The clock a replica would resume from: its leader's latest reading, never a stale one
    /// that waited in a buffer, and never another leader's.
    #[test]
    fn a_replica_keeps_its_leaders_latest_clock_reading() {
        let mut stream = stream_of(5400);
        let mut state = None;
        let t0 = std::time::Instant::now();
        let ms = std::time::Duration::from_millis;
        take_wire(&mut stream, &mut state, snapshot(5400), t0).unwrap();
        take_wire(&mut stream, &mut state, heartbeat_at(5_000), t0).unwrap();
        let clock = |s: &Option<Held>| s.as_ref().unwrap().clock;
        assert_eq!(clock(&state).at(t0 + ms(100)), Millis(5_100));
        // A heartbeat that waited in a buffer reads earlier than the extrapolation: ignored.
        take_wire(&mut stream, &mut state, heartbeat_at(5_050), t0 + ms(200)).unwrap();
        assert_eq!(clock(&state).at(t0 + ms(200)), Millis(5_200));
        // A change carries a reading too.
        let version = state.as_ref().unwrap().state.version;
        let later = std::time::Instant::now().max(t0 + ms(300));
        take_wire(&mut stream, &mut state, append(version + 1, &[5401]), later).unwrap();
        assert!(clock(&state).at(later) >= Millis(1_000));
        // A new leader's snapshot starts from its own clock, whatever the last one read.
        let mut next = stream_of(5400);
        take_wire(&mut next, &mut state, snapshot(5400), later).unwrap();
        assert_eq!(clock(&state).at(later), Millis(0));
    }

    /// A state kept from an earlier stream may be behind: this stream's changes wait for its
    /// own snapshot.
    #[test]
    fn refuses_changes_and_heartbeats_before_the_snapshot() {
        let mut stream = stream_of(5400);
        let earlier = Held {
            state: ClusterState::founded(node(5400), GEN),
            clock: ClockReading {
                clock: Millis(0),
                at: std::time::Instant::now(),
            },
        };
        let mut state = Some(earlier.clone());
        let version = earlier.state.version;
        let why = take(&mut stream, &mut state, append(version + 1, &[5401])).unwrap_err();
        assert!(why.contains("before the state"), "{why}");
        let why = take(&mut stream, &mut state, heartbeat()).unwrap_err();
        assert!(why.contains("before the state"), "{why}");
        assert_eq!(state, Some(earlier));
    }

    #[test]
    fn refuses_changes_out_of_order_and_messages_out_of_place() {
        let mut stream = stream_of(5400);
        let mut state = None;
        let version = take(&mut stream, &mut state, snapshot(5400))
            .unwrap()
            .version;
        for gap in [version, version + 2] {
            let why = take(&mut stream, &mut state, append(gap, &[5401])).unwrap_err();
            assert!(why.contains("changes start at version"), "{why}");
        }
        let usurp = append_kinds(
            version + 1,
            vec![ChangeKind::Lead {
                leader: node(5401),
                epoch: 99,
            }],
        );
        let why = take(&mut stream, &mut state, usurp).unwrap_err();
        assert!(why.contains("another leader"), "{why}");
        let challenge = Some(from_leader::Msg::Challenge(pb::Challenge::default()));
        assert!(take(&mut stream, &mut state, challenge).is_err());
        assert!(take(&mut stream, &mut state, None).is_err());
        assert_eq!(state.map(|h| h.state.version), Some(version));
    }

    #[test]
    fn a_lead_change_must_start_a_later_epoch() {
        let mut stream = stream_of(5400);
        let mut state = None;
        let (version, epoch) = {
            let s = take(&mut stream, &mut state, snapshot(5400)).unwrap();
            (s.version, s.epoch)
        };
        for stale in [epoch, epoch.saturating_sub(1)] {
            let again = append_kinds(
                version + 1,
                vec![ChangeKind::Lead {
                    leader: node(5400),
                    epoch: stale,
                }],
            );
            let why = take(&mut stream, &mut state, again).unwrap_err();
            assert!(why.contains("not after epoch"), "{why}");
        }
        // An epoch may jump (with etcd it is a revision).
        let later = append_kinds(
            version + 1,
            vec![ChangeKind::Lead {
                leader: node(5400),
                epoch: epoch + 40,
            }],
        );
        assert_eq!(
            take(&mut stream, &mut state, later).unwrap().epoch,
            epoch + 40
        );
    }

    #[test]
    fn a_lead_change_may_name_only_the_proven_leader() {
        let mut stream = stream_of(5400);
        let mut state = None;
        let (version, epoch) = {
            let s = take(&mut stream, &mut state, snapshot(5400)).unwrap();
            (s.version, s.epoch)
        };
        let again = append_kinds(
            version + 1,
            vec![ChangeKind::Lead {
                leader: node(5400),
                epoch: epoch + 1,
            }],
        );
        assert_eq!(
            take(&mut stream, &mut state, again).unwrap().epoch,
            epoch + 1
        );
        // The changes before a refused one stay applied, as if they had come alone.
        let usurp = append_in(
            GEN,
            epoch + 1,
            version + 2,
            vec![
                ChangeKind::Join(node(5401)),
                ChangeKind::Lead {
                    leader: node(5401),
                    epoch: epoch + 2,
                },
            ],
        );
        let why = take(&mut stream, &mut state, usurp).unwrap_err();
        assert!(why.contains("another leader"), "{why}");
        let after = state.expect("the state stays").state;
        assert_eq!(after.version, version + 2);
        assert!(after.has_member(&node(5401)));
        assert_eq!((after.leader, after.epoch), (node(5400), epoch + 1));
    }
}
