//! etcd: the bid and its client, for load runs against one member and for failover runs
//! against all three; and the Raft leader (found with the Maintenance Status RPC) as the member
//! a failover run kills.
//!
//! A bid is a Txn that puts the amount (and the bidder) only if the stored amount is lower.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::time::{Instant, timeout};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use super::client::{Bidder, Patience, Retries};
use super::failover::{FaultMode, FaultTarget, kill_listener, request_restart, until_whole};
use super::{KEY_BIDDER, KEY_HIGHEST};
use auction::etcd::api::{
    self as etcd, kv_client::KvClient, maintenance_client::MaintenanceClient,
};

/// The process name of an etcd member (`/proc/PID/comm`).
const ETCD_PROGRAM: &str = "etcd";

/// An amount as a fixed-width string, so byte order is numeric order (etcd compares bytes).
fn padded(amount: u64) -> Vec<u8> {
    format!("{amount:016}").into_bytes()
}

/// The bid: a Txn that puts `amount` (and the bidder) only if the stored amount is lower.
fn bid_txn(amount: u64, name: &[u8]) -> etcd::TxnRequest {
    let amount = padded(amount);
    let put = |key: &[u8], value: Vec<u8>| etcd::RequestOp {
        request: Some(etcd::request_op::Request::RequestPut(etcd::PutRequest {
            key: key.to_vec(),
            value,
        })),
    };
    etcd::TxnRequest {
        compare: vec![etcd::Compare {
            result: etcd::compare::CompareResult::Less as i32,
            target: etcd::compare::CompareTarget::Value as i32,
            key: KEY_HIGHEST.to_vec(),
            target_union: Some(etcd::compare::TargetUnion::Value(amount.clone())),
        }],
        success: vec![put(KEY_HIGHEST, amount), put(KEY_BIDDER, name.to_vec())],
        failure: Vec::new(),
    }
}

/// A channel to the member at `addr` that connects when first used and again after a failure;
/// each call on it may take `attempt`.
fn channel(addr: SocketAddr, attempt: Duration) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .timeout(attempt)
        .connect_timeout(attempt)
        .connect_lazy())
}

/// `request`, to be refused at once by a member that knows of no leader rather than held, as
/// etcd's own client does with `WithRequireLeader`.
fn require_leader<T>(request: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert("hasleader", MetadataValue::from_static("true"));
    request
}

/// Sets the highest bid to 0 through the member on `channel`, so bids start from nothing.
pub(crate) async fn reset(channel: Channel) -> anyhow::Result<()> {
    let put = etcd::PutRequest {
        key: KEY_HIGHEST.to_vec(),
        value: padded(0),
    };
    KvClient::new(channel).put(require_leader(put)).await?;
    Ok(())
}

/// A client of one or more members: it sends to one, and moves to the next after any error.
pub(crate) struct EtcdBidder {
    members: Vec<KvClient<Channel>>,
    at: usize,
    name: Vec<u8>,
    patience: Patience,
}

impl EtcdBidder {
    /// Client `i`, bidding as `name`, starting at member `i` (mod their number), so the
    /// clients spread over the members as etcd's own client balancer spreads requests.
    ///
    /// # Errors
    /// No endpoints, or one does not make a URI.
    pub(crate) fn new(
        endpoints: &[SocketAddr],
        name: &str,
        i: usize,
        patience: Patience,
    ) -> anyhow::Result<Self> {
        if endpoints.is_empty() {
            bail!("no etcd endpoints");
        }
        let members = endpoints
            .iter()
            .map(|&a| channel(a, patience.attempt).map(KvClient::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            at: i % members.len(),
            members,
            name: name.as_bytes().to_vec(),
            patience,
        })
    }

    /// A bid (`Some(amount)`) or a read of the highest bid (`None`), attempted again within the
    /// patience, on the next member, after any error.
    async fn request(&mut self, bid: Option<u64>) -> anyhow::Result<()> {
        let txn = bid.map(|amount| bid_txn(amount, &self.name));
        let mut retries = Retries::new(self.patience.budget);
        loop {
            let kv = self.members.get_mut(self.at).context("no etcd endpoints")?;
            let attempt = async {
                match &txn {
                    Some(txn) => kv.txn(require_leader(txn.clone())).await.map(drop),
                    None => {
                        let range = etcd::RangeRequest {
                            key: KEY_HIGHEST.to_vec(),
                            range_end: Vec::new(),
                        };
                        kv.range(require_leader(range)).await.map(drop)
                    }
                }
            };
            let error = match timeout(self.patience.attempt, attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(status)) => anyhow!(status),
                Err(_) => anyhow!("no answer within {:?}", self.patience.attempt),
            };
            self.at = (self.at + 1) % self.members.len();
            if !retries.wait().await {
                return Err(error.context(format!(
                    "no answer from etcd within {:?}",
                    self.patience.budget
                )));
            }
        }
    }
}

impl Bidder for EtcdBidder {
    async fn bid(&mut self, amount: u64) -> anyhow::Result<()> {
        self.request(Some(amount)).await
    }

    async fn read(&mut self) -> anyhow::Result<()> {
        self.request(None).await
    }
}

/// A member's id and the id of the leader it knows (0 for none), from the Maintenance Status
/// RPC.
async fn status(channel: Channel) -> anyhow::Result<(u64, u64)> {
    let reply = MaintenanceClient::new(channel)
        .status(etcd::StatusRequest {})
        .await?
        .into_inner();
    let member = reply
        .header
        .map(|h| h.member_id)
        .context("a Status reply without a header")?;
    Ok((member, reply.leader))
}

/// Three etcd members on this host.
pub(super) struct EtcdCluster {
    members: Vec<(SocketAddr, Channel)>,
    restart: fn(&str),
}

impl EtcdCluster {
    /// The members at `endpoints`; `restart` asks for a killed one to be started again.
    ///
    /// # Errors
    /// An endpoint does not make a URI.
    pub(super) fn new(
        endpoints: &[SocketAddr],
        attempt: Duration,
        restart: fn(&str),
    ) -> anyhow::Result<Self> {
        let members = endpoints
            .iter()
            .map(|&a| channel(a, attempt).map(|c| (a, c)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { members, restart })
    }

    /// Sets the highest bid to 0 through the first member that takes it.
    pub(super) async fn reset(&mut self) -> anyhow::Result<()> {
        let mut last = anyhow!("no etcd endpoints");
        for (addr, channel) in &self.members {
            match reset(channel.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e.context(format!("{addr}")),
            }
        }
        Err(last)
    }

    /// The leader's client address, when every member answers and names the same leader.
    async fn check(&self) -> anyhow::Result<SocketAddr> {
        let mut leader_addr = None;
        let mut leader_id = None;
        for (addr, channel) in &self.members {
            let (member, leader) = status(channel.clone())
                .await
                .with_context(|| format!("{addr}"))?;
            if leader == 0 {
                bail!("{addr} knows of no leader");
            }
            if leader_id.is_some_and(|l| l != leader) {
                bail!("the members name different leaders");
            }
            leader_id = Some(leader);
            if member == leader {
                leader_addr = Some(*addr);
            }
        }
        leader_addr.context("the leader is none of the endpoints")
    }
}

impl FaultTarget for EtcdCluster {
    type Leader = SocketAddr;

    async fn whole(&mut self, patience: Duration) -> anyhow::Result<SocketAddr> {
        until_whole("etcd", patience, || self.check()).await
    }

    async fn fault(&mut self, leader: &SocketAddr, _mode: FaultMode) -> anyhow::Result<Instant> {
        kill_listener(*leader, ETCD_PROGRAM)
    }

    async fn restore(&mut self, leader: SocketAddr, patience: Duration) -> anyhow::Result<()> {
        request_restart(leader, self.restart, patience).await
    }
}
