//! What a reader sees: an auction at one moment ([`View`]) and the cluster as its leader reports
//! it ([`Status`]), as domain values. The leader makes them from its state ([`View::of`]) and
//! sends them as wire messages ([`auction_view`], [`decision_reply`]); a client gets them back
//! through the validated conversions in [`crate::pb`]; [`crate::display`] puts them in words.

use std::net::SocketAddr;

use crate::auction::{Bid, Decision, Observation};
use crate::pb;
use crate::replication::Member;
use crate::types::NodeId;

/// An auction as a reader sees it at one moment. Times are on the leader's wall clock, for
/// display only: the deadline itself is a point on the replicated auction clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// The auction's number; 0 when none was ever started (then it is closed, without bids).
    pub number: u64,
    /// Whether it takes bids: started, not closed early, and its deadline not yet passed.
    pub open: bool,
    /// The deadline, in milliseconds since the Unix epoch: the leader's wall clock when the view
    /// was taken plus the time left (minus the time since, once past).
    pub deadline_ms: u64,
    /// The highest bid so far; once closed, the winner and the winning amount.
    pub highest: Option<Bid>,
    /// How many bidders bid in this auction.
    pub bidders: u64,
    /// The leader's wall clock when the view was taken, in milliseconds since the Unix epoch.
    pub now_ms: u64,
}

impl View {
    /// What a reader observed (`o`, on the auction clock), with its deadline shown on the wall
    /// clock as `wall_now_ms` (Unix ms) plus the time left.
    pub fn of(o: Observation, wall_now_ms: u64) -> Self {
        let deadline_ms = if o.deadline >= o.now {
            wall_now_ms.saturating_add(o.deadline.0 - o.now.0)
        } else {
            wall_now_ms.saturating_sub(o.now.0 - o.deadline.0)
        };
        Self {
            number: o.number,
            open: o.open,
            deadline_ms,
            highest: o.highest,
            bidders: o.bidders,
            now_ms: wall_now_ms,
        }
    }

    /// The time left when the view was taken, in milliseconds: 0 once the deadline has passed.
    pub fn left_ms(&self) -> u64 {
        self.deadline_ms.saturating_sub(self.now_ms)
    }

    /// The highest amount bid so far, if anyone has bid.
    pub fn highest_amount(&self) -> Option<u64> {
        self.highest.as_ref().map(|h| h.amount.get())
    }

    /// Who bid the highest amount so far, if anyone has bid.
    pub fn highest_bidder(&self) -> Option<&str> {
        self.highest.as_ref().map(|h| h.bidder.as_str())
    }
}

/// How a cluster decides who leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// All nodes on one host: the OS decides; every node serves the one client address.
    SingleHost,
    /// Nodes on several hosts (`--etcd`): etcd decides; each node serves clients on its own
    /// address.
    MultiHost,
}

impl Mode {
    /// `single-host` or `multi-host`, as the status shows it.
    pub fn name(self) -> &'static str {
        match self {
            Self::SingleHost => "single-host",
            Self::MultiHost => "multi-host",
        }
    }
}

/// The cluster as its leader reports it, or (across hosts) as a node that does not lead knows it
/// from the replicated state it holds ([`Status::answered_by`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The node that answered as the leader.
    pub leader: Member,
    /// The members in succession order (the leader among them): the first other one takes over
    /// if the leader fails.
    pub members: Vec<Member>,
    /// How many times leadership changed hands.
    pub epoch: u64,
    /// How many changes the replicated state has had.
    pub version: u64,
    /// The auction at the moment of the status.
    pub auction: View,
    /// A hash of the leader's whole replicated state (equal states, equal digests): only a
    /// node's own terminal asks for it, so `None` at a client.
    pub digest: Option<u64>,
    /// How the cluster decides who leads; `None` from a node that did not say.
    pub mode: Option<Mode>,
    /// Where the leader serves clients, if the answering node knows.
    pub leader_addr: Option<SocketAddr>,
    /// Where each member serves clients, in the order of [`Status::members`] (`None` where not
    /// known); empty from a node that did not say.
    pub member_addrs: Vec<Option<SocketAddr>>,
    /// The node that answered, if it said: the leader, or a node that does not lead.
    pub answered_by: Option<Member>,
}

impl Status {
    /// Whether the leader itself answered (a node that does not say which node it is counts as
    /// the leader, as every node did before nodes that do not lead answered too).
    pub fn from_leader(&self) -> bool {
        self.answered_by.is_none_or(|m| m == self.leader)
    }

    /// The members in succession order, each with where it serves clients, if known.
    pub fn members_with_addrs(&self) -> impl Iterator<Item = (&Member, Option<SocketAddr>)> {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| (m, self.member_addrs.get(i).copied().flatten()))
    }

    /// Whether node `id` is a member.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    /// The members other than the leader, first in line first.
    pub fn next_in_line(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.id != self.leader.id)
    }
}

/// What a reader observed as the leader sends it: [`View::of`] on the wire. Moves the
/// observation, so the leader copies no bidder's name for a reply.
pub fn auction_view(o: Observation, wall_now_ms: u64) -> pb::AuctionView {
    View::of(o, wall_now_ms).into()
}

/// The reply to a request that changes state: the decision, the refusal's reason in words (empty
/// when accepted), and the auction right after it.
pub fn decision_reply(decision: &Decision, auction: pb::AuctionView) -> pb::DecisionReply {
    pb::DecisionReply {
        decision: Some(decision.into()),
        reason: decision
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default(),
        auction: Some(auction),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auction::{Op, Refusal};
    use crate::replication::{Change, ChangeKind, ClusterState, Generation};
    use crate::types::AuctionLength;
    use crate::types::Millis;

    fn started() -> ClusterState {
        let me = Member {
            id: NodeId(5400),
            pid: 42,
            start_time: 9,
        };
        let mut s = ClusterState::founded(me, Generation(5));
        s.apply(&Change {
            at: Millis(1_000),
            kind: ChangeKind::Client {
                id: None,
                op: Op::Start {
                    duration: AuctionLength::from_secs(60).unwrap(),
                },
            },
        });
        s
    }

    #[test]
    fn a_view_shows_the_deadline_on_the_wall_clock_whatever_it_reads() {
        let s = started();
        let a = &s.machine.auction;
        // 20 s into the auction, on a wall clock anywhere (even before 1970 + 60 s): 40 s left.
        for wall in [5_000, 1_800_000_000_000] {
            let v = View::of(a.observe(Millis(21_000)), wall);
            assert!(v.open);
            assert_eq!((v.left_ms(), v.now_ms), (40_000, wall));
        }
        let v = View::of(a.observe(Millis(70_000)), 100_000);
        assert!(!v.open);
        assert_eq!(v.deadline_ms, 91_000, "closed 9 s ago");
        assert_eq!(v.left_ms(), 0);
    }

    #[test]
    fn a_view_on_the_wire_reads_back_the_same() {
        let s = started();
        let wire = auction_view(s.machine.auction.observe(Millis(21_000)), 5_000);
        let back = View::try_from(wire).unwrap();
        assert_eq!(
            back,
            View::of(s.machine.auction.observe(Millis(21_000)), 5_000)
        );
    }

    #[test]
    fn a_refusal_is_sent_with_its_reason() {
        let view = auction_view(started().machine.auction.observe(Millis(2_000)), 0);
        let refused = decision_reply(&Err(Refusal::NoAuction), view.clone());
        assert_eq!(refused.reason, Refusal::NoAuction.to_string());
        assert_eq!(
            Decision::try_from(refused.decision.unwrap()),
            Ok(Err(Refusal::NoAuction))
        );
        let accepted = decision_reply(&Ok(()), view.clone());
        assert_eq!(
            (accepted.reason.as_str(), accepted.auction),
            ("", Some(view))
        );
    }
}
