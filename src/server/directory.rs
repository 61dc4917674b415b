//! Where the cluster's nodes serve clients, as the authority records it: what a status shows
//! beyond the leader's state (the mode, the leader's and the members' client addresses), and
//! where a node that does not lead sends a client (a redirect: `UNAVAILABLE` with the
//! [`LEADER_METADATA`] key naming the leader's client address).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::authority::{Authority, Mode};
use crate::digest;
use crate::pb::{self, LEADER_METADATA};
use crate::replica::Held;
use crate::replication::Member;
use crate::types::NodeId;
use crate::view;

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe face of an [`Authority`]'s address book.
trait Lookup: Send + Sync + 'static {
    fn client_addr(&self, node: NodeId) -> Boxed<'_, Option<SocketAddr>>;
    fn leadership(&self) -> Boxed<'_, Option<(NodeId, u64)>>;
}

impl<A: Authority> Lookup for A {
    fn client_addr(&self, node: NodeId) -> Boxed<'_, Option<SocketAddr>> {
        Box::pin(Authority::client_addr(self, node))
    }
    fn leadership(&self) -> Boxed<'_, Option<(NodeId, u64)>> {
        Box::pin(Authority::leadership(self))
    }
}

/// One node's view of where the cluster's nodes serve clients.
#[derive(Clone)]
pub struct Directory {
    mode: Mode,
    /// This node.
    me: NodeId,
    /// Where this node serves clients (on one host: where every node does).
    own: SocketAddr,
    lookup: Arc<dyn Lookup>,
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("mode", &self.mode)
            .field("me", &self.me)
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

impl Directory {
    /// The directory of node `me`, which serves clients at `own`, as `authority` records it.
    pub fn new<A: Authority>(authority: Arc<A>, me: NodeId, own: SocketAddr) -> Self {
        Self {
            mode: A::MODE,
            me,
            own,
            lookup: authority,
        }
    }

    /// One host or several.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Where node `node` serves clients, if known: on one host, the one client address.
    pub async fn client_addr(&self, node: NodeId) -> Option<SocketAddr> {
        match self.mode {
            Mode::SingleHost => Some(self.own),
            Mode::MultiHost if node == self.me => Some(self.own),
            Mode::MultiHost => self.lookup.client_addr(node).await,
        }
    }

    /// Fills in what `reply` (a status made from a replicated state) does not hold: the mode,
    /// where the leader and each member serve clients, and `answered_by`, the node answering.
    pub async fn complete(&self, reply: &mut pb::StatusReply, answered_by: Member) {
        reply.mode = pb::ClusterMode::from(self.mode) as i32;
        let text = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let leader = match &reply.leader {
            Some(l) => u16::try_from(l.id).ok().map(NodeId),
            None => None,
        };
        if let Some(leader) = leader {
            reply.leader_address = text(self.client_addr(leader).await);
        }
        let mut addresses = Vec::with_capacity(reply.members.len());
        for m in &reply.members {
            let addr = match u16::try_from(m.id) {
                Ok(id) => self.client_addr(NodeId(id)).await,
                Err(_) => None,
            };
            addresses.push(text(addr));
        }
        reply.member_addresses = addresses;
        reply.answered_by = Some(answered_by.into());
    }

    /// The answer of a node that does not lead to a request only the leader serves: where the
    /// leader serves clients, as etcd names it (else as `followed`, the leader of the state
    /// this node holds, names it), in the [`LEADER_METADATA`] key and in words.
    pub async fn redirect(&self, followed: Option<NodeId>) -> Status {
        let leader = match self.lookup.leadership().await {
            Some((id, _)) => Some(id),
            None => followed,
        };
        let Some(leader) = leader else {
            return Status::unavailable(format!(
                "node {} does not lead and knows of no leader now; try again or ask another node",
                self.me
            ));
        };
        let Some(addr) = self.client_addr(leader).await else {
            return Status::unavailable(format!(
                "node {} does not lead; node {leader} does, at an address it cannot look up now; \
                 try again or ask another node",
                self.me
            ));
        };
        let mut status = Status::unavailable(format!(
            "node {} does not lead; the leader, node {leader}, serves clients at {addr} \
             (send the request there; gRPC metadata {LEADER_METADATA}: {addr})",
            self.me
        ));
        // Invariant: an IP:PORT is ASCII, so it is a valid metadata value.
        let value = MetadataValue::try_from(addr.to_string()).expect("an address is ASCII");
        status.metadata_mut().insert(LEADER_METADATA, value);
        status
    }
}

/// What a node that does not lead knows of the cluster: the replicated state it holds, as a
/// status (`digest` only for its own terminal). The auction is read on the leader's clock as
/// this node last heard it, so it may lag the leader's.
pub fn held_status(held: &Held, with_digest: bool) -> pb::StatusReply {
    let s = &held.state;
    let now = held.clock.at(Instant::now());
    pb::StatusReply {
        leader: Some(s.leader.into()),
        members: s.members.iter().map(|m| (*m).into()).collect(),
        epoch: s.epoch,
        version: s.version,
        auction: Some(view::auction_view(
            s.machine.auction.observe(now),
            crate::host::wall_clock_ms(),
        )),
        digest: if with_digest { digest::of(s) } else { 0 },
        ..Default::default()
    }
}
