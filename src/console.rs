//! The node's terminal: `status`, `start [SECS]`, `close`. The leader acts; a replica says who
//! leads, from the state it holds. Both show the mode and where the leader and the members serve
//! clients.

use std::io::Write;

use crate::auction::Op;
use crate::display::{describe_auction, describe_layout, describe_status};
use crate::input;
use crate::leader::{Reply, Request};
use crate::node::{Role, RoleCell};
use crate::pb::WireError;
use crate::replication::Member;
use crate::server::{Directory, node_status};
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

/// Runs one command against the node's current role and writes the answer to `out`. `status`
/// shows, besides the leader's state, the mode and where the leader and each member serve
/// clients, as `directory` finds them.
pub async fn execute(
    command: Command,
    role: &RoleCell,
    default_duration: AuctionLength,
    directory: &Directory,
    out: &mut impl Write,
) -> std::io::Result<()> {
    if command == Command::Help {
        return writeln!(out, "{HELP}");
    }
    // Invariant: no code panics while holding this lock, so it is never poisoned.
    let current = role.lock().expect("role lock poisoned").clone();
    let handle = match &current {
        Role::Leader(h) => h.clone(),
        Role::Replica { me, .. } => {
            let line = match node_status(&current, directory, true).await {
                Ok(Some(s)) => match Status::try_from(s) {
                    Ok(s) => replica_line(&s, me),
                    Err(e) => format!("error: this node's own status is malformed: {e}"),
                },
                Ok(None) | Err(_) => "this node is looking for the leader".to_string(),
            };
            return writeln!(out, "{line}");
        }
        Role::Starting => return writeln!(out, "this node is starting"),
    };
    let line: Result<String, WireError> = match command {
        Command::Status => match node_status(&current, directory, true).await {
            Ok(Some(s)) => Status::try_from(s).map(|s| describe_status(&s)),
            Ok(None) => Ok("this node is starting".to_string()),
            Err(e) => Ok(format!("error: {}", e.message())),
        },
        Command::Start(d) => decided(
            handle
                .call(Request::Change {
                    id: None,
                    op: Op::Start {
                        duration: d.unwrap_or(default_duration),
                    },
                })
                .await,
        ),
        Command::Close => decided(
            handle
                .call(Request::Change {
                    id: None,
                    op: Op::Close,
                })
                .await,
        ),
        Command::Help => unreachable!("answered above"),
    };
    match line {
        Ok(line) => writeln!(out, "{line}"),
        Err(e) => writeln!(out, "error: the leader's reply is malformed: {e}"),
    }
}

/// A replica's answer to any command: who leads, from the state it holds, and the layout.
fn replica_line(s: &Status, me: &Member) -> String {
    let what = if s.members.contains(me) {
        "replica"
    } else {
        "joining replica"
    };
    let digest = s.digest.unwrap_or(0);
    let layout = describe_layout(s)
        .map(|l| format!("; {l}"))
        .unwrap_or_default();
    format!(
        "this node is a {what}; node {} leads (epoch {}, version {}, digest {digest:016x}){layout}. \
         Type start/close on the leader's terminal, or use auction-client.",
        s.leader.id, s.epoch, s.version,
    )
}

/// The leader's answer to a start or close, as a client would read it.
fn decided(reply: Result<Reply, tonic::Status>) -> Result<String, WireError> {
    match reply {
        Ok(Reply::Decision(d, view)) => match d {
            Ok(()) => View::try_from(view).map(|v| format!("ok: {}", describe_auction(&v))),
            Err(r) => Ok(format!("refused: {r}")),
        },
        Ok(Reply::Status(s)) => Status::try_from(s).map(|s| describe_status(&s)),
        Ok(Reply::Result(view)) => View::try_from(view).map(|v| describe_auction(&v)),
        Err(e) => Ok(format!("error: {}", e.message())),
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
