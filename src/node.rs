//! One node: decides whether to found a cluster, follow a leader or take over, and owns the
//! well-known ports while it leads.
//!
//! Leadership is ownership of the replica port: the OS lets one process listen on an address, so
//! there is at most one leader. Only the holder of the replica port binds the client port. A node
//! founds a new cluster only when no member of any cluster on this replica port is alive (the
//! cluster lock); otherwise a new node joins, and only members, which hold every committed
//! change, ever take over.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use crate::leader::{self, LeaderHandle, Timing};
use crate::pb;
use crate::process::{self, ClusterLock, Fenced};
use crate::replica::{self, FollowEnd};
use crate::replication::{ChangeKind, ClusterState, Member};
use crate::server::{AuctionService, ReplicationService};
use crate::types::{Duration as AuctionDuration, NodeId};

/// Everything a node needs to know.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (the seed's `--port`).
    pub id: NodeId,
    /// The address every node binds and dials; all nodes must use the same one.
    pub host: IpAddr,
    /// The leader serves clients here.
    pub client_port: u16,
    /// The leader serves replicas here; holding it is being the leader.
    pub leader_port: u16,
    /// Length of the auction that a new cluster's first leader opens.
    pub duration: AuctionDuration,
    pub timing: Timing,
    /// How long each place in the line of succession waits before trying to take over, so the
    /// first in line normally wins.
    pub stagger: Duration,
}

impl Config {
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.client_port)
    }
    pub fn leader_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.leader_port)
    }
}

/// Why a node stopped.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error("{addr} is in use by a program that is not an auction node")]
    PortTaken { addr: SocketAddr },
    #[error("the leader refused this node: {0}")]
    Refused(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> NodeError {
    move |source| NodeError::Io { what, source }
}

/// What the node is doing, for its terminal.
#[derive(Clone, Debug)]
pub enum Role {
    /// Looking for a leader, not yet holding the state.
    Joining,
    /// Following `leader` at the given state version.
    Replica {
        leader: NodeId,
        epoch: u64,
        version: u64,
        member: bool,
    },
    /// Leading; requests go through the handle.
    Leader(LeaderHandle),
}

/// The node's role, shared with its terminal.
pub type RoleCell = Arc<Mutex<Role>>;

/// Resolves once the shutdown signal fires (the sender sends `true` or is dropped).
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

fn set_role(cell: &RoleCell, role: Role) {
    // Invariant: no code panics while holding this lock, so it is never poisoned.
    *cell.lock().expect("role lock poisoned") = role;
}

/// Runs the node until `shutdown` fires or it cannot go on.
///
/// # Errors
/// A well-known port is held by another program, the leader refused this node (its id is in
/// use), or the node could not read its own process information.
pub async fn run(cfg: Config, role: RoleCell, shutdown: Shutdown) -> Result<(), NodeError> {
    let me = process::this_node(cfg.id).map_err(io("reading /proc/self"))?;
    let lock = ClusterLock::open(cfg.leader_addr()).map_err(io("opening the cluster lock"))?;
    let leader_addr = cfg.leader_addr();
    let mut state: Option<ClusterState> = None;
    // Backoff between attempts to find a leader, reset whenever a stream delivers state.
    let mut backoff = Duration::from_millis(5);
    loop {
        let member = state.as_ref().filter(|s| s.has_member(&me));
        if let Some(current) = member {
            if let Some(listener) = take_over(&cfg, &me, current).await? {
                let current = state.take().expect("checked above");
                let old = current.leader;
                let initial = vec![ChangeKind::Lead(me), ChangeKind::Leave(old.id)];
                info!(old_leader = %old.id, "took over the replica port");
                return lead(&cfg, me, current, initial, listener, role, shutdown).await;
            }
        } else if lock.try_exclusive().map_err(io("locking"))? {
            let listener = found(&cfg, &lock).await?;
            info!(%leader_addr, "no node is alive: founding a new cluster");
            let initial = vec![leader::start_change(cfg.duration)];
            let state = ClusterState::founded(me);
            return lead(&cfg, me, state, initial, listener, role, shutdown).await;
        }
        let end = tokio::select! {
            () = shutdown.clone().wait() => return Ok(()),
            end = replica::follow(leader_addr, me, cfg.timing, &lock, &mut state, |s| {
                set_role(&role, Role::Replica {
                    leader: s.leader.id,
                    epoch: s.epoch,
                    version: s.version,
                    member: s.has_member(&me),
                });
            }) => end,
        };
        let is_member = state.as_ref().is_some_and(|s| s.has_member(&me));
        match end {
            FollowEnd::Refused(status) => return Err(NodeError::Refused(status.message().into())),
            FollowEnd::Lost { leader } => {
                backoff = Duration::from_millis(5);
                if let Some(leader) = leader.filter(|_| is_member) {
                    warn!(leader = %leader.id, "lost the leader");
                    fence(&leader, "stream ended");
                }
            }
            FollowEnd::Silent { leader } => {
                if is_member {
                    warn!("the leader is silent");
                    fence_silent(leader_addr, leader, state.as_ref());
                }
            }
            FollowEnd::Unreachable(why) => {
                tracing::debug!("no leader at {leader_addr}: {why}");
                tokio::select! {
                    () = shutdown.clone().wait() => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
        }
        set_role(&role, Role::Joining);
    }
}

/// Binds the replica port for a new cluster. The caller holds the cluster lock exclusively, so
/// no node is alive; a port still bound belongs to a node that is exiting, or to another program.
async fn found(cfg: &Config, lock: &ClusterLock) -> Result<TcpListener, NodeError> {
    let listener = bind_patiently(cfg.leader_addr(), Duration::from_secs(2)).await;
    // Converting exclusive to shared is atomic for POSIX locks: nobody can found in between.
    lock.try_shared().map_err(io("locking"))?;
    listener
}

async fn bind_patiently(addr: SocketAddr, patience: Duration) -> Result<TcpListener, NodeError> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(NodeError::PortTaken { addr });
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(io("binding")(e)),
        }
    }
}

/// A member without a leader waits its turn, then tries to bind the replica port.
async fn take_over(
    cfg: &Config,
    me: &Member,
    state: &ClusterState,
) -> Result<Option<TcpListener>, NodeError> {
    let rank = state.succession_rank(me.id).unwrap_or(0);
    if rank > 0 {
        tokio::time::sleep(cfg.stagger * u32::try_from(rank).unwrap_or(u32::MAX)).await;
    }
    match TcpListener::bind(cfg.leader_addr()).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(io("binding the replica port")(e)),
    }
}

fn fence(node: &Member, why: &str) {
    match process::fence(node) {
        Ok(Fenced::Killed) => warn!(node = %node.id, pid = node.pid, "fenced the leader ({why})"),
        Ok(Fenced::AlreadyGone) => {}
        Err(e) => warn!(node = %node.id, "could not fence the leader: {e}"),
    }
}

/// Fences whatever member holds the replica port without answering: the leader that went
/// silent, or a member that took the port over and then stopped. Never a non-member.
fn fence_silent(leader_addr: SocketAddr, leader: Option<Member>, state: Option<&ClusterState>) {
    if let Some(leader) = leader {
        return fence(&leader, "silent");
    }
    let Some(state) = state else { return };
    match process::listener_pid(leader_addr) {
        Ok(Some(pid)) => match state.members.iter().find(|m| m.pid == pid) {
            Some(holder) => fence(holder, "holds the replica port but does not answer"),
            None => warn!(
                pid,
                "the replica port is held by a process that is not a member"
            ),
        },
        Ok(None) => {}
        Err(e) => warn!("could not find who holds {leader_addr}: {e}"),
    }
}

/// Leads until shutdown: serves replicas at once, and clients as soon as the client port is free.
async fn lead(
    cfg: &Config,
    me: Member,
    state: ClusterState,
    initial: Vec<ChangeKind>,
    replica_listener: TcpListener,
    role: RoleCell,
    shutdown: Shutdown,
) -> Result<(), NodeError> {
    let handle = leader::spawn(me, state, initial, cfg.timing, shutdown.clone().wait());
    set_role(&role, Role::Leader(handle.clone()));
    let replication = Server::builder()
        .add_service(
            pb::replication_server::ReplicationServer::new(ReplicationService::new(
                handle.clone(),
                cfg.timing,
            ))
            .max_decoding_message_size(64 * 1024),
        )
        .serve_with_incoming_shutdown(incoming(replica_listener), shutdown.clone().wait());
    let replication = tokio::spawn(replication);
    let client_listener = tokio::select! {
        () = shutdown.clone().wait() => return Ok(()),
        l = bind_client_port(cfg.client_addr()) => l?,
    };
    info!(client_addr = %cfg.client_addr(), "serving clients");
    Server::builder()
        .add_service(
            pb::auction_server::AuctionServer::new(AuctionService::new(handle, cfg.duration))
                .max_decoding_message_size(64 * 1024),
        )
        .serve_with_incoming_shutdown(incoming(client_listener), shutdown.wait())
        .await?;
    match replication.await {
        Ok(r) => r?,
        Err(e) => warn!("replication server task failed: {e}"),
    }
    Ok(())
}

/// Accepted connections with Nagle's algorithm off: every message is a small, urgent one.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Binds the client port, retrying until the previous leader's socket is gone.
async fn bind_client_port(addr: SocketAddr) -> Result<TcpListener, NodeError> {
    let mut waited = Duration::ZERO;
    let step = Duration::from_millis(2);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if waited.as_millis() % 2000 < step.as_millis() {
                    warn!(%addr, "client port still in use; waiting for it");
                }
                tokio::time::sleep(step).await;
                waited += step;
            }
            Err(e) => return Err(io("binding the client port")(e)),
        }
    }
}
