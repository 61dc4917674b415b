//! A history of client operations as a fault run saw them: when each was invoked, when it
//! returned and with what, or that its outcome is unknown (it timed out, ended in an exception,
//! or its client was killed mid-request), in which case it may or may not take effect, at any
//! point after its invocation. The end of each auction at its deadline is recorded as an
//! operation too ([`Call::Expire`]), whose window is when the deadline may pass.

use std::fmt;
use std::time::Duration;

use auction::auction::Decision;
use auction::types::{Amount, BidderId};

/// The `client` of the final read of a run.
pub const FINAL_READER: u32 = u32::MAX;
/// The `client` of the operator's reads (it watches for each auction's end).
pub const OPERATOR: u32 = u32::MAX - 1;
/// The `client` of [`Call::Expire`] operations: the auction clock.
pub const DEADLINE: u32 = u32::MAX - 2;

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Bid {
        bidder: BidderId,
        amount: Amount,
    },
    Read,
    /// The auction's deadline passes: it closes, if still open. Not a request anyone sends: its
    /// window runs from the earliest moment the deadline may pass (the start was invoked, plus
    /// the duration) to the latest it must have passed by (the start returned, plus the
    /// duration, plus the bound on how late a close may be seen).
    Expire,
}

/// What a read saw: enough of the auction to compare with the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadView {
    /// The auction's number.
    pub number: u64,
    pub open: bool,
    pub highest: Option<(BidderId, Amount)>,
    pub bidders: u64,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Return {
    Bid(Decision),
    Read(ReadView),
    /// The deadline passed (the window of a [`Call::Expire`] ended within the history).
    Expired,
    /// No outcome: the operation may have taken effect or not.
    Unknown,
}

/// One operation of a history: what was invoked ([`Call`]), when, and how it ended
/// ([`Return`]). Not [`auction::auction::Op`], the change a request asks of the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client process (a killed client's successor gets a new number).
    pub client: u32,
    /// The auction the operation is about, from its answer; operations on different auctions
    /// are independent. For an operation whose outcome is unknown: the latest auction its
    /// client had seen when it was invoked (0 if none), the earliest it may take effect in.
    pub auction: u64,
    pub call: Call,
    /// Since the start of the run, on a monotonic clock.
    pub invoked: Duration,
    /// `None` when the outcome is unknown.
    pub returned: Option<Duration>,
    pub ret: Return,
}

impl Operation {
    /// Whether the client got an answer.
    pub fn is_known(&self) -> bool {
        self.returned.is_some() && self.ret != Return::Unknown
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self.returned.map_or_else(
            || "never".to_string(),
            |t| format!("{:.3}s", t.as_secs_f64()),
        );
        write!(f, "[{:.3}s .. {end}] ", self.invoked.as_secs_f64())?;
        match self.client {
            FINAL_READER => write!(f, "final reader ")?,
            OPERATOR => write!(f, "operator ")?,
            DEADLINE => {}
            c => write!(f, "client {c} ")?,
        }
        match &self.call {
            Call::Bid { bidder, amount } => write!(f, "bid {amount} as {bidder}")?,
            Call::Read => write!(f, "read")?,
            Call::Expire => return write!(f, "deadline of auction {} passes", self.auction),
        }
        match &self.ret {
            Return::Bid(Ok(())) => write!(f, " -> success"),
            Return::Bid(Err(r)) => write!(f, " -> fail ({r})"),
            Return::Read(v) => {
                let state = if v.open { "open" } else { "closed" };
                match &v.highest {
                    Some((who, amount)) => write!(
                        f,
                        " -> {state}, highest {amount} by {who}, {} bidders",
                        v.bidders
                    ),
                    None => write!(f, " -> {state}, no bids, {} bidders", v.bidders),
                }
            }
            Return::Expired => write!(f, " -> expired"),
            Return::Unknown => write!(f, " -> unknown"),
        }
    }
}
