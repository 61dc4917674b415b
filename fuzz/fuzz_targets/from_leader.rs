//! A replication stream as a replica reads it: a stream of `auction::pb::FromLeader` messages
//! (the input is read as length-delimited messages), through the code of
//! `auction::replica::follow`:
//! - a `Challenge` first is the leader's half of the handshake, checked by
//!   `handshake::Joining::answer` against the replica's challenge (fixed here: `NONCE`). It must
//!   accept exactly the right proof from a valid node with a challenge of
//!   `handshake::NONCE_LEN` bytes, and nothing else, and then answer with the replica's right
//!   proof. The replica, member 5401, keeps its state (`open_state`) from an
//!   earlier stream, and a `replica::LeaderStream` for the proven leader then takes the rest;
//! - without a leading `Challenge`, the messages go to a `LeaderStream` of leader 5400 that has
//!   already taken `open_state` as its snapshot, so a lone `Append` or heartbeat is taken too.
//!
//! A message the `LeaderStream` refuses ends the stream. After every message it takes, the state
//! must still survive the wire. An `Append` it takes must start right after the state's version,
//! add one version per change, and move the clock to its latest change if that is later. A
//! snapshot that replaces a state this member holds must be of the same cluster and no older.
#![no_main]

use auction::handshake::{self, Joining, NONCE_LEN};
use auction::pb::{self, FromLeader, from_leader::Msg};
use auction::replica::{Held, LeaderStream, take_wire};
use auction::replication::{Change, ClockReading, Member};
use auction::types::Millis;
use auction_fuzz::{
    NONCE, check_change_round_trip, check_state, cluster_secret, messages, open_state,
};
use libfuzzer_sys::fuzz_target;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let mut messages = messages::<FromLeader>(data).peekable();
    let me = auction_fuzz::node(5401);
    let mut state = Some(Held {
        state: open_state(),
        clock: ClockReading {
            clock: open_state().clock,
            at: Instant::now(),
        },
    });
    let mut leader_stream = match messages.peek() {
        Some(FromLeader {
            msg: Some(Msg::Challenge(_)),
            ..
        }) => {
            let Some(FromLeader {
                msg: Some(Msg::Challenge(challenge)),
                ..
            }) = messages.next()
            else {
                return;
            };
            match check_handshake(me, challenge) {
                Some(leader) => LeaderStream::new(me, leader),
                None => return,
            }
        }
        _ => {
            let mut leader_stream = LeaderStream::new(me, open_state().leader);
            let snapshot = Msg::Snapshot(pb::State::from(&open_state()));
            take_wire(
                &mut leader_stream,
                &mut state,
                Some(snapshot),
                Instant::now(),
            )
            .expect("a replica takes its proven leader's valid snapshot");
            leader_stream
        }
    };
    for message in messages {
        let before = state.as_ref().map(|h| (h.state.version, h.state.clock));
        let held_before = state
            .as_ref()
            .filter(|h| h.state.has_member(&me))
            .map(|h| h.state.clone());
        let is_snapshot = matches!(message.msg, Some(Msg::Snapshot(_)));
        // What a taken Append must do: start right after the state's version, add one version
        // per change, and move the clock to its latest change if that is later.
        let appended = match &message.msg {
            Some(Msg::Append(append)) => {
                let mut latest = Millis(0);
                for change in &append.changes {
                    if let Ok(change) = Change::try_from(change.clone()) {
                        check_change_round_trip(&change);
                        latest = latest.max(change.at);
                    }
                }
                Some((append.first_version, append.changes.len() as u64, latest))
            }
            _ => None,
        };
        let Ok(taken) = take_wire(&mut leader_stream, &mut state, message.msg, Instant::now())
        else {
            return;
        };
        if is_snapshot && let Some(mine) = held_before {
            assert_eq!(
                mine.refuses(taken),
                None,
                "a member adopted a foreign or older state"
            );
        }
        assert_eq!(leader_stream.leader(), Some(taken.leader));
        if let (Some((version, clock)), Some((first, n, latest))) = (before, appended) {
            assert_eq!(
                first,
                version + 1,
                "an Append that does not follow on was taken"
            );
            assert_eq!(taken.version, version + n, "an Append of {n} changes");
            assert_eq!(taken.clock, clock.max(latest), "the clock after an Append");
        }
        check_state(taken);
    }
});

/// Runs replica `me`'s half of the handshake on the leader's challenge, and checks that it
/// accepted exactly the right proof and answered with its own. Returns the proven leader.
fn check_handshake(me: Member, c: pb::Challenge) -> Option<Member> {
    let first = FromLeader {
        seq: 0,
        msg: Some(Msg::Challenge(c.clone())),
    };
    let secret = cluster_secret();
    let well_formed = c.leader.and_then(|l| Member::try_from(l).ok());
    let right = well_formed
        .filter(|_| c.nonce.len() == NONCE_LEN)
        .map(|leader| {
            let proof = handshake::leader_proof(&secret, &NONCE, &c.nonce, &leader);
            (leader, proof)
        });
    match Joining::with_nonce(me, NONCE).answer(&secret, first) {
        Ok((leader, prove)) => {
            let answer = handshake::replica_proof(&secret, &c.nonce, &NONCE, &me);
            assert_eq!(
                prove.msg,
                Some(pb::from_replica::Msg::Prove(pb::Prove { proof: answer })),
                "the replica's proof is not over the leader's challenge"
            );
            assert_eq!(
                right,
                Some((leader, c.proof)),
                "a wrong proof or leader was accepted"
            );
            Some(leader)
        }
        Err(_) => {
            assert!(
                right.is_none_or(|(_, proof)| proof != c.proof),
                "the right proof was refused"
            );
            None
        }
    }
}
