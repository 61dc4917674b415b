//! A replication stream as the leader reads it: a stream of `auction::pb::FromReplica`
//! messages (the input is read as length-delimited messages), through the code of
//! `ReplicationService::follow`:
//! 1. `handshake::Joined::read` on the first message: it must accept exactly a `Join` whose
//!    node id fits a port, with a challenge of `handshake::NONCE_LEN` bytes, and return that
//!    node;
//! 2. the leader answers with its own challenge (fixed here: `NONCE`), and
//!    `handshake::Challenged::check` must accept the next message if and only if it is a
//!    `Prove` with the right proof. The
//!    seeds carry the right proof; the fuzzer cannot forge one, so the rest is reached only
//!    from a seed's Join and Prove;
//! 3. then `Ack`s, which go through the leader's bookkeeping (`replication::Followers`).
//!
//! Anything else ends the stream. The check that the joining pid holds the connection needs a
//! real socket, so it is left out.
#![no_main]

use std::time::Duration;

use auction::handshake::{self, Joined, NONCE_LEN};
use auction::pb::{FromReplica, from_replica::Msg};
use auction::replication::{Change, ChangeKind, Followers};
use auction::types::Millis;
use auction_fuzz::{NONCE, cluster_secret, epoch, messages, open_state};
use libfuzzer_sys::fuzz_target;

const CONN: u64 = 1;

fuzz_target!(|data: &[u8]| {
    let mut stream = messages::<FromReplica>(data);
    let first = stream.next();
    // What a valid Join says: its node's identity and its challenge.
    let sent = match &first {
        Some(FromReplica {
            msg: Some(Msg::Join(join)),
        }) => join
            .node
            .filter(|n| n.id <= u32::from(u16::MAX) && join.nonce.len() == NONCE_LEN)
            .map(|n| (n, join.nonce.clone())),
        _ => None,
    };
    let joined = match Joined::read(first) {
        Ok(joined) => joined,
        Err(e) => {
            assert!(sent.is_none(), "{sent:?} refused: {e:?}");
            return;
        }
    };
    let (node, nonce) = (joined.replica(), joined.nonce().to_vec());
    let Some((identity, sent_nonce)) = sent else {
        panic!("an invalid Join was accepted as {node:?}");
    };
    assert_eq!(u32::from(node.id.0), identity.id);
    assert_eq!(
        (node.pid, node.start_time),
        (identity.pid, identity.start_time)
    );
    assert_eq!(nonce, sent_nonce);

    let secret = cluster_secret();
    let (challenged, _) = joined.challenge(&secret, open_state().leader, NONCE);
    let proof = stream.next();
    let right = handshake::replica_proof(&secret, &NONCE, &nonce, &node);
    let is_right =
        matches!(&proof, Some(FromReplica { msg: Some(Msg::Prove(p)) }) if p.proof == right);
    let verified = challenged.check(&secret, proof) == Ok(node);
    assert_eq!(verified, is_right, "a proof was judged wrongly");
    if !verified {
        return;
    }

    // The leader (5400) sends the joiner its state; once the joiner has acknowledged it, the
    // leader commits its Join. The leader refuses its own id, so that one is only tracked.
    let mut state = open_state();
    let t0 = epoch();
    let timeout = Duration::from_millis(1_000);
    let mut followers = Followers::default();
    followers.attach(CONN, node, ());
    followers.on_sent(CONN, t0).expect("attached");
    for (i, message) in stream.enumerate() {
        let Some(Msg::Ack(ack)) = message.msg else {
            break;
        };
        let now = t0 + Duration::from_millis(i as u64 * 10);
        let before = followers
            .get(CONN)
            .map(|f| (f.acked, f.version))
            .expect("attached");
        let first = followers.on_ack(CONN, ack.seq, ack.version);
        let f = followers.get(CONN).expect("attached");
        assert!(f.acked <= f.sent, "acked {} of {} sent", f.acked, f.sent);
        assert!(
            f.acked >= before.0 && f.version >= before.1,
            "acks went backwards"
        );
        assert_eq!(f.waiting_since().is_none(), f.acked == f.sent);
        assert_eq!(first, before.0 == 0 && f.acked >= 1);
        if first && node.id != state.leader.id && !state.has_member(&node) {
            state.apply(&Change {
                at: Millis(3_000),
                kind: ChangeKind::Join(node),
            });
        }
        let _ = followers.committed(&state, state.version);
        for (late, _) in followers.late(&state, now, timeout) {
            assert!(
                state.followers().any(|m| *m == late),
                "{late:?} is no follower"
            );
        }
        followers.on_sent(CONN, now).expect("attached");
    }
    followers.detach(CONN).expect("attached");
});
