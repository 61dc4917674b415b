//! Properties of the auction state machine over arbitrary sequences of operations: the
//! highest bid is the largest accepted bid, a closed auction accepts nothing, each bidder's
//! accepted bids strictly increase, no bid counts in another bidder's name, and a replayed
//! request returns its first outcome and changes nothing.

use std::collections::BTreeMap;

use auction_core::auction::{Machine, Op, Refusal};
use auction_core::types::{Amount, AuctionLength, BidderId, Credential, Millis, RequestId};
use proptest::prelude::*;

/// One step: how much time passes before it, and what happens.
#[derive(Clone, Debug)]
enum Step {
    Bid {
        session: u64,
        bidder: u8,
        /// Whose credential the bid carries: usually the bidder's own.
        holder: u8,
        amount: u64,
    },
    Start {
        secs: u64,
    },
    Close,
    /// Sends a session's last request again, with the same id.
    Replay {
        session: u64,
    },
}

fn step() -> impl Strategy<Value = (u64, Step)> {
    let bid = (
        1..4u64,
        0..4u8,
        prop::bool::weighted(0.85),
        0..4u8,
        1..60u64,
    )
        .prop_map(|(session, bidder, own, other, amount)| Step::Bid {
            session,
            bidder,
            holder: if own { bidder } else { other },
            amount,
        });
    let kind = prop_oneof![
        8 => bid,
        1 => (1..4u64).prop_map(|secs| Step::Start { secs }),
        1 => Just(Step::Close),
        2 => (1..4u64).prop_map(|session| Step::Replay { session }),
    ];
    (0..1500u64, kind)
}

/// A session's last request and its first outcome.
type LastRequest = (RequestId, Op, Result<(), Refusal>);

fn name(i: u8) -> BidderId {
    BidderId::new(format!("b{i}")).unwrap()
}

fn credential(i: u8) -> Credential {
    Credential([i; 32])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_auction_keeps_its_promises(steps in prop::collection::vec(step(), 1..80)) {
        let mut m = Machine::default();
        let mut now = 0u64;
        // Per session: the next sequence number, and its last request with its outcome.
        let mut sessions: BTreeMap<u64, (u64, Option<LastRequest>)> = BTreeMap::new();
        // Accepted amounts of the current auction, in order, with who bid them.
        let mut accepted: Vec<(BidderId, Amount)> = Vec::new();
        // The credential each name was first accepted with.
        let mut owner: BTreeMap<BidderId, Credential> = BTreeMap::new();
        for (advance, step) in steps {
            now += advance;
            let at = Millis(now);
            match step {
                Step::Bid { session, bidder, holder, amount } => {
                    let entry = sessions.entry(session).or_insert((1, None));
                    let id = RequestId::new(session, entry.0).unwrap();
                    entry.0 += 1;
                    let op = Op::Bid {
                        bidder: name(bidder),
                        amount: Amount::new(amount).unwrap(),
                        credential: credential(holder),
                    };
                    let was_open = m.auction.is_open(at);
                    let before = m.auction.clone();
                    let decision = m.apply(at, Some(id), &op);
                    if !was_open {
                        prop_assert!(decision.is_err(), "a closed auction accepted {op:?}");
                        prop_assert_eq!(&m.auction, &before, "a refused bid changed the auction");
                    }
                    if decision.is_ok() {
                        let registered = *owner.entry(name(bidder)).or_insert(credential(holder));
                        prop_assert_eq!(registered, credential(holder), "a bid in another's name");
                        accepted.push((name(bidder), Amount::new(amount).unwrap()));
                    } else {
                        prop_assert_eq!(&m.auction.highest, &before.highest);
                    }
                    entry.1 = Some((id, op, decision));
                }
                Step::Start { secs } => {
                    let op = Op::Start { duration: AuctionLength::from_secs(secs).unwrap() };
                    if m.apply(at, None, &op).is_ok() {
                        accepted.clear();
                    }
                }
                Step::Close => {
                    let _ = m.apply(at, None, &Op::Close);
                }
                Step::Replay { session } => {
                    if let Some((_, Some((id, op, first)))) = sessions.get(&session).cloned() {
                        let before = m.auction.clone();
                        let again = m.apply(at, Some(id), &op);
                        prop_assert_eq!(again, first, "a replay changed its outcome");
                        prop_assert_eq!(&m.auction, &before, "a replay changed the auction");
                    }
                }
            }
            // The highest bid is the largest accepted bid of this auction, by its bidder.
            let largest = accepted.iter().max_by_key(|(_, a)| *a);
            prop_assert_eq!(
                m.auction.highest.as_ref().map(|h| (&h.bidder, h.amount)),
                largest.map(|(b, a)| (b, *a))
            );
            // Accepted bids strictly increase, so each bidder's do too.
            prop_assert!(accepted.windows(2).all(|w| w[0].1 < w[1].1));
        }
    }
}
