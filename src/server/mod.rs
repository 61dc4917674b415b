//! The leader's two gRPC services: the client-facing `Auction` service and the `Replication`
//! stream. Both only validate and forward to the leader task; all deciding happens there.
//! [`admission`] validates client requests, [`session`] serves a client's session stream, and
//! the replica port runs the leader's half of [`crate::handshake`].

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
use crate::pb::{
    self, BidRequest, CloseRequest, DecisionReply, FromLeader, FromReplica, ResultReply,
    ResultRequest, StartRequest, StatusReply, StatusRequest, from_replica,
};
use crate::replication::Member;

mod admission;
mod session;

pub use admission::{Admission, Credentials, session_request};
use admission::{bid, close, start};
pub use session::SESSION_IN_FLIGHT;

/// Serves clients on the client port.
#[derive(Debug)]
pub struct AuctionService {
    leader: LeaderHandle,
    admission: Admission,
}

impl AuctionService {
    pub fn new(leader: LeaderHandle, admission: Admission) -> Self {
        Self { leader, admission }
    }

    async fn decide(&self, request: Request) -> Result<DecisionReply, Status> {
        match self.leader.call(request).await? {
            Reply::Decision(d, view) => Ok(crate::view::decision_reply(&d, view)),
            other => Err(unexpected(&other)),
        }
    }
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
        match self.leader.call(Request::Result).await? {
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

    async fn status(
        &self,
        _req: GrpcRequest<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        match self.leader.call(Request::Status(Detail::Summary)).await? {
            Reply::Status(s) => Ok(Response::new(s)),
            other => Err(unexpected(&other)),
        }
    }

    async fn session(
        &self,
        req: GrpcRequest<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let replies = session::serve(
            req.into_inner(),
            self.leader.clone(),
            self.admission.clone(),
        );
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
