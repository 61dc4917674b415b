//! `auction-client`: bid and read results, interactively (as in the seed) or one command at a
//! time for scripts.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use auction::auth::AuthDir;
use auction::client::{Client, ClientError, DEFAULT_RETRY_BUDGET, Outcome};
use auction::console::{describe_auction, describe_status};
use auction::input::{self, Line};
use auction::pb::{AuctionView, StatusReply};
use auction::types::{Amount, BidderId, Duration as AuctionDuration};
use clap::{Parser, Subcommand};
use serde_json::json;

/// A client of the replicated auction. Without a command it reads lines from stdin: an integer
/// bids, any other line asks for the result.
///
/// A bidder's first bid in an open auction registers its name with a token that this client
/// keeps in AUTH_DIR/bidders/NAME.token; bids in that name need that token. `start` and `close`
/// need the operator token (AUTH_DIR/operator.token, written by the nodes, or
/// $AUCTION_OPERATOR_TOKEN).
///
/// Exit codes: 0 success, 1 bid (or start/close) refused, 2 exception (no leader answered within
/// the retry budget) or bad usage.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The bidder's name (letters, digits, '-', '_', '.'); needed to bid.
    #[arg(long)]
    id: Option<String>,
    /// The cluster's client address.
    #[arg(long, default_value = "127.0.0.1:5000")]
    server: String,
    /// How long to keep retrying (across failovers) before reporting an exception, in ms: at most
    /// a minute, far below the 10 minutes a node remembers a session for exactly-once.
    #[arg(long, default_value_t = DEFAULT_RETRY_BUDGET.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    retry_ms: u64,
    /// Where tokens are kept. Default: ~/.auction.
    #[arg(long, env = "AUCTION_AUTH_DIR", global = true)]
    auth_dir: Option<PathBuf>,
    /// Dial over TLS, trusting the nodes' certificate in AUTH_DIR/tls.pem.
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
    /// Who leads, the members in succession order, versions.
    Status,
    /// Start the next auction.
    Start {
        /// Length in seconds; the leader's --duration if omitted.
        #[arg(long)]
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
    let args = Args::parse();
    match tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(args)))
    {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXCEPTION)
        }
    }
}

/// The bidder named by `--id`, with its token set on `client`.
fn bidder(id: Option<&str>, auth: &AuthDir, client: &mut Client) -> anyhow::Result<BidderId> {
    let id = id.ok_or_else(|| anyhow!("bidding needs --id NAME"))?;
    let bidder = BidderId::new(id).context("--id")?;
    client.set_token(bidder.clone(), auth.bidder_token(&bidder)?);
    Ok(bidder)
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let server = auction::client::resolve(&args.server).context("--server")?;
    let mut client = Client::new(server, Duration::from_millis(args.retry_ms));
    let auth = AuthDir::new(match &args.auth_dir {
        Some(dir) => dir.clone(),
        None => AuthDir::default_path()?,
    });
    if args.tls {
        client.set_tls(auth.existing_tls()?);
    }
    if matches!(args.command, Some(Command::Start { .. } | Command::Close)) {
        client.set_operator_token(auth.existing_operator_token()?);
    }
    let json = args.json;
    let code = match args.command {
        None => {
            let bidder = match args.id.as_deref() {
                Some(id) => Some(bidder(Some(id), &auth, &mut client)?),
                None => None,
            };
            return interactive(&mut client, bidder, json).await;
        }
        Some(Command::Bid { amount }) => {
            let bidder = bidder(args.id.as_deref(), &auth, &mut client)?;
            let amount: Amount = amount.parse().context("amount")?;
            let r = client.bid(&bidder, amount).await;
            print_decision("bid", &r, json)
        }
        Some(Command::Result) => print_result(&client.result().await, json),
        Some(Command::Status) => print_status(&client.status().await, json),
        Some(Command::Start { duration }) => {
            let duration = duration
                .map(AuctionDuration::from_secs)
                .transpose()
                .context("--duration")?;
            let r = client.start(duration).await;
            print_decision("start", &r, json)
        }
        Some(Command::Close) => print_decision("close", &client.close().await, json),
    };
    Ok(ExitCode::from(code))
}

async fn interactive(
    client: &mut Client,
    bidder: Option<BidderId>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if !json {
        println!(
            "connected to {} as {}; type an amount to bid, anything else for the result, quit to leave",
            client_label(client),
            bidder
                .as_ref()
                .map_or("an observer (no --id)", BidderId::as_str)
        );
    }
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        let read = tokio::task::block_in_place(|| stdin.lock().read_line(&mut line))?;
        if read == 0 {
            return Ok(ExitCode::SUCCESS);
        }
        match input::parse_line(&line) {
            Ok(Line::Bid(amount)) => match &bidder {
                Some(b) => {
                    let r = client.bid(b, amount).await;
                    print_decision("bid", &r, json);
                }
                None => eprintln!("bidding needs --id NAME"),
            },
            Ok(Line::Result) => {
                print_result(&client.result().await, json);
            }
            Ok(Line::Help) => println!(
                "an integer bids that amount; any other line shows the result; quit leaves"
            ),
            Ok(Line::Quit) => return Ok(ExitCode::SUCCESS),
            Err(e) => eprintln!("not sent: {e}"),
        }
        std::io::stdout().flush()?;
    }
}

fn client_label(client: &Client) -> String {
    format!("session {:016x}", client.session())
}

fn print_decision(what: &str, r: &Result<Outcome, ClientError>, json: bool) -> u8 {
    let (outcome, reason, auction, code) = match r {
        Ok(o) => match &o.decision {
            Ok(()) => ("success", String::new(), Some(&o.auction), 0),
            Err(refusal) => ("fail", refusal.to_string(), Some(&o.auction), REFUSED),
        },
        // Refused before it was decided: not applied, so not an exception.
        Err(ClientError::Invalid(why)) => ("fail", why.clone(), None, REFUSED),
        Err(e) => ("exception", e.to_string(), None, EXCEPTION),
    };
    if json {
        let mut v = json!({ "outcome": outcome, "reason": reason });
        if let Some(a) = auction {
            v["auction"] = json!(a.number);
            v["highest_bid"] = json!(nonzero(a.highest_bid));
            v["highest_bidder"] = json!(nonempty(&a.highest_bidder));
            v["open"] = json!(a.open);
        }
        println!("{v}");
    } else {
        match auction {
            Some(a) if reason.is_empty() => {
                println!("{what}: {outcome}; {}", describe_auction(a));
            }
            _ => println!("{what}: {outcome} ({reason})"),
        }
    }
    code
}

fn print_result(r: &Result<AuctionView, ClientError>, json: bool) -> u8 {
    match r {
        Ok(a) => {
            if json {
                let closed = !a.open;
                let winner = nonempty(&a.highest_bidder).filter(|_| closed);
                let v = json!({
                    "state": if a.open { "open" } else { "closed" },
                    "auction": a.number,
                    "highest_bid": nonzero(a.highest_bid),
                    "highest_bidder": nonempty(&a.highest_bidder),
                    "winner": winner,
                    "winning_bid": nonzero(a.highest_bid).filter(|_| closed),
                    "bidders": a.bidders,
                    "deadline_ms": a.deadline_ms,
                });
                println!("{v}");
            } else {
                println!("result: {}", describe_auction(a));
            }
            0
        }
        Err(e) => exception(e, json),
    }
}

fn print_status(r: &Result<StatusReply, ClientError>, json: bool) -> u8 {
    match r {
        Ok(s) => {
            if json {
                let v = json!({
                    "leader": s.leader.as_ref().map(|l| l.id),
                    "leader_pid": s.leader.as_ref().map(|l| l.pid),
                    "members": s.members.iter().map(|m| m.id).collect::<Vec<_>>(),
                    "epoch": s.epoch,
                    "version": s.version,
                });
                println!("{v}");
            } else {
                println!("status: {}", describe_status(s));
            }
            0
        }
        Err(e) => exception(e, json),
    }
}

fn exception(e: &ClientError, json: bool) -> u8 {
    if json {
        println!(
            "{}",
            json!({ "outcome": "exception", "reason": e.to_string() })
        );
    } else {
        println!("exception: {e}");
    }
    EXCEPTION
}

fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}
