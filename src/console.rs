//! The node's terminal: `status`, `start [SECS]`, `close`. The leader acts; a replica says who
//! leads.

use std::io::Write;

use crate::auction::Op;
use crate::input;
use crate::leader::{Detail, Reply, Request};
use crate::node::{Role, RoleCell};
use crate::pb;
use crate::replica::Held;
use crate::types::AuctionLength;

/// A command typed into a node's terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Status,
    /// `None` uses the node's `--duration`.
    Start(Option<AuctionLength>),
    Close,
    Help,
}

/// Reads one line; `Ok(None)` for a blank line.
///
/// # Errors
/// An unknown command or a bad duration, with a message for the person typing.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let mut words = line.split_whitespace();
    let Some(first) = words.next() else {
        return Ok(None);
    };
    let command = match first.to_ascii_lowercase().as_str() {
        "status" => Command::Status,
        "close" => Command::Close,
        "help" | "?" => Command::Help,
        // The same SECS as the client's `start SECS`.
        "start" => Command::Start(
            words
                .next()
                .map(input::parse_secs)
                .transpose()
                .map_err(|e| e.to_string())?,
        ),
        other => return Err(format!("unknown command {other:?}; type help")),
    };
    if words.next().is_some() {
        return Err(format!("too many words for {first:?}; type help"));
    }
    Ok(Some(command))
}

pub const HELP: &str = "commands: status | start [SECS] | close | help";

/// Runs one command against the node's current role and writes the answer to `out`.
pub async fn execute(
    command: Command,
    role: &RoleCell,
    default_duration: AuctionLength,
    out: &mut impl Write,
) -> std::io::Result<()> {
    if command == Command::Help {
        return writeln!(out, "{HELP}");
    }
    // Invariant: no code panics while holding this lock, so it is never poisoned.
    let current = role.lock().expect("role lock poisoned").clone();
    let handle = match current {
        Role::Leader(h) => h,
        Role::Replica { me, state } => {
            // Invariant: no code panics while holding this lock, so it is never poisoned.
            let line = match state.lock().expect("state lock poisoned").as_ref() {
                None => "this node is looking for the leader".to_string(),
                Some(Held { state: s, .. }) => format!(
                    "this node is a {}; node {} leads (epoch {}, version {}, digest {:016x}). \
                     Type start/close on the leader's terminal, or use auction-client.",
                    if s.has_member(&me) {
                        "replica"
                    } else {
                        "joining replica"
                    },
                    s.leader.id,
                    s.epoch,
                    s.version,
                    pb::digest(s)
                ),
            };
            return writeln!(out, "{line}");
        }
        Role::Starting => return writeln!(out, "this node is starting"),
    };
    let request = match command {
        Command::Status => Request::Status(Detail::WithDigest),
        Command::Start(d) => Request::Change {
            id: None,
            op: Op::Start {
                duration: d.unwrap_or(default_duration),
            },
        },
        Command::Close => Request::Change {
            id: None,
            op: Op::Close,
        },
        Command::Help => unreachable!("answered above"),
    };
    match handle.call(request).await {
        Ok(Reply::Status(s)) => writeln!(out, "{}", describe_status(&s)),
        Ok(Reply::Decision(d, view)) => match d {
            Ok(()) => writeln!(out, "ok: {}", describe_auction(&view)),
            Err(r) => writeln!(out, "refused: {r}"),
        },
        Ok(Reply::Result(view)) => writeln!(out, "{}", describe_auction(&view)),
        Err(e) => writeln!(out, "error: {}", e.message()),
    }
}

/// The auction in one line, for people.
pub fn describe_auction(a: &pb::AuctionView) -> String {
    if a.number == 0 {
        return "no auction has been started".into();
    }
    let leader = if a.highest_bidder.is_empty() {
        None
    } else {
        Some((a.highest_bidder.as_str(), a.highest_bid))
    };
    if a.open {
        let left = a.deadline_ms.saturating_sub(a.now_ms).div_ceil(1000);
        match leader {
            Some((who, amount)) => format!(
                "auction {} is open: highest bid {amount} by {who}; closes in {left} s",
                a.number
            ),
            None => format!(
                "auction {} is open: no bids yet; closes in {left} s",
                a.number
            ),
        }
    } else {
        match leader {
            Some((who, amount)) => {
                format!("auction {} is closed: {who} won with {amount}", a.number)
            }
            None => format!("auction {} is closed without bids", a.number),
        }
    }
}

/// The cluster in one line, for people; with the state digest when it has one.
pub fn describe_status(s: &pb::StatusReply) -> String {
    let leader = s.leader.as_ref().map_or(0, |l| l.id);
    let queue: Vec<String> = s
        .members
        .iter()
        .filter(|m| m.id != leader)
        .map(|m| m.id.to_string())
        .collect();
    let auction = s.auction.as_ref().map(describe_auction).unwrap_or_default();
    // 0 means none: only a node's own terminal computes the digest.
    let digest = if s.digest == 0 {
        String::new()
    } else {
        format!(", digest {:016x}", s.digest)
    };
    format!(
        "leader {leader}, next in line [{}], epoch {}, version {}{digest}; {auction}",
        queue.join(", "),
        s.epoch,
        s.version,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_mistakes_say_why() {
        assert_eq!(parse("status"), Ok(Some(Command::Status)));
        assert_eq!(parse("  "), Ok(None));
        assert_eq!(parse("start"), Ok(Some(Command::Start(None))));
        assert_eq!(
            parse("start 30"),
            Ok(Some(Command::Start(Some(
                AuctionLength::from_secs(30).unwrap()
            ))))
        );
        assert_eq!(parse("CLOSE"), Ok(Some(Command::Close)));
        assert!(parse("start -1").unwrap_err().contains("whole number"));
        assert!(parse("start 0").unwrap_err().contains("duration"));
        assert!(parse("launch").unwrap_err().contains("unknown command"));
        assert!(parse("close now").unwrap_err().contains("too many"));
    }

    #[test]
    fn auctions_read_well() {
        let mut a = pb::AuctionView {
            number: 2,
            open: true,
            deadline_ms: 10_500,
            highest_bid: 0,
            highest_bidder: String::new(),
            bidders: 0,
            now_ms: 1_000,
        };
        assert_eq!(
            describe_auction(&a),
            "auction 2 is open: no bids yet; closes in 10 s"
        );
        a.highest_bid = 7;
        a.highest_bidder = "ann".into();
        a.open = false;
        assert_eq!(describe_auction(&a), "auction 2 is closed: ann won with 7");
    }
}
