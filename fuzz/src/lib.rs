//! Shared by the fuzz targets: reading one input as a stream of messages, checking that a
//! validated client request says exactly what its message said, and a valid replicated state to
//! decide requests and apply changes against.
//!
//! Every check here is an `assert!`: a failed one is a crash that libFuzzer saves, like a panic
//! in the code under test.

use std::time::Instant;

use auction::auction::{Decision, Op, Refusal};
use auction::auth::ClusterSecret;
use auction::handshake::Nonce;
use auction::leader::Request;
use auction::pb::{self, session_request};
use auction::replication::{Change, ChangeKind, ClusterState, Generation, Member};
use auction::server::Admission;
use auction::types::{
    Amount, AuctionLength, BidderId, Credential, Millis, NodeId, RequestId, Token,
};
use prost::Message;
use tonic::Code;

/// The operator token of the leader under test; the seeds' `Start` and `Close` carry it.
pub const OPERATOR_TOKEN: &str = "fuzz-operator-token-0123456789abcdef";
/// The token of `ann`, who placed the bid of [`open_state`].
pub const ANN_TOKEN: &str = "fuzz-ann-token-0123456789abcdef-ann";
/// The token the seeds' other bidders use.
pub const BIDDER_TOKEN: &str = "fuzz-bidder-token-0123456789abcdef";
/// The cluster secret of the nodes under test.
pub const CLUSTER_SECRET: &str = "fuzz-cluster-secret-0123456789abcdef";
/// The cluster of [`open_state`].
pub const GENERATION: Generation = Generation(0x5eed);
/// The challenge of the leader in `from_replica`, and of the replica in `from_leader` (a real
/// node draws a new one per stream; fixed here so that the seeds can carry valid proofs).
pub const NONCE: Nonce = [7; auction::handshake::NONCE_LEN];

fn token(t: &str) -> Token {
    Token::new(t).expect("a valid token")
}

/// The credential the replicated state keeps for a token.
pub fn credential(t: &str) -> Credential {
    token(t).credential()
}

pub fn cluster_secret() -> ClusterSecret {
    ClusterSecret::new(token(CLUSTER_SECRET))
}

/// The length of an auction started without one (`auction-node --duration` defaults to 120 s).
pub fn default_duration() -> AuctionLength {
    AuctionLength::from_secs(120).expect("120 s is a valid duration")
}

/// What the client port of the leader under test admits.
pub fn admission() -> Admission {
    Admission {
        operator: credential(OPERATOR_TOKEN),
        default_duration: default_duration(),
        // Rate limiting happens before `session_request`, on the stream; not fuzzed here.
        session_rate: 1_000,
    }
}

/// Reads `data` as a stream of length-delimited messages, the way a node reads its gRPC stream:
/// one after the other, until the input ends or a message does not decode (which ends a real
/// stream too).
pub fn messages<M: Message + Default>(mut data: &[u8]) -> impl Iterator<Item = M> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        M::decode_length_delimited(&mut data).ok()
    })
}

/// Writes messages as one input that [`messages`] reads back (for the seed corpus).
pub fn stream<M: Message>(msgs: &[M]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        m.encode_length_delimited(&mut out)
            .expect("a Vec grows as needed");
    }
    out
}

/// A node process with a plausible identity.
pub fn node(id: u16) -> Member {
    Member {
        id: NodeId(id),
        pid: 1000 + u32::from(id),
        start_time: 77,
    }
}

/// The changes after which [`open_state`] holds: a second member, an open auction, a bid.
pub fn fixture_changes() -> Vec<Change> {
    vec![
        Change {
            at: Millis(1_000),
            kind: ChangeKind::Join(node(5401)),
        },
        Change {
            at: Millis(1_000),
            kind: ChangeKind::Client {
                id: None,
                op: Op::Start {
                    duration: AuctionLength::from_secs(60).expect("valid"),
                },
            },
        },
        Change {
            at: Millis(2_000),
            kind: ChangeKind::Client {
                id: Some(RequestId::new(1, 1).expect("valid")),
                op: Op::Bid {
                    bidder: BidderId::new("ann").expect("valid"),
                    amount: Amount::new(10).expect("valid"),
                    credential: credential(ANN_TOKEN),
                },
            },
        },
    ]
}

/// A valid replicated state: leader 5400, member 5401, auction 1 open until 61 000 ms with a
/// bid of 10 by `ann`, who is registered with [`ANN_TOKEN`].
pub fn open_state() -> ClusterState {
    let mut s = ClusterState::founded(node(5400), GENERATION);
    for c in fixture_changes() {
        s.apply(&c);
    }
    s
}

/// What must hold of any state a node can reach: the leader sends it whole to every replica that
/// joins, so it must survive the wire unchanged, and reading it must not fail.
pub fn check_state(s: &ClusterState) {
    let wire = pb::State::from(s);
    let bytes = wire.encode_to_vec();
    let decoded = pb::State::decode(bytes.as_slice()).expect("an encoded state decodes");
    assert_eq!(
        decoded, wire,
        "the state's encoding does not decode to itself"
    );
    let back = ClusterState::try_from(decoded).expect("a reachable state is a valid snapshot");
    assert_eq!(&back, s, "the state changed on its way through a snapshot");
    assert_eq!(auction::digest::of(&back), auction::digest::of(s));
    let _ = auction::view::auction_view(s.machine.auction.observe(s.clock), 0);
    for m in &s.members {
        let _ = s.succession_rank(m.id);
    }
}

/// A change survives the wire unchanged.
pub fn check_change_round_trip(c: &Change) {
    let back = Change::try_from(pb::Change::from(c)).expect("an encoded change is valid");
    assert_eq!(&back, c, "the change changed on its way through the wire");
}

fn check_id(wire: Option<pb::RequestId>, id: Option<RequestId>) {
    let wire = wire.expect("a request without an id was accepted");
    let id = id.expect("a client request lost its id");
    assert_eq!((id.session, id.seq), (wire.session, wire.seq));
    assert!(id.session != 0 && id.seq != 0, "{id:?}");
}

fn check_bidder(bidder: &BidderId) {
    let s = bidder.as_str();
    assert!((1..=BidderId::MAX_LEN).contains(&s.len()), "{s:?}");
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
        "{s:?}"
    );
}

/// Validates one client request as the leader does (`auction::server::session_request`, the
/// validation of the session stream and of the unary calls), checks that an accepted request is
/// exactly what the message said, that only the operator token starts or closes an auction, and
/// that a refusal has the right code; then decides the request.
pub fn check_client_op(op: Option<session_request::Op>) {
    // The session has bid with BIDDER_TOKEN before, so a bid that carries it is checked through
    // the credential the session remembers, and any other token afresh: the checks below hold
    // for both.
    let mut credentials = auction::server::Credentials::default();
    credentials
        .of(BIDDER_TOKEN.to_string())
        .expect("BIDDER_TOKEN is valid");
    let validated = auction::server::session_request(op.clone(), &admission(), &mut credentials);
    let request = match validated {
        Err(status) => {
            match status.code() {
                Code::InvalidArgument => {}
                Code::Unauthenticated => assert!(
                    match &op {
                        Some(session_request::Op::Bid(r)) => Token::new(r.token.clone()).is_err(),
                        Some(session_request::Op::Start(r)) => {
                            Token::new(r.operator_token.clone()).is_err()
                        }
                        Some(session_request::Op::Close(r)) => {
                            Token::new(r.operator_token.clone()).is_err()
                        }
                        _ => false,
                    },
                    "{op:?}: {status:?}"
                ),
                Code::PermissionDenied => assert!(
                    match &op {
                        Some(session_request::Op::Start(r)) => r.operator_token != OPERATOR_TOKEN,
                        Some(session_request::Op::Close(r)) => r.operator_token != OPERATOR_TOKEN,
                        _ => false,
                    },
                    "{op:?}: {status:?}"
                ),
                _ => panic!("{op:?} refused with {status:?}"),
            }
            return;
        }
        Ok(r) => r,
    };
    match (&op, &request) {
        (
            Some(session_request::Op::Bid(r)),
            Request::Change {
                id,
                op:
                    Op::Bid {
                        bidder,
                        amount,
                        credential,
                    },
            },
        ) => {
            check_id(r.id, *id);
            check_bidder(bidder);
            assert_eq!(bidder.as_str(), r.bidder);
            assert_eq!(amount.get(), r.amount);
            assert!((1..=Amount::MAX).contains(&amount.get()), "{amount}");
            let t = Token::new(r.token.clone()).expect("a bid without a valid token was accepted");
            assert_eq!(*credential, t.credential());
        }
        (
            Some(session_request::Op::Start(r)),
            Request::Change {
                id,
                op: Op::Start { duration },
            },
        ) => {
            check_id(r.id, *id);
            assert_eq!(
                r.operator_token, OPERATOR_TOKEN,
                "started without the token"
            );
            let expected = match r.duration_ms {
                0 => default_duration().as_millis(),
                ms => ms,
            };
            assert_eq!(duration.as_millis(), expected);
            assert!((1_000..=AuctionLength::MAX_SECS * 1_000).contains(&duration.as_millis()));
        }
        (Some(session_request::Op::Close(r)), Request::Change { id, op: Op::Close }) => {
            check_id(r.id, *id);
            assert_eq!(r.operator_token, OPERATOR_TOKEN, "closed without the token");
        }
        (Some(session_request::Op::Result(_)), Request::Result) => {}
        _ => panic!("{op:?} was validated as {request:?}"),
    }
    if let Request::Change { id, op } = request {
        // While the auction is open, and once its deadline has passed.
        decide(id, &op, Millis(3_000));
        decide(id, &op, Millis(100_000));
    }
}

/// Decides a validated request against [`open_state`] at time `at`, as the leader's state
/// machine would, and checks its outcome: a bid in `ann`'s name needs her token, an accepted bid
/// leads, the reply survives the wire, and a retry with the same id gets the same outcome and
/// changes nothing.
fn decide(id: Option<RequestId>, op: &Op, at: Millis) {
    let mut state = open_state();
    let change = Change {
        at,
        kind: ChangeKind::Client { id, op: op.clone() },
    };
    check_change_round_trip(&change);
    let decision = state
        .apply(&change)
        .expect("a client change has a decision");
    // Request (1, 1) is the fixture's bid: it gets that bid's outcome and changes nothing.
    let retry_of_fixture = id == Some(RequestId::new(1, 1).expect("valid"));
    if let (
        Op::Bid {
            bidder, credential, ..
        },
        false,
    ) = (op, retry_of_fixture)
        && bidder.as_str() == "ann"
        && *credential != self::credential(ANN_TOKEN)
    {
        assert_eq!(
            decision,
            Err(Refusal::NotYourName),
            "a bid in another's name"
        );
    }
    if let (Ok(()), Op::Bid { bidder, amount, .. }, false) = (&decision, op, retry_of_fixture) {
        let highest = state.machine.auction.highest.as_ref().expect("a bid leads");
        assert_eq!((&highest.bidder, highest.amount), (bidder, *amount));
        assert!(amount.get() > 10, "a bid not above 10 was accepted");
    }
    check_decision(&decision, &state, at);
    check_state(&state);
    if id.is_some() {
        let auction = state.machine.auction.clone();
        let again = state
            .apply(&change)
            .expect("a client change has a decision");
        assert_eq!(again, decision, "a retry got another outcome");
        assert_eq!(
            state.machine.auction, auction,
            "a retry changed the auction"
        );
    }
}

/// The decision travels to the client and back unchanged.
fn check_decision(decision: &Decision, state: &ClusterState, now: Millis) {
    let reply = auction::view::decision_reply(
        decision,
        auction::view::auction_view(state.machine.auction.observe(now), 0),
    );
    let decoded = pb::DecisionReply::decode(reply.encode_to_vec().as_slice())
        .expect("an encoded reply decodes");
    let wire = decoded.decision.expect("a reply carries its decision");
    let back = Decision::try_from(wire).expect("a decision survives the wire");
    assert_eq!(&back, decision);
}

/// A fixed point in time for the leader's bookkeeping, so runs only differ by their input.
pub fn epoch() -> Instant {
    use std::sync::OnceLock;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}
