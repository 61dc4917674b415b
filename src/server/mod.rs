//! The leader's two gRPC services: the client-facing `Auction` service and the `Replication`
//! stream. Both only validate and forward to the leader task; all deciding happens there.
//! [`admission`] validates client requests, [`session`] serves a client's session stream, and
//! the replica port runs the leader's half of [`crate::handshake`].

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request as GrpcRequest, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::auth::ClusterSecret;
use crate::authority::{Authority, PeerRefusal};
use crate::handshake::{self, Challenged, Joined};
use crate::leader::{Detail, Event, LeaderHandle, Peer, Reply, Request, Timing};
use crate::limits::Unproven;
use crate::node::{Role, RoleCell};
use crate::pb::{
    self, BidRequest, CloseRequest, DecisionReply, FromLeader, FromReplica, ResultReply,
    ResultRequest, StartRequest, StatusReply, StatusRequest, from_replica,
};
use crate::replica::{Held, SharedState};
use crate::replication::Member;

mod admission;
mod directory;
mod session;

pub use admission::{Admission, Credentials, session_request};
use admission::{bid, close, start};
pub use directory::{Directory, held_status};
pub use session::SESSION_IN_FLIGHT;

/// Serves clients on the client port.
#[derive(Debug)]
pub struct AuctionService {
    target: Target,
    admission: Admission,
    directory: Directory,
}

/// Who answers on the client port.
#[derive(Debug)]
enum Target {
    /// The leader, for as long as the server runs (one host: only the leader serves clients).
    Leader(LeaderHandle),
    /// Whatever the node is now (across hosts: every node serves clients for its whole life):
    /// while it leads, its leader task; otherwise, a redirect to the leader.
    Node(RoleCell),
}

impl AuctionService {
    /// The client service of a node that serves clients only while it leads, through `leader`.
    pub fn new(leader: LeaderHandle, admission: Admission, directory: Directory) -> Self {
        Self {
            target: Target::Leader(leader),
            admission,
            directory,
        }
    }

    /// The client service of a node that serves clients for its whole life: as the leader while
    /// `role` says it leads, otherwise by redirecting to the leader (status excepted, which it
    /// answers from what it holds).
    pub fn of_node(role: RoleCell, admission: Admission, directory: Directory) -> Self {
        Self {
            target: Target::Node(role),
            admission,
            directory,
        }
    }

    /// The leader task that serves a request now, or the redirect to the leader.
    async fn leader(&self) -> Result<Cow<'_, LeaderHandle>, Status> {
        let role = match &self.target {
            Target::Leader(h) => return Ok(Cow::Borrowed(h)),
            Target::Node(role) => current(role),
        };
        match role {
            Role::Leader(h) => Ok(Cow::Owned(h)),
            Role::Replica { state, .. } => {
                let followed = held(&state).map(|h| h.state.leader.id);
                Err(self.directory.redirect(followed).await)
            }
            Role::Starting => Err(self.directory.redirect(None).await),
        }
    }

    async fn decide(&self, request: Request) -> Result<DecisionReply, Status> {
        match self.leader().await?.call(request).await? {
            Reply::Decision(d, view) => Ok(crate::view::decision_reply(&d, view)),
            other => Err(unexpected(&other)),
        }
    }
}

/// The node's role now.
fn current(role: &RoleCell) -> Role {
    // Invariant: no code panics while holding this lock, so it is never poisoned.
    role.lock().expect("role lock poisoned").clone()
}

/// The state a replica holds, if any.
fn held(state: &SharedState) -> Option<Held> {
    // Invariant: no code panics while holding this lock, so it is never poisoned.
    state.lock().expect("state lock poisoned").clone()
}

/// A node's status as its terminal or the client port shows it: the leader's, while it leads;
/// otherwise what it holds (`None` when it holds nothing yet). `with_digest` for its own
/// terminal only.
///
/// # Errors
/// The leader task did not answer (it is leaving).
pub async fn node_status(
    role: &Role,
    directory: &Directory,
    with_digest: bool,
) -> Result<Option<StatusReply>, Status> {
    let (mut reply, me) = match role {
        Role::Leader(h) => {
            let detail = if with_digest {
                Detail::WithDigest
            } else {
                Detail::Summary
            };
            match h.call(Request::Status(detail)).await? {
                Reply::Status(s) => {
                    // The leader task names itself as the leader.
                    let me = s.leader.map(Member::try_from).transpose()?;
                    let me = me.ok_or_else(|| Status::internal("a status without its leader"))?;
                    (s, me)
                }
                other => return Err(unexpected(&other)),
            }
        }
        Role::Replica { me, state } => match held(state) {
            Some(h) => (held_status(&h, with_digest), *me),
            None => return Ok(None),
        },
        Role::Starting => return Ok(None),
    };
    directory.complete(&mut reply, me).await;
    Ok(Some(reply))
}

fn unexpected(reply: &Reply) -> Status {
    Status::internal(format!("unexpected reply from the leader task: {reply:?}"))
}

#[tonic::async_trait]
impl pb::auction_server::Auction for AuctionService {
    type SessionStream = ReceiverStream<Result<pb::SessionReply, Status>>;

    async fn bid(&self, req: GrpcRequest<BidRequest>) -> Result<Response<DecisionReply>, Status> {
        self.decide(bid(req.into_inner(), &mut Credentials::default())?)
            .await
            .map(Response::new)
    }

    async fn result(
        &self,
        _req: GrpcRequest<ResultRequest>,
    ) -> Result<Response<ResultReply>, Status> {
        match self.leader().await?.call(Request::Result).await? {
            Reply::Result(view) => Ok(Response::new(ResultReply {
                auction: Some(view),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn start(
        &self,
        req: GrpcRequest<StartRequest>,
    ) -> Result<Response<DecisionReply>, Status> {
        self.decide(start(req.into_inner(), &self.admission)?)
            .await
            .map(Response::new)
    }

    async fn close(
        &self,
        req: GrpcRequest<CloseRequest>,
    ) -> Result<Response<DecisionReply>, Status> {
        self.decide(close(req.into_inner(), &self.admission)?)
            .await
            .map(Response::new)
    }

    /// The leader's status; across hosts, a node that does not lead answers from what it holds,
    /// so an operator can ask any node (one that holds nothing yet redirects).
    async fn status(
        &self,
        _req: GrpcRequest<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let role = match &self.target {
            Target::Leader(h) => Role::Leader(h.clone()),
            Target::Node(role) => current(role),
        };
        match node_status(&role, &self.directory, false).await? {
            Some(reply) => Ok(Response::new(reply)),
            None => Err(self.directory.redirect(None).await),
        }
    }

    async fn session(
        &self,
        req: GrpcRequest<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let leader = self.leader().await?.into_owned();
        let replies = session::serve(req.into_inner(), leader, self.admission.clone());
        Ok(Response::new(replies))
    }
}

/// Serves replica streams on the replica port.
#[derive(Debug)]
pub struct ReplicationService<A> {
    leader: LeaderHandle,
    /// Checks that a replica is the process it names.
    authority: Arc<A>,
    /// This node, as it names itself in its handshake proofs.
    me: Member,
    /// What a replica must prove it holds before it gets anything.
    secret: ClusterSecret,
    /// The port's connections that have yet to prove themselves; closed if they do not in time.
    unproven: Unproven,
    timing: Timing,
    /// Numbers the streams, so events name the stream they come from.
    next_conn: AtomicU64,
}

impl<A: Authority> ReplicationService<A> {
    pub fn new(
        leader: LeaderHandle,
        authority: Arc<A>,
        me: Member,
        secret: ClusterSecret,
        unproven: Unproven,
        timing: Timing,
    ) -> Self {
        Self {
            leader,
            authority,
            me,
            secret,
            unproven,
            timing,
            next_conn: AtomicU64::new(1),
        }
    }
}

/// Checks a joining replica's half of the handshake, then, through the authority, that it is
/// the process it names.
async fn admit(
    authority: &impl Authority,
    secret: &ClusterSecret,
    challenged: &Challenged,
    proof: Option<FromReplica>,
    ends: Option<(SocketAddr, SocketAddr)>,
    member: bool,
) -> Result<(), Status> {
    let node = &challenged.check(secret, proof)?;
    let Some(ends) = ends else {
        return Err(Status::failed_precondition(
            "the connection's addresses are unknown",
        ));
    };
    authority
        .verify_peer(node, ends, member)
        .await
        .map_err(|refusal| match refusal {
            PeerRefusal::Unchecked(_) => Status::unavailable(refusal.to_string()),
            _ => Status::permission_denied(refusal.to_string()),
        })
}

#[tonic::async_trait]
impl<A: Authority> pb::replication_server::Replication for ReplicationService<A> {
    type FollowStream = ReceiverStream<Result<FromLeader, Status>>;

    async fn follow(
        &self,
        req: GrpcRequest<Streaming<FromReplica>>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let ends = req.local_addr().zip(req.remote_addr());
        let mut inbound = req.into_inner();
        let timeout = self.timing.timeout;
        let first = tokio::time::timeout(timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Join within the timeout"))??;
        let joined = Joined::read(first)?;
        let nonce = handshake::nonce().map_err(|e| Status::unavailable(e.to_string()))?;
        let (challenged, first) = joined.challenge(&self.secret, self.me, nonce);
        let node = challenged.replica();
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (outbound, rx) = tokio::sync::mpsc::channel(crate::leader::OUTBOUND_CAPACITY);
        // Invariant: the channel is new and has room.
        outbound
            .try_send(Ok(first))
            .expect("an empty channel has room");
        let (leader, secret) = (self.leader.clone(), self.secret.clone());
        let authority = self.authority.clone();
        let unproven = self.unproven.clone();
        tokio::spawn(async move {
            // Nothing reaches the leader task before the replica has proved itself.
            let proof = tokio::time::timeout(timeout, inbound.message()).await;
            let proof = proof.ok().and_then(Result::ok).flatten();
            let member = leader.is_member(&node);
            let admitted = admit(&*authority, &secret, &challenged, proof, ends, member);
            match admitted.await {
                Ok(()) => {}
                Err(status) => {
                    warn!(node = %node.id, pid = node.pid, "refused: {}", status.message());
                    let _ = outbound.try_send(Err(status));
                    return;
                }
            };
            if let Some((_, remote)) = ends {
                unproven.prove(remote);
            }
            let peer = Peer { outbound };
            if leader.send(Event::Join { conn, node, peer }).await.is_err() {
                return;
            }
            // Acks until the stream ends or breaks the protocol; then the leader hears Gone.
            loop {
                match inbound.message().await {
                    Ok(Some(FromReplica {
                        msg: Some(from_replica::Msg::Ack(ack)),
                    })) => {
                        let event = Event::Ack {
                            conn,
                            seq: ack.seq,
                            version: ack.version,
                        };
                        if leader.send(event).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(FromReplica {
                        msg: Some(from_replica::Msg::Leave(_)),
                    })) => {
                        let _ = leader.send(Event::Left { conn }).await;
                        return;
                    }
                    Ok(Some(other)) => {
                        debug!(node = %node.id, "protocol error from replica: {other:?}");
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = leader.send(Event::Gone { conn }).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
