//! The coordination authority: the one place that decides who leads, records who is a member,
//! and fences a node so that it can act no more. The leader's engine and the node's role rules
//! decide *when*; an [`Authority`] carries it out.
//!
//! [`SingleHost`] is the authority of nodes that share one host (docs/design.md, "Single-host
//! protocol"):
//! - **leadership** is holding the replica port: the OS lets one process listen on an address;
//! - **membership** is a member mark ([`MemberMark`]), an abstract Unix socket that the kernel
//!   drops when the process dies; a node founds a cluster only if, holding the replica port, it
//!   finds no mark of a live member;
//! - **fencing** is SIGKILL through a pidfd, checked against the process's start time, so a
//!   reused pid is never hit.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::warn;

use crate::process::{self, Listener, MemberMark};
use crate::replication::{ClusterState, Member};
use crate::types::NodeId;

pub use crate::view::Mode;
pub use auction_core::engine::{Probe, Reads};

/// What a node that is not a member found when it looked for a place to lead.
#[derive(Debug)]
pub enum Vacancy {
    /// Nobody leads and no member lives: this node holds the leadership and may found a
    /// cluster whose first epoch is `epoch`.
    Free { listener: TcpListener, epoch: u64 },
    /// Another node holds the leadership (or is about to give it up): follow it.
    Held,
    /// Nobody leads, but these members live (paused, or about to take over): join them.
    MembersAlive(Vec<u32>),
    /// Nobody leads, but whether a member lives cannot be told: do not found.
    Unknown,
}

/// How a fenced node was stopped from acting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fenced {
    /// Its process was alive and has been sent SIGKILL (one host).
    Killed,
    /// Its process was already gone (one host).
    AlreadyGone,
    /// The authority no longer counts it a member (across hosts, where no signal reaches it):
    /// it can neither take over nor get a member's ack, so it can act no more.
    Excluded,
}

impl From<process::Fenced> for Fenced {
    fn from(f: process::Fenced) -> Self {
        match f {
            process::Fenced::Killed => Self::Killed,
            process::Fenced::AlreadyGone => Self::AlreadyGone,
        }
    }
}

/// The leadership, claimed by a member whose leader is gone.
#[derive(Debug)]
pub struct Claimed {
    /// The replica port this node now serves.
    pub listener: TcpListener,
    /// The epoch it starts: greater than every epoch before it.
    pub epoch: u64,
}

/// Why a replica that proved the cluster secret is still refused: it is not the process it
/// names.
#[derive(Debug, thiserror::Error)]
pub enum PeerRefusal {
    /// Another process holds the replica's connection.
    #[error("pid {pid} does not hold this connection")]
    NotHolder { pid: u32 },
    /// The process it names is not running (or is not a node of this user).
    #[error("pid {pid} with start time {start_time} is not running")]
    NotRunning { pid: u32, start_time: u64 },
    /// Whether it is cannot be checked now.
    #[error("cannot check the peer: {0}")]
    Unchecked(String),
    /// The process it names is not one a node may admit (say, not an `auction-node`).
    #[error("{0}")]
    Refused(String),
}

/// Why an authority cannot act.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// The leadership is held by a program that is not an auction node: nothing will ever
    /// answer there.
    #[error(
        "{addr} is held by {holder}, which is not an auction node of this user; \
         choose another port (--leader-port, --client-port)"
    )]
    Squatter { addr: SocketAddr, holder: Listener },
    /// Another node leads now: this one, which led, must stop at once.
    #[error("another node leads now")]
    Deposed,
    /// Asked to found a new cluster in place of one whose members are all dead, but its leader
    /// still answers.
    #[error(
        "--new-cluster: node {leader}, the leader etcd names, still answers at {addr}; \
         the cluster lives, so this node joins it instead of replacing it"
    )]
    LeaderAlive {
        leader: crate::types::NodeId,
        addr: SocketAddr,
    },
    /// `cause` is not a `#[source]`: the message already holds it, and an error chain would
    /// print it twice.
    #[error("{what}: {cause}")]
    Io {
        what: &'static str,
        cause: io::Error,
    },
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> AuthorityError {
    move |cause| AuthorityError::Io { what, cause }
}

/// Leadership, membership and fencing, as one interface. Every method may be called from any
/// task; none blocks for long.
pub trait Authority: Send + Sync + 'static {
    /// What a member keeps while it is one (released when dropped, or when the process dies).
    type Membership: Send + Sync + 'static;

    /// How the leader confirms reads: [`Reads::Local`] only where a confirmed fence stops the
    /// deposed leader's process, so none is left to answer from an old state.
    const READS: Reads;

    /// Looks, as a node that is not a member, for a place to lead.
    ///
    /// # Errors
    /// The authority cannot be asked ([`AuthorityError::Io`]).
    fn vacancy(&self) -> impl Future<Output = Result<Vacancy, AuthorityError>> + Send;

    /// Claims the leadership of `state` for a member whose leader is gone: `None` when another
    /// node holds it.
    ///
    /// # Errors
    /// The authority cannot be asked.
    fn claim(
        &self,
        state: &ClusterState,
    ) -> impl Future<Output = Result<Option<Claimed>, AuthorityError>> + Send;

    /// Records this node as a member, before it acts as one.
    ///
    /// # Errors
    /// The record cannot be made: the node must not act as a member.
    fn join(&self) -> io::Result<Self::Membership>;

    /// Where the leader serves replicas, if anyone leads.
    ///
    /// # Errors
    /// The authority cannot be asked.
    fn leader_addr(
        &self,
    ) -> impl Future<Output = Result<Option<SocketAddr>, AuthorityError>> + Send;

    /// Whether another node has taken the lead since `state`'s epoch (a member waiting for its
    /// turn to claim follows it at once instead).
    fn superseded(&self, state: &ClusterState) -> impl Future<Output = bool> + Send;

    /// Records `node`, which holds the full state, as a member (the leader asks, before the
    /// join is committed).
    ///
    /// # Errors
    /// [`AuthorityError::Deposed`] when this node no longer leads; otherwise the record cannot
    /// be made now, and the node does not become a member now.
    fn admit(&self, node: &Member) -> impl Future<Output = Result<(), AuthorityError>> + Send;

    /// Fences `node`: once this returns `Ok`, it can neither commit nor answer.
    ///
    /// # Errors
    /// [`AuthorityError::Deposed`] when this node, which leads, was deposed; otherwise the fence
    /// cannot be made (the node may still act).
    fn fence(&self, node: &Member) -> impl Future<Output = Result<Fenced, AuthorityError>> + Send;

    /// Fences whoever holds the leadership without a known identity (it never answered as a
    /// leader). Returns the pid fenced, if any.
    ///
    /// # Errors
    /// The fence cannot be made.
    fn fence_holder(&self) -> impl Future<Output = io::Result<Option<u32>>> + Send;

    /// Checks that a replica that proved the cluster secret is the process it names, before it
    /// gets the state. `ends` are this side and its side of its connection; `member` says
    /// whether the leader lists it already (a member that rejoins was checked when it joined).
    ///
    /// # Errors
    /// [`PeerRefusal`]: it is not, or it cannot be told.
    fn verify_peer(
        &self,
        node: &Member,
        ends: (SocketAddr, SocketAddr),
        member: bool,
    ) -> impl Future<Output = Result<(), PeerRefusal>> + Send;

    /// Whether `node` can still act.
    fn probe(&self, node: &Member) -> impl Future<Output = Probe> + Send;

    /// Waits until `node` can act no more, for at most `within`. Returns whether it can't.
    fn gone(&self, node: &Member, within: Duration) -> impl Future<Output = bool> + Send;

    /// Fails when the leadership is held by something that will never lead (a squatter).
    ///
    /// # Errors
    /// [`AuthorityError::Squatter`], naming it.
    fn check_holder(&self) -> Result<(), AuthorityError>;

    /// How this authority's cluster is laid out: one host, or several.
    const MODE: Mode;

    /// Where node `node` serves clients, as the authority records it: `None` when it records
    /// no address for it, or cannot be asked now (on one host it records none: every node
    /// serves the one client address).
    fn client_addr(&self, node: NodeId) -> impl Future<Output = Option<SocketAddr>> + Send {
        let _ = node;
        std::future::ready(None)
    }

    /// Who leads as the authority records it, and since which epoch: `None` when nobody does,
    /// when it cannot be asked now, or when the authority records no identity (on one host,
    /// leading is holding a port).
    fn leadership(&self) -> impl Future<Output = Option<(NodeId, u64)>> + Send {
        std::future::ready(None)
    }
}

/// The authority of nodes on one host: the replica port, member marks and pidfds.
#[derive(Clone, Debug)]
pub struct SingleHost {
    /// The replica port: holding it is leading.
    pub leader_addr: SocketAddr,
}

impl Authority for SingleHost {
    type Membership = MemberMark;

    /// A fence is SIGKILL: a deposed leader is dead before anyone takes over.
    const READS: Reads = Reads::Local;

    /// Binds the replica port and, holding it, looks for live members. While this node holds
    /// the port no node leads, so none can become a member: no member is added between the
    /// look and this node's own mark. A node that cannot tell whether a member lives does not
    /// found.
    async fn vacancy(&self) -> Result<Vacancy, AuthorityError> {
        let listener = match TcpListener::bind(self.leader_addr).await {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Ok(Vacancy::Held),
            Err(e) => return Err(io_error("binding the replica port")(e)),
        };
        match process::live_members(self.leader_addr) {
            Ok(pids) if pids.is_empty() => Ok(Vacancy::Free { listener, epoch: 1 }),
            Ok(pids) => Ok(Vacancy::MembersAlive(pids)),
            Err(e) => {
                warn!("cannot tell whether a member is alive ({e}); not founding");
                Ok(Vacancy::Unknown)
            }
        }
    }

    /// Binds the replica port; the epoch is the next number.
    async fn claim(&self, state: &ClusterState) -> Result<Option<Claimed>, AuthorityError> {
        match TcpListener::bind(self.leader_addr).await {
            Ok(listener) => Ok(Some(Claimed {
                listener,
                epoch: state.epoch + 1,
            })),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(None),
            Err(e) => Err(io_error("binding the replica port")(e)),
        }
    }

    fn join(&self) -> io::Result<MemberMark> {
        MemberMark::take(self.leader_addr)
    }

    /// The replica port, where whoever leads serves.
    async fn leader_addr(&self) -> Result<Option<SocketAddr>, AuthorityError> {
        Ok(Some(self.leader_addr))
    }

    /// Something answers on the replica port.
    async fn superseded(&self, _state: &ClusterState) -> bool {
        tokio::net::TcpStream::connect(self.leader_addr)
            .await
            .is_ok()
    }

    /// On one host, membership is the member's own mark, which it takes before it acts as one:
    /// nothing to record here.
    async fn admit(&self, _node: &Member) -> Result<(), AuthorityError> {
        Ok(())
    }

    async fn fence(&self, node: &Member) -> Result<Fenced, AuthorityError> {
        process::fence(node)
            .map(Fenced::from)
            .map_err(io_error("fencing"))
    }

    async fn fence_holder(&self) -> io::Result<Option<u32>> {
        process::fence_port_holder(self.leader_addr)
    }

    /// The process named holds this very connection (checked when it first joins) and is an
    /// `auction-node` of this user that still runs.
    async fn verify_peer(
        &self,
        node: &Member,
        (ours, theirs): (SocketAddr, SocketAddr),
        member: bool,
    ) -> Result<(), PeerRefusal> {
        let pid = node.pid;
        if !member {
            // Reads the host's whole TCP table: off the runtime's thread.
            let held =
                tokio::task::spawn_blocking(move || process::holds_connection(pid, theirs, ours))
                    .await
                    .map_err(|e| PeerRefusal::Unchecked(e.to_string()))?;
            match held {
                Ok(true) => {}
                Ok(false) => return Err(PeerRefusal::NotHolder { pid }),
                Err(e) => return Err(PeerRefusal::Unchecked(e.to_string())),
            }
        }
        match process::ProcessHandle::open(node) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(PeerRefusal::NotRunning {
                pid,
                start_time: node.start_time,
            }),
            Err(e) => Err(PeerRefusal::Refused(e.to_string())),
        }
    }

    async fn probe(&self, node: &Member) -> Probe {
        match process::ProcessHandle::open(node) {
            Ok(None) => Probe::Gone,
            Ok(Some(_)) => Probe::Alive,
            Err(e) => Probe::Unknown(e.to_string()),
        }
    }

    async fn gone(&self, node: &Member, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(None) = process::ProcessHandle::open(node) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn check_holder(&self) -> Result<(), AuthorityError> {
        check_port_holder(self.leader_addr)
    }

    const MODE: Mode = Mode::SingleHost;
}

/// Fails when `addr`, which this node could not bind and where nothing answered as a node, is
/// held by a program that is not an auction node.
///
/// # Errors
/// [`AuthorityError::Squatter`], naming the holder.
pub fn check_port_holder(addr: SocketAddr) -> Result<(), AuthorityError> {
    match process::listener(addr) {
        Ok(Some(holder)) if !holder.is_node => Err(AuthorityError::Squatter { addr, holder }),
        _ => Ok(()),
    }
}
