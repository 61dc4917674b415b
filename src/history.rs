//! A history of client operations as a fault run saw them: when each was invoked, when it
//! returned and with what, or that its outcome is unknown (it timed out, ended in an exception,
//! or its client was killed mid-request), in which case it may or may not take effect, at any
//! point after its invocation.

use std::fmt;
use std::time::Duration;

use crate::auction::Decision;
use crate::types::{Amount, BidderId};

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Bid { bidder: BidderId, amount: Amount },
    Read,
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
    /// No outcome: the operation may have taken effect or not.
    Unknown,
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// The client process (a killed client's successor gets a new number).
    pub client: u32,
    /// The auction the operation is about; operations on different auctions are independent.
    pub auction: u64,
    pub call: Call,
    /// Since the start of the run, on a monotonic clock.
    pub invoked: Duration,
    /// `None` when the outcome is unknown.
    pub returned: Option<Duration>,
    pub ret: Return,
}

impl Op {
    /// Whether the client got an answer.
    pub fn is_known(&self) -> bool {
        self.returned.is_some() && self.ret != Return::Unknown
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self.returned.map_or_else(
            || "never".to_string(),
            |t| format!("{:.3}s", t.as_secs_f64()),
        );
        write!(
            f,
            "[{:.3}s .. {end}] client {} ",
            self.invoked.as_secs_f64(),
            self.client
        )?;
        match &self.call {
            Call::Bid { bidder, amount } => write!(f, "bid {amount} as {bidder}")?,
            Call::Read => write!(f, "read")?,
        }
        match &self.ret {
            Return::Bid(Ok(())) => write!(f, " -> success"),
            Return::Bid(Err(r)) => write!(f, " -> fail ({r})"),
            Return::Read(v) => match &v.highest {
                Some((who, amount)) => {
                    write!(f, " -> highest {amount} by {who}, {} bidders", v.bidders)
                }
                None => write!(f, " -> no bids, {} bidders", v.bidders),
            },
            Return::Unknown => write!(f, " -> unknown"),
        }
    }
}
