//! The leader's two gRPC services: the client-facing `Auction` service and the `Replication`
//! stream. Both only validate and forward to the leader task; all deciding happens there.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request as GrpcRequest, Response, Status, Streaming};
use tracing::debug;

use crate::auction::Op;
use crate::leader::{Event, LeaderHandle, Reply, ReplyTo, Request, Timing};
use crate::pb::{
    self, BidRequest, CloseRequest, DecisionReply, FromLeader, FromReplica, ResultReply,
    ResultRequest, StartRequest, StatusReply, StatusRequest, WireError, from_replica,
};
use crate::replication::Member;
use crate::types::{Amount, BidderId, Duration};

/// The most replies one client session may have pending (in flight or not yet sent); beyond
/// that the session stops reading requests until the client reads its replies.
pub const SESSION_IN_FLIGHT: usize = 1024;

/// Serves clients on the client port.
#[derive(Debug)]
pub struct AuctionService {
    leader: LeaderHandle,
    /// The length of an auction started without one.
    default_duration: Duration,
}

impl AuctionService {
    pub fn new(leader: LeaderHandle, default_duration: Duration) -> Self {
        Self {
            leader,
            default_duration,
        }
    }

    async fn decide(&self, request: Request) -> Result<DecisionReply, Status> {
        match self.leader.call(request).await? {
            Reply::Decision(d, view) => Ok(pb::decision_reply(&d, view)),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(reply: &Reply) -> Status {
    Status::internal(format!("unexpected reply from the leader task: {reply:?}"))
}

/// Validates a bid: the one place a bid from the wire becomes a request.
fn bid(r: BidRequest) -> Result<Request, Status> {
    let op = Op::Bid {
        bidder: BidderId::new(r.bidder).map_err(WireError::from)?,
        amount: Amount::new(r.amount).map_err(WireError::from)?,
    };
    Ok(Request::Change {
        id: Some(pb::request_id(r.id)?),
        op,
    })
}

fn start(r: StartRequest, default_duration: Duration) -> Result<Request, Status> {
    let duration = match r.duration_ms {
        0 => default_duration,
        ms => Duration::from_millis(ms).map_err(WireError::from)?,
    };
    Ok(Request::Change {
        id: Some(pb::request_id(r.id)?),
        op: Op::Start { duration },
    })
}

fn close(r: CloseRequest) -> Result<Request, Status> {
    Ok(Request::Change {
        id: Some(pb::request_id(r.id)?),
        op: Op::Close,
    })
}

/// Validates one request of a client session: what the leader gets to decide, or why not.
///
/// # Errors
/// `INVALID_ARGUMENT` when a field is missing or out of range.
pub fn session_request(
    op: Option<pb::session_request::Op>,
    default_duration: Duration,
) -> Result<Request, Status> {
    match op.ok_or(WireError::Missing("op"))? {
        pb::session_request::Op::Bid(r) => bid(r),
        pb::session_request::Op::Result(_) => Ok(Request::Result),
        pb::session_request::Op::Start(r) => start(r, default_duration),
        pb::session_request::Op::Close(r) => close(r),
    }
}

fn error_reply(tag: u64, status: &Status) -> pb::SessionReply {
    pb::SessionReply {
        tag,
        reply: Some(pb::session_reply::Reply::Error(pb::ErrorReply {
            code: status.code() as i32,
            message: status.message().to_string(),
        })),
    }
}

#[tonic::async_trait]
impl pb::auction_server::Auction for AuctionService {
    type SessionStream = ReceiverStream<Result<pb::SessionReply, Status>>;

    async fn bid(&self, req: GrpcRequest<BidRequest>) -> Result<Response<DecisionReply>, Status> {
        self.decide(bid(req.into_inner())?).await.map(Response::new)
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
        self.decide(start(req.into_inner(), self.default_duration)?)
            .await
            .map(Response::new)
    }

    async fn close(
        &self,
        req: GrpcRequest<CloseRequest>,
    ) -> Result<Response<DecisionReply>, Status> {
        self.decide(close(req.into_inner())?)
            .await
            .map(Response::new)
    }

    async fn status(
        &self,
        _req: GrpcRequest<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        match self.leader.call(Request::Status).await? {
            Reply::Status(s) => Ok(Response::new(s)),
            other => Err(unexpected(&other)),
        }
    }

    async fn session(
        &self,
        req: GrpcRequest<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let (stream, replies) = tokio::sync::mpsc::channel(SESSION_IN_FLIGHT);
        let leader = self.leader.clone();
        let default_duration = self.default_duration;
        tokio::spawn(async move {
            loop {
                // A slot for the reply first: a client that does not read is not read either.
                let Ok(slot) = stream.clone().reserve_owned().await else {
                    return;
                };
                let message = match inbound.message().await {
                    Ok(Some(m)) => m,
                    // The client ended the stream.
                    Ok(None) => return,
                    // Malformed or oversized: the stream ends with the reason.
                    Err(status) => {
                        slot.send(Err(status));
                        return;
                    }
                };
                let tag = message.tag;
                match session_request(message.op, default_duration) {
                    Ok(request) => {
                        let reply = ReplyTo::Session { tag, slot };
                        if let Err(status) = leader.send(Event::Request { request, reply }).await {
                            let _ = stream.send(Ok(error_reply(tag, &status))).await;
                            return;
                        }
                    }
                    Err(status) => {
                        slot.send(Ok(error_reply(tag, &status)));
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(replies)))
    }
}

/// Serves replica streams on the replica port.
#[derive(Debug)]
pub struct ReplicationService {
    leader: LeaderHandle,
    timing: Timing,
    /// Numbers the streams, so events name the stream they come from.
    next_conn: AtomicU64,
}

impl ReplicationService {
    pub fn new(leader: LeaderHandle, timing: Timing) -> Self {
        Self {
            leader,
            timing,
            next_conn: AtomicU64::new(1),
        }
    }
}

#[tonic::async_trait]
impl pb::replication_server::Replication for ReplicationService {
    type FollowStream = ReceiverStream<Result<FromLeader, Status>>;

    async fn follow(
        &self,
        req: GrpcRequest<Streaming<FromReplica>>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(self.timing.timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Join within the timeout"))??;
        let Some(FromReplica {
            msg: Some(from_replica::Msg::Join(join)),
        }) = first
        else {
            return Err(Status::invalid_argument("the first message must be Join"));
        };
        let node = Member::try_from(join.node.ok_or(WireError::Missing("node"))?)?;
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (outbound, rx) = tokio::sync::mpsc::channel(crate::leader::OUTBOUND_CAPACITY);
        self.leader
            .send(Event::Join {
                conn,
                node,
                outbound,
            })
            .await?;
        let leader = self.leader.clone();
        tokio::spawn(async move {
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
