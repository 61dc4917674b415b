//! One node: founds a cluster, follows a leader or takes over, as the rules of
//! [`auction_core::role`] decide, asking the [`Authority`] who leads; while it leads, it serves
//! the replica and client ports. Across hosts ([`Mode::MultiHost`]) it serves its own client
//! port for its whole life instead: as the leader while it leads, otherwise redirecting clients
//! to the leader (and answering a status from the state it holds).
//!
//! Only members, which hold every committed change, ever take over; a node that is not a member
//! founds a new cluster only when the authority says nobody leads and no member lives.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::{debug, error, info, warn};

use auction_core::role::{self, Ending, Next, Opening};

use crate::auth::ClusterSecret;
use crate::authority::{self, Authority, AuthorityError, Claimed, Fenced, Mode, Vacancy};
use crate::backoff::Backoff;
use crate::host::fill_random;
use crate::leader::{self, LeaderHandle, Timing};
use crate::limits::{self, Limits, MAX_MESSAGE_BYTES, Unproven};
use crate::pb;
use crate::process;
use crate::replica::{self, Dial, FollowEnd, SharedState};
use crate::replication::{ChangeKind, ClockReading, ClusterState, Generation, Member};
use crate::server::{Admission, AuctionService, Directory, ReplicationService};
use crate::tls::ServerTls;
use crate::types::{AuctionLength, Credential, NodeId};

/// Everything a node needs to know.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (`--id`; the original hand-in's `--port`).
    pub id: NodeId,
    /// The address every node binds and dials; all nodes must use the same one.
    pub host: IpAddr,
    /// The leader serves clients here (across hosts: every node, on its own address).
    pub client_port: u16,
    /// The leader serves replicas here; holding it is being the leader.
    pub leader_port: u16,
    /// Length of the auction that a new cluster's first leader opens.
    pub duration: AuctionLength,
    pub timing: Timing,
    /// How long each place in the line of succession waits before trying to take over, so the
    /// first in line normally wins.
    pub stagger: Duration,
    /// What nodes prove to each other before any state flows.
    pub secret: ClusterSecret,
    /// The credential of the operator token, which start and close need.
    pub operator: Credential,
    /// What one client may take from the client port.
    pub limits: Limits,
    /// TLS on both ports (and for dialing the leader), or plain HTTP/2.
    pub tls: Option<ServerTls>,
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
    /// The authority cannot act, or a squatter holds a port.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    #[error(
        "the node at {addr} does not share this node's cluster secret ({why}); \
         start every node with the same secret"
    )]
    Impostor { addr: SocketAddr, why: String },
    #[error("the leader refused this node: {0}")]
    Refused(String),
    /// This node led, and the authority says another leads now: it stops rather than serve
    /// from a deposed state (start it again to rejoin as a replica).
    #[error("another node leads now: this node, which led, stops; start it again to rejoin")]
    Deposed,
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
    /// Not yet running.
    Starting,
    /// Following a leader, or looking for one; the state it holds, if any.
    Replica { me: Member, state: SharedState },
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

    /// Whether the signal has fired (or its sender is gone).
    pub fn fired(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }
}

fn set_role(cell: &RoleCell, role: Role) {
    // Invariant: no code panics while holding this lock, so it is never poisoned.
    *cell.lock().expect("role lock poisoned") = role;
}

/// Runs the node until `shutdown` fires or it cannot go on, with `authority` deciding who leads.
/// Across hosts ([`Mode::MultiHost`]) the node serves its client port for its whole life: as
/// the leader while it leads, otherwise redirecting clients to the leader.
///
/// # Errors
/// A well-known port is held by another program, the leader refused this node (its id is in
/// use), or the node could not read its own process information.
pub async fn run<A: Authority>(
    cfg: Config,
    authority: Arc<A>,
    role: RoleCell,
    shutdown: Shutdown,
) -> Result<(), NodeError> {
    if A::MODE == Mode::SingleHost {
        return run_roles(cfg, authority, role, shutdown).await;
    }
    let (stop, stopped) = Shutdown::new();
    let clients = serve_clients_for_life(&cfg, &authority, &role, stopped).await?;
    let timeout = cfg.timing.timeout;
    let result = run_roles(cfg, authority, role, shutdown).await;
    // The node is done: its client port answers no more (requests in flight get the time a
    // leader gets to answer them).
    let _ = stop.send(true);
    let mut clients = clients;
    match tokio::time::timeout(timeout, &mut clients).await {
        Ok(Ok(Err(e))) => warn!("client server failed: {e}"),
        Ok(_) => {}
        Err(_) => clients.abort(),
    }
    result
}

/// Binds this node's client port and serves it until `stopped` fires: as the leader while
/// `role` says this node leads, otherwise with redirects to the leader.
///
/// # Errors
/// The client port cannot be bound.
async fn serve_clients_for_life<A: Authority>(
    cfg: &Config,
    authority: &Arc<A>,
    role: &RoleCell,
    stopped: Shutdown,
) -> Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>, NodeError> {
    let listener = TcpListener::bind(cfg.client_addr())
        .await
        .map_err(io("binding the client port"))?;
    info!(client_addr = %cfg.client_addr(), "serving clients (redirecting them while another node leads)");
    let directory = Directory::new(authority.clone(), cfg.id, cfg.client_addr());
    let service = AuctionService::of_node(role.clone(), admission(cfg), directory);
    let server = server(cfg)?
        .max_concurrent_streams(Some(cfg.limits.max_streams))
        .add_service(
            pb::auction_server::AuctionServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            limits::at_most(
                incoming(listener),
                cfg.limits.max_connections,
                "client",
                None,
            ),
            stopped.wait(),
        );
    Ok(tokio::spawn(server))
}

/// What the client port admits, from the node's configuration.
fn admission(cfg: &Config) -> Admission {
    Admission {
        operator: cfg.operator,
        default_duration: cfg.duration,
        session_rate: cfg.limits.session_rate,
    }
}

/// Runs the node's roles (following, taking over, leading) until `shutdown` fires or it cannot
/// go on.
async fn run_roles<A: Authority>(
    cfg: Config,
    authority: Arc<A>,
    role: RoleCell,
    shutdown: Shutdown,
) -> Result<(), NodeError> {
    process::raise_open_file_limit();
    let me = process::this_node(cfg.id).map_err(io("reading /proc/self"))?;
    let shared = SharedState::default();
    // Taken when this node becomes a member, held until it dies.
    let mut membership: Option<A::Membership> = None;
    set_role(
        &role,
        Role::Replica {
            me,
            state: shared.clone(),
        },
    );
    // Pause between attempts of a node that is not a member, or that found no leader to dial.
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    loop {
        // A node asked to stop between two leaders neither takes over nor founds.
        if shutdown.fired() {
            return Ok(());
        }
        // Whether the authority said another process holds the leadership.
        let mut leadership_held = false;
        match role::opening(replica::is_member(&shared, &me)) {
            Opening::Claim => {
                // Invariant: no code panics while holding this lock, so it is never poisoned.
                let current = shared.lock().expect("state lock poisoned").clone();
                let held = current.expect("a member holds a state");
                if let Some(claimed) = claim_in_turn(&cfg, &*authority, &me, &held.state).await? {
                    let (listener, old) = (claimed.listener, held.state.leader);
                    let initial = role::takeover_changes(me, &held.state, claimed.epoch);
                    let clock = role::resume(held.clock, Instant::now());
                    info!(old_leader = %old.id, "took over the replica port");
                    return lead(
                        &cfg, me, held.state, clock, initial, listener, authority, role, shutdown,
                    )
                    .await;
                }
            }
            Opening::LookForVacancy => match authority.vacancy().await? {
                Vacancy::Free { listener, epoch } => {
                    // Held while this process lives, so no later node founds beside it.
                    let _membership = authority.join().map_err(io("marking a member"))?;
                    let generation = new_generation().map_err(io("drawing a generation"))?;
                    let received = shared
                        .lock()
                        .expect("state lock poisoned")
                        .take()
                        .map(|h| (h.state, h.clock));
                    let (state, clock, initial) = role::founding_state(
                        me,
                        received,
                        cfg.duration,
                        generation,
                        epoch,
                        Instant::now(),
                    );
                    info!(leader_addr = %cfg.leader_addr(), generation = %state.generation, "no member is alive: founding a new cluster");
                    return lead(
                        &cfg, me, state, clock, initial, listener, authority, role, shutdown,
                    )
                    .await;
                }
                Vacancy::MembersAlive(pids) => {
                    debug!(?pids, "members are alive: joining, not founding");
                }
                Vacancy::Unknown => {}
                Vacancy::Held => leadership_held = true,
            },
        }
        // Where the leader serves replicas; with nobody leading, look again after a pause.
        let Some(leader_addr) = authority.leader_addr().await? else {
            tokio::select! {
                () = shutdown.clone().wait() => return Ok(()),
                () = backoff.sleep() => {}
            }
            continue;
        };
        let dial = Dial {
            leader_addr,
            local: cfg.host,
            secret: &cfg.secret,
            tls: cfg.tls.as_ref(),
            timing: cfg.timing,
        };
        let end = replica::follow(
            dial,
            me,
            &*authority,
            &mut membership,
            &shared,
            shutdown.clone().wait(),
        )
        .await;
        let is_member = replica::is_member(&shared, &me);
        let retry_at_once = match role::after_follow(ending(&end), is_member, leadership_held) {
            Next::Stop => return Ok(()),
            Next::Fail => return Err(failure(end, leader_addr)),
            Next::FenceLeader { leader, why } => {
                match &end {
                    FollowEnd::Lost { .. } => warn!(leader = %leader.id, "lost the leader"),
                    FollowEnd::Stale { why, .. } => {
                        error!(leader = %leader.id, "refused the leader's state: {why}");
                    }
                    _ => {}
                }
                fence_leader(&*authority, &leader, why).await
            }
            Next::AwaitLeaderGone { leader } => {
                info!(leader = %leader.id, "the leader left; taking over once it is gone");
                authority.gone(&leader, cfg.timing.timeout).await
                    || fence_leader(&*authority, &leader, "departing").await
            }
            Next::RetryAtOnce => true,
            Next::RetryLater { check_holder } => {
                match &end {
                    FollowEnd::Unmarked(why) => {
                        warn!("cannot take the member mark ({why}); joining again");
                    }
                    FollowEnd::Unreachable(why) => debug!("no leader at {leader_addr}: {why}"),
                    _ => {}
                }
                if check_holder {
                    authority.check_holder()?;
                }
                false
            }
        };
        if retry_at_once {
            backoff.reset();
        } else {
            tokio::select! {
                () = shutdown.clone().wait() => return Ok(()),
                () = backoff.sleep() => {}
            }
        }
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// How following ended, as the role rules see it.
fn ending(end: &FollowEnd) -> Ending {
    match end {
        FollowEnd::Unreachable(_) => Ending::Unreachable,
        FollowEnd::Silent { .. } => Ending::Silent,
        FollowEnd::Lost { leader } => Ending::Lost { leader: *leader },
        FollowEnd::Unmarked(_) => Ending::Unrecorded,
        FollowEnd::Stale { leader, .. } => Ending::Stale { leader: *leader },
        FollowEnd::Left { leader } => Ending::Left { leader: *leader },
        FollowEnd::Stopped => Ending::Stopped,
        FollowEnd::Refused(_) => Ending::Refused,
        FollowEnd::Impostor(_) => Ending::Impostor,
    }
}

/// The error of a node that can never join.
fn failure(end: FollowEnd, addr: SocketAddr) -> NodeError {
    match end {
        FollowEnd::Refused(status) => NodeError::Refused(status.message().into()),
        FollowEnd::Impostor(why) => NodeError::Impostor { addr, why },
        other => NodeError::Refused(format!("{other:?}")),
    }
}

/// Fences the leader this member followed (`why` says how it failed). Returns whether it is
/// gone, so this member may take over.
async fn fence_leader(authority: &impl Authority, leader: &Member, why: &str) -> bool {
    match authority.fence(leader).await {
        Ok(Fenced::Killed) => {
            warn!(leader = %leader.id, "fenced the {why} leader");
            true
        }
        Ok(Fenced::AlreadyGone | Fenced::Excluded) => true,
        Err(e) => {
            warn!(leader = %leader.id, "could not fence the {why} leader: {e}");
            false
        }
    }
}

/// A new cluster's identity: random, never 0.
fn new_generation() -> std::io::Result<Generation> {
    loop {
        let mut bytes = [0; 8];
        fill_random(&mut bytes)?;
        let g = u64::from_le_bytes(bytes);
        if g != 0 {
            return Ok(Generation(g));
        }
    }
}

/// A member without a leader waits its turn in `state`'s line of succession, then claims the
/// lead. While it waits it watches the replica port, so it follows a successor that took over
/// earlier at once instead of sleeping out its turn.
async fn claim_in_turn(
    cfg: &Config,
    authority: &impl Authority,
    me: &Member,
    state: &ClusterState,
) -> Result<Option<Claimed>, NodeError> {
    let rank = state.succession_rank(me.id).unwrap_or(0);
    let turn = tokio::time::Instant::now() + cfg.stagger * u32::try_from(rank).unwrap_or(u32::MAX);
    while tokio::time::Instant::now() < turn {
        if authority.superseded(state).await {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(authority.claim(state).await?)
}

/// Leads until shutdown: serves replicas at once, and clients as soon as the client port is free.
#[allow(clippy::too_many_arguments)]
async fn lead<A: Authority>(
    cfg: &Config,
    me: Member,
    state: ClusterState,
    clock: ClockReading,
    initial: Vec<ChangeKind>,
    replica_listener: TcpListener,
    authority: Arc<A>,
    role: RoleCell,
    shutdown: Shutdown,
) -> Result<(), NodeError> {
    let handle = leader::spawn(
        me,
        state,
        clock,
        initial,
        cfg.timing,
        authority.clone(),
        shutdown.clone().wait(),
    );
    set_role(&role, Role::Leader(handle.clone()));
    // The servers stop when the node is asked to, or when the leader task ends by itself: it
    // was deposed, and this process must serve nothing more.
    let ended = || {
        let (shutdown, handle) = (shutdown.clone(), handle.clone());
        async move {
            tokio::select! {
                () = shutdown.wait() => {}
                () = handle.stopped() => {}
            }
        }
    };
    let unproven = Unproven::default();
    // A replica needs one stream; a few more cover a reconnect racing the old stream's end.
    let replication = server(cfg)?
        .max_concurrent_streams(Some(MAX_REPLICA_STREAMS))
        .add_service(
            pb::replication_server::ReplicationServer::new(ReplicationService::new(
                handle.clone(),
                authority.clone(),
                me,
                cfg.secret.clone(),
                unproven.clone(),
                cfg.timing,
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            limits::at_most(
                incoming(replica_listener),
                MAX_REPLICA_CONNECTIONS,
                "replica",
                Some((unproven, cfg.timing.timeout)),
            ),
            ended(),
        );
    let replication = tokio::spawn(replication);
    if A::MODE == Mode::MultiHost {
        // The node's one client server (see `run`) serves clients through the role, which now
        // names this leader.
        match replication.await {
            Ok(r) => r?,
            Err(e) => warn!("replication server task failed: {e}"),
        }
        return deposed_unless(&shutdown);
    }
    let client_listener = tokio::select! {
        () = ended() => return deposed_unless(&shutdown),
        l = bind_client_port(cfg.client_addr()) => l?,
    };
    info!(client_addr = %cfg.client_addr(), "serving clients");
    let directory = Directory::new(authority.clone(), cfg.id, cfg.client_addr());
    let service = AuctionService::new(handle.clone(), admission(cfg), directory);
    server(cfg)?
        .max_concurrent_streams(Some(cfg.limits.max_streams))
        .add_service(
            pb::auction_server::AuctionServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            limits::at_most(
                incoming(client_listener),
                cfg.limits.max_connections,
                "client",
                None,
            ),
            ended(),
        )
        .await?;
    match replication.await {
        Ok(r) => r?,
        Err(e) => warn!("replication server task failed: {e}"),
    }
    deposed_unless(&shutdown)
}

/// How leading ended: asked to stop, or deposed ([`NodeError::Deposed`]).
fn deposed_unless(shutdown: &Shutdown) -> Result<(), NodeError> {
    if shutdown.fired() {
        Ok(())
    } else {
        Err(NodeError::Deposed)
    }
}

/// A server builder, with TLS if configured.
fn server(cfg: &Config) -> Result<Server, NodeError> {
    match &cfg.tls {
        Some(tls) => Ok(Server::builder().tls_config(tls.server_config())?),
        None => Ok(Server::builder()),
    }
}

/// Connections a replica port keeps at once. A cluster needs a handful; a connection whose peer
/// has not proven it holds the cluster secret within the timeout is closed, so silent
/// connections cannot keep members from rejoining for long.
const MAX_REPLICA_CONNECTIONS: usize = 1024;

/// Calls at once on one replica-port connection.
const MAX_REPLICA_STREAMS: u32 = 4;

/// Accepted connections with Nagle's algorithm off: every message is a small, urgent one.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Binds the client port, retrying while the previous leader's socket is still there.
///
/// # Errors
/// The port is held by a program that is not an auction node ([`NodeError::PortTaken`]):
/// it will not give way.
async fn bind_client_port(addr: SocketAddr) -> Result<TcpListener, NodeError> {
    let mut waited = Duration::ZERO;
    let step = Duration::from_millis(2);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                // A node that is leaving gives the port up; another program never does. (Looked
                // up every 100 ms: it scans every process's descriptors.)
                if waited.as_millis() % 100 < step.as_millis() {
                    authority::check_port_holder(addr)?;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_random_and_never_zero() {
        let (a, b) = (new_generation().unwrap(), new_generation().unwrap());
        assert_ne!(a, b);
        assert_ne!(a.0, 0);
    }
}
