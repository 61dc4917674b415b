//! The authority of nodes on several hosts: etcd decides who leads and who is a member
//! (docs/design.md, "Multi-host mode"), through the transactions of [`Registry`].
//!
//! - **Leadership** is the leader key; its revision is the epoch. A node founds only while no
//!   leader key exists; a member takes over only from the epoch it followed, and only if the
//!   member list it read is unchanged and lists it.
//! - **Membership** is the member list, which only the leader changes, comparing its epoch.
//! - **Fencing** is removal from that list (and epoch fencing on the wire): a removed member can
//!   never take over, and a deposed leader can neither commit nor answer a read, because both
//!   need an ack of every member it lists, the new leader among them (reads go through the
//!   members: [`Reads::Barrier`]).
//!
//! Failure detection stays on the nodes' heartbeats: etcd only decides who won.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use super::registry::{Leadership, NodeRecord, REQUEST_TIMEOUT, Registry, RegistryError};
use crate::authority::{
    Authority, AuthorityError, Claimed, Fenced, Mode, PeerRefusal, Probe, Reads, Vacancy,
};
use crate::replication::{ClusterState, Member};
use crate::types::NodeId;

/// The etcd authority of one node.
#[derive(Debug)]
pub struct EtcdAuthority {
    registry: Registry,
    /// Where this node serves.
    me: NodeRecord,
    /// The epoch this node leads, once it founded or took over; its membership changes compare
    /// it.
    leading: Mutex<Option<u64>>,
    /// The latest leadership this node was sent to follow ([`Authority::leader_addr`]), and
    /// when first: a member whose state is older may take over from it once it has failed to
    /// follow it for [`EtcdAuthority::patience`].
    sent_to: Mutex<Option<(Leadership, Instant)>>,
    /// How long a member tries to follow a leader of a later epoch than its state's before it
    /// may take over from it: long enough for a leader that works to have removed it.
    patience: Duration,
    /// Set by `--new-cluster`, until this node first looks for a vacancy: the operator says every
    /// member of the cluster etcd names is dead, so this node founds a new one in its place.
    new_cluster: AtomicBool,
    /// Held while the member list is read, changed and written back (see `write_members`).
    writing: tokio::sync::Mutex<()>,
    /// Other nodes' records, as last read from etcd and when.
    records: Mutex<HashMap<NodeId, (NodeRecord, Instant)>>,
}

impl EtcdAuthority {
    /// The authority of the node `me`, in the cluster that `registry` holds.
    pub fn new(registry: Registry, me: NodeRecord) -> Self {
        Self {
            registry,
            me,
            leading: Mutex::new(None),
            sent_to: Mutex::new(None),
            patience: Duration::ZERO,
            new_cluster: AtomicBool::new(false),
            writing: tokio::sync::Mutex::new(()),
            records: Mutex::new(HashMap::new()),
        }
    }

    /// How long a member tries to follow a leader it never got the state of before it may take
    /// over from it (see [`Authority::claim`]); give it
    /// `auction_core::follower::silence_limit(timing, Reads::Barrier)`. Zero unless set.
    #[must_use]
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// This node founds a new cluster in place of the one etcd names, whose members the
    /// operator says are all dead (`auction-node --new-cluster`): their state is lost with them,
    /// as Kafka's unclean leader election loses what the in-sync replicas held. Refused while the
    /// old leader's replica port answers (see [`AuthorityError::LeaderAlive`]).
    #[must_use]
    pub fn replacing_a_dead_cluster(self) -> Self {
        self.new_cluster.store(true, Ordering::Relaxed);
        self
    }

    /// Founds a new cluster in place of `lead`'s, if the operator asked for it and the old
    /// leader does not answer: the epoch, or `None` when another change came first.
    async fn replace_dead_cluster(&self, lead: Leadership) -> Result<Option<u64>, AuthorityError> {
        if let Some(old) = self.registry.node(lead.leader).await.map_err(etcd_error)? {
            let dial = TcpStream::connect(old.replica);
            if let Ok(Ok(_)) = tokio::time::timeout(REQUEST_TIMEOUT, dial).await {
                return Err(AuthorityError::LeaderAlive {
                    leader: lead.leader,
                    addr: old.replica,
                });
            }
        }
        let members = self.registry.members().await.map_err(etcd_error)?;
        let epoch = self
            .registry
            .found_anew(NodeId(self.me.id), lead, &members)
            .await
            .map_err(etcd_error)?;
        if let Some(epoch) = epoch {
            warn!(
                old_leader = %lead.leader, old_epoch = lead.epoch, ?members.ids, epoch,
                "--new-cluster: replaced the dead cluster; the state its members held is lost"
            );
        }
        Ok(epoch)
    }

    /// The leadership this member may take over from: the one its state follows, or a later
    /// one (`lead`, now in etcd) whose leader this node was sent to and has failed to follow for
    /// the patience, since its state is still older.
    ///
    /// Taking over from a later epoch it never followed is safe for a member etcd still lists:
    /// a member is removed from etcd before any leader drops it, and re-added only once it holds
    /// that leader's state, so every leader since its state's epoch counts it as a member and
    /// could commit nothing without its ack, which it never gave (DESIGN.md, "Multi-host mode":
    /// the winner holds every committed change). Without it, a successor that won etcd and died
    /// before any member took its state left the members waiting for a leader that would never
    /// answer (found by tests/multi_host_faults.rs).
    fn takes_over_from(&self, state: &ClusterState, lead: Leadership) -> (u64, NodeId) {
        let sent_to = *self.sent_to.lock().expect("sent-to lock poisoned");
        match sent_to {
            Some((sent, since))
                if lead.epoch > state.epoch && sent == lead && since.elapsed() >= self.patience =>
            {
                (lead.epoch, lead.leader)
            }
            _ => (state.epoch, state.leader.id),
        }
    }

    /// Records where this node serves, so that others can find it once it leads.
    ///
    /// # Errors
    /// etcd cannot be reached.
    pub async fn register(&self) -> Result<(), AuthorityError> {
        self.registry.register(&self.me).await.map_err(etcd_error)
    }

    fn leading(&self) -> Option<u64> {
        // Invariant: no code panics while holding this lock, so it is never poisoned.
        *self.leading.lock().expect("epoch lock poisoned")
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, (NodeRecord, Instant)>> {
        // Invariant: no code panics while holding this lock, so it is never poisoned.
        self.records.lock().expect("records lock poisoned")
    }

    fn set_leading(&self, epoch: u64) {
        *self.leading.lock().expect("epoch lock poisoned") = Some(epoch);
    }

    /// Binds this node's own replica port (where it serves once it leads).
    async fn bind(&self) -> Result<TcpListener, AuthorityError> {
        TcpListener::bind(self.me.replica)
            .await
            .map_err(|cause| AuthorityError::Io {
                what: "binding this node's replica port",
                cause,
            })
    }

    /// Writes the member list as this node's epoch's leader. One change at a time: the leader
    /// asks for several at once (two members fall silent together), and each reads the list,
    /// changes it and writes it back; side by side, one would undo the other.
    async fn write_members(
        &self,
        change: impl FnOnce(&mut Vec<NodeId>),
    ) -> Result<(), AuthorityError> {
        let _one_at_a_time = self.writing.lock().await;
        let Some(epoch) = self.leading() else {
            return Err(AuthorityError::Deposed);
        };
        let mut members = self.registry.members().await.map_err(etcd_error)?.ids;
        change(&mut members);
        self.registry
            .set_members(epoch, &members)
            .await
            .map_err(etcd_error)
    }
}

fn etcd_error(e: RegistryError) -> AuthorityError {
    match e {
        RegistryError::Deposed => AuthorityError::Deposed,
        other => AuthorityError::Io {
            what: "asking etcd",
            cause: io::Error::other(other.to_string()),
        },
    }
}

/// `None` when etcd is out of reach (logged): the caller cannot tell now and asks again later,
/// rather than ending the node. Other errors (a malformed record) stay errors.
///
/// # Errors
/// What is not etcd being out of reach.
fn out_of_reach<T>(reply: Result<T, RegistryError>) -> Result<Option<T>, AuthorityError> {
    match reply {
        Ok(t) => Ok(Some(t)),
        Err(RegistryError::Unavailable(why)) => {
            warn!("etcd is out of reach ({why}); trying again later");
            Ok(None)
        }
        Err(e) => Err(etcd_error(e)),
    }
}

impl Authority for EtcdAuthority {
    /// Membership is the member list in etcd, which the leader writes.
    type Membership = ();

    /// A deposed leader's process may live on: reads go through the members.
    const READS: Reads = Reads::Barrier;

    /// With etcd out of reach, whether a member lives cannot be told: [`Vacancy::Unknown`],
    /// and the node asks again later.
    async fn vacancy(&self) -> Result<Vacancy, AuthorityError> {
        let Some(lead) = out_of_reach(self.registry.leadership().await)? else {
            return Ok(Vacancy::Unknown);
        };
        let replace = self.new_cluster.swap(false, Ordering::Relaxed);
        let listener = match lead {
            Some(_) if !replace => return Ok(Vacancy::Held),
            _ => self.bind().await?,
        };
        let founded = match lead {
            Some(lead) => Some(self.replace_dead_cluster(lead).await?),
            None => out_of_reach(self.registry.found(NodeId(self.me.id)).await)?,
        };
        match founded {
            Some(Some(epoch)) => {
                self.set_leading(epoch);
                Ok(Vacancy::Free { listener, epoch })
            }
            // Another node founded first.
            Some(None) => Ok(Vacancy::Held),
            None => Ok(Vacancy::Unknown),
        }
    }

    /// With etcd out of reach this member cannot take over now: `None`, and it tries again
    /// (docs/design.md and DESIGN.md, "Multi-host mode": while etcd is unreachable the members
    /// cannot change; a takeover waits for etcd, it never ends the node). A takeover whose
    /// answer was lost on the way is recognised at the next claim: the leader key names this
    /// node at an epoch after the one it followed, which only its own takeover writes.
    async fn claim(&self, state: &ClusterState) -> Result<Option<Claimed>, AuthorityError> {
        let me = NodeId(self.me.id);
        let listener = self.bind().await?;
        let Some(lead) = out_of_reach(self.registry.leadership().await)? else {
            return Ok(None);
        };
        if let Some(lead) = lead
            && lead.leader == me
            && lead.epoch > state.epoch
        {
            self.set_leading(lead.epoch);
            return Ok(Some(Claimed {
                listener,
                epoch: lead.epoch,
            }));
        }
        let (epoch, old) = match lead {
            Some(lead) => self.takes_over_from(state, lead),
            None => (state.epoch, state.leader.id),
        };
        let Some(members) = out_of_reach(self.registry.members().await)? else {
            return Ok(None);
        };
        let taken = self.registry.take_over(me, epoch, old, &members).await;
        let Some(won) = out_of_reach(taken)? else {
            return Ok(None);
        };
        Ok(won.map(|epoch| {
            self.set_leading(epoch);
            Claimed { listener, epoch }
        }))
    }

    fn join(&self) -> io::Result<()> {
        Ok(())
    }

    /// With etcd out of reach, no leader is known: `None`, and the node asks again later.
    async fn leader_addr(&self) -> Result<Option<SocketAddr>, AuthorityError> {
        let Some(Some(lead)) = out_of_reach(self.registry.leadership().await)? else {
            return Ok(None);
        };
        let node = out_of_reach(self.registry.node(lead.leader).await)?;
        let mut sent_to = self.sent_to.lock().expect("sent-to lock poisoned");
        if sent_to.is_none_or(|(sent, _)| sent != lead) {
            *sent_to = Some((lead, Instant::now()));
        }
        Ok(node.flatten().map(|n| n.replica))
    }

    /// Another node took the lead since `state`'s epoch, and this node has not yet been sent to
    /// follow it in vain (a member whose state is older may take over from a leader it could
    /// not follow: see [`Authority::claim`]).
    async fn superseded(&self, state: &ClusterState) -> bool {
        let Ok(Some(lead)) = self.registry.leadership().await else {
            return false;
        };
        lead.epoch != state.epoch && self.takes_over_from(state, lead).0 == state.epoch
    }

    async fn admit(&self, node: &Member) -> Result<(), AuthorityError> {
        let id = node.id;
        self.write_members(|members| {
            if !members.contains(&id) {
                members.push(id);
            }
        })
        .await
    }

    /// Removes `node` from the member list, as the leader. A member that fences its leader has
    /// nothing to write: its takeover's transaction deposes that leader.
    async fn fence(&self, node: &Member) -> Result<Fenced, AuthorityError> {
        if self.leading().is_none() {
            return Ok(Fenced::Excluded);
        }
        let id = node.id;
        self.write_members(|members| members.retain(|m| *m != id))
            .await?;
        Ok(Fenced::Excluded)
    }

    /// Nothing answers for the leadership but the leader the registry names.
    async fn fence_holder(&self) -> io::Result<Option<u32>> {
        Ok(None)
    }

    /// A pid says nothing across hosts: the cluster secret is the proof.
    async fn verify_peer(
        &self,
        _node: &Member,
        _ends: (SocketAddr, SocketAddr),
        _member: bool,
    ) -> Result<(), PeerRefusal> {
        Ok(())
    }

    /// A process on another host cannot be seen: a joiner under a listed id waits until the
    /// leader has removed the old one.
    async fn probe(&self, _node: &Member) -> Probe {
        Probe::Unknown("a process on another host cannot be checked; wait for its removal".into())
    }

    /// A process on another host cannot be seen going: the takeover's transaction fences it.
    async fn gone(&self, _node: &Member, _within: Duration) -> bool {
        false
    }

    fn check_holder(&self) -> Result<(), AuthorityError> {
        Ok(())
    }

    const MODE: Mode = Mode::MultiHost;

    /// The node's record in etcd (`PREFIX/nodes/ID`), kept for [`RECORD_TTL`]: a node writes
    /// it when it starts, so it changes only when a node starts again elsewhere. While etcd
    /// does not answer within [`LOOKUP_TIMEOUT`], the record last read, however old.
    async fn client_addr(&self, node: NodeId) -> Option<SocketAddr> {
        if node.0 == self.me.id {
            return Some(self.me.client);
        }
        let now = Instant::now();
        let cached = self.records().get(&node).copied();
        if let Some((record, at)) = cached
            && now.duration_since(at) < RECORD_TTL
        {
            return Some(record.client);
        }
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.registry.node(node)).await {
            Ok(Ok(Some(record))) => {
                self.records().insert(node, (record, now));
                Some(record.client)
            }
            Ok(Ok(None)) => None,
            Ok(Err(_)) | Err(_) => cached.map(|(record, _)| record.client),
        }
    }

    /// The leader key, if etcd answers within [`LOOKUP_TIMEOUT`].
    async fn leadership(&self) -> Option<(NodeId, u64)> {
        let read = tokio::time::timeout(LOOKUP_TIMEOUT, self.registry.leadership()).await;
        let lead = read.ok()?.ok()??;
        Some((lead.leader, lead.epoch))
    }
}

/// How long a node record read from etcd is used before it is read again.
pub const RECORD_TTL: Duration = Duration::from_secs(1);

/// How long a look-up for clients (a status, a redirect) waits for etcd: a status must not
/// wait for an etcd that is cut off, so it shows what is known instead.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::Generation;

    /// A node whose etcd is out of reach (nothing listens at the endpoint) waits: it neither
    /// takes over nor founds, and it does not end (docs/design.md, "Multi-host mode").
    #[tokio::test]
    async fn with_etcd_out_of_reach_a_node_cannot_claim_or_found_and_asks_again() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let registry = Registry::new(&[format!("http://{closed}")], "t", None).unwrap();
        let me = NodeRecord {
            id: 2,
            replica: "127.0.0.1:0".parse().unwrap(),
            client: "127.0.0.1:0".parse().unwrap(),
        };
        let authority = EtcdAuthority::new(registry, me);
        let leader = Member {
            id: NodeId(1),
            pid: 1,
            start_time: 1,
        };
        let state = ClusterState::founded(leader, Generation(1));
        assert!(authority.claim(&state).await.unwrap().is_none());
        assert!(authority.leader_addr().await.unwrap().is_none());
        assert!(matches!(
            authority.vacancy().await.unwrap(),
            Vacancy::Unknown
        ));
        assert!(authority.leading().is_none());
    }

    /// A leader whose etcd hangs (it accepts connections and never answers) goes on answering
    /// while its removal of a silent member waits for etcd: the authority's calls run beside
    /// the leader task, not in it.
    #[tokio::test]
    async fn a_leader_answers_while_its_fence_waits_for_etcd() {
        use crate::leader::{self, Detail, Reply, Request, Timing};
        use crate::replication::ClockReading;
        // Accepted by the kernel's backlog, never read: every request hangs until its timeout.
        let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", hang.local_addr().unwrap());
        let me = Member {
            id: NodeId(1),
            pid: std::process::id(),
            start_time: 0,
        };
        let record = NodeRecord {
            id: 1,
            replica: "127.0.0.1:0".parse().unwrap(),
            client: "127.0.0.1:0".parse().unwrap(),
        };
        let authority = EtcdAuthority::new(Registry::new(&[url], "t", None).unwrap(), record);
        authority.set_leading(5);
        let mut state = ClusterState::founded(me, Generation(1));
        // A member that never connects: silent from the start, so fenced after the timeout.
        state.members.push(Member {
            id: NodeId(2),
            pid: 2,
            start_time: 2,
        });
        let timing = Timing {
            heartbeat: Duration::from_millis(20),
            timeout: Duration::from_millis(100),
            spin: Duration::ZERO,
        };
        let clock = ClockReading {
            clock: crate::types::Millis(0),
            at: Instant::now(),
        };
        let handle = leader::spawn(
            me,
            state,
            clock,
            Vec::new(),
            timing,
            std::sync::Arc::new(authority),
            std::future::pending(),
        );
        // For a second, well into the fence's wait for etcd (2 s), every status is answered
        // within a few heartbeats.
        let end = Instant::now() + Duration::from_secs(1);
        while Instant::now() < end {
            let status = handle.call(Request::Status(Detail::Summary));
            let reply = tokio::time::timeout(Duration::from_millis(200), status)
                .await
                .expect("the leader answers while its fence waits for etcd")
                .unwrap();
            assert!(matches!(reply, Reply::Status(_)));
            tokio::time::sleep(timing.heartbeat).await;
        }
    }

    /// A member takes over from a leader of a later epoch than its state's only after it was
    /// sent to follow that very leader, and failed to for the patience.
    #[tokio::test]
    async fn a_member_takes_over_from_a_later_leader_only_after_failing_to_follow_it() {
        let registry = Registry::new(&["http://127.0.0.1:9".to_string()], "t", None).unwrap();
        let me = NodeRecord {
            id: 3,
            replica: "127.0.0.1:0".parse().unwrap(),
            client: "127.0.0.1:0".parse().unwrap(),
        };
        let old = Member {
            id: NodeId(1),
            pid: 1,
            start_time: 1,
        };
        let state = ClusterState::founded(old, Generation(1));
        let later = Leadership {
            leader: NodeId(2),
            epoch: state.epoch + 5,
        };
        let followed = (state.epoch, NodeId(1));
        let patient =
            EtcdAuthority::new(registry.clone(), me).with_patience(Duration::from_secs(3600));
        assert_eq!(
            patient.takes_over_from(&state, later),
            followed,
            "never sent to it"
        );
        *patient.sent_to.lock().unwrap() = Some((later, Instant::now()));
        assert_eq!(
            patient.takes_over_from(&state, later),
            followed,
            "not for long"
        );
        let hasty = EtcdAuthority::new(registry, me);
        *hasty.sent_to.lock().unwrap() = Some((later, Instant::now()));
        assert_eq!(
            hasty.takes_over_from(&state, later),
            (later.epoch, NodeId(2))
        );
        let other = Leadership {
            epoch: later.epoch + 1,
            ..later
        };
        assert_eq!(
            hasty.takes_over_from(&state, other),
            followed,
            "sent to another"
        );
    }
}
