//! The node's terminal: `status`, `start [SECS]`, `close`. The leader acts; a replica says who
//! leads.

use std::io::Write;

use crate::auction::Op;
use crate::digest;
use crate::display::{describe_auction, describe_status};
use crate::input;
use crate::leader::{Detail, Reply, Request};
use crate::node::{Role, RoleCell};
use crate::pb::WireError;
use crate::replica::Held;
use crate::types::AuctionLength;
use crate::view::{Status, View};

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
                    digest::of(s)
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
    // The leader's replies come as they go on the wire; they read as a client would read them.
    let line: Result<String, WireError> = match handle.call(request).await {
        Ok(Reply::Status(s)) => Status::try_from(s).map(|s| describe_status(&s)),
        Ok(Reply::Decision(d, view)) => match d {
            Ok(()) => View::try_from(view).map(|v| format!("ok: {}", describe_auction(&v))),
            Err(r) => Ok(format!("refused: {r}")),
        },
        Ok(Reply::Result(view)) => View::try_from(view).map(|v| describe_auction(&v)),
        Err(e) => Ok(format!("error: {}", e.message())),
    };
    match line {
        Ok(line) => writeln!(out, "{line}"),
        Err(e) => writeln!(out, "error: the leader's reply is malformed: {e}"),
    }
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
}
