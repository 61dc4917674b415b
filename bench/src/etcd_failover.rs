//! etcd under failover: a client that knows every member and moves to the next one after any
//! error, and the Raft leader (found with the Maintenance Status RPC) as the member a failover
//! run kills. A bid is the same Txn as under load.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{Instant, timeout};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use super::failover::{
    BID_BUDGET, Bidder, FaultMode, FaultTarget, Retries, kill_listener, request_restart,
    until_whole,
};
use super::{KEY_HIGHEST, etcd_bid, padded};
use crate::proto::etcd::{self, kv_client::KvClient, maintenance_client::MaintenanceClient};

/// The longest one attempt may take before the next member is tried: far above a commit's
/// latency, well below an election. A member whose leader died holds a proposal until its own
/// request timeout (seconds); a client gives up on it sooner.
const ATTEMPT: Duration = Duration::from_millis(500);

/// The process name of an etcd member (`/proc/PID/comm`).
const ETCD_PROGRAM: &str = "etcd";

/// A channel to one member that connects when first used and again after a failure.
fn channel(addr: SocketAddr) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .timeout(ATTEMPT)
        .connect_timeout(ATTEMPT)
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

/// A client of every member: it sends to one, and moves to the next after any error.
pub(super) struct EtcdBidder {
    members: Vec<KvClient<Channel>>,
    at: usize,
    name: Vec<u8>,
}

impl EtcdBidder {
    /// Client `i`, bidding as `name`, starting at member `i` (mod their number), so the
    /// clients spread over the members as etcd's own client balancer spreads requests.
    pub(super) fn new(endpoints: &[SocketAddr], name: Vec<u8>, i: usize) -> Result<Self, String> {
        if endpoints.is_empty() {
            return Err("no etcd endpoints".into());
        }
        let members = endpoints
            .iter()
            .map(|&a| channel(a).map(KvClient::new))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            at: i % members.len(),
            members,
            name,
        })
    }
}

impl Bidder for EtcdBidder {
    async fn bid(&mut self, amount: u64) -> Result<bool, String> {
        let txn = etcd_bid(amount, &self.name);
        let mut retries = Retries::new(BID_BUDGET);
        loop {
            let kv = self.members.get_mut(self.at).ok_or("no etcd endpoints")?;
            if let Ok(Ok(_)) = timeout(ATTEMPT, kv.txn(require_leader(txn.clone()))).await {
                return Ok(true);
            }
            self.at = (self.at + 1) % self.members.len();
            if !retries.wait().await {
                return Ok(false);
            }
        }
    }
}

/// A member's id and the id of the leader it knows (0 for none), from the Maintenance Status
/// RPC.
async fn status(channel: Channel) -> Result<(u64, u64), String> {
    let reply = MaintenanceClient::new(channel)
        .status(etcd::StatusRequest {})
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let member = reply
        .header
        .map(|h| h.member_id)
        .ok_or("a Status reply without a header")?;
    Ok((member, reply.leader))
}

/// Three etcd members on this host.
pub(super) struct EtcdCluster {
    members: Vec<(SocketAddr, Channel)>,
    restart: fn(&str),
}

impl EtcdCluster {
    pub(super) fn new(endpoints: &[SocketAddr], restart: fn(&str)) -> Result<Self, String> {
        let members = endpoints
            .iter()
            .map(|&a| channel(a).map(|c| (a, c)))
            .collect::<Result<_, String>>()?;
        Ok(Self { members, restart })
    }

    /// Sets the highest bid to 0, so bids start from nothing.
    pub(super) async fn reset(&mut self) -> Result<(), String> {
        let mut last = String::from("no etcd endpoints");
        for (addr, channel) in &self.members {
            let put = etcd::PutRequest {
                key: KEY_HIGHEST.to_vec(),
                value: padded(0),
            };
            match KvClient::new(channel.clone())
                .put(require_leader(put))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => last = format!("{addr}: {}", e.message()),
            }
        }
        Err(last)
    }

    /// The leader's client address, when every member answers and names the same leader.
    async fn check(&self) -> Result<SocketAddr, String> {
        let mut leader_addr = None;
        let mut leader_id = None;
        for (addr, channel) in &self.members {
            let (member, leader) = status(channel.clone())
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            if leader == 0 {
                return Err(format!("{addr} knows of no leader"));
            }
            if leader_id.is_some_and(|l| l != leader) {
                return Err("the members name different leaders".into());
            }
            leader_id = Some(leader);
            if member == leader {
                leader_addr = Some(*addr);
            }
        }
        leader_addr.ok_or_else(|| "the leader is none of the endpoints".into())
    }
}

impl FaultTarget for EtcdCluster {
    type Leader = SocketAddr;

    async fn whole(&mut self, patience: Duration) -> Result<SocketAddr, String> {
        until_whole("etcd", patience, || self.check()).await
    }

    async fn fault(&mut self, leader: &SocketAddr, _mode: FaultMode) -> Result<Instant, String> {
        kill_listener(*leader, ETCD_PROGRAM)
    }

    async fn restore(&mut self, leader: SocketAddr, patience: Duration) -> Result<(), String> {
        request_restart(leader, self.restart, patience).await
    }
}
