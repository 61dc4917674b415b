//! The replicated state and the leader's pure bookkeeping of its followers: versions, acks,
//! members, and who is late; the cluster's identity and the auction clock's readings. No sockets
//! and no clock: the shells pass `Instant`s in.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use crate::auction::{Decision, Machine, Op};
use crate::types::{Millis, NodeId, RequestId};

/// A node process: its id and what it takes to fence it without ever hitting another process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    pub id: NodeId,
    pub pid: u32,
    /// Process start time in clock ticks since boot, so a reused pid is never taken for the node.
    pub start_time: u64,
}

/// What a change does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// A client request; `id` is `None` for an operator's command typed into the leader.
    Client { id: Option<RequestId>, op: Op },
    /// A node finished its state sync and becomes the last member.
    Join(Member),
    /// A member is gone. It was fenced before this change was made.
    Leave(NodeId),
    /// A member took over the leadership, starting `epoch`, which is greater than every epoch
    /// before it: on one host the next number; with etcd, the revision of the transaction that
    /// made it leader (docs/design.md).
    Lead { leader: Member, epoch: u64 },
    /// Only moves the auction clock to the change's time: the leader commits one before it
    /// tells a reader that the deadline has passed, so that fact is on every member.
    Tick,
}

/// One change of the replicated state, with the leader's clock when it decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub at: Millis,
    pub kind: ChangeKind,
}

/// A cluster's identity: a random number drawn when it was founded. Every snapshot and change
/// carries it, so a node never takes a state from another cluster for a newer one of its own
/// (docs/design.md, "State never goes backwards").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Everything the members replicate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterState {
    /// Which cluster this is; fixed when it was founded.
    pub generation: Generation,
    /// The number of changes applied since the cluster was founded.
    pub version: u64,
    /// Grows by one at every change of leader.
    pub epoch: u64,
    /// The auction clock: the largest change time applied, so replicated time never runs
    /// backwards across leaders.
    pub clock: Millis,
    pub leader: Member,
    /// In the order they joined: the original hand-in's `leaderQueue`. The leader is one of them.
    pub members: Vec<Member>,
    pub machine: Machine,
}

impl ClusterState {
    /// The state of a new cluster, `generation`, whose only member is its founder.
    pub fn founded(founder: Member, generation: Generation) -> Self {
        Self {
            generation,
            version: 0,
            epoch: 1,
            clock: Millis(0),
            leader: founder,
            members: vec![founder],
            machine: Machine::default(),
        }
    }

    /// Applies one change; client changes return their decision.
    pub fn apply(&mut self, change: &Change) -> Option<Decision> {
        self.version += 1;
        self.clock = self.clock.max(change.at);
        match &change.kind {
            ChangeKind::Client { id, op } => Some(self.machine.apply(self.clock, *id, op)),
            ChangeKind::Join(node) => {
                self.members.retain(|m| m.id != node.id);
                self.members.push(*node);
                None
            }
            ChangeKind::Leave(id) => {
                self.members.retain(|m| m.id != *id);
                None
            }
            ChangeKind::Lead { leader, epoch } => {
                self.epoch = *epoch;
                self.leader = *leader;
                None
            }
            ChangeKind::Tick => None,
        }
    }

    /// Why a node that holds this state must not adopt `offered` in its place, if it must not:
    /// `offered` is another cluster's, or older (a lower epoch, or the same epoch and a lower
    /// version). A newer epoch may have fewer versions: its leader took over with every
    /// committed change and dropped what was never committed.
    pub fn refuses(&self, offered: &ClusterState) -> Option<String> {
        if offered.generation != self.generation {
            return Some(format!(
                "it is another cluster's (generation {}, this node's is {})",
                offered.generation, self.generation
            ));
        }
        if (offered.epoch, offered.version) < (self.epoch, self.version) {
            return Some(format!(
                "it is older (epoch {} version {}, this node holds epoch {} version {})",
                offered.epoch, offered.version, self.epoch, self.version
            ));
        }
        None
    }

    /// The members that are not the leader, in succession order.
    pub fn followers(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.id != self.leader.id)
    }

    /// Whether this exact process (id, pid and start time) is a member.
    pub fn has_member(&self, node: &Member) -> bool {
        self.members.contains(node)
    }

    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// `node`'s place in line to succeed the current leader: 0 is first.
    pub fn succession_rank(&self, node: NodeId) -> Option<usize> {
        self.followers().position(|m| m.id == node)
    }
}

/// A reading of the auction clock and the instant, on this node's monotonic clock, at which it
/// was taken (by the leader) or received (by a replica).
///
/// The auction clock advances at the rate of the monotonic clock, and a reading is received
/// after it was taken, so `clock + elapsed since` never runs ahead of the leader's clock had it
/// gone on: a successor resumes from there with no jump forward, and behind by no more than the
/// reading's time in transit. Auctions therefore never close early, and a failover delays their
/// close by about that transit time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockReading {
    pub clock: Millis,
    pub at: Instant,
}

impl ClockReading {
    /// The auction clock at `now`, extrapolated from this reading.
    pub fn at(&self, now: Instant) -> Millis {
        self.clock.after(now.saturating_duration_since(self.at))
    }

    /// Takes `clock`, received at `now`, if it reads later than this reading extrapolates to:
    /// a reading that waited in a buffer while this node was stalled reads earlier.
    pub fn observe(&mut self, clock: Millis, now: Instant) {
        if clock >= self.at(now) {
            *self = Self { clock, at: now };
        }
    }
}

/// Identifies one replication stream on the leader.
pub type ConnId = u64;

/// The leader's view of one replica stream.
#[derive(Debug)]
pub struct Follower<C> {
    pub node: Member,
    /// The shell's handle for sending on this stream.
    pub conn: C,
    /// Messages sent on the stream; the snapshot is message 1.
    pub sent: u64,
    /// The last message the replica acknowledged.
    pub acked: u64,
    /// The state version the replica has applied.
    pub version: u64,
    /// Send times of the messages not yet acknowledged, oldest first, as (seq, when).
    unacked: VecDeque<(u64, Instant)>,
}

impl<C> Follower<C> {
    /// Whether the replica has applied its snapshot, and so follows every change.
    pub fn synced(&self) -> bool {
        self.acked >= 1
    }

    /// When the oldest message not yet acknowledged was sent.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.unacked.front().map(|(_, t)| *t)
    }
}

/// Why a member must be fenced and removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lateness {
    /// Connected, but it has not acknowledged a message for longer than the ack timeout.
    Unresponsive,
    /// A member in the state that has had no stream to this leader for longer than the timeout.
    Absent,
}

/// The leader's bookkeeping of every replica stream and of the members that have none.
#[derive(Debug)]
pub struct Followers<C> {
    by_conn: HashMap<ConnId, Follower<C>>,
    /// Members of the state with no stream to this leader, since when.
    absent_since: HashMap<NodeId, Instant>,
}

impl<C> Default for Followers<C> {
    fn default() -> Self {
        Self {
            by_conn: HashMap::new(),
            absent_since: HashMap::new(),
        }
    }
}

impl<C> Followers<C> {
    pub fn attach(&mut self, conn_id: ConnId, node: Member, conn: C) {
        self.absent_since.remove(&node.id);
        self.by_conn.insert(
            conn_id,
            Follower {
                node,
                conn,
                sent: 0,
                acked: 0,
                version: 0,
                unacked: VecDeque::new(),
            },
        );
    }

    pub fn detach(&mut self, conn_id: ConnId) -> Option<Follower<C>> {
        self.by_conn.remove(&conn_id)
    }

    pub fn get(&self, conn_id: ConnId) -> Option<&Follower<C>> {
        self.by_conn.get(&conn_id)
    }

    /// The stream of the node with this id, if it has one.
    pub fn conn_of(&self, id: NodeId) -> Option<ConnId> {
        self.by_conn
            .iter()
            .find(|(_, f)| f.node.id == id)
            .map(|(c, _)| *c)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ConnId, &mut Follower<C>)> {
        self.by_conn.iter_mut().map(|(c, f)| (*c, f))
    }

    /// Records a message sent on `conn_id` and returns its sequence number.
    pub fn on_sent(&mut self, conn_id: ConnId, now: Instant) -> Option<u64> {
        let f = self.by_conn.get_mut(&conn_id)?;
        f.sent += 1;
        f.unacked.push_back((f.sent, now));
        Some(f.sent)
    }

    /// Records an ack. Returns `true` when it was the replica's first (its snapshot is applied).
    pub fn on_ack(&mut self, conn_id: ConnId, seq: u64, version: u64) -> bool {
        let Some(f) = self.by_conn.get_mut(&conn_id) else {
            return false;
        };
        let first = !f.synced() && seq >= 1;
        f.acked = f.acked.max(seq.min(f.sent));
        f.version = f.version.max(version);
        while f.unacked.front().is_some_and(|(s, _)| *s <= f.acked) {
            f.unacked.pop_front();
        }
        first
    }

    /// Whether every follower of `state` has applied `version`.
    pub fn committed(&self, state: &ClusterState, version: u64) -> bool {
        state.followers().all(|m| {
            self.by_conn
                .values()
                .any(|f| f.node == *m && f.synced() && f.version >= version)
        })
    }

    /// Restarts every waiting clock at `now`. The leader calls it after it was itself stalled
    /// (paused, or starved of CPU): the silence it measured was its own, not its followers'.
    pub fn forgive(&mut self, now: Instant) {
        for f in self.by_conn.values_mut() {
            for (_, t) in &mut f.unacked {
                *t = now;
            }
        }
        for t in self.absent_since.values_mut() {
            *t = now;
        }
    }

    /// Members that must be fenced: unresponsive for longer than `timeout`, or absent for longer.
    /// Also starts the absence clock of members without a stream.
    pub fn late(
        &mut self,
        state: &ClusterState,
        now: Instant,
        timeout: Duration,
    ) -> Vec<(Member, Lateness)> {
        let mut late = Vec::new();
        self.absent_since
            .retain(|id, _| state.followers().any(|m| m.id == *id));
        for m in state.followers() {
            match self.by_conn.values().find(|f| f.node == *m) {
                Some(f) => {
                    if f.waiting_since()
                        .is_some_and(|t| now.saturating_duration_since(t) > timeout)
                    {
                        late.push((*m, Lateness::Unresponsive));
                    }
                }
                None => {
                    let since = *self.absent_since.entry(m.id).or_insert(now);
                    if now.saturating_duration_since(since) > timeout {
                        late.push((*m, Lateness::Absent));
                    }
                }
            }
        }
        late
    }
}

#[cfg(test)]
// An `Instant` cannot be made without reading the clock: tests read it once for an origin and
// choose every other time from it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::types::{Amount, BidderId};

    /// A node process with a plausible identity, for tests.
    fn node(id: u16) -> Member {
        Member {
            id: NodeId(id),
            pid: 1000 + u32::from(id),
            start_time: 7,
        }
    }
    fn change(kind: ChangeKind) -> Change {
        Change {
            at: Millis(5),
            kind,
        }
    }
    fn three_members() -> ClusterState {
        let mut s = ClusterState::founded(node(1), Generation(7));
        s.apply(&change(ChangeKind::Join(node(2))));
        s.apply(&change(ChangeKind::Join(node(3))));
        s
    }

    #[test]
    fn membership_changes_keep_join_order() {
        let mut s = three_members();
        assert_eq!(s.version, 2);
        assert_eq!(s.succession_rank(NodeId(2)), Some(0));
        assert_eq!(s.succession_rank(NodeId(3)), Some(1));
        assert_eq!(s.succession_rank(NodeId(1)), None);
        s.apply(&change(ChangeKind::Lead {
            leader: node(2),
            epoch: 2,
        }));
        s.apply(&change(ChangeKind::Leave(NodeId(1))));
        assert_eq!(s.epoch, 2);
        assert_eq!(s.leader, node(2));
        let ids: Vec<u16> = s.members.iter().map(|m| m.id.0).collect();
        assert_eq!(ids, vec![2, 3]);
        assert_eq!(s.succession_rank(NodeId(3)), Some(0));
    }

    #[test]
    fn the_replicated_clock_never_runs_backwards() {
        let mut s = ClusterState::founded(node(1), Generation(7));
        s.apply(&Change {
            at: Millis(100),
            kind: ChangeKind::Leave(NodeId(9)),
        });
        let d = s.apply(&Change {
            at: Millis(50),
            kind: ChangeKind::Client {
                id: None,
                op: Op::Bid {
                    bidder: BidderId::new("a").unwrap(),
                    amount: Amount::new(1).unwrap(),
                    credential: crate::types::Credential([1; 32]),
                },
            },
        });
        assert_eq!(s.clock, Millis(100));
        assert!(d.unwrap().is_err(), "no auction yet");
    }

    #[test]
    fn a_node_refuses_states_of_another_cluster_and_older_ones() {
        let mine = three_members();
        let mut newer_epoch = mine.clone();
        newer_epoch.apply(&change(ChangeKind::Lead {
            leader: node(2),
            epoch: 2,
        }));
        // A successor's state may have dropped an uncommitted tail: fewer versions, newer epoch.
        newer_epoch.version = 1;
        assert_eq!(mine.refuses(&newer_epoch), None);
        assert_eq!(mine.refuses(&mine), None);
        let mut older = mine.clone();
        older.version -= 1;
        assert!(mine.refuses(&older).unwrap().contains("older"));
        let foreign = ClusterState {
            generation: Generation(8),
            ..newer_epoch
        };
        assert!(mine.refuses(&foreign).unwrap().contains("another cluster"));
        // An empty founder's state is both.
        let empty = ClusterState::founded(node(1), Generation(9));
        assert!(mine.refuses(&empty).is_some());
    }

    #[test]
    fn a_clock_reading_extrapolates_and_ignores_stale_readings() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = ClockReading {
            clock: Millis(1_000),
            at: t0,
        };
        assert_eq!(r.at(t0 + ms(250)), Millis(1_250));
        // A reading that waited in a buffer reads earlier than the extrapolation: kept out.
        r.observe(Millis(1_100), t0 + ms(300));
        assert_eq!(r.at(t0 + ms(300)), Millis(1_300));
        r.observe(Millis(1_400), t0 + ms(350));
        assert_eq!(r.at(t0 + ms(350)), Millis(1_400));
        // An instant before the reading (never, with a monotonic clock) moves nothing back.
        assert_eq!(r.at(t0), Millis(1_400));
    }

    #[test]
    fn a_tick_moves_only_the_clock() {
        let mut s = three_members();
        let before = s.clone();
        s.apply(&Change {
            at: Millis(9_000),
            kind: ChangeKind::Tick,
        });
        assert_eq!(s.clock, Millis(9_000));
        assert_eq!(s.version, before.version + 1);
        assert_eq!((&s.members, &s.machine), (&before.members, &before.machine));
    }

    #[test]
    fn a_version_commits_when_every_follower_has_applied_it() {
        let s = three_members();
        let now = Instant::now();
        let mut f = Followers::default();
        f.attach(10, node(2), ());
        f.attach(11, node(3), ());
        assert!(!f.committed(&s, 2));
        let seq = f.on_sent(10, now).unwrap();
        assert!(f.on_ack(10, seq, 2), "first ack syncs");
        assert!(!f.committed(&s, 2));
        f.on_sent(11, now);
        f.on_ack(11, 1, 1);
        assert!(!f.committed(&s, 2), "node 3 is behind");
        f.on_sent(11, now);
        assert!(!f.on_ack(11, 2, 2));
        assert!(f.committed(&s, 2));
        assert!(!f.committed(&s, 3));
    }

    #[test]
    fn a_leader_alone_commits_at_once() {
        let s = ClusterState::founded(node(1), Generation(7));
        assert!(Followers::<()>::default().committed(&s, 9));
    }

    #[test]
    fn silent_and_absent_members_are_late_after_the_timeout() {
        let s = three_members();
        let t0 = Instant::now();
        let timeout = Duration::from_millis(100);
        let mut f = Followers::default();
        f.attach(10, node(2), ());
        f.on_sent(10, t0);
        assert!(f.late(&s, t0, timeout).is_empty(), "absence clock starts");
        let t1 = t0 + Duration::from_millis(150);
        let late = f.late(&s, t1, timeout);
        assert_eq!(late.len(), 2);
        assert!(late.contains(&(node(2), Lateness::Unresponsive)));
        assert!(late.contains(&(node(3), Lateness::Absent)));
        f.on_ack(10, 1, 2);
        f.attach(11, node(3), ());
        assert!(f.late(&s, t1, timeout).is_empty());
    }

    #[test]
    fn lateness_counts_from_the_oldest_unacknowledged_message() {
        let s = three_members();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut f = Followers::default();
        f.attach(10, node(2), ());
        f.attach(11, node(3), ());
        for t in [t0, t0 + ms(60), t0 + ms(120)] {
            f.on_sent(10, t);
            f.on_sent(11, t);
        }
        // Node 2 acks, but lags: its oldest unacknowledged message was sent at 60 ms, so it is
        // late after 160 ms, however recently it acked.
        f.on_ack(10, 1, 2);
        f.on_ack(11, 3, 2);
        assert!(f.late(&s, t0 + ms(150), ms(100)).is_empty());
        let late = f.late(&s, t0 + ms(170), ms(100));
        assert_eq!(late, vec![(node(2), Lateness::Unresponsive)]);
        // After the leader's own stall, everyone gets a fresh window.
        f.forgive(t0 + ms(170));
        assert!(f.late(&s, t0 + ms(260), ms(100)).is_empty());
    }

    #[test]
    fn a_process_with_a_members_id_but_another_pid_is_not_that_member() {
        let s = three_members();
        let impostor = Member { pid: 99, ..node(2) };
        assert!(!s.has_member(&impostor));
        let mut f = Followers::default();
        f.attach(10, impostor, ());
        f.on_ack(10, 1, 2);
        f.attach(11, node(3), ());
        f.on_ack(11, 1, 2);
        assert!(!f.committed(&s, 2));
    }
}
