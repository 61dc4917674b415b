//! The client side: one session per `Client`, a request id per request, and retries across
//! failovers. A request that fails in transit is sent again with the same id, so the user sees
//! its one outcome; only when no leader answers within the retry budget is the outcome an
//! exception.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::auction::Decision;
use crate::backoff::Backoff;
use crate::etcd::registry::{Registry, RegistryError};
use crate::pb::{
    self, BidRequest, CloseRequest, DecisionReply, ResultRequest, SessionReply, SessionRequest,
    StartRequest, StatusReply, StatusRequest, WireError, auction_client::AuctionClient,
    session_reply, session_request,
};
use crate::tls::{self, ClientTls};
use crate::types::{Amount, AuctionLength, BidderId, RequestId, Token};
use crate::view::{self, View};

/// Resolves a `HOST:PORT` given by a person to the first address it names.
///
/// # Errors
/// It is not `HOST:PORT`, or the host resolves to no address.
pub fn resolve(server: &str) -> std::io::Result<SocketAddr> {
    Ok(resolve_all(server)?[0])
}

/// Resolves a `HOST:PORT` given by a person (or several, comma-separated: the nodes of a cluster
/// across hosts) to every address it names, in order and in the resolver's order of
/// preference, without duplicates. A [`Client`] tries each in turn: `localhost` often resolves
/// to `::1` first while a node listens on 127.0.0.1 only.
///
/// # Errors
/// It is not `HOST:PORT`, or the host resolves to no address.
pub fn resolve_all(server: &str) -> std::io::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let mut addrs: Vec<SocketAddr> = Vec::new();
    // Several servers, comma-separated: the nodes of a cluster across hosts.
    for one in server.split(',').map(str::trim) {
        for addr in one
            .to_socket_addrs()
            .map_err(|e| invalid(format!("{one:?} is not HOST:PORT: {e}")))?
        {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
    }
    if addrs.is_empty() {
        return Err(invalid(format!("{server:?} resolves to no address")));
    }
    Ok(addrs)
}

/// The default time a client keeps retrying before it reports an exception.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(5);

/// The longest one attempt may wait for its answer before the request is sent again (with the
/// same id, so at most once is applied). Longer than the leader's default timeout, so a commit
/// that waits for a stopped member to be fenced is not cut short.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a connection to one of several addresses may take before the next one is tried
/// (the last one gets all the time left). A refused connection fails at once; this bounds an
/// address that drops packets.
pub const CONNECT_TIMEOUT_PER_ADDRESS: Duration = Duration::from_millis(500);

/// The first pause between attempts, doubled after each: short, because a failover after a
/// crash takes milliseconds, and a client should not sleep through it.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(1);
/// The longest pause between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Why a request has no outcome.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No leader answered within the retry budget: the request may or may not have been applied.
    #[error("no leader answered within {budget:?} ({attempts} attempts); last error: {last}")]
    Exception {
        budget: Duration,
        attempts: u32,
        last: String,
    },
    /// The server refused the request as malformed or not allowed; it was not applied.
    #[error("the server refused the request: {0}")]
    Invalid(String),
    /// The leader's answer does not describe a valid outcome: the request may or may not have
    /// been applied.
    #[error("the leader's answer is malformed: {0}")]
    Malformed(#[from] WireError),
    /// The request could not be made here (no randomness for a new bidder token).
    #[error("cannot make the request: {0}")]
    Local(String),
    /// What answered does not serve the auction's clients (for example, the replica port): no
    /// retry can help, and nothing was applied.
    #[error(
        "{server} does not serve auction clients ({detail}); is it the replica port? \
         Clients use the cluster's client port (5000 unless the nodes have --client-port)"
    )]
    NotAuctionServer { server: String, detail: String },
}

/// The outcome of a request that changes the auction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub decision: Decision,
    /// The auction right after the request was decided.
    pub auction: View,
}

/// A client session with the cluster at one well-known address (which a host name may resolve
/// to several addresses for), at any of several nodes' addresses (across hosts), or at the
/// addresses etcd records.
///
/// Across hosts, a node that does not lead answers with the leader's client address
/// ([`pb::LEADER_METADATA`]); the client sends the request there again, with the same request
/// id, and dials that address first from then on.
#[derive(Debug)]
pub struct Client {
    /// The addresses to dial, tried in turn from `preferred` on.
    servers: Vec<SocketAddr>,
    /// The leader's client address, as the last node that does not lead named it: dialled first
    /// until a connection to it fails.
    redirect: Option<SocketAddr>,
    /// Where to read the leader's and the members' client addresses before each connection,
    /// when given instead of (or besides) addresses.
    etcd: Option<Registry>,
    /// The index in `servers` of the address that last connected, tried first.
    preferred: usize,
    retry_budget: Duration,
    /// Random per client, so sessions of different clients never collide.
    session: u64,
    /// The sequence number of the last request sent.
    seq: u64,
    /// The open connection and session stream, dropped after any failure so the next attempt
    /// dials afresh.
    conn: Option<Connection>,
    /// How many attempts the last request took.
    last_attempts: u32,
    /// The tag of the last request sent on a session stream.
    tag: u64,
    /// Each bidder's token: set by [`Client::set_token`], or made up at the bidder's first bid.
    tokens: HashMap<BidderId, Token>,
    /// Sent with start and close; without it they are refused.
    operator_token: Option<Token>,
    /// The nodes' certificate, when they serve TLS.
    tls: Option<ClientTls>,
}

/// What a client asks the leader.
enum Request {
    Session(session_request::Op),
    /// The status; `leader`: the leader's own (a node that does not lead answers with its own
    /// view, which then counts as a redirect to the leader).
    Status {
        leader: bool,
    },
}

/// What the leader answered.
enum Answer {
    Session(session_reply::Reply),
    Status(StatusReply),
}

/// One connection to the leader with a session stream open on it.
#[derive(Debug)]
struct Connection {
    /// The address it was made to.
    addr: SocketAddr,
    unary: AuctionClient<Channel>,
    /// The session stream, or why the node refused to open one: across hosts, a node that
    /// does not lead refuses it, naming the leader, yet answers a status.
    session: Result<Session, Status>,
}

/// A session stream: the requests sent, and the replies.
#[derive(Debug)]
struct Session {
    requests: mpsc::Sender<SessionRequest>,
    replies: Streaming<SessionReply>,
}

impl Client {
    pub fn new(server: SocketAddr, retry_budget: Duration) -> Self {
        Self::with_addresses(vec![server], retry_budget)
    }

    /// A client that dials each of `servers` in turn, as [`resolve_all`] returns them, and
    /// remembers the one that connected for the next reconnection.
    pub fn with_addresses(servers: Vec<SocketAddr>, retry_budget: Duration) -> Self {
        Self {
            servers,
            redirect: None,
            etcd: None,
            preferred: 0,
            retry_budget,
            session: random_session(),
            seq: 0,
            conn: None,
            last_attempts: 0,
            tag: 0,
            tokens: HashMap::new(),
            operator_token: None,
            tls: None,
        }
    }

    /// A client that reads where the nodes serve clients from `registry` (the cluster's records
    /// in etcd) before each connection: the leader first, then the members in succession order.
    pub fn with_etcd(registry: Registry, retry_budget: Duration) -> Self {
        let mut client = Self::with_addresses(Vec::new(), retry_budget);
        client.etcd = Some(registry);
        client
    }

    /// Dials with TLS, trusting the nodes' certificate.
    pub fn set_tls(&mut self, tls: ClientTls) {
        self.tls = Some(tls);
        self.conn = None;
    }

    /// Bids in `bidder`'s name will carry `token`: the one the name was registered with.
    pub fn set_token(&mut self, bidder: BidderId, token: Token) {
        self.tokens.insert(bidder, token);
    }

    /// Start and close will carry the operator token.
    pub fn set_operator_token(&mut self, token: Token) {
        self.operator_token = Some(token);
    }

    fn operator_token(&self) -> String {
        self.operator_token
            .as_ref()
            .map(|t| t.expose().to_string())
            .unwrap_or_default()
    }

    pub fn session(&self) -> u64 {
        self.session
    }

    /// The address of the open connection, else the one dialled first: the leader's that a
    /// node named, the one that last connected, or the first one given.
    pub fn server(&self) -> Option<SocketAddr> {
        match &self.conn {
            Some(c) => Some(c.addr),
            None => self
                .redirect
                .or_else(|| self.servers.get(self.preferred).copied()),
        }
    }

    /// How many attempts the last request took: more than one means it was retried, for
    /// example across a failover.
    pub fn last_attempts(&self) -> u32 {
        self.last_attempts
    }

    /// The id of the last request that changes state (bid, start, close), if any was sent.
    pub fn last_request(&self) -> Option<RequestId> {
        RequestId::new(self.session, self.seq).ok()
    }

    /// Places a bid in `bidder`'s name, with the bidder's token (a random one at the first bid of
    /// a bidder this client has no token for: that bid registers the name with it).
    ///
    /// # Errors
    /// [`ClientError::Exception`] when no leader answered in time;
    /// [`ClientError::Malformed`] when the answer is not a valid outcome.
    pub async fn bid(&mut self, bidder: &BidderId, amount: Amount) -> Result<Outcome, ClientError> {
        let token = match self.tokens.get(bidder) {
            Some(t) => t.expose().to_string(),
            None => {
                let t =
                    crate::host::random_token().map_err(|e| ClientError::Local(e.to_string()))?;
                let text = t.expose().to_string();
                self.tokens.insert(bidder.clone(), t);
                text
            }
        };
        let op = session_request::Op::Bid(BidRequest {
            id: Some(self.next_id()),
            bidder: bidder.as_str().to_owned(),
            amount: amount.get(),
            token,
        });
        decision(self.session_call(op).await?)
    }

    /// Reads the result: the highest bid while open, the winner once closed.
    ///
    /// # Errors
    /// [`ClientError::Exception`] when no leader answered in time;
    /// [`ClientError::Malformed`] when the answer is not a valid auction.
    pub async fn result(&mut self) -> Result<View, ClientError> {
        match self
            .session_call(session_request::Op::Result(ResultRequest {}))
            .await?
        {
            session_reply::Reply::Result(r) => Ok(View::try_from(
                r.auction.ok_or(WireError::Missing("auction"))?,
            )?),
            other => Err(ClientError::Invalid(format!("unexpected reply {other:?}"))),
        }
    }

    /// Starts the next auction; `None` uses the leader's default duration.
    ///
    /// # Errors
    /// [`ClientError::Exception`] when no leader answered in time;
    /// [`ClientError::Malformed`] when the answer is not a valid outcome.
    pub async fn start(&mut self, duration: Option<AuctionLength>) -> Result<Outcome, ClientError> {
        let op = session_request::Op::Start(StartRequest {
            id: Some(self.next_id()),
            duration_ms: duration.map_or(0, AuctionLength::as_millis),
            operator_token: self.operator_token(),
        });
        decision(self.session_call(op).await?)
    }

    /// Closes the open auction now.
    ///
    /// # Errors
    /// [`ClientError::Exception`] when no leader answered in time;
    /// [`ClientError::Malformed`] when the answer is not a valid outcome.
    pub async fn close(&mut self) -> Result<Outcome, ClientError> {
        let op = session_request::Op::Close(CloseRequest {
            id: Some(self.next_id()),
            operator_token: self.operator_token(),
        });
        decision(self.session_call(op).await?)
    }

    /// The cluster as the leader sees it (without the state digest, which only a node's own
    /// terminal gets). A node that does not lead answers from the state it holds; its answer
    /// names the leader, whom this asks again.
    ///
    /// # Errors
    /// [`ClientError::Exception`] when no leader answered in time;
    /// [`ClientError::Malformed`] when the answer is not a valid status.
    pub async fn status(&mut self) -> Result<view::Status, ClientError> {
        self.status_of(true).await
    }

    /// The cluster as the first node that answers sees it: the leader, or (across hosts) a node
    /// that does not lead, from the state it holds ([`view::Status::answered_by`]).
    ///
    /// # Errors
    /// [`ClientError::Exception`] when no node answered in time;
    /// [`ClientError::Malformed`] when the answer is not a valid status.
    pub async fn node_status(&mut self) -> Result<view::Status, ClientError> {
        self.status_of(false).await
    }

    async fn status_of(&mut self, leader: bool) -> Result<view::Status, ClientError> {
        match self.retrying(&Request::Status { leader }).await? {
            Answer::Status(s) => Ok(view::Status::try_from(s)?),
            Answer::Session(other) => {
                Err(ClientError::Invalid(format!("unexpected reply {other:?}")))
            }
        }
    }

    fn next_id(&mut self) -> pb::RequestId {
        self.seq += 1;
        pb::RequestId {
            session: self.session,
            seq: self.seq,
        }
    }

    /// Sends `op` on the session stream; retried with the same request id inside `op`.
    async fn session_call(
        &mut self,
        op: session_request::Op,
    ) -> Result<session_reply::Reply, ClientError> {
        match self.retrying(&Request::Session(op)).await? {
            Answer::Session(r) => Ok(r),
            Answer::Status(_) => Err(ClientError::Invalid("unexpected status reply".into())),
        }
    }

    /// Runs one request until it gets an answer or the retry budget is spent, on a fresh
    /// connection after any failure. Attempts back off from 1 ms to 100 ms, with jitter so that
    /// clients cut off by the same failure do not retry in lockstep.
    async fn retrying(&mut self, request: &Request) -> Result<Answer, ClientError> {
        let deadline = Instant::now() + self.retry_budget;
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF).with_jitter(self.session);
        let mut attempts = 0;
        loop {
            attempts += 1;
            self.last_attempts = attempts;
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(ATTEMPT_TIMEOUT);
            let error = match tokio::time::timeout(left, self.attempt(request, left)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(status)) if status.code() == Code::Unimplemented => {
                    return Err(ClientError::NotAuctionServer {
                        server: self
                            .server()
                            .map_or_else(|| "the server".into(), |a| a.to_string()),
                        detail: format!("it answered {}", status_text(&status)),
                    });
                }
                Ok(Err(status)) if !retryable(&status) => {
                    return Err(ClientError::Invalid(status_text(&status)));
                }
                Ok(Err(status)) => {
                    // A node that does not lead names the leader: dial it next.
                    if let Some(leader) = leader_hint(&status) {
                        self.redirect = Some(leader);
                    }
                    status_text(&status)
                }
                Err(_) => {
                    // A node that accepts requests and answers none (a leader cut off from its
                    // members, or paused) is tried last from now on.
                    if let Some(silent) = self.conn.as_ref().map(|c| c.addr) {
                        self.pass_over(silent);
                    }
                    "timed out".to_string()
                }
            };
            self.conn = None;
            if Instant::now() + backoff.peek() >= deadline {
                return Err(ClientError::Exception {
                    budget: self.retry_budget,
                    attempts,
                    last: error,
                });
            }
            backoff.sleep().await;
        }
    }

    /// One attempt: connects if needed, sends, and waits for the answer.
    async fn attempt(&mut self, request: &Request, left: Duration) -> Result<Answer, Status> {
        if self.conn.is_none() {
            self.conn = Some(self.connect(left).await?);
        }
        self.tag += 1;
        let tag = self.tag;
        let conn = self.conn.as_mut().expect("connected above");
        let op = match request {
            Request::Status { leader } => {
                let s = conn.unary.status(StatusRequest {}).await?.into_inner();
                if *leader && s.answered_by.is_some() && s.answered_by != s.leader {
                    let redirect = not_the_leader(&s);
                    if leader_hint(&redirect).is_none() {
                        self.next_address();
                    }
                    return Err(redirect);
                }
                return Ok(Answer::Status(s));
            }
            Request::Session(op) => op.clone(),
        };
        let session = match &mut conn.session {
            Ok(session) => session,
            Err(refused) => {
                let refused = refused.clone();
                if leader_hint(&refused).is_none() {
                    self.next_address();
                }
                return Err(refused);
            }
        };
        let message = SessionRequest { tag, op: Some(op) };
        session
            .requests
            .send(message)
            .await
            .map_err(|_| Status::unavailable("the session stream is closed"))?;
        loop {
            let reply = session
                .replies
                .message()
                .await?
                .ok_or_else(|| Status::unavailable("the session stream ended"))?;
            // A reply to an earlier, abandoned attempt is skipped.
            if reply.tag != tag {
                continue;
            }
            return match reply.reply {
                Some(session_reply::Reply::Error(e)) => {
                    Err(Status::new(Code::from(e.code), e.message))
                }
                Some(r) => Ok(Answer::Session(r)),
                None => Err(Status::internal("empty reply")),
            };
        }
    }

    /// Connects to the first address that accepts, starting with the one that worked last,
    /// and opens a session stream there.
    async fn connect(&mut self, timeout: Duration) -> Result<Connection, Status> {
        let deadline = Instant::now() + timeout;
        let mut failures = Vec::new();
        if let Some(registry) = &self.etcd {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, addresses_from_etcd(registry)).await {
                Ok(Ok(addrs)) if !addrs.is_empty() => {
                    self.servers = addrs;
                    self.preferred = 0;
                }
                Ok(Ok(_)) => failures.push("etcd records no leader and no member yet".into()),
                Ok(Err(e)) => failures.push(e.to_string()),
                Err(_) => failures.push(format!("etcd: no answer within {timeout:?}")),
            }
        }
        // The leader a node named first, then the addresses given, from the last that worked.
        let count = self.servers.len();
        let mut order: Vec<(Option<usize>, SocketAddr)> = Vec::with_capacity(count + 1);
        if let Some(leader) = self.redirect {
            order.push((None, leader));
        }
        for i in 0..count {
            let index = (self.preferred + i) % count;
            if Some(self.servers[index]) != self.redirect {
                order.push((Some(index), self.servers[index]));
            }
        }
        let count = order.len();
        for (i, (index, addr)) in order.into_iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            let limit = if i + 1 == count {
                left
            } else {
                left.min(CONNECT_TIMEOUT_PER_ADDRESS)
            };
            let started = Instant::now();
            let endpoint = tls::client_endpoint(addr, self.tls.as_ref())
                .map_err(|e| Status::invalid_argument(e.to_string()))?
                .connect_timeout(limit)
                .tcp_nodelay(true);
            let channel = match tokio::time::timeout(limit, endpoint.connect()).await {
                Ok(Ok(channel)) => channel,
                Ok(Err(e)) => {
                    failures.push(format!("{addr}: {}", error_chain(&e)));
                    self.forget_redirect(index);
                    continue;
                }
                Err(_) => {
                    failures.push(format!("{addr}: timed out after {limit:?}"));
                    self.forget_redirect(index);
                    continue;
                }
            };
            let mut unary = AuctionClient::new(channel);
            let (requests, rx) = mpsc::channel(16);
            // A server that accepts connections but answers nothing (a paused node, across
            // hosts) gets the same time as a connection, then the next address is tried.
            let left = limit.saturating_sub(Instant::now().saturating_duration_since(started));
            let opened = tokio::time::timeout(left, unary.session(ReceiverStream::new(rx))).await;
            let session = match opened {
                Ok(Ok(replies)) => Ok(Session {
                    requests,
                    replies: replies.into_inner(),
                }),
                // The node answers but does not lead: it still answers a status.
                Ok(Err(refused)) if refused.code() == Code::Unavailable => Err(refused),
                Ok(Err(status)) => return Err(status),
                Err(_) => {
                    failures.push(format!("{addr}: no answer within {limit:?}"));
                    self.forget_redirect(index);
                    continue;
                }
            };
            if let Some(index) = index {
                self.preferred = index;
            }
            return Ok(Connection {
                addr,
                unary,
                session,
            });
        }
        Err(Status::unavailable(if failures.is_empty() {
            "no address to connect to".to_string()
        } else {
            format!("cannot connect to {}", failures.join("; "))
        }))
    }
}

impl Client {
    /// A node that answered names no leader: the next address given is dialled first next time.
    fn next_address(&mut self) {
        if !self.servers.is_empty() {
            self.preferred = (self.preferred + 1) % self.servers.len();
        }
    }

    /// `addr` took a request and answered nothing within the attempt's time: the next address
    /// is dialled first from now on (and a leader a node named at `addr` is forgotten).
    fn pass_over(&mut self, addr: SocketAddr) {
        if self.redirect == Some(addr) {
            self.redirect = None;
        }
        if self.servers.get(self.preferred) == Some(&addr) {
            self.next_address();
        }
    }

    /// The leader a node named did not answer (`index` is `None` for it): the addresses given
    /// are dialled from now on, until a node names a leader again.
    fn forget_redirect(&mut self, index: Option<usize>) {
        if index.is_none() {
            self.redirect = None;
        }
    }
}

/// Where the cluster's nodes serve clients, as its records in etcd say: the leader first, then
/// the other members in succession order (a node with no record is left out).
///
/// # Errors
/// etcd cannot be reached or holds malformed records.
pub async fn addresses_from_etcd(registry: &Registry) -> Result<Vec<SocketAddr>, RegistryError> {
    let mut ids = Vec::new();
    if let Some(lead) = registry.leadership().await? {
        ids.push(lead.leader);
    }
    for id in registry.members().await?.ids {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let mut addrs = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(record) = registry.node(id).await?
            && !addrs.contains(&record.client)
        {
            addrs.push(record.client);
        }
    }
    Ok(addrs)
}

/// The leader's client address that a node that does not lead named in its refusal.
fn leader_hint(status: &Status) -> Option<SocketAddr> {
    status
        .metadata()
        .get(pb::LEADER_METADATA)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A status answered by a node that does not lead, when the leader's was asked for: a redirect
/// to the leader it names, if it names its address.
fn not_the_leader(s: &StatusReply) -> Status {
    let who = s.answered_by.as_ref().map_or(0, |m| m.id);
    let mut status = Status::unavailable(format!("node {who} answered, and does not lead"));
    if let Ok(addr) = s.leader_address.parse::<SocketAddr>()
        && let Ok(value) = tonic::metadata::MetadataValue::try_from(addr.to_string())
    {
        status.metadata_mut().insert(pb::LEADER_METADATA, value);
    }
    status
}

/// An error and its sources, as one line: "transport error: ... : Connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        source = s.source();
    }
    text
}

fn decision(reply: session_reply::Reply) -> Result<Outcome, ClientError> {
    match reply {
        session_reply::Reply::Decision(d) => Ok(outcome(d)?),
        other => Err(ClientError::Invalid(format!("unexpected reply {other:?}"))),
    }
}

/// Reads a decision and the auction after it, validated.
fn outcome(reply: DecisionReply) -> Result<Outcome, WireError> {
    let decision = reply.decision.ok_or(WireError::Missing("decision"))?;
    let auction = reply.auction.ok_or(WireError::Missing("auction"))?;
    Ok(Outcome {
        decision: Decision::try_from(decision)?,
        auction: View::try_from(auction)?,
    })
}

/// Whether a failed attempt may be tried again with the same request id. Errors that say the
/// request itself is wrong are final; everything else is a transport or availability problem.
fn retryable(status: &Status) -> bool {
    !matches!(
        status.code(),
        Code::InvalidArgument
            | Code::Unimplemented
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::AlreadyExists
            | Code::OutOfRange
    )
}

fn status_text(status: &Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_string()
    }
}

/// A random non-zero session id.
fn random_session() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_servers_resolve_in_order_without_duplicates() {
        let addrs = resolve_all("127.0.0.11:5000, 127.0.0.12:5000,127.0.0.11:5000").unwrap();
        let want: Vec<SocketAddr> = ["127.0.0.11:5000", "127.0.0.12:5000"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(addrs, want);
        assert!(resolve_all("127.0.0.11:5000,nonsense").is_err());
    }

    #[test]
    fn only_transport_failures_are_retried() {
        assert!(retryable(&Status::unavailable("down")));
        assert!(retryable(&Status::unknown("reset")));
        assert!(retryable(&Status::cancelled("gone")));
        assert!(!retryable(&Status::invalid_argument("bad amount")));
        assert!(!retryable(&Status::already_exists("dup")));
    }

    #[test]
    fn a_decision_reads_back_and_a_malformed_one_is_refused() {
        use crate::auction::Refusal;
        let view = pb::AuctionView {
            number: 1,
            open: true,
            deadline_ms: 2_000,
            highest_bid: 5,
            highest_bidder: "ann".into(),
            bidders: 1,
            now_ms: 1_000,
        };
        let refused = Err(Refusal::StillOpen { auction: 1 });
        let reply = crate::view::decision_reply(&refused, view.clone());
        let o = outcome(reply.clone()).unwrap();
        assert_eq!(o.decision, refused);
        assert_eq!(o.auction, View::try_from(view).unwrap());
        let no_auction = DecisionReply {
            auction: None,
            ..reply.clone()
        };
        assert_eq!(outcome(no_auction), Err(WireError::Missing("auction")));
        let no_decision = DecisionReply {
            decision: None,
            ..reply.clone()
        };
        assert_eq!(outcome(no_decision), Err(WireError::Missing("decision")));
        let mut bad_kind = reply;
        if let Some(r) = bad_kind.decision.as_mut().and_then(|d| d.refusal.as_mut()) {
            r.kind = 99;
        }
        assert_eq!(outcome(bad_kind), Err(WireError::RefusalKind(99)));
        assert!(matches!(
            decision(session_reply::Reply::Result(pb::ResultReply {
                auction: None
            })),
            Err(ClientError::Invalid(_))
        ));
    }

    #[test]
    fn a_node_that_does_not_lead_names_the_leader_and_a_status_from_it_counts_as_a_redirect() {
        let mut redirect = Status::unavailable("node 2 does not lead");
        assert_eq!(leader_hint(&redirect), None);
        redirect
            .metadata_mut()
            .insert(pb::LEADER_METADATA, "127.0.0.5:5000".parse().unwrap());
        assert_eq!(leader_hint(&redirect), "127.0.0.5:5000".parse().ok());
        let mut garbage = Status::unavailable("");
        garbage
            .metadata_mut()
            .insert(pb::LEADER_METADATA, "not an address".parse().unwrap());
        assert_eq!(leader_hint(&garbage), None);
        let node = |id| pb::NodeIdentity {
            id,
            pid: 1,
            start_time: 1,
        };
        let from_replica = StatusReply {
            leader: Some(node(1)),
            answered_by: Some(node(2)),
            leader_address: "127.0.0.5:5000".into(),
            ..StatusReply::default()
        };
        let status = not_the_leader(&from_replica);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(leader_hint(&status), "127.0.0.5:5000".parse().ok());
        let unknown = StatusReply {
            leader_address: String::new(),
            ..from_replica
        };
        assert_eq!(leader_hint(&not_the_leader(&unknown)), None);
    }

    /// A node that took a request and answered nothing is dialled last: the next address
    /// first, and a leader that node named is forgotten.
    #[test]
    fn a_silent_node_is_passed_over_for_the_next_address() {
        let (a, b, c) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.2:1".parse().unwrap(),
            "127.0.0.3:1".parse().unwrap(),
        );
        let mut client = Client::with_addresses(vec![a, b, c], Duration::from_secs(1));
        client.pass_over(a);
        assert_eq!(client.servers[client.preferred], b);
        // Silence of an address that is not the preferred one moves nothing.
        client.pass_over(c);
        assert_eq!(client.servers[client.preferred], b);
        client.redirect = Some(c);
        client.pass_over(c);
        assert_eq!(
            (client.redirect, client.servers[client.preferred]),
            (None, b)
        );
    }

    #[test]
    fn sessions_differ_and_are_never_zero() {
        let a = random_session();
        let b = random_session();
        assert_ne!(a, 0);
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn no_server_is_an_exception_within_the_budget() {
        // A port that was just free: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut c = Client::new(addr, Duration::from_millis(300));
        let started = std::time::Instant::now();
        let err = c.result().await.unwrap_err();
        assert!(matches!(err, ClientError::Exception { attempts, .. } if attempts > 1));
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
