//! A replication stream as a replica reads it: a stream of `auction::pb::FromLeader` messages
//! (the input is read as length-delimited messages), applied as `auction::replica::follow`
//! does: a `Snapshot` replaces the state if `ClusterState::try_from` accepts it; an `Append`
//! must start right after the current version, and each change is validated with
//! `Change::try_from` and applied. A message the replica refuses ends the stream.
//!
//! Unlike a real stream, the replica starts from a valid state (see `open_state`), so a lone
//! `Append` is applied too. After every message the state must still survive the wire.
#![no_main]

use auction::pb::{FromLeader, from_leader::Msg};
use auction::replication::{Change, ClusterState};
use auction_fuzz::{check_change_round_trip, check_state, messages, open_state};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut state = open_state();
    for message in messages::<FromLeader>(data) {
        match message.msg {
            Some(Msg::Snapshot(snapshot)) => match ClusterState::try_from(snapshot) {
                Ok(new) => state = new,
                Err(_) => return,
            },
            Some(Msg::Append(append)) => {
                // The same test as in `follow`.
                if append.first_version != state.version + 1 {
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
