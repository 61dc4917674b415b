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
use auction::types::{Amount, BidderId};

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

/// One auction client, with its own session; the product's client finds the leader and retries
/// by itself, within the budget.
pub(crate) struct AuctionBidder {
    client: Client,
    name: BidderId,
}

impl AuctionBidder {
    /// A client of the cluster at `server`, bidding as `name`. It connects at its first request.
    ///
    /// # Errors
    /// `name` is not a valid bidder name.
    pub(crate) fn new(server: SocketAddr, name: &str, patience: Patience) -> anyhow::Result<Self> {
        Ok(Self {
            client: Client::new(server, patience.budget),
            name: BidderId::new(name).with_context(|| format!("bidder name {name:?}"))?,
        })
    }
}

impl Bidder for AuctionBidder {
    async fn bid(&mut self, amount: u64) -> anyhow::Result<()> {
        self.client.bid(&self.name, Amount::new(amount)?).await?;
        Ok(())
    }

    async fn read(&mut self) -> anyhow::Result<()> {
        self.client.result().await?;
        Ok(())
    }
}
