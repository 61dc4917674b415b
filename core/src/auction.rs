//! The auction as a pure state machine: no I/O, no clock, no async. Time comes in as an argument,
//! so the leader, every replica and the linearizability checker run exactly this code and reach
//! exactly the same state from the same changes.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use crate::types::{Amount, AuctionLength, BidderId, Credential, Millis, RequestId};

/// How long a client session is remembered after its last request. Far longer than any client's
/// retry budget, so a retry always finds its first outcome.
pub const SESSION_TTL_MS: u64 = 10 * 60 * 1000;

/// How many bidder names the cluster registers. Names are kept for good (they are identities),
/// so this bounds the memory that bidders can take.
pub const MAX_BIDDERS: usize = 100_000;

/// A request that changes the auction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A bid in `bidder`'s name; `credential` must be the one the name was registered with (by
    /// its first bid in an open auction).
    Bid {
        bidder: BidderId,
        amount: Amount,
        credential: Credential,
    },
    Start {
        duration: AuctionLength,
    },
    Close,
}

/// Why a request was refused. The auction number says which auction the refusal is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Error)]
pub enum Refusal {
    #[error("no auction has been started yet")]
    NoAuction,
    #[error("auction {auction} is closed")]
    Closed { auction: u64 },
    #[error("bid is not higher than the highest bid of {highest}")]
    NotHigher { auction: u64, highest: Amount },
    #[error("auction {auction} is still open; close it before starting the next one")]
    StillOpen { auction: u64 },
    #[error("request is older than the last one this session completed")]
    StaleRequest,
    #[error("the bidder name is registered with another token")]
    NotYourName,
    #[error("no more bidder names can be registered (at most {MAX_BIDDERS})")]
    TooManyBidders,
}

/// The outcome of an [`Op`]: accepted, or refused with a reason.
pub type Decision = Result<(), Refusal>;

/// The highest bid and who placed it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Bid {
    pub bidder: BidderId,
    pub amount: Amount,
}

/// One auction: number 0 means none was ever started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Auction {
    /// Counts the auctions started, so replies say which one they are about.
    pub number: u64,
    /// Absolute end time, fixed when the auction starts: replicated, never a per-node timer.
    pub deadline: Millis,
    /// Set when an operator closes the auction before its deadline.
    pub closed_early: bool,
    /// The leading bid; the winner once the auction is closed.
    pub highest: Option<Bid>,
    /// Bidders registered in this auction (by their first bid).
    pub bidders: BTreeSet<BidderId>,
}

/// The auction as a reader sees it at one moment of the auction clock (the product shows it on
/// the wall clock as `auction::view::View`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// 0 when no auction was ever started.
    pub number: u64,
    pub open: bool,
    /// The deadline, on the auction clock.
    pub deadline: Millis,
    /// When the view was taken, on the auction clock: `deadline - now` is the time left.
    pub now: Millis,
    /// The leading bid; the winner once closed.
    pub highest: Option<Bid>,
    /// Bidders registered in this auction.
    pub bidders: u64,
}

impl Auction {
    pub fn is_open(&self, now: Millis) -> bool {
        self.number > 0 && !self.closed_early && now < self.deadline
    }

    /// The auction as a reader sees it at `now`.
    pub fn observe(&self, now: Millis) -> Observation {
        Observation {
            number: self.number,
            open: self.is_open(now),
            deadline: self.deadline,
            now,
            highest: self.highest.clone(),
            bidders: self.bidders.len() as u64,
        }
    }

    fn bid(&mut self, now: Millis, bidder: &BidderId, amount: Amount) -> Decision {
        if self.number == 0 {
            return Err(Refusal::NoAuction);
        }
        if !self.is_open(now) {
            return Err(Refusal::Closed {
                auction: self.number,
            });
        }
        if !self.bidders.contains(bidder) {
            self.bidders.insert(bidder.clone());
        }
        match &self.highest {
            Some(h) if amount <= h.amount => Err(Refusal::NotHigher {
                auction: self.number,
                highest: h.amount,
            }),
            _ => {
                self.highest = Some(Bid {
                    bidder: bidder.clone(),
                    amount,
                });
                Ok(())
            }
        }
    }

    fn start(&mut self, now: Millis, duration: AuctionLength) -> Decision {
        if self.is_open(now) {
            return Err(Refusal::StillOpen {
                auction: self.number,
            });
        }
        *self = Self {
            number: self.number + 1,
            deadline: now.saturating_add(duration),
            ..Self::default()
        };
        Ok(())
    }

    fn close(&mut self, now: Millis) -> Decision {
        if self.number == 0 {
            return Err(Refusal::NoAuction);
        }
        if !self.is_open(now) {
            return Err(Refusal::Closed {
                auction: self.number,
            });
        }
        self.closed_early = true;
        Ok(())
    }
}

/// What exactly-once remembers of a client session: its last request and that request's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Session {
    pub last_seq: u64,
    pub last_seen: Millis,
    pub decision: Decision,
}

/// The auction plus the sessions that make requests exactly-once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Machine {
    pub auction: Auction,
    /// Last request and outcome per session id.
    sessions: BTreeMap<u64, Session>,
    /// The same sessions ordered by last use, so expiry takes the oldest without a scan.
    by_age: BTreeSet<(Millis, u64)>,
    /// Every registered bidder name and the credential it was registered with.
    registry: BTreeMap<BidderId, Credential>,
}

impl Machine {
    /// Applies `op` at time `now`. A request id seen before returns its first decision and changes
    /// nothing; an older one is refused as stale. Sessions idle for [`SESSION_TTL_MS`] are
    /// forgotten, deterministically, because `now` is replicated with the change.
    pub fn apply(&mut self, now: Millis, id: Option<RequestId>, op: &Op) -> Decision {
        self.expire(now);
        let Some(id) = id else {
            return self.execute(now, op);
        };
        if let Some(session) = self.sessions.get(&id.session) {
            if id.seq < session.last_seq {
                return Err(Refusal::StaleRequest);
            }
            if id.seq == session.last_seq {
                let decision = session.decision.clone();
                self.touch(id.session, session.last_seq, now, decision.clone());
                return decision;
            }
        }
        let decision = self.execute(now, op);
        self.touch(id.session, id.seq, now, decision.clone());
        decision
    }

    fn execute(&mut self, now: Millis, op: &Op) -> Decision {
        match op {
            Op::Bid {
                bidder,
                amount,
                credential,
            } => {
                match self.registry.get(bidder) {
                    Some(registered) if registered != credential => {
                        return Err(Refusal::NotYourName);
                    }
                    Some(_) => {}
                    // Only a bid in an open auction registers a name; any other is refused
                    // below for what is wrong with the auction.
                    None if self.auction.is_open(now) => {
                        if self.registry.len() >= MAX_BIDDERS {
                            return Err(Refusal::TooManyBidders);
                        }
                        self.registry.insert(bidder.clone(), *credential);
                    }
                    None => {}
                }
                self.auction.bid(now, bidder, *amount)
            }
            Op::Start { duration } => self.auction.start(now, *duration),
            Op::Close => self.auction.close(now),
        }
    }

    fn touch(&mut self, session: u64, seq: u64, now: Millis, decision: Decision) {
        let entry = Session {
            last_seq: seq,
            last_seen: now,
            decision,
        };
        match self.sessions.insert(session, entry) {
            // Seen again within the millisecond: its place in the age order stays.
            Some(old) if old.last_seen == now => {}
            Some(old) => {
                self.by_age.remove(&(old.last_seen, session));
                self.by_age.insert((now, session));
            }
            None => {
                self.by_age.insert((now, session));
            }
        }
    }

    fn expire(&mut self, now: Millis) {
        while let Some(&(seen, session)) = self.by_age.first() {
            if seen.0.saturating_add(SESSION_TTL_MS) > now.0 {
                break;
            }
            self.by_age.pop_first();
            self.sessions.remove(&session);
        }
    }

    /// The sessions, ordered by id.
    pub fn sessions(&self) -> impl Iterator<Item = (u64, &Session)> {
        self.sessions.iter().map(|(id, s)| (*id, s))
    }

    /// The registered bidder names and their credentials, ordered by name.
    pub fn registry(&self) -> impl Iterator<Item = (&BidderId, &Credential)> {
        self.registry.iter()
    }

    /// Rebuilds a machine from its parts (a snapshot).
    pub fn from_parts(
        auction: Auction,
        sessions: impl IntoIterator<Item = (u64, Session)>,
        registry: impl IntoIterator<Item = (BidderId, Credential)>,
    ) -> Self {
        let sessions: BTreeMap<u64, Session> = sessions.into_iter().collect();
        let by_age = sessions.iter().map(|(id, s)| (s.last_seen, *id)).collect();
        Self {
            auction,
            sessions,
            by_age,
            registry: registry.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Millis {
        Millis(ms)
    }
    /// A bid with the name's own credential.
    fn bid(name: &str, amount: u64) -> Op {
        bid_with(name, amount, name)
    }
    /// A bid in `name`'s name with the credential of whoever `holder` is.
    fn bid_with(name: &str, amount: u64, holder: &str) -> Op {
        let mut c = [0u8; 32];
        c[..holder.len()].copy_from_slice(holder.as_bytes());
        Op::Bid {
            bidder: BidderId::new(name).unwrap(),
            amount: Amount::new(amount).unwrap(),
            credential: Credential(c),
        }
    }
    fn start(secs: u64) -> Op {
        Op::Start {
            duration: AuctionLength::from_secs(secs).unwrap(),
        }
    }
    fn id(session: u64, seq: u64) -> Option<RequestId> {
        Some(RequestId::new(session, seq).unwrap())
    }
    fn open_machine() -> Machine {
        let mut m = Machine::default();
        assert_eq!(m.apply(t(0), None, &start(10)), Ok(()));
        m
    }

    #[test]
    fn nothing_is_accepted_before_the_first_auction() {
        let mut m = Machine::default();
        assert_eq!(m.apply(t(0), None, &bid("a", 5)), Err(Refusal::NoAuction));
        assert_eq!(m.apply(t(0), None, &Op::Close), Err(Refusal::NoAuction));
        assert_eq!(m.auction, Auction::default());
    }

    #[test]
    fn each_accepted_bid_is_strictly_higher() {
        let mut m = open_machine();
        assert_eq!(m.apply(t(1), None, &bid("a", 10)), Ok(()));
        assert_eq!(
            m.apply(t(2), None, &bid("b", 10)),
            Err(Refusal::NotHigher {
                auction: 1,
                highest: Amount::new(10).unwrap()
            })
        );
        assert_eq!(m.apply(t(3), None, &bid("b", 11)), Ok(()));
        assert_eq!(m.apply(t(4), None, &bid("a", 12)), Ok(()));
        let h = m.auction.highest.clone().unwrap();
        assert_eq!((h.bidder.as_str(), h.amount.get()), ("a", 12));
        assert_eq!(m.auction.bidders.len(), 2);
    }

    #[test]
    fn the_deadline_closes_the_auction_and_keeps_the_winner() {
        let mut m = open_machine();
        assert_eq!(m.apply(t(9_999), None, &bid("a", 3)), Ok(()));
        assert!(!m.auction.is_open(t(10_000)));
        assert_eq!(
            m.apply(t(10_000), None, &bid("b", 50)),
            Err(Refusal::Closed { auction: 1 })
        );
        assert_eq!(m.auction.highest.as_ref().unwrap().amount.get(), 3);
    }

    #[test]
    fn close_ends_early_and_start_opens_the_next() {
        let mut m = open_machine();
        assert_eq!(
            m.apply(t(1), None, &start(5)),
            Err(Refusal::StillOpen { auction: 1 })
        );
        assert_eq!(m.apply(t(1), None, &bid("a", 3)), Ok(()));
        assert_eq!(m.apply(t(2), None, &Op::Close), Ok(()));
        assert_eq!(
            m.apply(t(3), None, &Op::Close),
            Err(Refusal::Closed { auction: 1 })
        );
        assert_eq!(
            m.apply(t(3), None, &bid("b", 9)),
            Err(Refusal::Closed { auction: 1 })
        );
        assert_eq!(m.apply(t(4), None, &start(5)), Ok(()));
        assert_eq!(m.auction.number, 2);
        assert_eq!(m.auction.deadline, t(5_004));
        assert!(m.auction.highest.is_none() && m.auction.bidders.is_empty());
        assert_eq!(m.apply(t(5), None, &bid("b", 1)), Ok(()));
    }

    #[test]
    fn a_retried_request_gets_its_first_outcome_and_applies_once() {
        let mut m = open_machine();
        assert_eq!(m.apply(t(1), id(7, 1), &bid("a", 10)), Ok(()));
        // The retry is not refused as "not higher than itself".
        assert_eq!(m.apply(t(2), id(7, 1), &bid("a", 10)), Ok(()));
        assert!(m.apply(t(3), id(8, 1), &bid("b", 10)).is_err());
        assert_eq!(
            m.apply(t(4), id(8, 1), &bid("b", 10)),
            m.apply(t(5), id(8, 1), &bid("b", 10))
        );
        assert_eq!(m.apply(t(6), id(7, 2), &bid("a", 20)), Ok(()));
        assert_eq!(
            m.apply(t(7), id(7, 1), &bid("a", 10)),
            Err(Refusal::StaleRequest)
        );
        assert_eq!(m.auction.highest.as_ref().unwrap().amount.get(), 20);
    }

    #[test]
    fn idle_sessions_expire_deterministically() {
        let mut m = Machine::default();
        m.apply(t(0), None, &start(3600)).unwrap();
        m.apply(t(1), id(1, 1), &bid("a", 1)).unwrap();
        m.apply(t(2), id(2, 1), &bid("b", 2)).unwrap();
        m.apply(t(SESSION_TTL_MS), id(2, 2), &bid("b", 3)).unwrap();
        m.apply(t(SESSION_TTL_MS + 1), None, &Op::Close).unwrap();
        let ids: Vec<u64> = m.sessions().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![2]);
        assert_eq!(m.by_age.len(), 1);
    }

    #[test]
    fn a_session_keeps_one_place_in_the_age_order() {
        let mut m = open_machine();
        // Twice within one millisecond, then later: one entry, at the last time seen.
        m.apply(t(5), id(1, 1), &bid("a", 1)).unwrap();
        m.apply(t(5), id(1, 2), &bid("a", 2)).unwrap();
        assert_eq!(m.by_age.iter().collect::<Vec<_>>(), [&(t(5), 1)]);
        m.apply(t(6), id(1, 3), &bid("a", 3)).unwrap();
        assert_eq!(m.by_age.iter().collect::<Vec<_>>(), [&(t(6), 1)]);
        // It expires a whole TTL after it was last seen, not after it was first seen. (Any
        // change expires sessions, whatever it decides: a close of the ended auction will do.)
        let _ = m.apply(t(SESSION_TTL_MS + 5), None, &Op::Close);
        assert_eq!(m.sessions().count(), 1);
        let _ = m.apply(t(SESSION_TTL_MS + 6), None, &Op::Close);
        assert_eq!(m.sessions().count(), 0);
        assert!(m.by_age.is_empty());
    }

    #[test]
    fn rebuilding_from_parts_gives_an_equal_machine() {
        let mut m = open_machine();
        m.apply(t(1), id(1, 1), &bid("a", 1)).unwrap();
        m.apply(t(2), id(2, 1), &bid("b", 1)).unwrap_err();
        let copy = Machine::from_parts(
            m.auction.clone(),
            m.sessions().map(|(id, s)| (id, s.clone())),
            m.registry().map(|(b, c)| (b.clone(), *c)),
        );
        assert_eq!(copy, m);
    }

    #[test]
    fn a_name_bids_only_with_the_credential_it_was_registered_with() {
        let mut m = open_machine();
        assert_eq!(m.apply(t(1), id(1, 1), &bid("alice", 10)), Ok(()));
        let before = m.auction.clone();
        assert_eq!(
            m.apply(t(2), id(2, 1), &bid_with("alice", 99, "mallory")),
            Err(Refusal::NotYourName)
        );
        assert_eq!(m.auction, before, "a bid in another's name changes nothing");
        assert_eq!(m.apply(t(3), id(1, 2), &bid("alice", 11)), Ok(()));
        // Registration lasts across auctions.
        m.apply(t(4), None, &Op::Close).unwrap();
        m.apply(t(5), None, &start(10)).unwrap();
        assert_eq!(
            m.apply(t(6), id(2, 2), &bid_with("alice", 5, "mallory")),
            Err(Refusal::NotYourName)
        );
    }

    #[test]
    fn names_are_registered_only_by_bids_in_an_open_auction() {
        let mut m = Machine::default();
        assert_eq!(
            m.apply(t(0), None, &bid_with("bob", 1, "mallory")),
            Err(Refusal::NoAuction)
        );
        m.apply(t(1), None, &start(10)).unwrap();
        assert_eq!(m.apply(t(2), None, &bid("bob", 1)), Ok(()));
    }

    #[test]
    fn the_registry_is_bounded() {
        let mut m = open_machine();
        let names: Vec<String> = (0..MAX_BIDDERS).map(|i| format!("b{i}")).collect();
        m.registry = names
            .iter()
            .map(|n| (BidderId::new(n.clone()).unwrap(), Credential([0; 32])))
            .collect();
        assert_eq!(
            m.apply(t(1), None, &bid("newcomer", 1)),
            Err(Refusal::TooManyBidders)
        );
        assert_eq!(m.auction.highest, None);
        // A full registry does not hide what is wrong with a closed auction.
        m.apply(t(2), None, &Op::Close).unwrap();
        assert_eq!(
            m.apply(t(3), None, &bid("newcomer", 1)),
            Err(Refusal::Closed { auction: 1 })
        );
    }
}
