//! A replication stream as a replica reads it: a stream of `auction::pb::FromLeader` messages
//! (the input is read as length-delimited messages), handled as `auction::replica::follow`
//! does:
//! - a `Challenge` first is the leader's half of the handshake: its identity must pass
//!   `Member::try_from`, its challenge must have `auth::NONCE_LEN` bytes, and
//!   `ClusterSecret::verify_leader` must accept its proof over the replica's challenge (fixed
//!   here: `NONCE`). It must accept exactly the right proof, and nothing else. A `Challenge`
//!   later ends the stream;
//! - a `Snapshot` replaces the state if `ClusterState::try_from` accepts it and it names the
//!   proven leader;
//! - an `Append` must start right after the current version; each change is validated with
//!   `Change::try_from` and applied.
//!
//! A message the replica refuses ends the stream. Unlike a real stream, the replica starts
//! after a handshake with leader 5400, holding a valid state (see `open_state`), so a lone
//! `Snapshot` or `Append` is taken too. After every message, the state must still survive the
//! wire.
#![no_main]

use auction::auth::NONCE_LEN;
use auction::pb::{FromLeader, from_leader::Msg};
use auction::replication::{Change, ClusterState, Member};
use auction_fuzz::{
    NONCE, check_change_round_trip, check_state, cluster_secret, messages, open_state,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut state = open_state();
    let mut proven = state.leader;
    for (i, message) in messages::<FromLeader>(data).enumerate() {
        match message.msg {
            Some(Msg::Challenge(c)) if i == 0 => {
                let Some(Ok(leader)) = c.leader.map(Member::try_from) else {
                    return;
                };
                if c.nonce.len() != NONCE_LEN {
                    return;
                }
                let secret = cluster_secret();
                let right = secret.leader_proof(&NONCE, &c.nonce, &leader);
                let verified = secret.verify_leader(&NONCE, &c.nonce, &leader, &c.proof);
                assert_eq!(verified, c.proof == right, "a proof was judged wrongly");
                if !verified {
                    return;
                }
                proven = leader;
            }
            Some(Msg::Challenge(_)) => return,
            Some(Msg::Snapshot(snapshot)) => match ClusterState::try_from(snapshot) {
                Ok(new) if new.leader == proven => state = new,
                _ => return,
            },
            Some(Msg::Append(append)) => {
                // The same test as in `follow`.
                if append.first_version != state.version.saturating_add(1) {
                    return;
                }
                for change in append.changes {
                    let Ok(change) = Change::try_from(change) else {
                        return;
                    };
                    check_change_round_trip(&change);
                    let (version, clock) = (state.version, state.clock);
                    state.apply(&change);
                    assert_eq!(state.version, version + 1);
                    assert_eq!(state.clock, clock.max(change.at));
                }
            }
            Some(Msg::Heartbeat(_)) => {}
            None => return,
        }
        check_state(&state);
    }
});
