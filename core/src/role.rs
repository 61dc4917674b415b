//! A node's rules for its role: when to found a cluster, follow a leader or take over, and what
//! a new leader starts from. The node's shell asks the authority and follows the stream; these
//! functions decide, and are unit-tested without processes, sockets or clocks.
//!
//! The safety rules (docs/design.md, "Single-host protocol"):
//! - only a member, which holds every committed change, ever takes over, and only once the old
//!   leader can act no more (fenced, or gone after saying it leaves);
//! - a node that is not a member founds only when the authority says nobody leads and no
//!   member lives; otherwise it joins;
//! - a member that refused a stale or foreign state takes over only if it fenced its sender.

use std::time::Instant;

use crate::replication::{ChangeKind, ClockReading, ClusterState, Generation, Member};
use crate::types::{AuctionLength, Millis};

/// What a node does first in each round of its loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    /// A member without a leader: claim the lead in its turn.
    Claim,
    /// Not a member: ask the authority whether nobody leads and no member lives.
    LookForVacancy,
}

/// What a node does first: a member claims, anyone else looks.
pub fn opening(is_member: bool) -> Opening {
    if is_member {
        Opening::Claim
    } else {
        Opening::LookForVacancy
    }
}

/// How following the leader ended, as far as the next step depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Nothing answered as a leader.
    Unreachable,
    /// Something accepts connections but says nothing within the timeout. A member has fenced
    /// it already.
    Silent,
    /// The stream ended or broke; `leader` had sent the state, if any.
    Lost { leader: Option<Member> },
    /// This node could not record itself as a member, and forgot the state that listed it.
    Unrecorded,
    /// The leader offered a state this member must not adopt.
    Stale { leader: Member },
    /// The leader said it leaves on purpose.
    Left { leader: Option<Member> },
    /// This node was asked to stop.
    Stopped,
    /// The leader refused this node for good.
    Refused,
    /// The peer could not prove it holds the cluster secret.
    Impostor,
}

/// What a node does after following ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Stop the node: it was asked to.
    Stop,
    /// Stop the node with an error: it can never join (refused, or a stranger's cluster).
    Fail,
    /// Fence `leader` (`why` says how it failed); if that succeeds, claim the lead at once,
    /// otherwise wait and try again.
    FenceLeader { leader: Member, why: &'static str },
    /// Wait (for at most the timeout) until `leader`, which said it leaves, is gone; fence it if
    /// it lingers; then claim the lead at once.
    AwaitLeaderGone { leader: Member },
    /// Try again at once.
    RetryAtOnce,
    /// Wait, then try again; if `check_holder`, first fail if the leadership is held by
    /// something that is not a node (nothing will ever answer there).
    RetryLater { check_holder: bool },
}

/// The step after following ended with `end`. `is_member` says whether this node's state lists
/// it; `leadership_held` whether, before following, the authority said another process holds
/// the leadership.
pub fn after_follow(end: Ending, is_member: bool, leadership_held: bool) -> Next {
    match end {
        Ending::Stopped => Next::Stop,
        Ending::Refused => Next::Fail,
        // A node that never joined has the wrong secret, or a stranger holds the leadership:
        // either way there is nothing to wait for. A member keeps trying: its cluster may come
        // back.
        Ending::Impostor if !is_member => Next::Fail,
        Ending::Impostor => Next::RetryLater {
            check_holder: false,
        },
        // A leader that leaves on purpose is not fenced: members wait for it to be gone.
        Ending::Left {
            leader: Some(leader),
        } if is_member => Next::AwaitLeaderGone { leader },
        Ending::Left { .. } => Next::RetryLater {
            check_holder: false,
        },
        Ending::Lost {
            leader: Some(leader),
        } if is_member => Next::FenceLeader {
            leader,
            why: "lost",
        },
        Ending::Lost { .. } if is_member => Next::RetryAtOnce,
        Ending::Lost { .. } => Next::RetryLater {
            check_holder: false,
        },
        // A member has fenced the silent leader already.
        Ending::Silent if is_member => Next::RetryAtOnce,
        Ending::Silent => Next::RetryLater {
            check_holder: leadership_held,
        },
        // Only a member can take over; it does once the stale leader is fenced. One that
        // cannot fence it serves nothing rather than guess.
        Ending::Stale { leader } if is_member => Next::FenceLeader {
            leader,
            why: "stale",
        },
        Ending::Stale { .. } | Ending::Unrecorded => Next::RetryLater {
            check_holder: false,
        },
        Ending::Unreachable => Next::RetryLater {
            check_holder: leadership_held && !is_member,
        },
    }
}

/// The auction clock a new leader starts from at `now`: its last reading of the old leader's
/// clock plus the time this node measured since, re-anchored at `now`.
pub fn resume(reading: ClockReading, now: Instant) -> ClockReading {
    ClockReading {
        clock: reading.at(now),
        at: now,
    }
}

/// The first changes of a member `me` that takes over `state` from its leader: `epoch` (greater
/// than the state's), and the old leader's removal (it was fenced, or is gone).
pub fn takeover_changes(me: Member, state: &ClusterState, epoch: u64) -> Vec<ChangeKind> {
    vec![
        ChangeKind::Lead { leader: me, epoch },
        ChangeKind::Leave(state.leader.id),
    ]
}

/// The state a new cluster starts from at `now`, its clock, and the changes of its first batch.
/// A node that joined but outlived every member (`received`: its state and clock reading)
/// keeps the state it received rather than lose it; otherwise the cluster, `generation`, starts
/// empty and opens its first auction of `duration`. `epoch` is the one the authority gave this
/// founding (a received state's next epoch, if that is later).
pub fn founding_state(
    me: Member,
    received: Option<(ClusterState, ClockReading)>,
    duration: AuctionLength,
    generation: Generation,
    epoch: u64,
    now: Instant,
) -> (ClusterState, ClockReading, Vec<ChangeKind>) {
    match received {
        Some((state, clock)) => {
            // No member lives: every other member is dead.
            let epoch = epoch.max(state.epoch + 1);
            let mut initial = vec![ChangeKind::Join(me), ChangeKind::Lead { leader: me, epoch }];
            initial.extend(
                state
                    .members
                    .iter()
                    .filter(|m| m.id != me.id)
                    .map(|m| ChangeKind::Leave(m.id)),
            );
            (state, resume(clock, now), initial)
        }
        None => (
            ClusterState {
                epoch,
                ..ClusterState::founded(me, generation)
            },
            ClockReading {
                clock: Millis(0),
                at: now,
            },
            vec![crate::engine::start_change(duration)],
        ),
    }
}

#[cfg(test)]
// An `Instant` cannot be made without reading the clock: tests read it once for an origin and
// choose every other time from it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::replication::Change;
    use crate::types::NodeId;

    fn node(id: u16) -> Member {
        Member {
            id: NodeId(id),
            pid: u32::from(id),
            start_time: 1,
        }
    }

    #[test]
    fn only_a_member_claims_the_lead() {
        assert_eq!(opening(true), Opening::Claim);
        assert_eq!(opening(false), Opening::LookForVacancy);
    }

    #[test]
    fn a_member_takes_over_only_after_the_old_leader_is_fenced_or_gone() {
        let old = node(1);
        for end in [
            Ending::Lost { leader: Some(old) },
            Ending::Stale { leader: old },
        ] {
            assert!(
                matches!(after_follow(end, true, false), Next::FenceLeader { leader, .. } if leader == old),
                "{end:?}"
            );
        }
        assert_eq!(
            after_follow(Ending::Left { leader: Some(old) }, true, false),
            Next::AwaitLeaderGone { leader: old }
        );
    }

    #[test]
    fn a_node_that_is_not_a_member_never_fences_or_takes_over() {
        let old = node(1);
        for end in [
            Ending::Lost { leader: Some(old) },
            Ending::Stale { leader: old },
            Ending::Left { leader: Some(old) },
            Ending::Silent,
            Ending::Unrecorded,
            Ending::Unreachable,
        ] {
            assert!(
                matches!(after_follow(end, false, true), Next::RetryLater { .. }),
                "{end:?}"
            );
        }
    }

    #[test]
    fn a_stranger_on_the_leadership_fails_a_newcomer_but_not_a_member() {
        assert_eq!(after_follow(Ending::Impostor, false, true), Next::Fail);
        assert!(matches!(
            after_follow(Ending::Impostor, true, true),
            Next::RetryLater { .. }
        ));
        assert_eq!(
            after_follow(Ending::Unreachable, false, true),
            Next::RetryLater { check_holder: true }
        );
        assert_eq!(
            after_follow(Ending::Unreachable, true, true),
            Next::RetryLater {
                check_holder: false
            }
        );
    }

    #[test]
    fn a_stop_is_obeyed_and_a_refusal_is_final() {
        assert_eq!(after_follow(Ending::Stopped, true, false), Next::Stop);
        assert_eq!(after_follow(Ending::Refused, false, false), Next::Fail);
    }

    #[test]
    fn a_fresh_founder_opens_the_first_auction_at_clock_zero() {
        let (state, clock, initial) = founding_state(
            node(1),
            None,
            AuctionLength::from_secs(5).unwrap(),
            Generation(4),
            1,
            Instant::now(),
        );
        assert_eq!(state, ClusterState::founded(node(1), Generation(4)));
        assert_eq!(clock.clock, Millis(0));
        assert_eq!(initial.len(), 1);
    }

    #[test]
    fn a_joiner_that_outlived_every_member_founds_from_what_it_received() {
        let t0 = Instant::now();
        let mut received = ClusterState::founded(node(1), Generation(4));
        received.apply(&Change {
            at: Millis(1),
            kind: ChangeKind::Join(node(2)),
        });
        let reading = ClockReading {
            clock: Millis(7_000),
            at: t0,
        };
        let (mut state, clock, initial) = founding_state(
            node(3),
            Some((received, reading)),
            AuctionLength::from_secs(5).unwrap(),
            Generation(5),
            1,
            t0 + Duration::from_millis(500),
        );
        assert_eq!(
            clock.clock,
            Millis(7_500),
            "the clock resumes, not restarts"
        );
        for kind in initial {
            state.apply(&Change {
                at: Millis(2),
                kind,
            });
        }
        assert_eq!(state.generation, Generation(4), "the same cluster");
        assert_eq!(state.leader, node(3));
        assert_eq!(state.members, vec![node(3)]);
        assert_eq!(state.epoch, 2);
    }

    #[test]
    fn a_new_leader_resumes_the_clock_from_its_last_reading_plus_the_time_since() {
        let t0 = Instant::now();
        let resumed = resume(
            ClockReading {
                clock: Millis(10_000),
                at: t0,
            },
            t0 + Duration::from_millis(1_500),
        );
        assert_eq!(resumed.clock, Millis(11_500));
        assert_eq!(resumed.at, t0 + Duration::from_millis(1_500));
    }
}
