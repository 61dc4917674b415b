//! A replica's rules for the stream of its leader, without I/O: which messages it takes, which
//! it refuses, and what it acknowledges. The replica's shell (the product's `replica` module)
//! reads each message from the wire, hands it to [`LeaderStream::take`] with the time it
//! arrived, and acknowledges the state it returns.

use std::time::{Duration, Instant};

use tracing::{debug, info};

use crate::engine::{Append, Reads, Timing};
use crate::replication::{ChangeKind, ClockReading, ClusterState, Member};
use crate::types::Millis;

/// How long a member hears nothing from its leader before it gives up on it: fences it and
/// claims the lead.
///
/// Where a fence stops the leader's process ([`Reads::Local`]: one host, SIGKILL), the timeout.
/// Where a fence only excludes ([`Reads::Barrier`]: etcd, across hosts), a member cut off from
/// a leader that still works races that leader's removal of it in etcd: were both at the
/// timeout, the member would usually win, and a replica cut off from the other nodes but not
/// from etcd would depose a leader that serves with its other members, and lead alone (found by
/// `tests/multi_host_faults.rs`). So the leader gives up first: it removes a member whose oldest
/// unacknowledged message is older than [`member_timeout`], checked at each heartbeat. That
/// message left at most a heartbeat after the last one the member heard, so a leader that works
/// has removed the member by `member_timeout` plus two heartbeats (plus an etcd write) after the
/// member last heard from it. The member waits one heartbeat more than that, and its takeover,
/// which needs etcd to list it, then fails (docs/multi-host.md, rules 3 and 4). A leader that is
/// really gone is replaced a heartbeat after the timeout (`member_timeout` is at most two
/// heartbeats under it), within the failover target of the timeout plus 200 ms at the
/// defaults.
pub fn silence_limit(timing: &Timing, reads: Reads) -> Duration {
    match reads {
        Reads::Local => timing.timeout,
        Reads::Barrier => member_timeout(timing, reads) + timing.heartbeat * 3,
    }
}

/// How long the leader waits for a member's ack before it fences the member: the timeout on one
/// host; across hosts two heartbeats less (at least half the timeout), so that a leader that
/// works removes a member cut off from it before that member gives up on the leader (see
/// [`silence_limit`]).
pub fn member_timeout(timing: &Timing, reads: Reads) -> Duration {
    match reads {
        Reads::Local => timing.timeout,
        Reads::Barrier => timing
            .timeout
            .saturating_sub(timing.heartbeat * 2)
            .max(timing.timeout / 2),
    }
}

/// What a replica holds: the replicated state, and the latest reading of its leader's auction
/// clock, from which it resumes the clock if it takes over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub state: ClusterState,
    pub clock: ClockReading,
}

/// One message of the leader, read from the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// The whole state, first on every stream.
    Snapshot(ClusterState),
    /// A batch of changes.
    Append(Append),
    /// The leader is alive; its auction clock reads `clock`.
    Heartbeat { clock: Millis },
}

/// Why a replica refuses a message of its leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// The message breaks the protocol; the stream ends.
    Protocol(String),
    /// The snapshot is another cluster's or older than the committed state this member holds;
    /// nothing of it is adopted or acknowledged.
    Stale(String),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Protocol(why) | Self::Stale(why) => f.write_str(why),
        }
    }
}

/// A replica's side of one stream after the handshake, without the I/O: it checks each message
/// of the proven leader and applies it to the replica's state. The replica's shell feeds it
/// and acknowledges what it returns.
#[derive(Debug)]
pub struct LeaderStream {
    /// This replica: while the state it holds lists it as a member, that state holds committed
    /// changes, and a snapshot may replace it only with a newer state of the same cluster.
    me: Member,
    /// The leader that proved itself in this stream's handshake; its snapshot must name it.
    proven: Member,
    /// Whether this stream has delivered its snapshot: the state from an earlier stream may be
    /// behind, so changes and acknowledgements wait for this one's.
    has_snapshot: bool,
}

impl LeaderStream {
    /// A stream of replica `me`, whose leader proved to be `proven`, before its snapshot.
    pub fn new(me: Member, proven: Member) -> Self {
        Self {
            me,
            proven,
            has_snapshot: false,
        }
    }

    /// The leader whose state this replica holds: the proven one, once its snapshot arrived.
    pub fn leader(&self) -> Option<Member> {
        self.has_snapshot.then_some(self.proven)
    }

    /// Takes one message of the leader, received at `now`, into `held`, and returns the state to
    /// acknowledge. Every message also reads the leader's auction clock (a change's time, a
    /// heartbeat's clock), which `held` keeps for a takeover.
    ///
    /// # Errors
    ///
    /// [`StreamError::Stale`] for a snapshot that this member must not adopt: another
    /// cluster's, or older than the state it holds (see [`ClusterState::refuses`]); `held` is
    /// left as it was. [`StreamError::Protocol`] for what else is wrong with a message, which
    /// ends the stream: a snapshot that names another leader; changes or a heartbeat before the
    /// snapshot; changes of another cluster or epoch, that do not start right after the state's
    /// version, or one that makes another node the leader or starts no later epoch (the changes
    /// before it stay applied, as they would have been in a batch of their own).
    pub fn take<'s>(
        &mut self,
        held: &'s mut Option<Held>,
        message: Received,
        now: Instant,
    ) -> Result<&'s ClusterState, StreamError> {
        let protocol = |why: String| StreamError::Protocol(why);
        match message {
            Received::Snapshot(new) => {
                if new.leader != self.proven {
                    return Err(protocol("the state names another leader".into()));
                }
                if let Some(h) = held.as_ref().filter(|h| h.state.has_member(&self.me))
                    && let Some(why) = h.state.refuses(&new)
                {
                    return Err(StreamError::Stale(format!(
                        "leader {} offered a state that would replace committed changes: {why}",
                        new.leader.id
                    )));
                }
                info!(
                    leader = %new.leader.id,
                    epoch = new.epoch,
                    version = new.version,
                    "received the full state"
                );
                self.has_snapshot = true;
                // Only this leader's readings from now on: another leader's clock may have run
                // ahead of this one's, and resuming from it could close an auction early.
                let clock = ClockReading {
                    clock: new.clock,
                    at: now,
                };
                Ok(&held.insert(Held { state: new, clock }).state)
            }
            Received::Append(append) => {
                let Some(Held { state, clock }) = held.as_mut().filter(|_| self.has_snapshot)
                else {
                    return Err(protocol("changes before the state".into()));
                };
                if (append.generation, append.epoch) != (state.generation, state.epoch) {
                    return Err(protocol(format!(
                        "changes of generation {} epoch {} for a state of {} epoch {}",
                        append.generation, append.epoch, state.generation, state.epoch
                    )));
                }
                // The snapshot's version was bounded, and each change adds one.
                if append.first_version != state.version.saturating_add(1) {
                    return Err(protocol(format!(
                        "changes start at version {} but this replica is at {}",
                        append.first_version, state.version
                    )));
                }
                for change in append.changes {
                    // Only a leader that takes over makes a Lead change, naming itself, and
                    // starting an epoch later than every one before.
                    if let ChangeKind::Lead { leader, epoch } = change.kind {
                        if leader != self.proven {
                            return Err(protocol("a change names another leader".into()));
                        }
                        if epoch <= state.epoch {
                            return Err(protocol(format!(
                                "a lead change to epoch {epoch}, not after epoch {}",
                                state.epoch
                            )));
                        }
                    }
                    state.apply(&change);
                    clock.observe(change.at, now);
                }
                debug!(version = state.version, "applied");
                Ok(state)
            }
            Received::Heartbeat { clock: reading } => {
                let Some(Held { state, clock }) = held.as_mut().filter(|_| self.has_snapshot)
                else {
                    return Err(protocol("a heartbeat before the state".into()));
                };
                clock.observe(reading, now);
                Ok(state)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Across hosts a member gives up on its leader only after a leader that works would have
    /// removed it (its member timeout, plus two heartbeats: one for the first unacknowledged
    /// message, one for the check), with a heartbeat to spare; and soon after the timeout.
    #[test]
    fn across_hosts_a_member_gives_up_on_its_leader_after_the_leader_would_have_removed_it() {
        let ms = Duration::from_millis;
        for (heartbeat, timeout) in [(50, 800), (100, 1_000), (200, 500), (10, 100), (50, 100)] {
            let timing = Timing {
                heartbeat: ms(heartbeat),
                timeout: ms(timeout),
                spin: Duration::ZERO,
            };
            assert_eq!(silence_limit(&timing, Reads::Local), timing.timeout);
            assert_eq!(member_timeout(&timing, Reads::Local), timing.timeout);
            let removed_by = member_timeout(&timing, Reads::Barrier) + 2 * timing.heartbeat;
            let limit = silence_limit(&timing, Reads::Barrier);
            assert!(
                limit >= removed_by + timing.heartbeat,
                "{timing:?}: gives up at {limit:?}, removed by {removed_by:?}"
            );
            assert!(member_timeout(&timing, Reads::Barrier) >= timing.timeout / 2);
            if timing.timeout >= 4 * timing.heartbeat {
                assert_eq!(limit, timing.timeout + timing.heartbeat, "{timing:?}");
            }
        }
    }
}
