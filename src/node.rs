//! One node: decides whether to found a cluster, follow a leader or take over, and owns the
//! well-known ports while it leads.
//!
//! Leadership is ownership of the replica port: the OS lets one process listen on an address, so
//! there is at most one leader. Only the holder of the replica port binds the client port. A node
//! founds a new cluster only when, holding the replica port, it finds no live member of the
//! cluster on it (no [`MemberMark`]); otherwise a new node joins, and only members, which hold
//! every committed change, ever take over.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::{debug, error, info, warn};

use crate::auth::ClusterSecret;
use crate::backoff::Backoff;
use crate::host::fill_random;
use crate::leader::{self, LeaderHandle, Timing};
use crate::limits::{self, Limits, MAX_MESSAGE_BYTES, Unproven};
use crate::pb;
use crate::process::{self, Fenced, Listener, MemberMark};
use crate::replica::{self, Dial, FollowEnd, Held, SharedState};
use crate::replication::{ChangeKind, ClockReading, ClusterState, Generation, Member};
use crate::server::{Admission, AuctionService, ReplicationService};
use crate::tls::ServerTls;
use crate::types::{AuctionLength, Credential, Millis, NodeId};

/// Everything a node needs to know.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (`--id`; the original hand-in's `--port`).
    pub id: NodeId,
    /// The address every node binds and dials; all nodes must use the same one.
    pub host: IpAddr,
    /// The leader serves clients here.
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
    #[error(
        "{addr} is held by {holder}, which is not an auction node of this user; \
         choose another port (--leader-port, --client-port)"
    )]
    PortTaken { addr: SocketAddr, holder: Listener },
    #[error(
        "the node at {addr} does not share this node's cluster secret ({why}); \
         start every node with the same secret"
    )]
    Impostor { addr: SocketAddr, why: String },
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

/// Runs the node until `shutdown` fires or it cannot go on.
///
/// # Errors
/// A well-known port is held by another program, the leader refused this node (its id is in
/// use), or the node could not read its own process information.
pub async fn run(cfg: Config, role: RoleCell, shutdown: Shutdown) -> Result<(), NodeError> {
    process::raise_open_file_limit();
    let me = process::this_node(cfg.id).map_err(io("reading /proc/self"))?;
    let leader_addr = cfg.leader_addr();
    let shared = SharedState::default();
    // Taken when this node becomes a member, held until it dies.
    let mut mark: Option<MemberMark> = None;
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
        // Whether a node that is not a member found the replica port held by another process.
        let mut port_held = false;
        if replica::is_member(&shared, &me) {
            // Invariant: no code panics while holding this lock, so it is never poisoned.
            let current = shared.lock().expect("state lock poisoned").clone();
            let held = current.expect("a member holds a state");
            if let Some(listener) = take_over(&cfg, &me, &held.state).await? {
                let old = held.state.leader;
                let initial = vec![ChangeKind::Lead(me), ChangeKind::Leave(old.id)];
                let clock = resume(held.clock);
                info!(old_leader = %old.id, "took over the replica port");
                return lead(
                    &cfg, me, held.state, clock, initial, listener, role, shutdown,
                )
                .await;
            }
        } else {
            match vacancy(&cfg).await? {
                Vacancy::Free(listener) => {
                    // Held while this process lives, so no later node founds beside it.
                    let _member = MemberMark::take(leader_addr).map_err(io("marking a member"))?;
                    let generation = new_generation().map_err(io("drawing a generation"))?;
                    let received = shared.lock().expect("state lock poisoned").take();
                    let (state, clock, initial) =
                        founding_state(me, received, cfg.duration, generation);
                    info!(%leader_addr, generation = %state.generation, "no member is alive: founding a new cluster");
                    return lead(&cfg, me, state, clock, initial, listener, role, shutdown).await;
                }
                Vacancy::MembersAlive(pids) => {
                    debug!(?pids, "members are alive: joining, not founding");
                }
                Vacancy::Unknown => {}
                Vacancy::Held => port_held = true,
            }
        }
        let dial = Dial {
            leader_addr,
            secret: &cfg.secret,
            tls: cfg.tls.as_ref(),
            timing: cfg.timing,
        };
        let end = replica::follow(dial, me, &mut mark, &shared, shutdown.clone().wait()).await;
        let is_member = replica::is_member(&shared, &me);
        let retry_at_once = match end {
            FollowEnd::Refused(status) => return Err(NodeError::Refused(status.message().into())),
            FollowEnd::Stopped => return Ok(()),
            // A leader that leaves on purpose is not fenced: members wait for its process to
            // end, then take over. One that lingers past the timeout is fenced after all.
            FollowEnd::Left { leader } => match leader.filter(|_| is_member) {
                Some(leader) => {
                    info!(leader = %leader.id, "the leader left; taking over once it is gone");
                    gone(&leader, cfg.timing.timeout).await || fence_leader(&leader, "departing")
                }
                None => false,
            },
            FollowEnd::Lost { leader } => {
                if let Some(leader) = leader.filter(|_| is_member) {
                    warn!(leader = %leader.id, "lost the leader");
                    fence_leader(&leader, "lost");
                }
                is_member
            }
            // A member has fenced the silent leader already.
            FollowEnd::Silent { .. } if is_member => true,
            FollowEnd::Silent { .. } => {
                if port_held {
                    check_port_holder(leader_addr)?;
                }
                false
            }
            FollowEnd::Stale { leader, why } => {
                error!(leader = %leader.id, "refused the leader's state: {why}");
                // Only a member can take over; it does once the stale leader is fenced. One
                // that cannot fence it serves nothing rather than guess.
                is_member && fence_leader(&leader, "stale")
            }
            FollowEnd::Unmarked(why) => {
                warn!("cannot take the member mark ({why}); joining again");
                false
            }
            FollowEnd::Unreachable(why) => {
                if port_held && !is_member {
                    check_port_holder(leader_addr)?;
                }
                debug!("no leader at {leader_addr}: {why}");
                false
            }
            // A node that never joined has the wrong secret, or a stranger holds the port: either
            // way there is nothing to wait for. A member keeps trying: its cluster may come back.
            FollowEnd::Impostor(why) if !is_member => {
                return Err(NodeError::Impostor {
                    addr: leader_addr,
                    why,
                });
            }
            FollowEnd::Impostor(_) => false,
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

/// Fences the leader this member followed (`why` says how it failed). Returns whether it is
/// gone, so this member may take over.
fn fence_leader(leader: &Member, why: &str) -> bool {
    match process::fence(leader) {
        Ok(Fenced::Killed) => {
            warn!(leader = %leader.id, "fenced the {why} leader");
            true
        }
        Ok(Fenced::AlreadyGone) => true,
        Err(e) => {
            warn!(leader = %leader.id, "could not fence the {why} leader: {e}");
            false
        }
    }
}

/// Waits until `leader`'s process is gone, for at most `within`. Returns whether it is.
async fn gone(leader: &Member, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(None) = process::ProcessHandle::open(leader) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Fails when the replica port, which this node could not bind and where nothing answered as a
/// leader, is held by a program that is not an auction node: nothing will ever answer there.
///
/// # Errors
/// [`NodeError::PortTaken`], naming the holder.
fn check_port_holder(addr: SocketAddr) -> Result<(), NodeError> {
    match process::listener(addr) {
        Ok(Some(holder)) if !holder.is_node => Err(NodeError::PortTaken { addr, holder }),
        _ => Ok(()),
    }
}

/// What a node that is not a member found at the replica port.
enum Vacancy {
    /// The port is free and no member lives: this node holds the port and may found.
    Free(TcpListener),
    /// Another process holds the port: a leader, or a node about to lead or to give way.
    Held,
    /// The port is free, but these members live (paused, or about to take over): join them.
    MembersAlive(Vec<u32>),
    /// The port is free, but whether a member lives cannot be told: do not found.
    Unknown,
}

/// Binds the replica port and, holding it, looks for live members. While this node holds the
/// port no node leads, so none can become a member: no member is added between the look and
/// this node's own mark. A node that cannot tell whether a member lives does not found.
async fn vacancy(cfg: &Config) -> Result<Vacancy, NodeError> {
    let listener = match TcpListener::bind(cfg.leader_addr()).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Ok(Vacancy::Held),
        Err(e) => return Err(io("binding the replica port")(e)),
    };
    match process::live_members(cfg.leader_addr()) {
        Ok(pids) if pids.is_empty() => Ok(Vacancy::Free(listener)),
        Ok(pids) => Ok(Vacancy::MembersAlive(pids)),
        Err(e) => {
            warn!("cannot tell whether a member is alive ({e}); not founding");
            Ok(Vacancy::Unknown)
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

/// The auction clock a new leader starts from: its last reading of the old leader's clock plus
/// the time this node measured since, re-anchored now.
fn resume(reading: ClockReading) -> ClockReading {
    let now = Instant::now();
    ClockReading {
        clock: reading.at(now),
        at: now,
    }
}

/// The state a new cluster starts from, its clock, and the changes of its first batch. A node
/// that joined but outlived every member keeps the state it received rather than lose it;
/// otherwise the cluster, `generation`, starts empty and opens its first auction.
fn founding_state(
    me: Member,
    received: Option<Held>,
    duration: AuctionLength,
    generation: Generation,
) -> (ClusterState, ClockReading, Vec<ChangeKind>) {
    match received {
        Some(held) => {
            // No member mark was found: every other member is dead.
            let mut initial = vec![ChangeKind::Join(me), ChangeKind::Lead(me)];
            initial.extend(
                held.state
                    .members
                    .iter()
                    .filter(|m| m.id != me.id)
                    .map(|m| ChangeKind::Leave(m.id)),
            );
            (held.state, resume(held.clock), initial)
        }
        None => (
            ClusterState::founded(me, generation),
            ClockReading {
                clock: Millis(0),
                at: Instant::now(),
            },
            vec![leader::start_change(duration)],
        ),
    }
}

/// A member without a leader waits its turn, then tries to bind the replica port. While it
/// waits it watches the port, so it follows a successor that took over earlier at once instead
/// of sleeping out its turn.
async fn take_over(
    cfg: &Config,
    me: &Member,
    state: &ClusterState,
) -> Result<Option<TcpListener>, NodeError> {
    let rank = state.succession_rank(me.id).unwrap_or(0);
    let turn = tokio::time::Instant::now() + cfg.stagger * u32::try_from(rank).unwrap_or(u32::MAX);
    while tokio::time::Instant::now() < turn {
        if tokio::net::TcpStream::connect(cfg.leader_addr())
            .await
            .is_ok()
        {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    match TcpListener::bind(cfg.leader_addr()).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(io("binding the replica port")(e)),
    }
}

/// Leads until shutdown: serves replicas at once, and clients as soon as the client port is free.
#[allow(clippy::too_many_arguments)]
async fn lead(
    cfg: &Config,
    me: Member,
    state: ClusterState,
    clock: ClockReading,
    initial: Vec<ChangeKind>,
    replica_listener: TcpListener,
    role: RoleCell,
    shutdown: Shutdown,
) -> Result<(), NodeError> {
    let handle = leader::spawn(
        me,
        state,
        clock,
        initial,
        cfg.timing,
        shutdown.clone().wait(),
    );
    set_role(&role, Role::Leader(handle.clone()));
    let unproven = Unproven::default();
    // A replica needs one stream; a few more cover a reconnect racing the old stream's end.
    let replication = server(cfg)?
        .max_concurrent_streams(Some(MAX_REPLICA_STREAMS))
        .add_service(
            pb::replication_server::ReplicationServer::new(ReplicationService::new(
                handle.clone(),
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
            shutdown.clone().wait(),
        );
    let replication = tokio::spawn(replication);
    let client_listener = tokio::select! {
        () = shutdown.clone().wait() => return Ok(()),
        l = bind_client_port(cfg.client_addr()) => l?,
    };
    info!(client_addr = %cfg.client_addr(), "serving clients");
    let admission = Admission {
        operator: cfg.operator,
        default_duration: cfg.duration,
        session_rate: cfg.limits.session_rate,
    };
    server(cfg)?
        .max_concurrent_streams(Some(cfg.limits.max_streams))
        .add_service(
            pb::auction_server::AuctionServer::new(AuctionService::new(handle, admission))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            limits::at_most(
                incoming(client_listener),
                cfg.limits.max_connections,
                "client",
                None,
            ),
            shutdown.wait(),
        )
        .await?;
    match replication.await {
        Ok(r) => r?,
        Err(e) => warn!("replication server task failed: {e}"),
    }
    Ok(())
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
                    check_port_holder(addr)?;
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
    use crate::replication::Change;

    fn node(id: u16) -> Member {
        Member {
            id: NodeId(id),
            pid: u32::from(id),
            start_time: 1,
        }
    }

    #[test]
    fn a_fresh_founder_opens_the_first_auction_at_clock_zero() {
        let (state, clock, initial) = founding_state(
            node(1),
            None,
            AuctionLength::from_secs(5).unwrap(),
            Generation(4),
        );
        assert_eq!(state, ClusterState::founded(node(1), Generation(4)));
        assert_eq!(clock.clock, Millis(0));
        assert_eq!(initial.len(), 1);
    }

    #[test]
    fn a_joiner_that_outlived_every_member_founds_from_what_it_received() {
        let mut received = ClusterState::founded(node(1), Generation(4));
        received.apply(&Change {
            at: Millis(1),
            kind: ChangeKind::Join(node(2)),
        });
        let reading = ClockReading {
            clock: Millis(7_000),
            at: Instant::now(),
        };
        let held = Held {
            state: received,
            clock: reading,
        };
        let (mut state, clock, initial) = founding_state(
            node(3),
            Some(held),
            AuctionLength::from_secs(5).unwrap(),
            Generation(5),
        );
        assert!(
            clock.clock >= Millis(7_000),
            "the clock resumes, not restarts"
        );
        for kind in initial {
            state.apply(&Change {
                at: Millis(2),
                kind,
            });
        }
        assert_eq!(state.generation, Generation(4), "the same cluster");
        assert_eq!(state.leader, node(3));
        assert_eq!(state.members, vec![node(3)]);
        assert_eq!(state.epoch, 2);
    }

    #[test]
    fn a_new_leader_resumes_the_clock_from_its_last_reading_plus_the_time_since() {
        let ago = Duration::from_millis(1_500);
        let now = Instant::now();
        let Some(then) = now.checked_sub(ago) else {
            return;
        };
        let resumed = resume(ClockReading {
            clock: Millis(10_000),
            at: then,
        });
        assert!(resumed.clock >= Millis(11_500));
        // Never more than the time that really passed since (a test that ran slow may add some).
        assert!(resumed.clock <= Millis(10_000).after(then.elapsed()));
    }

    #[test]
    fn generations_are_random_and_never_zero() {
        let (a, b) = (new_generation().unwrap(), new_generation().unwrap());
        assert_ne!(a, b);
        assert_ne!(a.0, 0);
    }
}
