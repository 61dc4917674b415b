//! A linearizability checker for auction histories: is there one order of the operations, each
//! placed between its invocation and its return, in which the pure auction state machine gives
//! every recorded answer?
//!
//! The search is Wing and Gong's, with Lowe's memoization of (operations placed, model state):
//! the operations' invocations and returns form one time-ordered list; the search repeatedly
//! places the earliest invocation it can (the model must give its recorded answer), and
//! backtracks when it meets the return of an operation it has not placed. An operation whose
//! outcome is unknown returns "never": it may be placed anywhere after its invocation, with any
//! outcome. Operations on different auctions are independent and are checked separately.
//!
//! Time in the model stays at 0: an auction ends only by its [`Call::Expire`] operation, which
//! the search must place inside its window like any other. So a read that says "closed" before
//! the window opens (an early close), and a read invoked after the window ended that says "open"
//! (a late close, a frozen clock), have no linearization. After the Expire, bids are refused as
//! `Closed`.
//!
//! An operation with an unknown outcome may take effect in the auction current at its
//! invocation or in any later one, so it goes into the history of each of them (as unknown: it
//! may take effect there or not). The auction current at its invocation is at least the one its
//! client last saw, and at least the latest one named by an answer returned before it was
//! invoked. This over-approximates, and never reports a false violation.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::time::Duration;

use crate::history::{Call, Operation, ReadView, Return};
use auction::auction::{Machine, Op};
use auction::types::{AuctionLength, Credential, Millis};

/// A search gives up after this many steps, so a pathological history cannot hang a test run.
const STEP_BUDGET: u64 = 200_000_000;

/// Why a history is not linearizable, for a person to read.
#[derive(Clone, Debug)]
pub struct Violation {
    pub auction: u64,
    /// When the smallest failing prefix of the history ends: every operation that returned after
    /// this point is treated as unanswered, and still no order exists.
    pub prefix_end: Duration,
    /// How many operations the longest order found could place.
    pub placed: usize,
    /// The last operations of that order, oldest first.
    pub last_placed: Vec<Operation>,
    /// The model state after that order.
    pub state: String,
    /// The operations of the failing prefix that no order could place, by invocation.
    pub unplaced: Vec<Operation>,
    /// Set when the search gave up rather than proved a violation.
    pub gave_up: bool,
    /// The auction's end at its deadline, with its whole window, if the history has it.
    pub deadline: Option<Operation>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.gave_up {
            writeln!(
                f,
                "auction {}: the search gave up after {STEP_BUDGET} steps",
                self.auction
            )?;
        }
        writeln!(
            f,
            "auction {}: no linearization of the history up to {:.3}s",
            self.auction,
            self.prefix_end.as_secs_f64()
        )?;
        if let Some(deadline) = &self.deadline {
            writeln!(f, "its deadline: {deadline}")?;
        }
        writeln!(
            f,
            "the longest order found places {} operations and ends in: {}",
            self.placed, self.state
        )?;
        writeln!(f, "its last operations:")?;
        for op in &self.last_placed {
            writeln!(f, "  {op}")?;
        }
        writeln!(f, "operations that cannot be placed after it:")?;
        for op in &self.unplaced {
            writeln!(f, "  {op}")?;
        }
        Ok(())
    }
}

/// Checks `history`.
///
/// # Errors
/// The smallest window of the history that cannot be linearized.
pub fn check(history: &[Operation]) -> Result<(), Box<Violation>> {
    let mut by_auction: BTreeMap<u64, Vec<Operation>> = BTreeMap::new();
    let placed_in_one = |op: &Operation| op.is_known() || op.call == Call::Expire;
    let auctions: BTreeSet<u64> = history
        .iter()
        .filter(|op| placed_in_one(op))
        .map(|op| op.auction)
        .collect();
    // The auctions named by answers, by return time, each with the latest named so far: the
    // lowest auction an operation invoked after that time can take effect in.
    let mut named: Vec<(Duration, u64)> = history
        .iter()
        .filter(|op| op.is_known() && op.call != Call::Expire)
        .filter_map(|op| Some((op.returned?, op.auction)))
        .collect();
    named.sort_unstable();
    let mut latest = 0;
    for entry in &mut named {
        latest = latest.max(entry.1);
        entry.1 = latest;
    }
    let latest_before = |t: Duration| -> u64 {
        let i = named.partition_point(|(r, _)| *r < t);
        i.checked_sub(1).map_or(0, |i| named[i].1)
    };
    // A read without an answer constrains nothing.
    for op in history
        .iter()
        .filter(|op| op.call != Call::Read || op.is_known())
    {
        if placed_in_one(op) {
            by_auction.entry(op.auction).or_default().push(op.clone());
        } else {
            let lowest = op.auction.max(latest_before(op.invoked));
            for &auction in auctions.range(lowest..) {
                let mut op = op.clone();
                op.auction = auction;
                by_auction.entry(auction).or_default().push(op);
            }
        }
    }
    for (auction, mut ops) in by_auction {
        ops.sort_by_key(|op| op.invoked);
        if let Err(failure) = search(&ops, model(auction)) {
            return Err(Box::new(explain(auction, &ops, *failure)));
        }
    }
    Ok(())
}

/// The model of auction `number` as the cluster opens it: open, no bids, and a deadline the run
/// never reaches (time in the model stays at 0; the auction ends by its [`Call::Expire`]).
fn model(number: u64) -> Machine {
    let mut m = Machine::default();
    let forever = AuctionLength::from_secs(AuctionLength::MAX_SECS).expect("in range");
    for _ in 0..number {
        m.auction.closed_early = true;
        let started = m.apply(Millis(0), None, &Op::Start { duration: forever });
        debug_assert!(started.is_ok());
    }
    m
}

/// The model's next state if `op` can take effect now with its recorded answer.
fn step(state: &Machine, op: &Operation) -> Option<Machine> {
    match (&op.call, &op.ret) {
        (Call::Bid { bidder, amount }, ret) => {
            let mut next = state.clone();
            let bid = Op::Bid {
                bidder: bidder.clone(),
                amount: *amount,
                // Every bidder in a history bids with its own token (the nemesis gives each one
                // a token for the whole run), so one credential stands for all of them.
                credential: Credential([0; 32]),
            };
            let decision = next.apply(Millis(0), None, &bid);
            match ret {
                Return::Unknown => Some(next),
                Return::Bid(recorded) if *recorded == decision => Some(next),
                _ => None,
            }
        }
        (Call::Read, Return::Read(seen)) => (*seen == read(state)).then(|| state.clone()),
        (Call::Read, Return::Unknown) => Some(state.clone()),
        (Call::Read, Return::Bid(_) | Return::Expired) => None,
        // The deadline passes: the auction closes if it is still open, and keeps its winner.
        (Call::Expire, Return::Expired | Return::Unknown) => {
            let mut next = state.clone();
            next.auction.closed_early = true;
            Some(next)
        }
        (Call::Expire, Return::Bid(_) | Return::Read(_)) => None,
    }
}

fn read(state: &Machine) -> ReadView {
    let a = &state.auction;
    ReadView {
        number: a.number,
        open: a.is_open(Millis(0)),
        highest: a.highest.as_ref().map(|h| (h.bidder.clone(), h.amount)),
        bidders: a.bidders.len() as u64,
    }
}

fn describe(state: &Machine) -> String {
    let v = read(state);
    let open = if v.open { "open" } else { "closed" };
    match v.highest {
        Some((who, amount)) => format!("{open}, highest {amount} by {who}, {} bidders", v.bidders),
        None => format!("{open}, no bids, {} bidders", v.bidders),
    }
}

/// The longest order a failed search found.
struct Failure {
    order: Vec<usize>,
    state: Machine,
    gave_up: bool,
}

/// One invocation or return in the time-ordered list.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    call: bool,
}

/// The set of placed operations, with operations numbered by invocation: every operation below
/// `frontier` is placed except the `holes`. Concurrency is bounded, so the holes stay few and the
/// set is cheap to copy into the memo, where a bitset of the whole history would not be.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Placed {
    frontier: usize,
    holes: Vec<usize>,
}

impl Placed {
    fn place(&mut self, i: usize) {
        debug_assert!(!self.contains(i), "{i} is placed already");
        if i >= self.frontier {
            self.holes.extend(self.frontier..i);
            self.frontier = i + 1;
        } else if let Ok(at) = self.holes.binary_search(&i) {
            self.holes.remove(at);
        }
    }

    fn contains(&self, i: usize) -> bool {
        i < self.frontier && self.holes.binary_search(&i).is_err()
    }

    fn unplace(&mut self, i: usize) {
        debug_assert!(self.contains(i), "{i} is not placed");
        if i + 1 == self.frontier {
            self.frontier = i;
            while self.holes.last().is_some_and(|h| h + 1 == self.frontier) {
                self.holes.pop();
                self.frontier -= 1;
            }
        } else if let Err(at) = self.holes.binary_search(&i) {
            self.holes.insert(at, i);
        }
    }
}

/// Searches for a linearization of `ops`, which must be sorted by invocation.
fn search(ops: &[Operation], init: Machine) -> Result<(), Box<Failure>> {
    let n = ops.len();
    let mut events: Vec<(Duration, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoked, false, i));
        let end = match op.ret {
            Return::Unknown => Duration::MAX,
            _ => op.returned.unwrap_or(Duration::MAX),
        };
        events.push((end, true, i));
    }
    // By time; at equal times invocations first, so touching operations count as concurrent.
    events.sort_by_key(|&(t, is_return, i)| (t, is_return, i));
    let list: Vec<Event> = events
        .iter()
        .map(|&(_, is_return, op)| Event {
            op,
            call: !is_return,
        })
        .collect();
    // A doubly linked list over the events, with a head (2n) and a tail (2n + 1).
    let (head, tail) = (2 * n, 2 * n + 1);
    let mut next: Vec<usize> = (1..=2 * n).chain([0, 0]).collect();
    let mut prev: Vec<usize> = std::iter::once(head)
        .chain(0..2 * n)
        .chain([0, 0])
        .collect();
    next[head] = if n == 0 { tail } else { 0 };
    prev[tail] = if n == 0 { head } else { 2 * n - 1 };
    if n > 0 {
        next[2 * n - 1] = tail;
    }
    let mut return_of = vec![0; n];
    for (e, ev) in list.iter().enumerate() {
        if !ev.call {
            return_of[ev.op] = e;
        }
    }
    let unlink = |e: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, q) = (prev[e], next[e]);
        next[p] = q;
        prev[q] = p;
    };
    let relink = |e: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, q) = (prev[e], next[e]);
        next[p] = e;
        prev[q] = e;
    };

    let mut placed = Placed::default();
    let mut seen: HashSet<(Placed, Machine)> = HashSet::new();
    let mut stack: Vec<(usize, Machine)> = Vec::new();
    let mut best = Box::new(Failure {
        order: Vec::new(),
        state: init.clone(),
        gave_up: false,
    });
    let mut state = init;
    let mut e = next[head];
    let mut steps = 0u64;
    while next[head] != tail {
        steps += 1;
        if steps > STEP_BUDGET {
            best.gave_up = true;
            return Err(best);
        }
        let ev = list[e];
        if ev.call {
            if let Some(after) = step(&state, &ops[ev.op]) {
                placed.place(ev.op);
                if seen.insert((placed.clone(), after.clone())) {
                    let before = std::mem::replace(&mut state, after);
                    stack.push((e, before));
                    unlink(e, &mut next, &mut prev);
                    unlink(return_of[ev.op], &mut next, &mut prev);
                    if stack.len() > best.order.len() {
                        best.order = stack.iter().map(|(c, _)| list[*c].op).collect();
                        best.state = state.clone();
                    }
                    e = next[head];
                    continue;
                }
                placed.unplace(ev.op);
            }
            e = next[e];
        } else {
            // The return of an operation not yet placed: the order so far cannot go on.
            let Some((c, before)) = stack.pop() else {
                return Err(best);
            };
            let op = list[c].op;
            state = before;
            placed.unplace(op);
            relink(return_of[op], &mut next, &mut prev);
            relink(c, &mut next, &mut prev);
            e = next[c];
        }
    }
    Ok(())
}

/// The smallest failing prefix of `ops` (linearizability is prefix-closed, so a binary search
/// over return times finds it), and the longest order found in it.
fn explain(auction: u64, ops: &[Operation], whole: Failure) -> Violation {
    let prefix = |end: Duration| -> Vec<Operation> {
        ops.iter()
            .filter(|op| op.invoked <= end)
            .map(|op| {
                let mut op = op.clone();
                if op.returned.is_none_or(|r| r > end) {
                    op.returned = None;
                    op.ret = Return::Unknown;
                }
                op
            })
            .collect()
    };
    // When the search gave up, no smaller window is sure to fail: report the whole history.
    let (end, window, failure) = if whole.gave_up {
        (Duration::MAX, ops.to_vec(), whole)
    } else {
        let mut ends: Vec<Duration> = ops.iter().filter_map(|op| op.returned).collect();
        ends.sort();
        ends.dedup();
        // The full history fails; find the first end whose prefix fails too. A probe that gives
        // up proves nothing, so it counts as passing.
        let fails =
            |end: Duration| matches!(search(&prefix(end), model(auction)), Err(f) if !f.gave_up);
        let (mut lo, mut hi) = (0, ends.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if fails(ends[mid]) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let end = ends.get(lo).copied().unwrap_or(Duration::MAX);
        let window = prefix(end);
        let failure = match search(&window, model(auction)) {
            Err(f) => *f,
            Ok(()) => whole,
        };
        (end, window, failure)
    };
    let placed: HashSet<usize> = failure.order.iter().copied().collect();
    let mut unplaced: Vec<Operation> = (0..window.len())
        .filter(|i| !placed.contains(i))
        .map(|i| window[i].clone())
        .collect();
    unplaced.sort_by_key(|op| op.invoked);
    let last_placed = failure.order[failure.order.len().saturating_sub(8)..]
        .iter()
        .map(|&i| window[i].clone())
        .collect();
    Violation {
        auction,
        prefix_end: end,
        placed: failure.order.len(),
        last_placed,
        state: describe(&failure.state),
        unplaced,
        gave_up: failure.gave_up,
        deadline: ops.iter().find(|op| op.call == Call::Expire).cloned(),
    }
}

/// A history of `rounds` rounds in which 8 clients all bid one more than the highest bid at the
/// same moment (one wins, seven are refused), then all read. For tests and benchmarks.
pub fn contended_history(rounds: u64) -> Vec<Operation> {
    use auction::auction::Refusal;
    use auction::types::{Amount, BidderId};
    let name = |c: u32| BidderId::new(format!("c{c}")).expect("valid name");
    let ms = Duration::from_millis;
    let mut h = Vec::new();
    let mut t = 0u64;
    for round in 0..rounds {
        let amount = Amount::new(round + 1).expect("positive");
        let winner = (round % 8) as u32;
        for c in 0..8u32 {
            let ret = if c == winner {
                Return::Bid(Ok(()))
            } else {
                Return::Bid(Err(Refusal::NotHigher {
                    auction: 1,
                    highest: amount,
                }))
            };
            // All invoked within 2 ms; the winner returns first.
            let end = if c == winner { 5 } else { 6 + u64::from(c) };
            h.push(Operation {
                client: c,
                auction: 1,
                call: Call::Bid {
                    bidder: name(c),
                    amount,
                },
                invoked: ms(t + u64::from(c) % 3),
                returned: Some(ms(t + end)),
                ret,
            });
        }
        t += 20;
        for c in 0..8u32 {
            h.push(Operation {
                client: c,
                auction: 1,
                call: Call::Read,
                invoked: ms(t + u64::from(c) % 2),
                returned: Some(ms(t + 3)),
                ret: Return::Read(ReadView {
                    number: 1,
                    open: true,
                    highest: Some((name(winner), amount)),
                    bidders: 8,
                }),
            });
        }
        t += 5;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use auction::auction::Refusal;
    use auction::types::{Amount, BidderId};

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
    fn bid(client: u32, amount: u64, span: (u64, Option<u64>), ret: Return) -> Operation {
        Operation {
            client,
            auction: 1,
            call: Call::Bid {
                bidder: BidderId::new(format!("c{client}")).unwrap(),
                amount: Amount::new(amount).unwrap(),
            },
            invoked: ms(span.0),
            returned: span.1.map(ms),
            ret,
        }
    }
    fn ok() -> Return {
        Return::Bid(Ok(()))
    }
    fn not_higher(highest: u64) -> Return {
        Return::Bid(Err(Refusal::NotHigher {
            auction: 1,
            highest: Amount::new(highest).unwrap(),
        }))
    }
    fn read(client: u32, span: (u64, u64), highest: Option<(u32, u64)>, bidders: u64) -> Operation {
        Operation {
            client,
            auction: 1,
            call: Call::Read,
            invoked: ms(span.0),
            returned: Some(ms(span.1)),
            ret: Return::Read(ReadView {
                number: 1,
                open: true,
                highest: highest.map(|(c, a)| {
                    (
                        BidderId::new(format!("c{c}")).unwrap(),
                        Amount::new(a).unwrap(),
                    )
                }),
                bidders,
            }),
        }
    }

    #[test]
    fn the_placed_set_is_a_frontier_with_holes() {
        let mut p = Placed::default();
        p.place(2);
        assert_eq!((p.frontier, p.holes.clone()), (3, vec![0, 1]));
        p.place(0);
        p.place(4);
        assert_eq!((p.frontier, p.holes.clone()), (5, vec![1, 3]));
        p.unplace(4);
        assert_eq!((p.frontier, p.holes.clone()), (3, vec![1]));
        p.unplace(0);
        assert_eq!((p.frontier, p.holes.clone()), (3, vec![0, 1]));
        p.unplace(2);
        assert_eq!(p, Placed::default());
    }

    #[test]
    fn a_sequential_history_is_linearizable() {
        let h = [
            bid(1, 10, (0, Some(1)), ok()),
            read(2, (2, 3), Some((1, 10)), 1),
            bid(2, 10, (4, Some(5)), not_higher(10)),
            bid(2, 11, (6, Some(7)), ok()),
            read(1, (8, 9), Some((2, 11)), 2),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The read overlaps the bid, so it may see the bid or not.
        let h = [
            bid(1, 10, (0, Some(10)), ok()),
            read(2, (1, 2), None, 0),
            read(3, (3, 4), Some((1, 10)), 1),
        ];
        check(&h).unwrap();
        // Two overlapping bids of 10 and 20 both succeed: only the order 10, 20 works.
        let h = [
            bid(1, 20, (0, Some(10)), ok()),
            bid(2, 10, (1, Some(9)), ok()),
            read(3, (11, 12), Some((1, 20)), 2),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn a_stale_read_is_caught() {
        let h = [bid(1, 10, (0, Some(1)), ok()), read(2, (2, 3), None, 0)];
        let v = check(&h).unwrap_err();
        assert!(!v.gave_up);
        assert_eq!(v.unplaced.len(), 1, "{v}");
    }

    #[test]
    fn a_lost_acknowledged_bid_is_caught() {
        let h = [
            bid(1, 10, (0, Some(1)), ok()),
            bid(2, 20, (2, Some(3)), ok()),
            read(3, (4, 5), Some((1, 10)), 2),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_bid_applied_twice_is_caught() {
        // Retried after a failover and applied again: refused as "not higher" than itself.
        let h = [
            bid(1, 10, (0, Some(5)), not_higher(10)),
            read(2, (6, 7), Some((1, 10)), 1),
        ];
        let v = check(&h).unwrap_err();
        let text = v.to_string();
        assert!(text.contains("bid 10 as c1 -> fail"), "{text}");
    }

    #[test]
    fn two_successes_for_equal_amounts_are_caught() {
        let h = [
            bid(1, 10, (0, Some(5)), ok()),
            bid(2, 10, (1, Some(6)), ok()),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn an_unknown_bid_may_take_effect_late_or_never() {
        let lost = bid(1, 10, (0, None), Return::Unknown);
        // Never seen.
        check(&[lost.clone(), read(2, (5, 6), None, 0)]).unwrap();
        // Seen much later, after a read that did not see it.
        check(&[
            lost.clone(),
            read(2, (5, 6), None, 0),
            read(2, (7, 8), Some((1, 10)), 1),
        ])
        .unwrap();
        // But not before it was invoked.
        let late = bid(1, 10, (10, None), Return::Unknown);
        assert!(check(&[late, read(2, (5, 6), Some((1, 10)), 1)]).is_err());
    }

    #[test]
    fn the_window_of_a_violation_is_small_and_readable() {
        let mut h: Vec<Operation> = (0..50)
            .map(|i| {
                bid(
                    i % 4,
                    10 + i as u64,
                    (10 * i as u64, Some(10 * i as u64 + 5)),
                    ok(),
                )
            })
            .collect();
        // A stale read after 50 good bids.
        h.push(read(9, (600, 601), Some((0, 10)), 4));
        h.extend((0..20).map(|i| read(9, (700 + 2 * i, 701 + 2 * i), Some((1, 59)), 4)));
        let v = check(&h).unwrap_err();
        assert_eq!(v.prefix_end, ms(601));
        assert_eq!(v.placed, 50);
        assert_eq!(v.unplaced.len(), 1);
        assert_eq!(v.last_placed.len(), 8);
        let text = v.to_string();
        assert!(text.contains("up to 0.601s"), "{text}");
        assert!(text.contains("read -> open, highest 10 by c0"), "{text}");
    }

    /// A read of `auction`, open or closed.
    fn read_of(
        auction: u64,
        open: bool,
        span: (u64, u64),
        highest: Option<(u32, u64)>,
        bidders: u64,
    ) -> Operation {
        let mut op = read(9, span, highest, bidders);
        if let Return::Read(v) = &mut op.ret {
            v.number = auction;
            v.open = open;
        }
        op.auction = auction;
        op
    }
    fn expire(auction: u64, span: (u64, Option<u64>)) -> Operation {
        Operation {
            client: crate::history::DEADLINE,
            auction,
            call: Call::Expire,
            invoked: ms(span.0),
            returned: span.1.map(ms),
            ret: if span.1.is_some() {
                Return::Expired
            } else {
                Return::Unknown
            },
        }
    }
    fn closed(auction: u64) -> Return {
        Return::Bid(Err(Refusal::Closed { auction }))
    }

    #[test]
    fn an_auction_closes_inside_its_window_and_refuses_bids_after() {
        let h = [
            bid(1, 10, (0, Some(1)), ok()),
            expire(1, (100, Some(200))),
            read_of(1, true, (150, 160), Some((1, 10)), 1),
            read_of(1, false, (190, 195), Some((1, 10)), 1),
            bid(2, 20, (196, Some(197)), closed(1)),
        ];
        check(&h).unwrap();
        // A bid that overlaps the window may be decided before the deadline.
        let h = [
            expire(1, (100, Some(200))),
            bid(3, 30, (150, Some(250)), ok()),
            read_of(1, false, (300, 310), Some((3, 30)), 1),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn an_early_close_is_caught() {
        let h = [
            bid(1, 10, (0, Some(1)), ok()),
            expire(1, (100, Some(200))),
            read_of(1, false, (50, 60), Some((1, 10)), 1),
        ];
        let v = check(&h).unwrap_err();
        assert!(!v.gave_up);
        assert!(v.to_string().contains("read -> closed"), "{v}");
        // A bid refused as closed before the window opens is caught too.
        let h = [
            expire(1, (100, Some(200))),
            bid(2, 5, (50, Some(60)), closed(1)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_late_close_is_caught() {
        // Invoked after the window ended, yet open: a frozen clock.
        let h = [
            expire(1, (100, Some(200))),
            read_of(1, true, (250, 260), None, 0),
        ];
        let v = check(&h).unwrap_err();
        let text = v.to_string();
        assert!(
            text.contains("its deadline: [0.100s .. 0.200s] deadline of auction 1 passes"),
            "{text}"
        );
        // An acknowledged bid after the window is caught as well.
        let h = [
            expire(1, (100, Some(200))),
            bid(1, 5, (250, Some(260)), ok()),
        ];
        assert!(check(&h).is_err());
        // Invoked before the window ended: it may have been decided in time.
        let h = [
            expire(1, (100, Some(200))),
            read_of(1, true, (190, 260), None, 0),
        ];
        check(&h).unwrap();
    }

    #[test]
    fn a_deadline_whose_window_outlives_the_history_may_pass_or_not() {
        let h = [
            expire(1, (100, None)),
            read_of(1, true, (300, 310), None, 0),
            read_of(1, false, (400, 410), None, 0),
        ];
        check(&h).unwrap();
        // But not before its window opens.
        let h = [expire(1, (100, None)), read_of(1, false, (50, 60), None, 0)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn an_unknown_bid_may_take_effect_in_a_later_auction() {
        let mut lost = bid(1, 10, (50, None), Return::Unknown);
        lost.auction = 1;
        let h = [
            lost.clone(),
            expire(1, (100, Some(200))),
            read_of(1, false, (250, 260), None, 0),
            expire(2, (1000, Some(1100))),
            read_of(2, true, (300, 310), Some((1, 10)), 1),
        ];
        check(&h).unwrap();
        // Invoked after an answer named auction 2, it cannot take effect in auction 1.
        let mut late = bid(1, 10, (320, None), Return::Unknown);
        late.auction = 1;
        let h = [
            expire(1, (100, Some(200))),
            read_of(2, true, (300, 310), None, 0),
            late,
            read_of(1, false, (330, 340), Some((1, 10)), 1),
        ];
        let v = check(&h).unwrap_err();
        assert_eq!(v.auction, 1);
        // Nor in an auction before the one its client had seen.
        let mut hinted = bid(1, 10, (50, None), Return::Unknown);
        hinted.auction = 2;
        let h = [
            hinted,
            expire(1, (100, Some(200))),
            read_of(1, false, (250, 260), Some((1, 10)), 1),
            read_of(2, true, (300, 310), None, 0),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn auctions_are_checked_separately() {
        let mut second = bid(1, 5, (0, Some(1)), ok());
        second.auction = 2;
        let h = [bid(1, 10, (0, Some(1)), ok()), second];
        check(&h).unwrap();
    }

    #[test]
    fn a_history_of_two_thousand_operations_from_eight_clients_checks() {
        let h = contended_history(125);
        assert_eq!(h.len(), 2000);
        check(&h).unwrap();
        // The same history with one acknowledged bid lost from the final read is refused.
        let mut lost = h.clone();
        let last = lost.len() - 1;
        if let Return::Read(view) = &mut lost[last].ret {
            view.highest = Some((BidderId::new("c0").unwrap(), Amount::new(1).unwrap()));
        }
        assert!(check(&lost).is_err());
    }
}
