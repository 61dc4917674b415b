//! `auction-client`: bid and read results, interactively (as in the original hand-in) or one command at a
//! time for scripts.

use std::fmt::Display;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use auction::auth::{AuthDir, AuthError};
use auction::client::{Client, ClientError, DEFAULT_RETRY_BUDGET, Outcome};
use auction::display::{describe_auction, describe_status};
use auction::etcd::access::EtcdArgs;
use auction::etcd::registry::Registry;
use auction::input::{self, Line, LineError, LineRead};
use auction::tls::{self, ClientTls};
use auction::types::{Amount, AuctionLength, BidderId};
use auction::view::{Mode, Status, View};
use clap::{Parser, Subcommand};
use serde_json::json;

/// A client of the replicated auction. Without a command it reads lines from stdin: an integer
/// bids; `status`, `start [SECS]`, `close`, `help` and `quit` do what they say; any other line
/// asks for the result. A line that is not UTF-8 text is explained and not sent.
///
/// A bidder's first bid in an open auction registers its name with a token that this client
/// keeps in AUTH_DIR/bidders/NAME.token; bids in that name need that token. `start` and `close`
/// need the operator token (AUTH_DIR/operator.token, written by the nodes, or
/// $AUCTION_OPERATOR_TOKEN).
///
/// Exit codes: 0 success, 1 bid (or start/close) refused, 2 exception (no leader answered within
/// the retry budget) or bad usage; with --json, bad usage also prints
/// {"outcome":"error","reason":...}. Without a command: 0, or 2 when requests were sent and not
/// one was answered (the first contact counts). A closed stdout (`| head -1`) ends the client
/// with the status of what it did so far.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The bidder's name (letters, digits, '-', '_', '.'); needed to bid.
    #[arg(long)]
    id: Option<String>,
    /// The cluster's client address, HOST:PORT, or several, comma-separated (the nodes of a
    /// cluster across hosts: any node's address will do, since a node that does not lead names
    /// the leader, and the client sends the request there); each address given or resolved is
    /// tried in turn.
    #[arg(long, default_value = "127.0.0.1:5000", conflicts_with = "etcd")]
    server: String,
    /// Instead of --server, --etcd: find the nodes of a cluster across hosts through etcd. The
    /// leader's and the members' client addresses are read from the cluster's records there
    /// before each connection. The other etcd options are the nodes' own.
    #[command(flatten)]
    etcd: EtcdArgs,
    /// How long to keep retrying (across failovers) before reporting an exception, in ms: at most
    /// a minute, far below the 10 minutes a node remembers a session for exactly-once.
    #[arg(long, default_value_t = DEFAULT_RETRY_BUDGET.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    retry_ms: u64,
    /// Where tokens are kept. Default: ~/.auction.
    #[arg(long, env = "AUCTION_AUTH_DIR", global = true)]
    auth_dir: Option<PathBuf>,
    /// Dial over TLS, trusting the nodes' certificate in AUTH_DIR/tls.pem (read up to the
    /// nodes' private key after it, which the client never reads).
    #[arg(long, global = true)]
    tls: bool,
    /// Print one JSON object per answer.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Place one bid.
    Bid {
        /// A whole number from 1 to 9007199254740991.
        #[arg(allow_hyphen_values = true)]
        amount: String,
    },
    /// The highest bid while open; the winner once closed.
    Result,
    /// The mode, who leads and where, the members in succession order with their addresses,
    /// the epoch and the version, as the node asked sees them (across hosts, a node that does
    /// not lead answers from the state it holds).
    Status,
    /// Start the next auction: `start 60`, as in a node's terminal, or `start --duration 60`.
    Start {
        /// Length in seconds; the leader's --duration if omitted.
        #[arg(value_name = "SECS", conflicts_with = "duration")]
        secs: Option<u64>,
        /// The same as SECS.
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
    },
    /// Close the open auction now.
    Close,
}

/// Exit code for a refused bid, start or close.
const REFUSED: u8 = 1;
/// Exit code for an exception or bad usage.
const EXCEPTION: u8 = 2;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => return usage_error(&e),
    };
    let json = args.json;
    match tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(args)))
    {
        Ok(code) => code,
        Err(e) => {
            fail(format_args!("{e:#}"), json);
            ExitCode::from(EXCEPTION)
        }
    }
}

/// A command line clap refused: its message on stderr and, with `--json`, an error object on
/// stdout. `--help` and `--version` print and succeed.
fn usage_error(e: &clap::Error) -> ExitCode {
    if e.exit_code() == 0 {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    if json {
        // The message up to the usage and tips, on one line.
        let text = e.render().to_string();
        let message: Vec<&str> = text
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .map(str::trim)
            .collect();
        let message = message.join(" ");
        let _ = emit(error_object(
            message.strip_prefix("error: ").unwrap_or(&message),
        ));
    }
    let _ = e.print();
    ExitCode::from(EXCEPTION)
}

/// Reports an error that ends the client: on stderr and, with `--json`, as an error object on
/// stdout.
fn fail(why: impl Display, json: bool) {
    warn(format_args!("error: {why}"));
    if json {
        let _ = emit(error_object(why));
    }
}

/// The `--json` answer when nothing was sent: bad usage, or a local problem.
fn error_object(reason: impl Display) -> serde_json::Value {
    json!({ "outcome": "error", "reason": reason.to_string() })
}

/// Writes one line to stdout, at once, for whoever reads it line by line.
fn emit(line: impl Display) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// Writes one line to stderr; if stderr is gone there is nobody to tell.
fn warn(line: impl Display) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// Whoever read stdout has gone (`auction-client ... | head -1`).
#[derive(Debug)]
struct StdoutClosed;

impl Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout is closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// As [`emit`], with a closed stdout told apart: like any Unix tool, the client then ends
/// quietly, and what it did keeps its exit status.
fn say(line: impl Display) -> anyhow::Result<()> {
    emit(line).map_err(|e| {
        if e.kind() == io::ErrorKind::BrokenPipe {
            anyhow::Error::new(StdoutClosed)
        } else {
            anyhow::Error::new(e).context("cannot write to stdout")
        }
    })
}

/// The bidder named by `--id`, with its token set on `client`.
fn bidder(id: Option<&str>, auth: &AuthDir, client: &mut Client) -> anyhow::Result<BidderId> {
    let id = id.ok_or_else(|| anyhow!("bidding needs --id NAME"))?;
    let bidder = BidderId::new(id).context("--id")?;
    client.set_token(bidder.clone(), auth.bidder_token(&bidder)?);
    Ok(bidder)
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let budget = Duration::from_millis(args.retry_ms);
    let (mut client, server) = if let Some(etcd) = args.etcd.access().context("--etcd")? {
        let cluster = &args.etcd.cluster;
        let registry = Registry::connect(&etcd, cluster, None).context("--etcd")?;
        let at = format!(
            "the cluster {cluster:?} in etcd {}",
            etcd.endpoints.join(",")
        );
        (Client::with_etcd(registry, budget), at)
    } else {
        let servers = auction::client::resolve_all(&args.server).context("--server")?;
        (Client::with_addresses(servers, budget), args.server.clone())
    };
    let auth_dir = match &args.auth_dir {
        Some(dir) => dir.clone(),
        None => AuthDir::default_path()?,
    };
    if args.tls {
        // Only the certificate: the nodes' private key after it in the file is never read.
        client.set_tls(ClientTls::load(&auth_dir.join(tls::PEM_FILE))?);
    }
    let auth = AuthDir::new(auth_dir);
    let operator = matches!(args.command, Some(Command::Start { .. } | Command::Close));
    if operator {
        client.set_operator_token(auth.existing_operator_token()?);
    }
    let json = args.json;
    let (code, answer) = match args.command {
        None => {
            let bidder = match args.id.as_deref() {
                Some(id) => Some(bidder(Some(id), &auth, &mut client)?),
                None => None,
            };
            let session = Session {
                client,
                bidder,
                auth,
                json,
                operator,
                sent: 0,
                answered: 0,
            };
            return session.run(&server).await;
        }
        Some(Command::Bid { amount }) => {
            let bidder = bidder(args.id.as_deref(), &auth, &mut client)?;
            // The message names the amount.
            let amount: Amount = amount.parse()?;
            decision("bid", &client.bid(&bidder, amount).await, json)
        }
        Some(Command::Result) => result(&client.result().await, json),
        Some(Command::Status) => status(&client.node_status().await, json),
        Some(Command::Start { secs, duration }) => {
            let duration = secs
                .or(duration)
                .map(AuctionLength::from_secs)
                .transpose()?;
            decision("start", &client.start(duration).await, json)
        }
        Some(Command::Close) => decision("close", &client.close().await, json),
    };
    match say(answer) {
        Err(e) if !e.is::<StdoutClosed>() => Err(e),
        _ => Ok(ExitCode::from(code)),
    }
}

const HELP: &str = "a whole number bids that amount (with --id NAME); status shows who leads; \
                    start [SECS] opens the next auction and close ends this one (both need the \
                    operator token); quit leaves; any other line shows the result";

/// The interactive client: one request per line of stdin, until its end or `quit`.
struct Session {
    client: Client,
    bidder: Option<BidderId>,
    auth: AuthDir,
    json: bool,
    /// Whether the client holds the operator token.
    operator: bool,
    /// Requests sent (the first contact included), and how many of them a leader answered.
    sent: u32,
    answered: u32,
}

impl Session {
    async fn run(mut self, server: &str) -> anyhow::Result<ExitCode> {
        match self.talk(server).await {
            Err(e) if !e.is::<StdoutClosed>() => Err(e),
            // A session in which no request was answered did not work.
            _ if self.sent > 0 && self.answered == 0 => Ok(ExitCode::from(EXCEPTION)),
            _ => Ok(ExitCode::SUCCESS),
        }
    }

    async fn talk(&mut self, server: &str) -> anyhow::Result<()> {
        if !self.json {
            let greeting = self.greeting(server).await?;
            say(greeting)?;
        }
        let stdin = io::stdin();
        let mut bytes = Vec::new();
        loop {
            let read =
                tokio::task::block_in_place(|| input::read_line(&mut stdin.lock(), &mut bytes))
                    .context("cannot read stdin")?;
            let line = match read {
                LineRead::End => return Ok(()),
                LineRead::TooLong => Err(LineError::TooLong),
                LineRead::Line => input::parse_bytes(&bytes),
            };
            match line {
                Ok(Line::Quit) => return Ok(()),
                Ok(Line::Help) if self.json => warn(HELP),
                Ok(Line::Help) => say(HELP)?,
                Ok(line) => self.request(line).await?,
                Err(e) => self.not_sent(e)?,
            }
        }
    }

    /// The first line: said once a leader answered, or once none did within the retry budget.
    async fn greeting(&mut self, server: &str) -> anyhow::Result<String> {
        let (who, invite) = match &self.bidder {
            Some(b) => (
                format!("as {b}"),
                "type an amount to bid, anything else for the result, help for more, quit to leave",
            ),
            None => (
                "as an observer (no --id, so no bids)".to_string(),
                "press Enter for the result, help for more, quit to leave",
            ),
        };
        self.sent += 1;
        match self.client.status().await {
            Ok(s) => {
                self.answered += 1;
                let at = self
                    .client
                    .server()
                    .map_or_else(|| server.to_string(), |a| a.to_string());
                Ok(format!(
                    "connected to {at} (node {} leads) {who}; {invite}",
                    s.leader.id
                ))
            }
            Err(e @ ClientError::NotAuctionServer { .. }) => Err(e.into()),
            Err(e) => Ok(format!(
                "not connected to {server} ({e}); each request tries again; {who}, {invite}"
            )),
        }
    }

    async fn request(&mut self, line: Line) -> anyhow::Result<()> {
        let json = self.json;
        let (code, answer) = match line {
            Line::Bid(amount) => {
                let Some(bidder) = &self.bidder else {
                    return self.not_sent("bidding needs --id NAME");
                };
                decision("bid", &self.client.bid(bidder, amount).await, json)
            }
            Line::Result => result(&self.client.result().await, json),
            Line::Status => status(&self.client.node_status().await, json),
            Line::Start(duration) => {
                if let Err(e) = self.operator() {
                    return self.not_sent(e);
                }
                decision("start", &self.client.start(duration).await, json)
            }
            Line::Close => {
                if let Err(e) = self.operator() {
                    return self.not_sent(e);
                }
                decision("close", &self.client.close().await, json)
            }
            Line::Help | Line::Quit => return Ok(()),
        };
        self.sent += 1;
        if code != EXCEPTION {
            self.answered += 1;
        }
        say(answer)
    }

    /// Loads the operator token at the first start or close.
    fn operator(&mut self) -> Result<(), AuthError> {
        if !self.operator {
            self.client
                .set_operator_token(self.auth.existing_operator_token()?);
            self.operator = true;
        }
        Ok(())
    }

    /// Explains a line that is not sent; with `--json`, also as an error object on stdout, so
    /// every line has its answer there.
    fn not_sent(&self, why: impl Display) -> anyhow::Result<()> {
        warn(format_args!("not sent: {why}"));
        if self.json {
            say(error_object(format_args!("not sent: {why}")))?;
        }
        Ok(())
    }
}

/// A decision's exit code and answer line.
fn decision(what: &str, r: &Result<Outcome, ClientError>, json: bool) -> (u8, String) {
    let (outcome, reason, auction, code) = match r {
        Ok(o) => match &o.decision {
            Ok(()) => ("success", String::new(), Some(&o.auction), 0),
            Err(refusal) => ("fail", refusal.to_string(), Some(&o.auction), REFUSED),
        },
        // Refused before it was decided: not applied, so not an exception.
        Err(ClientError::Invalid(why)) => ("fail", why.clone(), None, REFUSED),
        Err(e) => ("exception", e.to_string(), None, EXCEPTION),
    };
    let answer = if json {
        let mut v = json!({ "outcome": outcome, "reason": reason });
        if let Some(a) = auction {
            v["auction"] = json!(a.number);
            v["highest_bid"] = json!(a.highest_amount());
            v["highest_bidder"] = json!(a.highest_bidder());
            v["open"] = json!(a.open);
        }
        v.to_string()
    } else {
        match auction {
            Some(a) if reason.is_empty() => format!("{what}: {outcome}; {}", describe_auction(a)),
            _ => format!("{what}: {outcome} ({reason})"),
        }
    };
    (code, answer)
}

fn result(r: &Result<View, ClientError>, json: bool) -> (u8, String) {
    let a = match r {
        Ok(a) => a,
        Err(e) => return exception(e, json),
    };
    if !json {
        return (0, format!("result: {}", describe_auction(a)));
    }
    let (highest_bid, highest_bidder) = (a.highest_amount(), a.highest_bidder());
    let closed = !a.open;
    let v = json!({
        "state": if a.open { "open" } else { "closed" },
        "auction": a.number,
        "highest_bid": highest_bid,
        "highest_bidder": highest_bidder,
        "winner": highest_bidder.filter(|_| closed),
        "winning_bid": highest_bid.filter(|_| closed),
        "bidders": a.bidders,
        "deadline_ms": a.deadline_ms,
    });
    (0, v.to_string())
}

fn status(r: &Result<Status, ClientError>, json: bool) -> (u8, String) {
    let s = match r {
        Ok(s) => s,
        Err(e) => return exception(e, json),
    };
    if !json {
        return (0, format!("status: {}", describe_status(s)));
    }
    let v = json!({
        "mode": s.mode.map(Mode::name),
        "leader": s.leader.id.0,
        "leader_pid": s.leader.pid,
        "leader_address": s.leader_addr.map(|a| a.to_string()),
        "members": s.members.iter().map(|m| m.id.0).collect::<Vec<_>>(),
        "member_addresses": s
            .members_with_addrs()
            .map(|(_, a)| a.map(|a| a.to_string()))
            .collect::<Vec<_>>(),
        "epoch": s.epoch,
        "version": s.version,
        "answered_by": s.answered_by.map(|m| m.id.0),
        "answered_by_leader": s.from_leader(),
    });
    (0, v.to_string())
}

fn exception(e: &ClientError, json: bool) -> (u8, String) {
    let answer = if json {
        json!({ "outcome": "exception", "reason": e.to_string() }).to_string()
    } else {
        format!("exception: {e}")
    };
    (EXCEPTION, answer)
}
