//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/`: a few valid
//! inputs each, so the fuzzer starts from messages that get past decoding and validation.
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus
//!
//! The files are committed; run this again after a change of the protocol.

use std::fs;
use std::path::{Path, PathBuf};

use auction::auction::Op;
use auction::handshake;
use auction::pb::{self, from_leader, from_replica, session_request};
use auction::replication::{Change, ChangeKind, ClusterState, Generation};
use auction::types::{Amount, AuctionLength, BidderId, Millis, NodeId, RequestId};
use auction_fuzz::{
    ANN_TOKEN, BIDDER_TOKEN, NONCE, OPERATOR_TOKEN, cluster_secret, credential, node, open_state,
    stream,
};
use prost::Message;

fn id(session: u64, seq: u64) -> Option<pb::RequestId> {
    Some(pb::RequestId { session, seq })
}

fn bid(session: u64, seq: u64, bidder: &str, amount: u64, token: &str) -> pb::BidRequest {
    pb::BidRequest {
        id: id(session, seq),
        bidder: bidder.into(),
        amount,
        token: token.into(),
    }
}

fn client(session: u64, seq: u64, at: u64, op: Op) -> pb::Change {
    pb::Change::from(&Change {
        at: Millis(at),
        kind: ChangeKind::Client {
            id: Some(RequestId::new(session, seq).expect("valid")),
            op,
        },
    })
}

fn change(at: u64, kind: ChangeKind) -> pb::Change {
    pb::Change::from(&Change {
        at: Millis(at),
        kind,
    })
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = dir.join(target);
    fs::create_dir_all(&dir).expect("create the corpus directory");
    fs::write(dir.join(name), bytes).expect("write a seed");
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");

    for (name, line) in [
        ("bid", "100\n"),
        ("bid-plus", " +3 "),
        ("result", "result"),
        ("quit", "QUIT"),
        ("help", "help"),
        ("negative", "-5"),
        ("zero", "0"),
        ("fraction", "1.5"),
        ("max", "9007199254740991"),
        ("above-max", "9007199254740992"),
        ("too-large", "99999999999999999999"),
        ("bidder", "ann-1.b_c"),
        ("trailing", "12abc"),
        ("token", BIDDER_TOKEN),
    ] {
        write(&dir, "input_line", name, line.as_bytes());
    }

    let ops = [
        (
            "bid",
            session_request::Op::Bid(bid(7, 1, "bob", 20, BIDDER_TOKEN)),
        ),
        (
            "bid-low",
            session_request::Op::Bid(bid(7, 1, "bob", 5, BIDDER_TOKEN)),
        ),
        (
            "bid-retry",
            session_request::Op::Bid(bid(1, 1, "ann", 10, ANN_TOKEN)),
        ),
        (
            "bid-as-ann",
            session_request::Op::Bid(bid(1, 2, "ann", 30, ANN_TOKEN)),
        ),
        (
            "bid-not-your-name",
            session_request::Op::Bid(bid(7, 1, "ann", 30, BIDDER_TOKEN)),
        ),
        (
            "bid-no-token",
            session_request::Op::Bid(bid(7, 1, "bob", 20, "")),
        ),
        (
            "start-default",
            session_request::Op::Start(pb::StartRequest {
                id: id(7, 2),
                duration_ms: 0,
                operator_token: OPERATOR_TOKEN.into(),
            }),
        ),
        (
            "start",
            session_request::Op::Start(pb::StartRequest {
                id: id(7, 3),
                duration_ms: 60_000,
                operator_token: OPERATOR_TOKEN.into(),
            }),
        ),
        (
            "start-wrong-token",
            session_request::Op::Start(pb::StartRequest {
                id: id(7, 3),
                duration_ms: 60_000,
                operator_token: BIDDER_TOKEN.into(),
            }),
        ),
        (
            "close",
            session_request::Op::Close(pb::CloseRequest {
                id: id(7, 4),
                operator_token: OPERATOR_TOKEN.into(),
            }),
        ),
        ("result", session_request::Op::Result(pb::ResultRequest {})),
    ];
    for (name, op) in &ops {
        let request = pb::SessionRequest {
            tag: 1,
            op: Some(op.clone()),
        };
        write(&dir, "session_request", name, &request.encode_to_vec());
        let (call, body) = match op {
            session_request::Op::Bid(r) => (0u8, r.encode_to_vec()),
            session_request::Op::Start(r) => (1, r.encode_to_vec()),
            session_request::Op::Close(r) => (2, r.encode_to_vec()),
            session_request::Op::Result(r) => (3, r.encode_to_vec()),
        };
        write(
            &dir,
            "unary_request",
            name,
            &[&[call], body.as_slice()].concat(),
        );
    }
    write(&dir, "unary_request", "status", &[4]);

    // The replica's challenge; the leader's is NONCE.
    let replica_nonce = [9u8; 32];
    let join = |id: u16| pb::FromReplica {
        msg: Some(from_replica::Msg::Join(pb::Join {
            node: Some(node(id).into()),
            nonce: replica_nonce.to_vec(),
        })),
    };
    let secret = cluster_secret();
    let prove = |id: u16| pb::FromReplica {
        msg: Some(from_replica::Msg::Prove(pb::Prove {
            proof: handshake::replica_proof(&secret, &NONCE, &replica_nonce, &node(id)),
        })),
    };
    let ack = |seq: u64, version: u64| pb::FromReplica {
        msg: Some(from_replica::Msg::Ack(pb::Ack { seq, version })),
    };
    write(
        &dir,
        "from_replica",
        "join-and-acks",
        &stream(&[
            join(5402),
            prove(5402),
            ack(1, 3),
            ack(2, 4),
            ack(2, 4),
            ack(4, 5),
        ]),
    );
    write(
        &dir,
        "from_replica",
        "rejoin",
        &stream(&[join(5401), prove(5401), ack(1, 3)]),
    );
    write(
        &dir,
        "from_replica",
        "wrong-proof",
        &stream(&[join(5402), prove(5401), ack(1, 3)]),
    );

    let state = open_state();
    let next = state.version + 1;
    let from_leader = |seq: u64, msg: from_leader::Msg| pb::FromLeader {
        seq,
        msg: Some(msg),
    };
    let minute = AuctionLength::from_secs(60).expect("valid");
    let bidder = |name: &str| BidderId::new(name).expect("valid");
    let amount = |a: u64| Amount::new(a).expect("valid");
    // The leader's challenge, with its proof over the replica's challenge NONCE.
    let leader_nonce = [5u8; 32];
    let challenge = from_leader::Msg::Challenge(pb::Challenge {
        leader: Some(state.leader.into()),
        nonce: leader_nonce.to_vec(),
        proof: handshake::leader_proof(&secret, &NONCE, &leader_nonce, &state.leader),
    });
    let changes = vec![
        change(2_500, ChangeKind::Join(node(5402))),
        client(
            2,
            1,
            3_000,
            Op::Bid {
                bidder: bidder("bob"),
                amount: amount(20),
                credential: credential(BIDDER_TOKEN),
            },
        ),
        client(
            3,
            1,
            3_001,
            Op::Bid {
                bidder: bidder("cat"),
                amount: amount(20),
                credential: credential(BIDDER_TOKEN),
            },
        ),
        client(2, 2, 4_000, Op::Close),
        client(2, 3, 5_000, Op::Start { duration: minute }),
        // A leader's stream names no other leader; this one only starts a new epoch.
        change(
            6_000,
            ChangeKind::Lead {
                leader: node(5400),
                epoch: 2,
            },
        ),
        change(6_000, ChangeKind::Leave(NodeId(5401))),
    ];
    write(
        &dir,
        "from_leader",
        "snapshot-append-heartbeat",
        &stream(&[
            from_leader(0, challenge.clone()),
            from_leader(1, from_leader::Msg::Snapshot((&state).into())),
            from_leader(
                2,
                from_leader::Msg::Append(pb::Append {
                    first_version: next,
                    changes: changes.clone(),
                    generation: state.generation.0,
                    epoch: state.epoch,
                }),
            ),
            from_leader(
                3,
                from_leader::Msg::Heartbeat(pb::Heartbeat { clock_ms: 6_100 }),
            ),
        ]),
    );
    write(
        &dir,
        "from_leader",
        "append",
        &stream(&[from_leader(
            2,
            from_leader::Msg::Append(pb::Append {
                first_version: next,
                changes: changes[1..3].to_vec(),
                generation: state.generation.0,
                epoch: state.epoch,
            }),
        )]),
    );
    write(
        &dir,
        "from_leader",
        "snapshot-new-cluster",
        &stream(&[from_leader(
            1,
            from_leader::Msg::Snapshot(
                (&ClusterState::founded(node(5400), Generation(0xf0e))).into(),
            ),
        )]),
    );
    println!("wrote the seed corpus to {}", dir.display());
}
