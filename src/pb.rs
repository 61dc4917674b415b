//! Generated gRPC code and the conversions between wire messages and domain types. Every
//! conversion from the wire validates, so a malformed message from a client or a peer becomes a
//! [`WireError`] and never a domain value.

use thiserror::Error;

use crate::auction::{self, Auction, Bid, Machine, Op};
use crate::replication::{self, ChangeKind, ClusterState, Generation, Member};
use crate::types::{self, Amount, AuctionLength, BidderId, Credential, InputError, Millis, NodeId};

/// The code generated from `proto/auction.proto`.
#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("auction.v1");
}

pub use v1::*;

/// A message that does not describe a valid value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("node id {0} is not a port number")]
    NodeId(u32),
    #[error("unknown refusal kind {0}")]
    RefusalKind(i32),
    #[error("a credential must be 32 bytes, got {0}")]
    Credential(usize),
    #[error("{0} {1} is beyond {max}", max = MAX_COUNTER)]
    Counter(&'static str, u64),
    #[error("a cluster's generation is never 0")]
    Generation,
}

/// The largest version, epoch or auction number a state may arrive with. Each grows by one per
/// change, so no real cluster comes near it, and a state that does could not grow further.
pub const MAX_COUNTER: u64 = 1 << 62;

fn counter(value: u64, name: &'static str) -> Result<u64, WireError> {
    if value <= MAX_COUNTER {
        Ok(value)
    } else {
        Err(WireError::Counter(name, value))
    }
}

/// Reads a credential (a SHA-256 digest).
fn credential(bytes: &[u8]) -> Result<Credential, WireError> {
    <[u8; 32]>::try_from(bytes)
        .map(Credential)
        .map_err(|_| WireError::Credential(bytes.len()))
}

impl From<WireError> for tonic::Status {
    fn from(e: WireError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

fn required<T>(value: Option<T>, name: &'static str) -> Result<T, WireError> {
    value.ok_or(WireError::Missing(name))
}

impl From<Member> for NodeIdentity {
    fn from(m: Member) -> Self {
        Self {
            id: u32::from(m.id.0),
            pid: m.pid,
            start_time: m.start_time,
        }
    }
}

impl TryFrom<NodeIdentity> for Member {
    type Error = WireError;
    fn try_from(n: NodeIdentity) -> Result<Self, WireError> {
        let id = u16::try_from(n.id).map_err(|_| WireError::NodeId(n.id))?;
        Ok(Self {
            id: NodeId(id),
            pid: n.pid,
            start_time: n.start_time,
        })
    }
}

fn member(n: Option<NodeIdentity>, name: &'static str) -> Result<Member, WireError> {
    Member::try_from(required(n, name)?)
}

impl From<v1::RequestId> for Option<types::RequestId> {
    fn from(id: v1::RequestId) -> Self {
        types::RequestId::new(id.session, id.seq).ok()
    }
}

/// Reads a client's request id, which must be present and non-zero.
///
/// # Errors
/// [`WireError::Missing`] or [`InputError::RequestId`].
pub fn request_id(id: Option<v1::RequestId>) -> Result<types::RequestId, WireError> {
    let id = required(id, "id")?;
    Ok(types::RequestId::new(id.session, id.seq)?)
}

impl From<types::RequestId> for v1::RequestId {
    fn from(id: types::RequestId) -> Self {
        Self {
            session: id.session,
            seq: id.seq,
        }
    }
}

impl From<&auction::Refusal> for v1::Refusal {
    fn from(r: &auction::Refusal) -> Self {
        let (kind, auction, highest) = match r {
            auction::Refusal::NoAuction => (RefusalKind::NoAuction, 0, 0),
            auction::Refusal::Closed { auction } => (RefusalKind::Closed, *auction, 0),
            auction::Refusal::NotHigher { auction, highest } => {
                (RefusalKind::NotHigher, *auction, highest.get())
            }
            auction::Refusal::StillOpen { auction } => (RefusalKind::StillOpen, *auction, 0),
            auction::Refusal::StaleRequest => (RefusalKind::StaleRequest, 0, 0),
            auction::Refusal::NotYourName => (RefusalKind::NotYourName, 0, 0),
            auction::Refusal::TooManyBidders => (RefusalKind::TooManyBidders, 0, 0),
        };
        Self {
            kind: kind.into(),
            auction,
            highest,
        }
    }
}

impl TryFrom<v1::Refusal> for auction::Refusal {
    type Error = WireError;
    fn try_from(r: v1::Refusal) -> Result<Self, WireError> {
        Ok(
            match RefusalKind::try_from(r.kind).map_err(|_| WireError::RefusalKind(r.kind))? {
                RefusalKind::NoAuction => Self::NoAuction,
                RefusalKind::Closed => Self::Closed { auction: r.auction },
                RefusalKind::NotHigher => Self::NotHigher {
                    auction: r.auction,
                    highest: Amount::new(r.highest)?,
                },
                RefusalKind::StillOpen => Self::StillOpen { auction: r.auction },
                RefusalKind::StaleRequest => Self::StaleRequest,
                RefusalKind::NotYourName => Self::NotYourName,
                RefusalKind::TooManyBidders => Self::TooManyBidders,
                RefusalKind::Unspecified => return Err(WireError::RefusalKind(r.kind)),
            },
        )
    }
}

impl From<&auction::Decision> for v1::Decision {
    fn from(d: &auction::Decision) -> Self {
        Self {
            accepted: d.is_ok(),
            refusal: d.as_ref().err().map(Into::into),
        }
    }
}

impl TryFrom<v1::Decision> for auction::Decision {
    type Error = WireError;
    fn try_from(d: v1::Decision) -> Result<Self, WireError> {
        if d.accepted {
            Ok(Ok(()))
        } else {
            Ok(Err(required(d.refusal, "refusal")?.try_into()?))
        }
    }
}

/// The reply to a request that changes state.
pub fn decision_reply(decision: &auction::Decision, auction: AuctionView) -> DecisionReply {
    DecisionReply {
        decision: Some(decision.into()),
        reason: decision
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default(),
        auction: Some(auction),
    }
}

/// A hash of the whole replicated state (FNV-1a of its encoding, which is deterministic: every
/// collection in it is ordered), so nodes can compare states with one number.
pub fn digest(state: &ClusterState) -> u64 {
    use prost::Message;
    State::from(state)
        .encode_to_vec()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// The auction as a reader saw it (`view`), with its deadline shown on the wall clock as
/// `wall_now_ms` (Unix ms) plus the time left.
pub fn auction_view(v: &auction::View, wall_now_ms: u64) -> AuctionView {
    let deadline_ms = if v.deadline >= v.now {
        wall_now_ms.saturating_add(v.deadline.0 - v.now.0)
    } else {
        wall_now_ms.saturating_sub(v.now.0 - v.deadline.0)
    };
    AuctionView {
        number: v.number,
        open: v.open,
        deadline_ms,
        highest_bid: v.highest.as_ref().map_or(0, |h| h.amount.get()),
        highest_bidder: v
            .highest
            .as_ref()
            .map(|h| h.bidder.as_str().to_owned())
            .unwrap_or_default(),
        bidders: v.bidders,
        now_ms: wall_now_ms,
    }
}

impl From<&Op> for client_op::Op {
    fn from(op: &Op) -> Self {
        match op {
            Op::Bid {
                bidder,
                amount,
                credential,
            } => Self::Bid(BidOp {
                bidder: bidder.as_str().to_owned(),
                amount: amount.get(),
                credential: credential.0.to_vec(),
            }),
            Op::Start { duration } => Self::Start(StartOp {
                duration_ms: duration.as_millis(),
            }),
            Op::Close => Self::Close(CloseOp {}),
        }
    }
}

impl TryFrom<client_op::Op> for Op {
    type Error = WireError;
    fn try_from(op: client_op::Op) -> Result<Self, WireError> {
        Ok(match op {
            client_op::Op::Bid(b) => Self::Bid {
                bidder: BidderId::new(b.bidder)?,
                amount: Amount::new(b.amount)?,
                credential: credential(&b.credential)?,
            },
            client_op::Op::Start(s) => Self::Start {
                duration: AuctionLength::from_millis(s.duration_ms)?,
            },
            client_op::Op::Close(_) => Self::Close,
        })
    }
}

impl From<&replication::Change> for v1::Change {
    fn from(c: &replication::Change) -> Self {
        let kind = match &c.kind {
            ChangeKind::Client { id, op } => change::Kind::Client(ClientOp {
                id: id.map(Into::into),
                op: Some(op.into()),
            }),
            ChangeKind::Join(m) => change::Kind::Join((*m).into()),
            ChangeKind::Leave(id) => change::Kind::Leave(u32::from(id.0)),
            ChangeKind::Lead(m) => change::Kind::Lead((*m).into()),
            ChangeKind::Tick => change::Kind::Tick(ClockTick {}),
        };
        Self {
            at_ms: c.at.0,
            kind: Some(kind),
        }
    }
}

impl TryFrom<v1::Change> for replication::Change {
    type Error = WireError;
    fn try_from(c: v1::Change) -> Result<Self, WireError> {
        let kind = match required(c.kind, "kind")? {
            change::Kind::Client(op) => ChangeKind::Client {
                id: op.id.and_then(Into::into),
                op: required(op.op, "op")?.try_into()?,
            },
            change::Kind::Join(m) => ChangeKind::Join(m.try_into()?),
            change::Kind::Leave(id) => ChangeKind::Leave(NodeId(
                u16::try_from(id).map_err(|_| WireError::NodeId(id))?,
            )),
            change::Kind::Lead(m) => ChangeKind::Lead(m.try_into()?),
            change::Kind::Tick(ClockTick {}) => ChangeKind::Tick,
        };
        Ok(Self {
            at: Millis(c.at_ms),
            kind,
        })
    }
}

impl From<&ClusterState> for State {
    fn from(s: &ClusterState) -> Self {
        let a = &s.machine.auction;
        Self {
            generation: s.generation.0,
            version: s.version,
            epoch: s.epoch,
            clock_ms: s.clock.0,
            leader: Some(s.leader.into()),
            members: s.members.iter().map(|m| (*m).into()).collect(),
            auction: Some(AuctionState {
                number: a.number,
                deadline_ms: a.deadline.0,
                closed_early: a.closed_early,
                highest_bid: a.highest.as_ref().map_or(0, |h| h.amount.get()),
                highest_bidder: a
                    .highest
                    .as_ref()
                    .map(|h| h.bidder.as_str().to_owned())
                    .unwrap_or_default(),
                bidders: a.bidders.iter().map(ToString::to_string).collect(),
            }),
            sessions: s
                .machine
                .sessions()
                .map(|(id, sess)| v1::Session {
                    session: id,
                    last_seq: sess.last_seq,
                    last_seen_ms: sess.last_seen.0,
                    decision: Some((&sess.decision).into()),
                })
                .collect(),
            registry: s
                .machine
                .registry()
                .map(|(bidder, c)| Registration {
                    bidder: bidder.as_str().to_owned(),
                    credential: c.0.to_vec(),
                })
                .collect(),
        }
    }
}

impl TryFrom<State> for ClusterState {
    type Error = WireError;
    fn try_from(s: State) -> Result<Self, WireError> {
        let a = required(s.auction, "auction")?;
        let highest = match a.highest_bid {
            0 => None,
            amount => Some(Bid {
                bidder: BidderId::new(a.highest_bidder)?,
                amount: Amount::new(amount)?,
            }),
        };
        let auction = Auction {
            number: counter(a.number, "auction number")?,
            deadline: Millis(a.deadline_ms),
            closed_early: a.closed_early,
            highest,
            bidders: a
                .bidders
                .into_iter()
                .map(BidderId::new)
                .collect::<Result<_, _>>()?,
        };
        let sessions = s
            .sessions
            .into_iter()
            .map(|sess| {
                Ok((
                    sess.session,
                    auction::Session {
                        last_seq: sess.last_seq,
                        last_seen: Millis(sess.last_seen_ms),
                        decision: required(sess.decision, "decision")?.try_into()?,
                    },
                ))
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        let registry = s
            .registry
            .into_iter()
            .map(|r| Ok((BidderId::new(r.bidder)?, credential(&r.credential)?)))
            .collect::<Result<Vec<_>, WireError>>()?;
        if s.generation == 0 {
            return Err(WireError::Generation);
        }
        Ok(Self {
            generation: Generation(s.generation),
            version: counter(s.version, "version")?,
            epoch: counter(s.epoch, "epoch")?,
            clock: Millis(s.clock_ms),
            leader: member(s.leader, "leader")?,
            members: s
                .members
                .into_iter()
                .map(Member::try_from)
                .collect::<Result<_, _>>()?,
            machine: Machine::from_parts(auction, sessions, registry),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::Change;
    use crate::types::RequestId;

    fn node(id: u16) -> Member {
        Member {
            id: NodeId(id),
            pid: 42,
            start_time: 9,
        }
    }

    #[test]
    fn a_state_survives_the_wire() {
        let mut s = ClusterState::founded(node(5400), Generation(5));
        let changes = [
            ChangeKind::Join(node(5401)),
            ChangeKind::Client {
                id: None,
                op: Op::Start {
                    duration: AuctionLength::from_secs(60).unwrap(),
                },
            },
            ChangeKind::Client {
                id: Some(RequestId::new(3, 1).unwrap()),
                op: Op::Bid {
                    bidder: BidderId::new("ann").unwrap(),
                    amount: Amount::new(10).unwrap(),
                    credential: crate::types::Credential([1; 32]),
                },
            },
            ChangeKind::Client {
                id: Some(RequestId::new(4, 1).unwrap()),
                op: Op::Bid {
                    bidder: BidderId::new("bob").unwrap(),
                    amount: Amount::new(10).unwrap(),
                    credential: crate::types::Credential([1; 32]),
                },
            },
            ChangeKind::Lead(node(5401)),
            ChangeKind::Leave(NodeId(5400)),
            ChangeKind::Tick,
        ];
        for kind in changes {
            let c = Change {
                at: Millis(1000),
                kind,
            };
            let back = Change::try_from(v1::Change::from(&c)).unwrap();
            assert_eq!(back, c);
            s.apply(&c);
        }
        let back = ClusterState::try_from(State::from(&s)).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn states_whose_counters_could_not_grow_are_refused() {
        let s = ClusterState::founded(node(5400), Generation(5));
        for (field, value) in [("version", u64::MAX), ("epoch", MAX_COUNTER + 1)] {
            let mut wire = State::from(&s);
            match field {
                "version" => wire.version = value,
                _ => wire.epoch = value,
            }
            assert_eq!(
                ClusterState::try_from(wire),
                Err(WireError::Counter(field, value))
            );
        }
        let mut wire = State::from(&s);
        wire.auction.as_mut().unwrap().number = u64::MAX;
        assert!(ClusterState::try_from(wire).is_err());
        let mut wire = State::from(&s);
        wire.version = MAX_COUNTER;
        assert!(ClusterState::try_from(wire).is_ok());
        let mut wire = State::from(&s);
        wire.generation = 0;
        assert_eq!(ClusterState::try_from(wire), Err(WireError::Generation));
    }

    #[test]
    fn a_view_shows_the_deadline_on_the_wall_clock_whatever_it_reads() {
        let mut s = ClusterState::founded(node(5400), Generation(5));
        s.apply(&Change {
            at: Millis(1_000),
            kind: ChangeKind::Client {
                id: None,
                op: Op::Start {
                    duration: AuctionLength::from_secs(60).unwrap(),
                },
            },
        });
        let a = &s.machine.auction;
        // 20 s into the auction, on a wall clock anywhere (even before 1970 + 60 s): 40 s left.
        for wall in [5_000, 1_800_000_000_000] {
            let v = auction_view(&a.view(Millis(21_000)), wall);
            assert!(v.open);
            assert_eq!((v.deadline_ms - v.now_ms, v.now_ms), (40_000, wall));
        }
        let v = auction_view(&a.view(Millis(70_000)), 100_000);
        assert!(!v.open);
        assert_eq!(v.deadline_ms, 91_000, "closed 9 s ago");
    }

    #[test]
    fn malformed_changes_are_refused() {
        let missing = v1::Change {
            at_ms: 1,
            kind: None,
        };
        assert_eq!(Change::try_from(missing), Err(WireError::Missing("kind")));
        let zero_bid = v1::Change {
            at_ms: 1,
            kind: Some(change::Kind::Client(ClientOp {
                id: None,
                op: Some(client_op::Op::Bid(BidOp {
                    bidder: "a".into(),
                    amount: 0,
                    credential: vec![1; 32],
                })),
            })),
        };
        assert!(matches!(
            Change::try_from(zero_bid),
            Err(WireError::Input(InputError::AmountNotPositive(_)))
        ));
        let big_id = v1::Change {
            at_ms: 1,
            kind: Some(change::Kind::Leave(70_000)),
        };
        assert_eq!(Change::try_from(big_id), Err(WireError::NodeId(70_000)));
        assert!(request_id(Some(v1::RequestId { session: 0, seq: 1 })).is_err());
    }
}
