//! The authority of nodes on several hosts: etcd decides who leads and who is a member
//! (docs/design.md, "Multi-host mode"), through the transactions of [`Registry`].
//!
//! - **Leadership** is the leader key; its revision is the epoch. A node founds only while no
//!   leader key exists; a member takes over only from the epoch it followed, and only if the
//!   member list it read is unchanged and lists it.
//! - **Membership** is the member list, which only the leader changes, comparing its epoch.
//! - **Fencing** is removal from that list (and epoch fencing on the wire): a removed member can
//!   never take over, and a deposed leader can neither commit nor answer a read, because both
//!   need an ack of every member it lists, the new leader among them (reads go through the
//!   members: [`Reads::Barrier`]).
//!
//! Failure detection stays on the nodes' heartbeats: etcd only decides who won.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use super::registry::{NodeRecord, Registry, RegistryError};
use crate::authority::{
    Authority, AuthorityError, Claimed, Fenced, Mode, PeerRefusal, Probe, Reads, Vacancy,
};
use crate::replication::{ClusterState, Member};
use crate::types::NodeId;

/// The etcd authority of one node.
#[derive(Debug)]
pub struct EtcdAuthority {
    registry: Registry,
    /// Where this node serves.
    me: NodeRecord,
    /// The epoch this node leads, once it founded or took over; its membership changes compare
    /// it.
    leading: Mutex<Option<u64>>,
    /// Other nodes' records, as last read from etcd and when.
    records: Mutex<HashMap<NodeId, (NodeRecord, Instant)>>,
}

impl EtcdAuthority {
    /// The authority of the node `me`, in the cluster that `registry` holds.
    pub fn new(registry: Registry, me: NodeRecord) -> Self {
        Self {
            registry,
            me,
            leading: Mutex::new(None),
            records: Mutex::new(HashMap::new()),
        }
    }

    /// Records where this node serves, so that others can find it once it leads.
    ///
    /// # Errors
    /// etcd cannot be reached.
    pub async fn register(&self) -> Result<(), AuthorityError> {
        self.registry.register(&self.me).await.map_err(etcd_error)
    }

    fn leading(&self) -> Option<u64> {
        // Invariant: no code panics while holding this lock, so it is never poisoned.
        *self.leading.lock().expect("epoch lock poisoned")
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, (NodeRecord, Instant)>> {
        // Invariant: no code panics while holding this lock, so it is never poisoned.
        self.records.lock().expect("records lock poisoned")
    }

    fn set_leading(&self, epoch: u64) {
        *self.leading.lock().expect("epoch lock poisoned") = Some(epoch);
    }

    /// Binds this node's own replica port (where it serves once it leads).
    async fn bind(&self) -> Result<TcpListener, AuthorityError> {
        TcpListener::bind(self.me.replica)
            .await
            .map_err(|source| AuthorityError::Io {
                what: "binding this node's replica port",
                source,
            })
    }

    /// Writes the member list as this node's epoch's leader.
    async fn write_members(
        &self,
        change: impl FnOnce(&mut Vec<NodeId>),
    ) -> Result<(), AuthorityError> {
        let Some(epoch) = self.leading() else {
            return Err(AuthorityError::Deposed);
        };
        let mut members = self.registry.members().await.map_err(etcd_error)?.ids;
        change(&mut members);
        self.registry
            .set_members(epoch, &members)
            .await
            .map_err(etcd_error)
    }
}

fn etcd_error(e: RegistryError) -> AuthorityError {
    match e {
        RegistryError::Deposed => AuthorityError::Deposed,
        other => AuthorityError::Io {
            what: "asking etcd",
            source: io::Error::other(other.to_string()),
        },
    }
}

impl Authority for EtcdAuthority {
    /// Membership is the member list in etcd, which the leader writes.
    type Membership = ();

    /// A deposed leader's process may live on: reads go through the members.
    const READS: Reads = Reads::Barrier;

    async fn vacancy(&self) -> Result<Vacancy, AuthorityError> {
        if self
            .registry
            .leadership()
            .await
            .map_err(etcd_error)?
            .is_some()
        {
            return Ok(Vacancy::Held);
        }
        let listener = self.bind().await?;
        match self
            .registry
            .found(NodeId(self.me.id))
            .await
            .map_err(etcd_error)?
        {
            Some(epoch) => {
                self.set_leading(epoch);
                Ok(Vacancy::Free { listener, epoch })
            }
            // Another node founded first.
            None => Ok(Vacancy::Held),
        }
    }

    async fn claim(&self, state: &ClusterState) -> Result<Option<Claimed>, AuthorityError> {
        let listener = self.bind().await?;
        let members = self.registry.members().await.map_err(etcd_error)?;
        let won = self
            .registry
            .take_over(NodeId(self.me.id), state.epoch, state.leader.id, &members)
            .await
            .map_err(etcd_error)?;
        Ok(won.map(|epoch| {
            self.set_leading(epoch);
            Claimed { listener, epoch }
        }))
    }

    fn join(&self) -> io::Result<()> {
        Ok(())
    }

    async fn leader_addr(&self) -> Result<Option<SocketAddr>, AuthorityError> {
        let Some(lead) = self.registry.leadership().await.map_err(etcd_error)? else {
            return Ok(None);
        };
        let node = self.registry.node(lead.leader).await.map_err(etcd_error)?;
        Ok(node.map(|n| n.replica))
    }

    async fn superseded(&self, state: &ClusterState) -> bool {
        matches!(
            self.registry.leadership().await,
            Ok(Some(lead)) if lead.epoch != state.epoch
        )
    }

    async fn admit(&self, node: &Member) -> Result<(), AuthorityError> {
        let id = node.id;
        self.write_members(|members| {
            if !members.contains(&id) {
                members.push(id);
            }
        })
        .await
    }

    /// Removes `node` from the member list, as the leader. A member that fences its leader has
    /// nothing to write: its takeover's transaction deposes that leader.
    async fn fence(&self, node: &Member) -> Result<Fenced, AuthorityError> {
        if self.leading().is_none() {
            return Ok(Fenced::Excluded);
        }
        let id = node.id;
        self.write_members(|members| members.retain(|m| *m != id))
            .await?;
        Ok(Fenced::Excluded)
    }

    /// Nothing answers for the leadership but the leader the registry names.
    async fn fence_holder(&self) -> io::Result<Option<u32>> {
        Ok(None)
    }

    /// A pid says nothing across hosts: the cluster secret is the proof.
    async fn verify_peer(
        &self,
        _node: &Member,
        _ends: (SocketAddr, SocketAddr),
        _member: bool,
    ) -> Result<(), PeerRefusal> {
        Ok(())
    }

    /// A process on another host cannot be seen: a joiner under a listed id waits until the
    /// leader has removed the old one.
    async fn probe(&self, _node: &Member) -> Probe {
        Probe::Unknown("a process on another host cannot be checked; wait for its removal".into())
    }

    /// A process on another host cannot be seen going: the takeover's transaction fences it.
    async fn gone(&self, _node: &Member, _within: Duration) -> bool {
        false
    }

    fn check_holder(&self) -> Result<(), AuthorityError> {
        Ok(())
    }

    const MODE: Mode = Mode::MultiHost;

    /// The node's record in etcd (`PREFIX/nodes/ID`), kept for [`RECORD_TTL`]: a node writes
    /// it when it starts, so it changes only when a node starts again elsewhere. While etcd
    /// does not answer within [`LOOKUP_TIMEOUT`], the record last read, however old.
    async fn client_addr(&self, node: NodeId) -> Option<SocketAddr> {
        if node.0 == self.me.id {
            return Some(self.me.client);
        }
        let now = Instant::now();
        let cached = self.records().get(&node).copied();
        if let Some((record, at)) = cached
            && now.duration_since(at) < RECORD_TTL
        {
            return Some(record.client);
        }
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.registry.node(node)).await {
            Ok(Ok(Some(record))) => {
                self.records().insert(node, (record, now));
                Some(record.client)
            }
            Ok(Ok(None)) => None,
            Ok(Err(_)) | Err(_) => cached.map(|(record, _)| record.client),
        }
    }

    /// The leader key, if etcd answers within [`LOOKUP_TIMEOUT`].
    async fn leadership(&self) -> Option<(NodeId, u64)> {
        let read = tokio::time::timeout(LOOKUP_TIMEOUT, self.registry.leadership()).await;
        let lead = read.ok()?.ok()??;
        Some((lead.leader, lead.epoch))
    }
}

/// How long a node record read from etcd is used before it is read again.
pub const RECORD_TTL: Duration = Duration::from_secs(1);

/// How long a look-up for clients (a status, a redirect) waits for etcd: a status must not
/// wait for an etcd that is cut off, so it shows what is known instead.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(250);
