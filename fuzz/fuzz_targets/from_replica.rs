//! A replication stream as the leader reads it: a stream of `auction::pb::FromReplica`
//! messages (the input is read as length-delimited messages). The first must be a `Join` whose
//! node identity `Member::try_from` accepts; every later one an `Ack` that the leader's
//! bookkeeping (`auction::replication::Followers`) takes in. Anything else ends the stream, as
//! in `ReplicationService::follow`.
#![no_main]

use std::time::Duration;

use auction::pb::{FromReplica, from_replica::Msg};
use auction::replication::{Change, ChangeKind, Followers, Member};
use auction::types::Millis;
use auction_fuzz::{epoch, messages, open_state};
use libfuzzer_sys::fuzz_target;

const CONN: u64 = 1;

fuzz_target!(|data: &[u8]| {
    let mut stream = messages::<FromReplica>(data);
    let Some(FromReplica {
        msg: Some(Msg::Join(join)),
    }) = stream.next()
    else {
        return;
    };
    let Some(identity) = join.node else {
        return;
    };
    let node = match Member::try_from(identity) {
        Ok(m) => m,
        Err(_) => {
            assert!(identity.id > u32::from(u16::MAX), "{identity:?} refused");
            return;
        }
    };
    assert_eq!(u32::from(node.id.0), identity.id);
    assert_eq!(
        (node.pid, node.start_time),
        (identity.pid, identity.start_time)
    );

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
