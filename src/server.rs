//! The leader's two gRPC services: the client-facing `Auction` service and the `Replication`
//! stream. Both only validate and forward to the leader task; all deciding happens there.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request as GrpcRequest, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::auction::Op;
use crate::auth::ClusterSecret;
use crate::handshake::{self, Challenged, Joined};
use crate::leader::{Detail, Event, LeaderHandle, Peer, Reply, ReplyTo, Request, Timing};
use crate::limits::{RateLimit, Unproven};
use crate::pb::{
    self, BidRequest, CloseRequest, DecisionReply, FromLeader, FromReplica, ResultReply,
    ResultRequest, StartRequest, StatusReply, StatusRequest, WireError, from_replica,
};
use crate::process::{self, ProcessHandle};
use crate::replication::Member;
use crate::types::{Amount, AuctionLength, BidderId, Credential, InputError, Token};

/// The most replies one client session may have pending (in flight or not yet sent); beyond
/// that the session stops reading requests until the client reads its replies.
pub const SESSION_IN_FLIGHT: usize = 1024;

/// What the client port needs to turn a request from the wire into one the leader decides.
#[derive(Clone, Debug)]
pub struct Admission {
    /// The credential of the operator token, which start and close must carry. Comparing
    /// digests rather than tokens keeps the comparison's timing from telling anything about the
    /// token.
    pub operator: Credential,
    /// The length of an auction started without one.
    pub default_duration: AuctionLength,
    /// Requests per second one session may send; beyond it they are refused unapplied.
    pub session_rate: u32,
}

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
            Reply::Decision(d, view) => Ok(pb::decision_reply(&d, view)),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(reply: &Reply) -> Status {
    Status::internal(format!("unexpected reply from the leader task: {reply:?}"))
}

/// Validates a bid: the one place a bid from the wire becomes a request. The token becomes the
/// credential that the state machine checks against the name's registration.
fn bid(r: BidRequest, credentials: &mut Credentials) -> Result<Request, Status> {
    let id = Some(pb::request_id(r.id)?);
    let bidder = BidderId::new(r.bidder).map_err(WireError::from)?;
    let amount = Amount::new(r.amount).map_err(WireError::from)?;
    let credential = credentials
        .of(r.token)
        .map_err(|e| Status::unauthenticated(format!("bid: {e}")))?;
    let op = Op::Bid {
        bidder,
        amount,
        credential,
    };
    Ok(Request::Change { id, op })
}

/// The last valid token a session's bids carried, with its credential. A session's bids nearly
/// always carry the same token, and checking and hashing it was most of a bid's validation.
#[derive(Debug, Default)]
pub struct Credentials {
    last: Option<(Token, Credential)>,
}

impl Credentials {
    /// The credential of `token`, which must be a valid token.
    ///
    /// # Errors
    /// [`InputError::Token`] when it is not.
    pub fn of(&mut self, token: String) -> Result<Credential, InputError> {
        if let Some((last, credential)) = &self.last
            && last.expose() == token
        {
            return Ok(*credential);
        }
        let token = Token::new(token)?;
        let credential = token.credential();
        self.last = Some((token, credential));
        Ok(credential)
    }
}

/// Checks that an operator's request carries the operator token.
fn operator(token: String, admission: &Admission, what: &str) -> Result<(), Status> {
    let token = Token::new(token)
        .map_err(|_| Status::unauthenticated(format!("{what} needs the operator token")))?;
    if token.credential() == admission.operator {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{what}: wrong operator token"
        )))
    }
}

fn start(r: StartRequest, admission: &Admission) -> Result<Request, Status> {
    operator(r.operator_token, admission, "start")?;
    let duration = match r.duration_ms {
        0 => admission.default_duration,
        ms => AuctionLength::from_millis(ms).map_err(WireError::from)?,
    };
    Ok(Request::Change {
        id: Some(pb::request_id(r.id)?),
        op: Op::Start { duration },
    })
}

fn close(r: CloseRequest, admission: &Admission) -> Result<Request, Status> {
    operator(r.operator_token, admission, "close")?;
    Ok(Request::Change {
        id: Some(pb::request_id(r.id)?),
        op: Op::Close,
    })
}

/// Validates one request of a client session: what the leader gets to decide, or why not.
/// `credentials` remembers the session's last bid token.
///
/// # Errors
/// `INVALID_ARGUMENT` when a field is missing or out of range; `UNAUTHENTICATED` when a bid has
/// no valid token or start or close no operator token; `PERMISSION_DENIED` when the operator
/// token is wrong.
pub fn session_request(
    op: Option<pb::session_request::Op>,
    admission: &Admission,
    credentials: &mut Credentials,
) -> Result<Request, Status> {
    match op.ok_or(WireError::Missing("op"))? {
        pb::session_request::Op::Bid(r) => bid(r, credentials),
        pb::session_request::Op::Result(_) => Ok(Request::Result),
        pb::session_request::Op::Start(r) => start(r, admission),
        pb::session_request::Op::Close(r) => close(r, admission),
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
        let mut inbound = req.into_inner();
        let (stream, replies) = tokio::sync::mpsc::channel(SESSION_IN_FLIGHT);
        let leader = self.leader.clone();
        let admission = self.admission.clone();
        tokio::spawn(async move {
            let mut rate = RateLimit::new(admission.session_rate, Instant::now());
            let mut credentials = Credentials::default();
            loop {
                // A slot for the reply first: a client that does not read is not read either.
                let Ok(slot) = stream.clone().reserve_owned().await else {
                    return;
                };
                let message = tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(m)) => m,
                        // The client ended the stream.
                        Ok(None) => return,
                        // Malformed or oversized: the stream ends with the reason.
                        Err(status) => {
                            slot.send(Err(status));
                            return;
                        }
                    },
                    // The leader left: the client goes on with its successor.
                    () = leader.stopped() => {
                        slot.send(Err(Status::unavailable("the leader left")));
                        return;
                    }
                };
                let tag = message.tag;
                if !rate.allow(Instant::now()) {
                    let status = Status::resource_exhausted(format!(
                        "more than {} requests per second on this session; not applied",
                        admission.session_rate
                    ));
                    slot.send(Ok(error_reply(tag, &status)));
                    continue;
                }
                match session_request(message.op, &admission, &mut credentials) {
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

impl ReplicationService {
    pub fn new(
        leader: LeaderHandle,
        me: Member,
        secret: ClusterSecret,
        unproven: Unproven,
        timing: Timing,
    ) -> Self {
        Self {
            leader,
            me,
            secret,
            unproven,
            timing,
            next_conn: AtomicU64::new(1),
        }
    }
}

/// Checks a joining replica's half of the handshake and that it is who it says: the process
/// named in its Join holds this very connection (checked when it first joins; a member that
/// rejoins, after a failover for example, was checked then) and is an `auction-node` of this
/// user. Returns a handle on that process, taken now, through which it will be fenced if it
/// must be.
async fn admit(
    secret: &ClusterSecret,
    challenged: &Challenged,
    proof: Option<FromReplica>,
    ends: Option<(SocketAddr, SocketAddr)>,
    member: bool,
) -> Result<ProcessHandle, Status> {
    let node = &challenged.check(secret, proof)?;
    let Some((ours, theirs)) = ends else {
        return Err(Status::failed_precondition(
            "the connection's addresses are unknown",
        ));
    };
    if !member {
        // Reads the host's whole TCP table: off the runtime's thread.
        let pid = node.pid;
        let held =
            tokio::task::spawn_blocking(move || process::holds_connection(pid, theirs, ours))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        match held {
            Ok(true) => {}
            Ok(false) => {
                return Err(Status::permission_denied(format!(
                    "pid {} does not hold this connection",
                    node.pid
                )));
            }
            Err(e) => return Err(Status::unavailable(format!("cannot check the peer: {e}"))),
        }
    }
    match ProcessHandle::open(node) {
        Ok(Some(handle)) => Ok(handle),
        Ok(None) => Err(Status::permission_denied(format!(
            "pid {} with start time {} is not running",
            node.pid, node.start_time
        ))),
        Err(e) => Err(Status::permission_denied(e.to_string())),
    }
}

#[tonic::async_trait]
impl pb::replication_server::Replication for ReplicationService {
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
        let unproven = self.unproven.clone();
        tokio::spawn(async move {
            // Nothing reaches the leader task before the replica has proved itself.
            let proof = tokio::time::timeout(timeout, inbound.message()).await;
            let proof = proof.ok().and_then(Result::ok).flatten();
            let member = leader.is_member(&node);
            let admitted = admit(&secret, &challenged, proof, ends, member);
            let process = match admitted.await {
                Ok(p) => p,
                Err(status) => {
                    warn!(node = %node.id, pid = node.pid, "refused: {}", status.message());
                    let _ = outbound.try_send(Err(status));
                    return;
                }
            };
            if let Some((_, remote)) = ends {
                unproven.prove(remote);
            }
            let peer = Peer { outbound, process };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_remembers_only_its_last_valid_token() {
        let (a, b) = ("a".repeat(32), "b".repeat(40));
        let credential = |t: &str| Token::new(t).unwrap().credential();
        let mut credentials = Credentials::default();
        assert_eq!(credentials.of(a.clone()), Ok(credential(&a)));
        assert_eq!(credentials.of(a.clone()), Ok(credential(&a)));
        assert_eq!(credentials.of(b.clone()), Ok(credential(&b)));
        // An invalid token is refused, and does not displace the valid one.
        for invalid in ["short".to_string(), format!("{b}!"), String::new()] {
            assert!(credentials.of(invalid).is_err());
        }
        assert_eq!(
            credentials.last.as_ref().map(|(_, c)| *c),
            Some(credential(&b))
        );
        assert_eq!(credentials.of(a.clone()), Ok(credential(&a)));
    }
}
