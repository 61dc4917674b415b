//! The one client abstraction of the benchmarks: [`Bidder`], one implementation per system
//! (the auction here; the echo service, Redis and etcd in their modules), driven alike by the
//! load runs and the failover runs.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use auction::backoff::Backoff;
use auction::client::{Client, FIRST_BACKOFF, MAX_BACKOFF};
use auction::types::{Amount, BidderId, Token};

/// One client of a system under measurement. It finds its server, reconnects after an error,
/// and tries each request again within its [`Patience`], so a caller only counts answers.
pub(crate) trait Bidder: Send + 'static {
    /// Bids `amount` on the one auction.
    ///
    /// # Errors
    /// No answer (accepted or refused: both are answers) within the client's patience.
    fn bid(&mut self, amount: u64) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Reads the auction's highest bid (the echo service echoes instead).
    ///
    /// # Errors
    /// No answer within the client's patience.
    fn read(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// How long a client tries one request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Patience {
    /// The longest one attempt may take before it is given up, and the client reconnects or
    /// moves to another server.
    pub(crate) attempt: Duration,
    /// The longest all attempts at one request may take together.
    pub(crate) budget: Duration,
}

impl Patience {
    /// One attempt may take the whole budget: for a server that is not expected to fail.
    pub(crate) fn within(budget: Duration) -> Self {
        Self {
            attempt: budget,
            budget,
        }
    }
}

/// The attempts at one request within a budget: between them the product's backoff, as long
/// as the auction's own client's pauses (without their jitter), until the next pause would end
/// past the budget.
pub(crate) struct Retries {
    backoff: Backoff,
    deadline: Instant,
}

impl Retries {
    pub(crate) fn new(budget: Duration) -> Self {
        Self {
            backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
            deadline: Instant::now() + budget,
        }
    }

    /// Sleeps before the next attempt; `false`, without sleeping, once the budget is spent.
    pub(crate) async fn wait(&mut self) -> bool {
        if Instant::now() + self.backoff.peek() >= self.deadline {
            return false;
        }
        self.backoff.sleep().await;
        true
    }
}

/// One auction client, with its own session; the product's client finds the leader among its
/// addresses and retries by itself, within the budget.
///
/// An attempt that takes longer than [`Patience::attempt`] (when that is shorter than the
/// budget) is given up, as a client whose request timed out would give it up: the bid counts as
/// not acknowledged, and the next one goes out on a new session. A leader cut off by a
/// partition refuses nothing and answers nothing, and the product's client dials its
/// addresses in turn, giving the last one all the time left; so the address that answered the
/// session and then fell silent becomes a suspect. Sessions then alternate: one without the
/// suspect (it polls the other addresses, with the client's backoff, until one leads), then
/// one with it last (in case it leads again), and so on until a session is answered. Each
/// session after a silent one gets a random part of the attempt time, from half to all of it,
/// so bidders cut off at the same moment do not all switch at the same moments. The bidder
/// keeps its token across sessions, so its name stays its own.
pub(crate) struct AuctionBidder {
    client: Client,
    /// Every address a node may serve clients on.
    servers: Vec<SocketAddr>,
    /// The address that answered the current session, if any.
    answered: Option<SocketAddr>,
    /// The address that answered a session and then fell silent.
    suspect: Option<SocketAddr>,
    /// Whether the current session leaves the suspect out.
    excluding: bool,
    /// The current session's attempt time.
    attempt: Duration,
    /// State of the jitter's random numbers.
    seed: u64,
    name: BidderId,
    token: Token,
    patience: Patience,
}

impl AuctionBidder {
    /// A client of the cluster at `servers` (one address on one host; every node's client
    /// address on several), bidding as `name`. It connects at its first request.
    ///
    /// # Errors
    /// `name` is not a valid bidder name, `servers` is empty, or the OS has no randomness for
    /// the bidder's token.
    pub(crate) fn new(
        servers: &[SocketAddr],
        name: &str,
        patience: Patience,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!servers.is_empty(), "no server address to bid at");
        let name = BidderId::new(name).with_context(|| format!("bidder name {name:?}"))?;
        let token = auction::host::random_token().context("a bidder token")?;
        let mut client = Client::with_addresses(servers.to_vec(), patience.budget);
        client.set_token(name.clone(), token.clone());
        Ok(Self {
            // The session id is random: a seed of the bidder's own.
            seed: client.session() | 1,
            client,
            servers: servers.to_vec(),
            answered: None,
            suspect: None,
            excluding: false,
            attempt: patience.attempt,
            name,
            token,
            patience,
        })
    }

    /// Gives up the session whose attempt took too long, for a new one (see the type's
    /// documentation).
    fn give_up(&mut self) {
        if let Some(silent) = self.answered.take() {
            self.suspect = Some(silent);
            self.excluding = true;
        } else {
            self.excluding = !self.excluding;
        }
        let servers = session_addresses(&self.servers, self.suspect, self.excluding);
        self.client = Client::with_addresses(servers, self.patience.budget);
        self.client.set_token(self.name.clone(), self.token.clone());
        // xorshift64: a number in [0, 1) for the jitter.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let fraction = (self.seed >> 11) as f64 / (1u64 << 53) as f64;
        self.attempt = self.patience.attempt.mul_f64(0.5 + fraction / 2.0);
    }
}

/// The addresses a new session dials, in order: `servers` without `suspect`, then the suspect
/// last unless `excluding` it (it stays when it is the only address).
fn session_addresses(
    servers: &[SocketAddr],
    suspect: Option<SocketAddr>,
    excluding: bool,
) -> Vec<SocketAddr> {
    let mut next: Vec<SocketAddr> = (servers.iter().copied())
        .filter(|a| Some(*a) != suspect)
        .collect();
    if let Some(suspect) = suspect
        && (!excluding || next.is_empty())
    {
        next.push(suspect);
    }
    next
}

impl Bidder for AuctionBidder {
    async fn bid(&mut self, amount: u64) -> anyhow::Result<()> {
        let amount = Amount::new(amount)?;
        if self.patience.attempt >= self.patience.budget {
            self.client.bid(&self.name, amount).await?;
            return Ok(());
        }
        let attempt = self.attempt;
        match tokio::time::timeout(attempt, self.client.bid(&self.name, amount)).await {
            Ok(outcome) => {
                outcome?;
                // The address dialled first is the one that connected.
                self.answered = self.client.server();
                Ok(())
            }
            Err(_) => {
                let silent = self.answered;
                self.give_up();
                anyhow::bail!(
                    "no answer within {attempt:?} (last answered at {silent:?}); a new session \
                     takes over"
                )
            }
        }
    }

    async fn read(&mut self) -> anyhow::Result<()> {
        self.client.result().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 5000))
    }

    #[test]
    fn a_session_after_silence_leaves_the_suspect_out_or_dials_it_last() {
        let all = [addr(31), addr(32), addr(33)];
        assert_eq!(session_addresses(&all, None, true), all);
        assert_eq!(
            session_addresses(&all, Some(addr(31)), true),
            [addr(32), addr(33)]
        );
        assert_eq!(
            session_addresses(&all, Some(addr(32)), false),
            [addr(31), addr(33), addr(32)]
        );
        // One address: it is dialled, suspect or not.
        assert_eq!(
            session_addresses(&[addr(1)], Some(addr(1)), true),
            [addr(1)]
        );
    }

    #[tokio::test]
    async fn sessions_alternate_without_and_with_the_address_that_fell_silent() {
        let all = [addr(31), addr(32), addr(33)];
        let patience = Patience {
            attempt: Duration::from_millis(500),
            budget: Duration::from_secs(30),
        };
        let mut bidder = AuctionBidder::new(&all, "ann", patience).unwrap();
        // Answered at .31, then silent: the next session leaves it out.
        bidder.answered = Some(addr(31));
        bidder.give_up();
        assert_eq!(bidder.suspect, Some(addr(31)));
        assert!(bidder.excluding);
        assert_eq!(bidder.client.server(), Some(addr(32)));
        // Nothing answered that one: the next dials every address, the suspect last.
        bidder.give_up();
        assert!(!bidder.excluding);
        assert_eq!(bidder.client.server(), Some(addr(32)));
        // Nothing answered again: without the suspect once more.
        bidder.give_up();
        assert!(bidder.excluding);
        // Each session after a silent one waits half to all of the attempt time.
        assert!(bidder.attempt >= patience.attempt / 2 && bidder.attempt <= patience.attempt);
    }
}
