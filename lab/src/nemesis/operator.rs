//! The operator of a fault run: it watches each auction until a read sees it closed, then
//! opens the next one, so that a run goes through several short auctions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{AUCTION_MS, AuctionRecord, Rng, read_view};
use crate::history::{Call, OPERATOR, Operation, Return};
use auction::auction::Refusal;
use auction::client::{Client, ClientError, Outcome};
use auction::types::AuctionLength;

/// What the operator task recorded.
#[derive(Debug, Default)]
pub(super) struct OperatorLog {
    /// The auctions, in order, the founder's first.
    pub(super) auctions: Vec<AuctionRecord>,
    /// Its reads.
    pub(super) ops: Vec<Operation>,
    pub(super) problems: Vec<String>,
}

/// How an attempt to open the next auction ended.
enum Started {
    /// These auctions were opened (normally one; more if lost attempts opened some too).
    Opened(Vec<AuctionRecord>),
    /// Refused: the auction is still open.
    Refused,
    /// The run is over, or the operator cannot go on.
    Stopped,
}

/// The operator: watches each auction until a read sees it closed, then opens the next, of a
/// seeded duration, after a seeded short wait.
pub(super) struct Operator {
    /// A client with the operator token.
    pub(super) client: Client,
    /// The start of the run.
    pub(super) t0: Instant,
    /// Chooses the waits and the durations.
    pub(super) rng: Rng,
    /// The run's [`CLOSE_BOUND`](super::CLOSE_BOUND).
    pub(super) bound: Duration,
    pub(super) log: OperatorLog,
}

impl Operator {
    /// Runs from the `first` auction; opens auctions until `start_until` (since the start of
    /// the run) or `stop`, then returns once it has seen the last one closed, or once that is
    /// overdue.
    pub(super) async fn run(
        mut self,
        first: AuctionRecord,
        start_until: Duration,
        stop: Arc<AtomicBool>,
    ) -> OperatorLog {
        let mut current = first.clone();
        self.log.auctions.push(first);
        loop {
            let overdue = current
                .close_window(self.bound)
                .1
                .unwrap_or(current.start_invoked + current.duration + self.bound)
                + Duration::from_secs(1);
            let give_up = overdue.max(self.t0.elapsed() + Duration::from_secs(1));
            let closed = self.await_close(&current, give_up).await;
            if self.t0.elapsed() >= start_until || stop.load(Ordering::SeqCst) {
                break;
            }
            if !closed {
                continue;
            }
            let wait = Duration::from_millis(self.rng.range(0, 300));
            let duration_ms = self.rng.range(*AUCTION_MS.start(), *AUCTION_MS.end() + 1);
            tokio::time::sleep(wait).await;
            match self.start_next(&current, duration_ms, &stop).await {
                Started::Opened(records) => {
                    current = records.last().cloned().unwrap_or(current);
                    self.log.auctions.extend(records);
                }
                Started::Refused => {}
                Started::Stopped => break,
            }
        }
        self.log
    }

    /// Reads until a read sees `current` closed (`true`), or until `give_up` (`false`); every
    /// read goes into the history. Starts shortly before the deadline may pass.
    async fn await_close(&mut self, current: &AuctionRecord, give_up: Duration) -> bool {
        let from = current.start_returned.unwrap_or(current.start_invoked) + current.duration;
        let wake = from.saturating_sub(Duration::from_millis(100));
        tokio::time::sleep(wake.saturating_sub(self.t0.elapsed())).await;
        loop {
            let invoked = self.t0.elapsed();
            if let Ok(view) = self.client.result().await {
                let view = read_view(&view);
                let closed = view.number == current.number && !view.open;
                self.log.ops.push(Operation {
                    client: OPERATOR,
                    auction: view.number,
                    call: Call::Read,
                    invoked,
                    returned: Some(self.t0.elapsed()),
                    ret: Return::Read(view),
                });
                if closed {
                    return true;
                }
            }
            if self.t0.elapsed() >= give_up {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Opens the auction after `prev`, retrying (each time with a new request id) while no
    /// leader answers. An attempt without an answer may have opened it, at any moment until a
    /// later answer: so the start's window runs from the first attempt to the first answer, and
    /// if the operator stops without one, the auction is recorded as perhaps opened.
    async fn start_next(
        &mut self,
        prev: &AuctionRecord,
        duration_ms: u64,
        stop: &AtomicBool,
    ) -> Started {
        let Ok(duration) = AuctionLength::from_millis(duration_ms) else {
            self.log
                .problems
                .push(format!("no auction lasts {duration_ms} ms"));
            return Started::Stopped;
        };
        let invoked = self.t0.elapsed();
        let record = |number: u64, returned: Option<Duration>| AuctionRecord {
            number,
            duration: Duration::from_millis(duration_ms),
            start_invoked: invoked,
            start_returned: returned,
        };
        let mut lost = false;
        loop {
            if stop.load(Ordering::SeqCst) {
                return if lost {
                    Started::Opened(vec![record(prev.number + 1, None)])
                } else {
                    Started::Stopped
                };
            }
            let answer = self.client.start(Some(duration)).await;
            let returned = Some(self.t0.elapsed());
            let opened = |last: u64| {
                Started::Opened(
                    (prev.number + 1..=last)
                        .map(|n| record(n, returned))
                        .collect(),
                )
            };
            match answer {
                Ok(Outcome {
                    decision: Ok(()),
                    auction,
                }) => {
                    if auction.number <= prev.number {
                        self.log.problems.push(format!(
                            "at {:.3}s the operator, having seen auction {} closed, started \
                             auction {}: the numbers went back",
                            invoked.as_secs_f64(),
                            prev.number,
                            auction.number
                        ));
                    }
                    return opened(auction.number);
                }
                // A lost attempt opened it.
                Ok(Outcome {
                    decision: Err(Refusal::StillOpen { auction }),
                    ..
                }) if lost && auction > prev.number => return opened(auction),
                Ok(Outcome {
                    decision: Err(refusal),
                    ..
                }) => {
                    self.log.problems.push(format!(
                        "at {:.3}s the operator, having seen auction {} closed, could not \
                         start the next: {refusal}",
                        invoked.as_secs_f64(),
                        prev.number
                    ));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return Started::Refused;
                }
                Err(ClientError::Exception { .. }) => {
                    lost = true;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    self.log
                        .problems
                        .push(format!("the operator could not start an auction: {e}"));
                    return if lost {
                        Started::Opened(vec![record(prev.number + 1, None)])
                    } else {
                        Started::Stopped
                    };
                }
            }
        }
    }
}
