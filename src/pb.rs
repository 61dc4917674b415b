//! Generated gRPC code and the conversions between wire messages and domain types. Every
//! conversion from the wire validates, so a malformed message from a client or a peer becomes a
//! [`WireError`] and never a domain value. What a reader sees is in [`crate::view`], the state
//! digest in [`crate::digest`].

use thiserror::Error;

use crate::auction::{self, Auction, Bid, Machine, Op};
use crate::replication::{self, ChangeKind, ClusterState, Generation, Member};
use crate::types::{self, Amount, AuctionLength, BidderId, Credential, InputError, Millis, NodeId};
use crate::view::{self, View};

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
    #[error("a highest bid needs both an amount and a bidder")]
    HighestBid,
    #[error("an auction view contradicts itself: {0}")]
    View(&'static str),
    #[error("{0:?} is not an IP:PORT address")]
    Address(String),
    #[error("unknown cluster mode {0}")]
    Mode(i32),
    #[error("{addresses} member addresses for {members} members")]
    MemberAddresses { addresses: usize, members: usize },
}

/// The gRPC metadata key with which a node that does not lead names the leader's client address
/// (`IP:PORT`) in its refusal, so that a client sends the request there.
pub const LEADER_METADATA: &str = "auction-leader";

/// Reads an `IP:PORT` address from the wire: `None` when empty (not known).
fn address(text: &str) -> Result<Option<std::net::SocketAddr>, WireError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| WireError::Address(text.chars().take(64).collect()))
}

/// An address as the wire carries it: empty when not known.
fn address_text(addr: Option<std::net::SocketAddr>) -> String {
    addr.map(|a| a.to_string()).unwrap_or_default()
}

impl From<view::Mode> for ClusterMode {
    fn from(m: view::Mode) -> Self {
        match m {
            view::Mode::SingleHost => Self::SingleHost,
            view::Mode::MultiHost => Self::MultiHost,
        }
    }
}

/// Reads a cluster mode: `None` when not said.
fn mode(value: i32) -> Result<Option<view::Mode>, WireError> {
    match ClusterMode::try_from(value) {
        Ok(ClusterMode::Unspecified) => Ok(None),
        Ok(ClusterMode::SingleHost) => Ok(Some(view::Mode::SingleHost)),
        Ok(ClusterMode::MultiHost) => Ok(Some(view::Mode::MultiHost)),
        Err(_) => Err(WireError::Mode(value)),
    }
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

impl From<View> for AuctionView {
    fn from(v: View) -> Self {
        let (highest_bid, highest_bidder) = v.highest.map_or((0, String::new()), |h| {
            (h.amount.get(), h.bidder.into_string())
        });
        Self {
            number: v.number,
            open: v.open,
            deadline_ms: v.deadline_ms,
            highest_bid,
            highest_bidder,
            bidders: v.bidders,
            now_ms: v.now_ms,
        }
    }
}

impl From<&View> for AuctionView {
    fn from(v: &View) -> Self {
        v.clone().into()
    }
}

impl TryFrom<AuctionView> for View {
    type Error = WireError;
    fn try_from(v: AuctionView) -> Result<Self, WireError> {
        let number = counter(v.number, "auction number")?;
        let highest = match (v.highest_bid, v.highest_bidder.is_empty()) {
            (0, true) => None,
            (0, false) | (_, true) => return Err(WireError::HighestBid),
            (amount, false) => Some(Bid {
                bidder: BidderId::new(v.highest_bidder)?,
                amount: Amount::new(amount)?,
            }),
        };
        if number == 0 && (v.open || highest.is_some() || v.bidders != 0) {
            return Err(WireError::View(
                "no auction was started, yet it is open or has bids",
            ));
        }
        if highest.is_some() && v.bidders == 0 {
            return Err(WireError::View("a highest bid, yet no bidders"));
        }
        Ok(Self {
            number,
            open: v.open,
            deadline_ms: v.deadline_ms,
            highest,
            bidders: v.bidders,
            now_ms: v.now_ms,
        })
    }
}

impl From<&view::Status> for StatusReply {
    fn from(s: &view::Status) -> Self {
        Self {
            leader: Some(s.leader.into()),
            members: s.members.iter().map(|m| (*m).into()).collect(),
            epoch: s.epoch,
            version: s.version,
            auction: Some((&s.auction).into()),
            digest: s.digest.unwrap_or(0),
            mode: s.mode.map_or(ClusterMode::Unspecified, ClusterMode::from) as i32,
            leader_address: address_text(s.leader_addr),
            member_addresses: s.member_addrs.iter().map(|a| address_text(*a)).collect(),
            answered_by: s.answered_by.map(Into::into),
        }
    }
}

impl TryFrom<StatusReply> for view::Status {
    type Error = WireError;
    fn try_from(s: StatusReply) -> Result<Self, WireError> {
        let members: Vec<Member> = s
            .members
            .into_iter()
            .map(Member::try_from)
            .collect::<Result<_, _>>()?;
        if !s.member_addresses.is_empty() && s.member_addresses.len() != members.len() {
            return Err(WireError::MemberAddresses {
                addresses: s.member_addresses.len(),
                members: members.len(),
            });
        }
        Ok(Self {
            leader: member(s.leader, "leader")?,
            members,
            epoch: counter(s.epoch, "epoch")?,
            version: counter(s.version, "version")?,
            auction: required(s.auction, "auction")?.try_into()?,
            // 0 means none: only a node's own terminal asks for the digest.
            digest: (s.digest != 0).then_some(s.digest),
            mode: mode(s.mode)?,
            leader_addr: address(&s.leader_address)?,
            member_addrs: s
                .member_addresses
                .iter()
                .map(|a| address(a))
                .collect::<Result<_, _>>()?,
            answered_by: s.answered_by.map(Member::try_from).transpose()?,
        })
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
            ChangeKind::Lead { leader, epoch } => change::Kind::Lead(v1::Lead {
                leader: Some((*leader).into()),
                epoch: *epoch,
            }),
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
            change::Kind::Lead(l) => ChangeKind::Lead {
                leader: member(l.leader, "leader")?,
                epoch: counter(l.epoch, "epoch")?,
            },
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
            ChangeKind::Lead {
                leader: node(5401),
                epoch: 2,
            },
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

    fn a_status() -> view::Status {
        let mut s = ClusterState::founded(node(5400), Generation(5));
        s.apply(&Change {
            at: Millis(1_000),
            kind: ChangeKind::Join(node(5401)),
        });
        s.apply(&Change {
            at: Millis(1_000),
            kind: ChangeKind::Client {
                id: None,
                op: Op::Start {
                    duration: AuctionLength::from_secs(60).unwrap(),
                },
            },
        });
        s.apply(&Change {
            at: Millis(2_000),
            kind: ChangeKind::Client {
                id: Some(RequestId::new(3, 1).unwrap()),
                op: Op::Bid {
                    bidder: BidderId::new("ann").unwrap(),
                    amount: Amount::new(10).unwrap(),
                    credential: crate::types::Credential([1; 32]),
                },
            },
        });
        view::Status {
            leader: s.leader,
            members: s.members.clone(),
            epoch: s.epoch,
            version: s.version,
            auction: View::of(s.machine.auction.observe(Millis(3_000)), 1_700_000_000_000),
            digest: None,
            mode: Some(view::Mode::MultiHost),
            leader_addr: Some("127.0.0.8:5000".parse().unwrap()),
            member_addrs: vec![Some("127.0.0.8:5000".parse().unwrap()), None],
            answered_by: Some(node(5401)),
        }
    }

    #[test]
    fn a_status_and_its_view_survive_the_wire() {
        let s = a_status();
        assert!(s.auction.highest.is_some());
        assert_eq!(view::Status::try_from(StatusReply::from(&s)), Ok(s.clone()));
        let with_digest = view::Status {
            digest: Some(7),
            ..s
        };
        let wire = StatusReply::from(&with_digest);
        assert_eq!(wire.digest, 7);
        assert_eq!(view::Status::try_from(wire), Ok(with_digest));
    }

    #[test]
    fn malformed_views_are_refused() {
        let good = AuctionView::from(&a_status().auction);
        let refused = |change: fn(&mut AuctionView)| {
            let mut v = good.clone();
            change(&mut v);
            View::try_from(v).unwrap_err()
        };
        assert_eq!(refused(|v| v.highest_bidder.clear()), WireError::HighestBid);
        assert_eq!(refused(|v| v.highest_bid = 0), WireError::HighestBid);
        assert!(matches!(
            refused(|v| v.highest_bidder = "not a name!".into()),
            WireError::Input(InputError::BidderCharacters(_))
        ));
        assert_eq!(
            refused(|v| v.highest_bid = u64::MAX),
            WireError::Input(InputError::AmountTooLarge)
        );
        assert!(matches!(refused(|v| v.bidders = 0), WireError::View(_)));
        assert!(matches!(refused(|v| v.number = 0), WireError::View(_)));
        assert!(matches!(
            refused(|v| v.number = u64::MAX),
            WireError::Counter("auction number", _)
        ));
        let none = AuctionView::default();
        assert_eq!(
            View::try_from(none).map(|v| (v.number, v.open, v.highest)),
            Ok((0, false, None))
        );
    }

    #[test]
    fn malformed_statuses_are_refused() {
        let good = StatusReply::from(&a_status());
        let refused = |change: fn(&mut StatusReply)| {
            let mut s = good.clone();
            change(&mut s);
            view::Status::try_from(s).unwrap_err()
        };
        assert_eq!(refused(|s| s.leader = None), WireError::Missing("leader"));
        assert_eq!(refused(|s| s.auction = None), WireError::Missing("auction"));
        assert_eq!(
            refused(|s| s.members[1].id = 70_000),
            WireError::NodeId(70_000)
        );
        assert_eq!(
            refused(|s| s.epoch = u64::MAX),
            WireError::Counter("epoch", u64::MAX)
        );
        assert_eq!(
            refused(|s| s.auction.as_mut().unwrap().highest_bid = 0),
            WireError::HighestBid
        );
        assert_eq!(
            refused(|s| s.leader_address = "nowhere".into()),
            WireError::Address("nowhere".into())
        );
        assert_eq!(
            refused(|s| s.member_addresses[0] = "1.2.3.4".into()),
            WireError::Address("1.2.3.4".into())
        );
        assert_eq!(
            refused(|s| s.member_addresses.pop().map_or((), drop)),
            WireError::MemberAddresses {
                addresses: 1,
                members: 2
            }
        );
        assert_eq!(refused(|s| s.mode = 9), WireError::Mode(9));
        assert_eq!(
            refused(|s| s.answered_by.as_mut().unwrap().id = 70_000),
            WireError::NodeId(70_000)
        );
        // A node that says nothing of the layout (no mode, no addresses) is still understood.
        let mut bare = good.clone();
        bare.mode = 0;
        bare.leader_address.clear();
        bare.member_addresses.clear();
        bare.answered_by = None;
        let read = view::Status::try_from(bare).unwrap();
        assert_eq!((read.mode, read.leader_addr), (None, None));
        assert!(read.member_addrs.is_empty() && read.from_leader());
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
