//! Faults of the multi-host mode, end to end: three real `auction-node` processes, each playing
//! a host of its own (a loopback address of its own, `--host`), a real etcd deciding who leads
//! and who is a member, and partitions between the hosts made with nftables, all in a private
//! network namespace ([`auction_lab::netns`]), so the host's own network is never touched.
//!
//! A `harness = false` binary, as `lab/tests/netlab.rs`: `main` enters the namespace before any
//! thread exists, then runs the tests with libtest-mimic (`cargo test --test multi_host_faults
//! -- isolated`). Needs root, `ip` (iproute2), `nft` (nftables) and `etcd` (etcd-server);
//! without them every test fails and says what is missing.
//!
//! Each test has its own addresses (127.0.T.1-5 for its nodes, 127.0.T.11-13 for its etcd, T
//! the test's number) and its own etcd, so the tests run side by side. The nodes bind and dial
//! from their `--host` address (replica streams and etcd requests alike), so a cut between two
//! addresses cuts every packet between those hosts; no node needs `as_host`. The test's own
//! clients speak from 127.0.0.1, which no cut names: an observer that sees every node.
//!
//! While each fault strikes, two clients bid and read without pause, and every operation is
//! recorded ([`auction_lab::history`]). Each test then checks:
//! - **linearizability** of that history with the lab's checker (so no acknowledged bid is lost:
//!   a read after it would lack it, and the final read is part of the history; and no success
//!   the history cannot place);
//! - **the final result holds the highest acknowledged bid**;
//! - **the cluster serves again** within a deadline of the fault (printed, to measure it);
//! - **no process panicked**;
//! - and what the fault itself promises (the test's name says it).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auction::client::{Client, ClientError};
use auction::cluster::{LocalCluster, Transcript, leader_of};
use auction::etcd::registry::Registry;
use auction::types::{Amount, BidderId, NodeId};
use auction::view::{Status, View};
use auction_lab::checker;
use auction_lab::etcd::{Etcd, EtcdSpec};
use auction_lab::harness::{Harness, WAIT};
use auction_lab::history::{Call, FINAL_READER, Operation, ReadView, Return};
use auction_lab::netns;
use auction_lab::partition::Partitions;
use libtest_mimic::{Arguments, Trial};
use tokio::sync::watch;
use tokio::task::JoinHandle;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let tests = vec![
        trial(
            "killing_a_replica_loses_no_acked_bid_and_removes_it_from_etcd",
            killing_a_replica_loses_no_acked_bid_and_removes_it_from_etcd,
        ),
        trial(
            "killing_two_nodes_in_turn_leaves_the_last_serving_alone_with_every_acked_bid",
            killing_two_nodes_in_turn_leaves_the_last_serving_alone_with_every_acked_bid,
        ),
        trial(
            "an_isolated_leader_is_replaced_commits_nothing_answers_no_read_and_exits_after_the_heal",
            an_isolated_leader_is_replaced_commits_nothing_answers_no_read_and_exits_after_the_heal,
        ),
        trial(
            "an_isolated_replica_is_removed_and_rejoins_with_a_state_sync_after_the_heal",
            an_isolated_replica_is_removed_and_rejoins_with_a_state_sync_after_the_heal,
        ),
        trial(
            "a_member_cut_off_from_etcd_changes_nothing_and_cannot_take_over",
            a_member_cut_off_from_etcd_changes_nothing_and_cannot_take_over,
        ),
        trial(
            "killing_etcds_leader_stops_no_commit_and_a_later_failover_works",
            killing_etcds_leader_stops_no_commit_and_a_later_failover_works,
        ),
        trial(
            "without_etcd_commits_go_on_and_a_takeover_waits_for_etcd_then_completes",
            without_etcd_commits_go_on_and_a_takeover_waits_for_etcd_then_completes,
        ),
        trial(
            "a_restarted_etcd_keeps_the_cluster_and_a_later_failover_works",
            a_restarted_etcd_keeps_the_cluster_and_a_later_failover_works,
        ),
        trial(
            "a_node_restarted_on_another_address_and_a_new_node_get_the_full_state",
            a_node_restarted_on_another_address_and_a_new_node_get_the_full_state,
        ),
        trial(
            "a_node_removed_while_cut_off_never_leads_and_rejoins_with_a_state_sync",
            a_node_removed_while_cut_off_never_leads_and_rejoins_with_a_state_sync,
        ),
        trial(
            "a_leader_cut_off_from_its_members_but_not_from_etcd_removes_them_and_goes_on",
            a_leader_cut_off_from_its_members_but_not_from_etcd_removes_them_and_goes_on,
        ),
        trial(
            "a_replica_cut_off_from_the_nodes_but_not_from_etcd_is_removed_and_cannot_depose_the_leader",
            a_replica_cut_off_from_the_nodes_but_not_from_etcd_is_removed_and_cannot_depose_the_leader,
        ),
        trial(
            "a_successor_that_dies_before_any_member_took_its_state_is_replaced",
            a_successor_that_dies_before_any_member_took_its_state_is_replaced,
        ),
    ];
    netns::run_tests("multi_host_faults", &args, tests)
}

/// A test on a tokio runtime of its own, on the test's thread (so the processes it starts live
/// as long as the test: see `auction::cluster::Proc::spawn`).
fn trial<F, Fut>(name: &str, test: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    // These tests fail by panicking, with the lab's transcript.
    netns::trial(name, move || async move {
        test().await;
        Ok(())
    })
}

/// How long the cluster may take to serve again after a fault that needs no etcd.
const SERVE_AGAIN: Duration = Duration::from_secs(10);

/// How long the cluster may take to serve again once etcd is back (a node's request to etcd
/// gives up after 2 s, and its gRPC channel reconnects with a backoff).
const SERVE_AGAIN_AFTER_ETCD: Duration = Duration::from_secs(20);

/// One test's network, etcd and nodes.
struct Lab {
    h: Harness,
    etcd: Etcd,
    cuts: Partitions,
    /// The cluster's name in etcd.
    name: String,
    /// The test's number: its addresses are 127.0.`net`.x.
    net: u8,
}

impl Lab {
    /// An etcd of `etcd_members` members on 127.0.`net`.11.., and nodes 1, 2, 3 on
    /// 127.0.`net`.1..3, node 1 founding.
    async fn start(net: u8, name: &str, etcd_members: u8) -> Self {
        let transcript = Transcript::new(false);
        let etcd_ips: Vec<IpAddr> = (0..etcd_members).map(|i| ip(net, 11 + i)).collect();
        let mut spec = EtcdSpec::on(&etcd_ips);
        spec.no_fsync = true;
        // Quick elections, so etcd's own failover is short.
        spec.extra_args = vec![
            "--heartbeat-interval=50".into(),
            "--election-timeout=500".into(),
        ];
        let etcd = Etcd::start(spec, &transcript)
            .await
            .expect("etcd starts (Debian's etcd-server)");
        let mut spec = Harness::spec(&[
            "--etcd",
            &etcd.client_urls().join(","),
            "--cluster",
            name,
            "--duration",
            "3600",
        ]);
        spec.hosts = (1..=3u16)
            .map(|id| (id, ip(net, u8::try_from(id).expect("small id"))))
            .collect::<BTreeMap<_, _>>();
        let mut h = Harness {
            cluster: LocalCluster::new(spec, transcript),
        };
        if let Err(e) = h.cluster.start_nodes(&[1, 2, 3], WAIT).await {
            panic!("{e}");
        }
        Self {
            h,
            etcd,
            cuts: Partitions::new().expect("nftables (Debian's nftables)"),
            name: name.into(),
            net,
        }
    }

    /// Node `id`'s address now.
    fn ip(&self, id: u16) -> IpAddr {
        self.h.cluster.spec.hosts[&id]
    }

    fn ips(&self, ids: &[u16]) -> Vec<IpAddr> {
        ids.iter().map(|&id| self.ip(id)).collect()
    }

    /// The client address of node `id` now.
    fn client_addr(&self, id: u16) -> SocketAddr {
        SocketAddr::new(self.ip(id), self.h.cluster.spec.client_port)
    }

    /// The cluster's records in etcd, read from 127.0.0.1 (which no cut names).
    fn registry(&self) -> Registry {
        Registry::new(&self.etcd.client_urls(), &self.name, None).expect("etcd endpoints")
    }

    /// The member list in etcd.
    async fn etcd_members(&self) -> Vec<u16> {
        let registry = self.registry();
        let members = until_etcd_answers(|| registry.members()).await;
        members.ids.iter().map(|id| id.0).collect()
    }

    /// Who leads in etcd, and its epoch.
    async fn etcd_leader(&self) -> Option<(u16, u64)> {
        let registry = self.registry();
        let lead = until_etcd_answers(|| registry.leadership()).await?;
        Some((lead.leader.0, lead.epoch))
    }

    /// Waits until etcd's member list is `want` (in any order).
    async fn wait_etcd_members(&self, want: &[u16]) {
        let mut want = want.to_vec();
        want.sort_unstable();
        let deadline = Instant::now() + WAIT;
        loop {
            let mut got = self.etcd_members().await;
            got.sort_unstable();
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd's members are {got:?}, not {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until etcd's member list is the leader's, and etcd names that leader: a member the
    /// leader counts that etcd does not list could never take over, and one etcd lists that the
    /// leader does not count could take over without the state.
    async fn wait_etcd_agrees(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = Client::with_addresses(self.h.cluster.spec.client_addrs(), WAIT)
                .status()
                .await
                .expect("the leader answers status");
            let mut etcd = self.etcd_members().await;
            etcd.sort_unstable();
            let lead = self.etcd_leader().await;
            let leader = (leader_of(&status), status.epoch);
            if etcd == member_ids(&status) && lead == Some(leader) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd lists members {etcd:?} and leader {lead:?}; the leader {leader:?} counts \
                 {:?}",
                member_ids(&status)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Node `id`'s own answer to a status request, if it answers within 500 ms (asked at its
    /// address only: a node that believes it leads answers, whether or not it does).
    async fn status_of(&self, id: u16) -> Option<Status> {
        let mut client = Client::new(self.client_addr(id), Duration::from_millis(500));
        client.status().await.ok()
    }

    /// Polls every running node's own status until one that says it leads satisfies `pred`
    /// (asked node by node: a leader cut off from the others may still say it leads).
    async fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&Status) -> bool) -> Status {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut seen = Vec::new();
            for id in self.h.cluster.running() {
                if let Some(s) = self.status_of(id).await {
                    if leader_of(&s) == id && pred(&s) {
                        return s;
                    }
                    seen.push((id, leader_of(&s), s.epoch, member_ids(&s)));
                }
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}; (node, leader, epoch, members) seen: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a node other than `old` leads, at an epoch after `epoch`, with `members`.
    async fn wait_new_leader(&mut self, old: u16, epoch: u64, members: &[u16]) -> Status {
        let mut want = members.to_vec();
        want.sort_unstable();
        self.wait_for(
            &format!("a leader other than {old} with members {want:?}"),
            |s| leader_of(s) != old && s.epoch > epoch && member_ids(s) == want,
        )
        .await
    }

    /// Waits until `id` has exited, and returns whether it exited with an error.
    async fn wait_exited(&mut self, id: u16) -> bool {
        self.h.wait_exited(id).await;
        let status = self.h.cluster.node(id).expect("known").exit_status();
        !status.expect("exited").success()
    }

    /// How many lines of node `id` in the transcript contain `text`.
    fn lines_of(&self, id: u16, text: &str) -> usize {
        let prefix = format!("[node {id}] ");
        self.h
            .cluster
            .transcript
            .lines()
            .iter()
            .filter(|l| l.starts_with(&prefix) && l.contains(text))
            .count()
    }
}

/// Asks etcd until it answers, at most [`WAIT`]: a request may go to a member that was killed
/// (the client balances over every endpoint).
async fn until_etcd_answers<T, Fut>(mut ask: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Result<T, auction::etcd::registry::RegistryError>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match ask().await {
            Ok(t) => return t,
            Err(e) => assert!(Instant::now() < deadline, "etcd does not answer: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ip(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, net, host))
}

/// The member ids of `status`, sorted.
fn member_ids(status: &Status) -> Vec<u16> {
    let mut ids: Vec<u16> = status.members.iter().map(|m| m.id.0).collect();
    ids.sort_unstable();
    ids
}

/// How long one operation of the workload may take before its outcome counts as unknown.
const OP_BUDGET: Duration = Duration::from_millis(2_500);

/// Clients that bid and read without pause, recording every operation.
struct Workload {
    ops: Arc<Mutex<Vec<Operation>>>,
    t0: Instant,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Starts `clients` clients on every node's client address, and waits for a first
    /// acknowledged bid.
    async fn start(lab: &Lab, clients: u32) -> Self {
        let ops = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let (stop, stopped) = watch::channel(false);
        let counter = Arc::new(AtomicU64::new(0));
        // Every address a node of the test may serve on, also those of nodes started later.
        let port = lab.h.cluster.spec.client_port;
        let addrs: Vec<SocketAddr> = (1..=5)
            .map(|host| SocketAddr::new(ip(lab.net, host), port))
            .collect();
        let tasks = (0..clients)
            .map(|n| {
                let run = ClientRun {
                    addrs: addrs.clone(),
                    n,
                    counter: counter.clone(),
                    ops: ops.clone(),
                    t0,
                };
                tokio::spawn(run.run(stopped.clone()))
            })
            .collect();
        let w = Self {
            ops,
            t0,
            stop,
            tasks,
        };
        w.acked_after(Duration::ZERO, SERVE_AGAIN, "the first bid")
            .await;
        w
    }

    /// Now, on the history's clock.
    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Waits until a bid invoked at `t` or later was acknowledged, at most `within` after `t`;
    /// returns how long after `t` it was (printed as the time to serve again after `what`).
    async fn acked_after(&self, t: Duration, within: Duration, what: &str) -> Duration {
        loop {
            let first = {
                let ops = self.ops.lock().expect("ops lock");
                ops.iter()
                    .filter(|op| op.invoked >= t && op.ret == Return::Bid(Ok(())))
                    .filter_map(|op| op.returned)
                    .min()
            };
            if let Some(returned) = first {
                let took = returned - t;
                eprintln!("{what}: a bid acknowledged {} ms after", took.as_millis());
                return took;
            }
            assert!(
                self.now() < t + within,
                "{what}: no bid acknowledged within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Bids acknowledged after `t` (returned then or later).
    fn acks_since(&self, t: Duration) -> usize {
        let ops = self.ops.lock().expect("ops lock");
        ops.iter()
            .filter(|op| op.returned.is_some_and(|r| r >= t) && op.ret == Return::Bid(Ok(())))
            .count()
    }

    /// Stops the clients, reads the result once more (from a new client, on every node), and
    /// checks the whole history: linearizable, and the final result holds the highest
    /// acknowledged bid. Also checks that no node panicked.
    async fn finish(self, lab: &Lab) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.expect("a client task panicked");
        }
        let mut client = Client::with_addresses(lab.h.cluster.spec.client_addrs(), WAIT);
        let invoked = self.t0.elapsed();
        let last = client.result().await.expect("a final read is answered");
        let mut ops = std::mem::take(&mut *self.ops.lock().expect("ops lock"));
        ops.push(Operation {
            client: FINAL_READER,
            auction: last.number,
            call: Call::Read,
            invoked,
            returned: Some(self.t0.elapsed()),
            ret: Return::Read(read_view(&last)),
        });
        let acked = ops
            .iter()
            .filter(|op| op.ret == Return::Bid(Ok(())))
            .filter_map(|op| match &op.call {
                Call::Bid { amount, .. } => Some(amount.get()),
                _ => None,
            })
            .max()
            .expect("some bid was acknowledged");
        let unknown = ops.iter().filter(|op| !op.is_known()).count();
        eprintln!(
            "history: {} operations ({unknown} with an unknown outcome), highest acknowledged \
             bid {acked}, final highest {:?}",
            ops.len(),
            last.highest_amount()
        );
        assert!(
            last.highest_amount() >= Some(acked),
            "the final result {last:?} lacks the acknowledged bid {acked}"
        );
        if let Err(v) = checker::check(&ops) {
            panic!("the history is not linearizable:\n{v}");
        }
        lab.h.assert_no_panics();
        lab.wait_etcd_agrees().await;
    }
}

/// One client of the workload: bids (each bid higher than any before it) and reads in turn;
/// after an operation whose outcome is unknown it starts over as a new client (a new session
/// and bidder) that dials the next address first.
struct ClientRun {
    addrs: Vec<SocketAddr>,
    n: u32,
    counter: Arc<AtomicU64>,
    ops: Arc<Mutex<Vec<Operation>>>,
    t0: Instant,
}

impl ClientRun {
    async fn run(self, stop: watch::Receiver<bool>) {
        let mut generation = 0u32;
        let mut auction = 1;
        loop {
            let mut addrs = self.addrs.clone();
            let first = (self.n + generation) as usize % addrs.len();
            addrs.rotate_left(first);
            let mut client = Client::with_addresses(addrs, OP_BUDGET);
            let id = self.n * 1000 + generation;
            let bidder = BidderId::new(format!("c{}-{generation}", self.n)).expect("a name");
            loop {
                if *stop.borrow() {
                    return;
                }
                let amount = Amount::new(self.counter.fetch_add(1, Ordering::Relaxed) + 1)
                    .expect("positive");
                let invoked = self.t0.elapsed();
                let bid = client.bid(&bidder, amount).await;
                let call = Call::Bid {
                    bidder: bidder.clone(),
                    amount,
                };
                let known = match bid {
                    Ok(o) => {
                        auction = o.auction.number;
                        self.push(id, auction, call, invoked, Some(Return::Bid(o.decision)));
                        true
                    }
                    Err(e) => {
                        self.unknown(id, auction, call, invoked, &e);
                        false
                    }
                };
                if !known {
                    break;
                }
                let invoked = self.t0.elapsed();
                match client.result().await {
                    Ok(view) => {
                        auction = view.number;
                        let ret = Return::Read(read_view(&view));
                        self.push(id, auction, Call::Read, invoked, Some(ret));
                    }
                    Err(e) => {
                        self.unknown(id, auction, Call::Read, invoked, &e);
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            generation += 1;
        }
    }

    fn push(&self, client: u32, auction: u64, call: Call, invoked: Duration, ret: Option<Return>) {
        let (returned, ret) = match ret {
            Some(ret) => (Some(self.t0.elapsed()), ret),
            None => (None, Return::Unknown),
        };
        self.ops.lock().expect("ops lock").push(Operation {
            client,
            auction,
            call,
            invoked,
            returned,
            ret,
        });
    }

    fn unknown(&self, client: u32, auction: u64, call: Call, invoked: Duration, e: &ClientError) {
        assert!(
            matches!(e, ClientError::Exception { .. }),
            "client {client}: {e}"
        );
        self.push(client, auction, call, invoked, None);
    }
}

fn read_view(view: &View) -> ReadView {
    ReadView {
        number: view.number,
        open: view.open,
        highest: view.highest.as_ref().map(|h| (h.bidder.clone(), h.amount)),
        bidders: view.bidders,
    }
}

/// A read at node `id`'s address alone, within 2.5 s: `None` when it answers nothing.
async fn read_at(lab: &Lab, id: u16) -> Option<View> {
    Client::new(lab.client_addr(id), OP_BUDGET)
        .result()
        .await
        .ok()
}

/// The amount of a bid sent to a deposed leader alone: far above every bid of the workload.
const PROBE: u64 = 1_000_000_000;

/// The highest bid acknowledged so far.
fn highest_acked(w: &Workload) -> u64 {
    let ops = w.ops.lock().expect("ops lock");
    ops.iter()
        .filter(|op| op.ret == Return::Bid(Ok(())))
        .filter_map(|op| match &op.call {
            Call::Bid { amount, .. } => Some(amount.get()),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Keeps node `id` cut off for three times a node's request timeout to etcd (so it meets etcd
/// out of reach more than once): commits go on, and the node waits rather than ends.
async fn cut_off_for_a_while(lab: &mut Lab, w: &Workload, id: u16) {
    let t = w.now();
    tokio::time::sleep(3 * auction::etcd::registry::REQUEST_TIMEOUT).await;
    assert!(w.acks_since(t) > 0, "commits stopped");
    assert!(
        lab.h.cluster.running().contains(&id),
        "node {id} stopped instead of waiting for etcd"
    );
}

async fn killing_a_replica_loses_no_acked_bid_and_removes_it_from_etcd() {
    let mut lab = Lab::start(1, "kill-replica", 1).await;
    let w = Workload::start(&lab, 2).await;
    let t = w.now();
    lab.h.cluster.kill(3).await;
    w.acked_after(t, SERVE_AGAIN, "kill -9 replica").await;
    lab.wait_for("node 3 removed", |s| member_ids(s) == [1, 2])
        .await;
    lab.wait_etcd_members(&[1, 2]).await;
    // Commits go on without it.
    w.acked_after(w.now(), SERVE_AGAIN, "after the removal")
        .await;
    w.finish(&lab).await;
}

async fn killing_two_nodes_in_turn_leaves_the_last_serving_alone_with_every_acked_bid() {
    let mut lab = Lab::start(2, "kill-two", 1).await;
    let w = Workload::start(&lab, 2).await;
    let first = lab.wait_for("node 1 leads", |s| leader_of(s) == 1).await;
    let t = w.now();
    lab.h.cluster.kill(1).await;
    let second = lab.wait_new_leader(1, first.epoch, &[2, 3]).await;
    w.acked_after(t, SERVE_AGAIN, "kill -9 leader").await;
    let next = leader_of(&second);
    let last = 5 - next;
    let t = w.now();
    lab.h.cluster.kill(next).await;
    lab.wait_new_leader(next, second.epoch, &[last]).await;
    w.acked_after(t, SERVE_AGAIN, "kill -9 the second leader")
        .await;
    lab.wait_etcd_members(&[last]).await;
    assert_eq!(lab.etcd_leader().await.map(|l| l.0), Some(last));
    w.finish(&lab).await;
}

async fn an_isolated_leader_is_replaced_commits_nothing_answers_no_read_and_exits_after_the_heal() {
    let mut lab = Lab::start(3, "isolate-leader", 1).await;
    let w = Workload::start(&lab, 2).await;
    let before = lab.wait_for("node 1 leads", |s| leader_of(s) == 1).await;
    // Node 1's host loses the network: it reaches neither the other nodes nor etcd.
    let mut rest = lab.ips(&[2, 3]);
    rest.extend(lab.etcd.addrs());
    let t = w.now();
    lab.cuts.cut(&[lab.ip(1)], &rest).expect("cut");
    let after = lab.wait_new_leader(1, before.epoch, &[2, 3]).await;
    eprintln!(
        "leader isolated: a new leader serves {} ms after",
        (w.now() - t).as_millis()
    );
    w.acked_after(t, SERVE_AGAIN, "leader isolated").await;
    assert_eq!(
        lab.etcd_leader().await,
        Some((leader_of(&after), after.epoch))
    );
    // A bid of the new leader's that the old one never saw.
    w.acked_after(w.now(), SERVE_AGAIN, "after the takeover")
        .await;
    let acked = highest_acked(&w);
    // Asked directly, the old leader still says it leads, if it answers at all (it cannot know
    // better without etcd, and its requests to etcd hold it up to 2 s each), but it answers no
    // read: a read needs an ack of every member it lists, and they left it.
    if let Some(old) = lab.status_of(1).await {
        assert_eq!((leader_of(&old), old.epoch), (1, before.epoch));
    }
    if let Some(view) = read_at(&lab, 1).await {
        assert!(
            view.highest_amount() >= Some(acked),
            "the isolated old leader answered from its old state: {view:?}, acked {acked}"
        );
    }
    // Nor does it commit: a bid sent to it alone gets no answer, and no one ever applies it.
    let probe = BidderId::new("probe").expect("a name");
    let mut direct = Client::new(lab.client_addr(1), OP_BUDGET);
    let bid = direct
        .bid(&probe, Amount::new(PROBE).expect("positive"))
        .await;
    assert!(
        bid.is_err(),
        "the isolated old leader committed a bid: {bid:?}"
    );
    lab.cuts.heal().expect("heal");
    // Healed, it learns from etcd that it was deposed, and exits with an error, having answered
    // nothing from its old state.
    if let Some(view) = read_at(&lab, 1).await {
        assert!(
            view.highest_amount() >= Some(highest_acked(&w)),
            "the healed old leader answered from its old state: {view:?}"
        );
    }
    assert!(
        lab.wait_exited(1).await,
        "a deposed leader exits with an error"
    );
    assert!(lab.lines_of(1, "another node leads now") > 0);
    w.acked_after(w.now(), SERVE_AGAIN, "after the heal").await;
    let last = read_at(&lab, leader_of(&after)).await.expect("a read");
    assert_ne!(
        last.highest_amount(),
        Some(PROBE),
        "the old leader's bid was applied"
    );
    w.finish(&lab).await;
}

async fn an_isolated_replica_is_removed_and_rejoins_with_a_state_sync_after_the_heal() {
    let mut lab = Lab::start(4, "isolate-replica", 1).await;
    let w = Workload::start(&lab, 2).await;
    let mut rest = lab.ips(&[1, 2]);
    rest.extend(lab.etcd.addrs());
    let t = w.now();
    lab.cuts.cut(&[lab.ip(3)], &rest).expect("cut");
    lab.wait_for("node 3 removed", |s| {
        leader_of(s) == 1 && member_ids(s) == [1, 2]
    })
    .await;
    w.acked_after(t, SERVE_AGAIN, "replica isolated").await;
    lab.wait_etcd_members(&[1, 2]).await;
    cut_off_for_a_while(&mut lab, &w, 3).await;
    let synced = lab.lines_of(3, "received the full state");
    lab.cuts.heal().expect("heal");
    // The same process joins again, and gets the whole state before it is a member.
    lab.h.wait_member(3).await;
    assert!(lab.lines_of(3, "received the full state") > synced);
    lab.wait_etcd_members(&[1, 2, 3]).await;
    w.acked_after(w.now(), SERVE_AGAIN, "after the rejoin")
        .await;
    w.finish(&lab).await;
}

async fn a_member_cut_off_from_etcd_changes_nothing_and_cannot_take_over() {
    let mut lab = Lab::start(5, "member-without-etcd", 1).await;
    let w = Workload::start(&lab, 2).await;
    let before = lab
        .wait_for("three members", |s| member_ids(s) == [1, 2, 3])
        .await;
    // Node 2, first in line, loses etcd only.
    let t = w.now();
    lab.cuts.cut(&[lab.ip(2)], &lab.etcd.addrs()).expect("cut");
    // Nothing changes while the leader lives: commits go on, nobody is removed.
    let acks = w.acks_since(t);
    tokio::time::sleep(Duration::from_millis(3 * auction_lab::harness::TIMEOUT_MS)).await;
    assert!(w.acks_since(t) > acks, "commits stopped");
    let now = lab.wait_for("node 1 leads", |s| leader_of(s) == 1).await;
    assert_eq!((member_ids(&now), now.epoch), (vec![1, 2, 3], before.epoch));
    assert_eq!(lab.etcd_leader().await, Some((1, before.epoch)));
    // The leader dies: node 2 cannot take over while cut, so node 3 does, and removes it.
    let t = w.now();
    lab.h.cluster.kill(1).await;
    let after = lab.wait_new_leader(1, before.epoch, &[3]).await;
    assert_eq!(leader_of(&after), 3);
    w.acked_after(
        t,
        SERVE_AGAIN,
        "kill -9 leader, first in line cut from etcd",
    )
    .await;
    cut_off_for_a_while(&mut lab, &w, 2).await;
    lab.cuts.heal().expect("heal");
    lab.h.wait_member(2).await;
    lab.wait_etcd_members(&[2, 3]).await;
    w.acked_after(w.now(), SERVE_AGAIN, "after the heal").await;
    w.finish(&lab).await;
}

async fn killing_etcds_leader_stops_no_commit_and_a_later_failover_works() {
    let mut lab = Lab::start(6, "etcd-leader", 3).await;
    let w = Workload::start(&lab, 2).await;
    let before = lab.wait_for("node 1 leads", |s| leader_of(s) == 1).await;
    let etcd_leader = lab.etcd.leader(WAIT).await.expect("etcd has a leader");
    let t = w.now();
    lab.etcd.kill(etcd_leader).expect("kill etcd's leader");
    w.acked_after(t, SERVE_AGAIN, "kill -9 etcd's leader").await;
    lab.etcd.leader(WAIT).await.expect("etcd elects another");
    // A failover needs etcd: it still works.
    let t = w.now();
    lab.h.cluster.kill(1).await;
    lab.wait_new_leader(1, before.epoch, &[2, 3]).await;
    w.acked_after(t, SERVE_AGAIN, "kill -9 leader, etcd on two members")
        .await;
    lab.wait_etcd_members(&[2, 3]).await;
    w.finish(&lab).await;
}

async fn without_etcd_commits_go_on_and_a_takeover_waits_for_etcd_then_completes() {
    let mut lab = Lab::start(7, "no-etcd", 1).await;
    let w = Workload::start(&lab, 2).await;
    let before = lab.wait_for("node 1 leads", |s| leader_of(s) == 1).await;
    let t = w.now();
    lab.cuts
        .cut(&lab.ips(&[1, 2, 3]), &lab.etcd.addrs())
        .expect("cut");
    // Commits go on with the members the leader has.
    w.acked_after(t, SERVE_AGAIN, "etcd cut off").await;
    let acks = w.acks_since(t);
    tokio::time::sleep(Duration::from_millis(3 * auction_lab::harness::TIMEOUT_MS)).await;
    assert!(w.acks_since(t) > acks, "commits stopped without etcd");
    // The leader dies: nobody can take over until etcd is back; the members wait for it.
    lab.h.cluster.kill(1).await;
    let killed = w.now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = w.now();
    assert_eq!(
        w.acks_since(killed + Duration::from_millis(100)),
        0,
        "a bid was acknowledged without a leader"
    );
    for id in [2, 3] {
        assert!(
            lab.h.cluster.running().contains(&id),
            "node {id} stopped instead of waiting for etcd"
        );
        if let Some(s) = lab.status_of(id).await.filter(|s| leader_of(s) == id) {
            panic!("node {id} leads without etcd: {s:?}");
        }
    }
    assert_eq!(lab.etcd_leader().await, Some((1, before.epoch)));
    let mut members = lab.etcd_members().await;
    members.sort_unstable();
    assert_eq!(members, [1, 2, 3], "membership changed without etcd");
    lab.cuts.heal().expect("heal");
    let healed = w.now();
    lab.wait_new_leader(1, before.epoch, &[2, 3]).await;
    w.acked_after(healed, SERVE_AGAIN_AFTER_ETCD, "etcd back, takeover")
        .await;
    assert!(during >= killed);
    lab.wait_etcd_members(&[2, 3]).await;
    w.finish(&lab).await;
}

async fn a_restarted_etcd_keeps_the_cluster_and_a_later_failover_works() {
    let mut lab = Lab::start(8, "etcd-restart", 1).await;
    let w = Workload::start(&lab, 2).await;
    let before = lab.wait_for("node 1 leads", |s| leader_of(s) == 1).await;
    let t = w.now();
    lab.etcd.kill(0).expect("kill etcd");
    w.acked_after(t, SERVE_AGAIN, "kill -9 etcd").await;
    lab.etcd.restart(0).await.expect("etcd restarts");
    // It kept the records.
    assert_eq!(lab.etcd_leader().await, Some((1, before.epoch)));
    let t = w.now();
    lab.h.cluster.kill(1).await;
    lab.wait_new_leader(1, before.epoch, &[2, 3]).await;
    w.acked_after(
        t,
        SERVE_AGAIN_AFTER_ETCD,
        "kill -9 leader after etcd restarted",
    )
    .await;
    lab.wait_etcd_members(&[2, 3]).await;
    w.finish(&lab).await;
}

async fn a_node_restarted_on_another_address_and_a_new_node_get_the_full_state() {
    let mut lab = Lab::start(9, "new-address", 1).await;
    let w = Workload::start(&lab, 2).await;
    let t = w.now();
    lab.h.cluster.kill(3).await;
    lab.wait_for("node 3 removed", |s| member_ids(s) == [1, 2])
        .await;
    w.acked_after(t, SERVE_AGAIN, "kill -9 replica").await;
    // Node 3 comes back on another host, under the same id; node 4 is new.
    let net = lab.net;
    lab.h.cluster.spec.hosts.insert(3, ip(net, 4));
    lab.h.cluster.spec.hosts.insert(4, ip(net, 5));
    lab.h.start_member(3).await;
    lab.h.start_member(4).await;
    lab.wait_etcd_members(&[1, 2, 3, 4]).await;
    let registry = lab.registry();
    let record = until_etcd_answers(|| registry.node(NodeId(3))).await;
    assert_eq!(record.map(|r| r.replica.ip()), Some(ip(net, 4)));
    // Both old nodes die: the newcomers, alone, hold every acknowledged bid.
    let before = lab
        .wait_for("four members", |s| member_ids(s) == [1, 2, 3, 4])
        .await;
    let t = w.now();
    lab.h.cluster.kill(1).await;
    lab.h.cluster.kill(2).await;
    lab.wait_new_leader(1, before.epoch, &[3, 4]).await;
    w.acked_after(t, SERVE_AGAIN, "kill -9 both old nodes")
        .await;
    w.finish(&lab).await;
}

async fn a_node_removed_while_cut_off_never_leads_and_rejoins_with_a_state_sync() {
    let mut lab = Lab::start(10, "removed-while-cut", 1).await;
    let w = Workload::start(&lab, 2).await;
    let mut rest = lab.ips(&[1, 2]);
    rest.extend(lab.etcd.addrs());
    lab.cuts.cut(&[lab.ip(3)], &rest).expect("cut");
    let removed = lab
        .wait_for("node 3 removed", |s| member_ids(s) == [1, 2])
        .await;
    lab.wait_etcd_members(&[1, 2]).await;
    cut_off_for_a_while(&mut lab, &w, 3).await;
    // It reaches etcd again, but not the other nodes; then the leader dies. Node 3, which still
    // believes it is a member, must not take over: etcd no longer lists it.
    lab.cuts.heal().expect("heal");
    lab.cuts.cut(&[lab.ip(3)], &lab.ips(&[1, 2])).expect("cut");
    let t = w.now();
    lab.h.cluster.kill(1).await;
    let after = lab.wait_new_leader(1, removed.epoch, &[2]).await;
    assert_eq!(leader_of(&after), 2);
    w.acked_after(t, SERVE_AGAIN, "kill -9 leader, removed node cut off")
        .await;
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        assert_eq!(lab.etcd_leader().await.map(|l| l.0), Some(2));
        if let Some(s) = lab.status_of(3).await.filter(|s| leader_of(s) == 3) {
            panic!("the removed node leads: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let synced = lab.lines_of(3, "received the full state");
    lab.cuts.heal().expect("heal");
    lab.h.wait_member(3).await;
    assert!(lab.lines_of(3, "received the full state") > synced);
    lab.wait_etcd_members(&[2, 3]).await;
    w.acked_after(w.now(), SERVE_AGAIN, "after the rejoin")
        .await;
    w.finish(&lab).await;
}

/// Node 1, the leader, loses its members but not etcd. It removes them after the timeout and
/// goes on alone; they, which wait for a working leader to remove them before they claim
/// (`auction_core::follower::silence_limit`), find themselves unlisted and cannot take over.
/// Once healed, both rejoin with a state sync.
async fn a_leader_cut_off_from_its_members_but_not_from_etcd_removes_them_and_goes_on() {
    let mut lab = Lab::start(11, "leader-cut-from-members", 1).await;
    let w = Workload::start(&lab, 2).await;
    let before = lab
        .wait_for("three members", |s| member_ids(s) == [1, 2, 3])
        .await;
    let t = w.now();
    lab.cuts.cut(&[lab.ip(1)], &lab.ips(&[2, 3])).expect("cut");
    lab.wait_for("node 1 alone", |s| member_ids(s) == [1]).await;
    w.acked_after(t, SERVE_AGAIN, "leader cut from its members")
        .await;
    lab.wait_etcd_members(&[1]).await;
    cut_off_for_a_while(&mut lab, &w, 2).await;
    assert_eq!(lab.etcd_leader().await, Some((1, before.epoch)));
    assert_eq!(lab.h.cluster.running(), [1, 2, 3]);
    lab.cuts.heal().expect("heal");
    lab.h
        .cluster
        .wait_members(&[2, 3], WAIT)
        .await
        .expect("both rejoin");
    w.acked_after(w.now(), SERVE_AGAIN, "after the heal").await;
    w.finish(&lab).await;
}

/// Node 3, a replica, loses the other nodes but not etcd. The leader removes it after the
/// timeout and goes on; node 3, which waits for a working leader to remove it before it claims,
/// finds itself unlisted and cannot depose the leader. Once healed, it rejoins with a state
/// sync.
async fn a_replica_cut_off_from_the_nodes_but_not_from_etcd_is_removed_and_cannot_depose_the_leader()
 {
    let mut lab = Lab::start(12, "replica-cut-from-nodes", 1).await;
    let w = Workload::start(&lab, 2).await;
    let before = lab
        .wait_for("three members", |s| member_ids(s) == [1, 2, 3])
        .await;
    let t = w.now();
    lab.cuts.cut(&[lab.ip(3)], &lab.ips(&[1, 2])).expect("cut");
    lab.wait_for("node 3 removed", |s| {
        leader_of(s) == 1 && member_ids(s) == [1, 2]
    })
    .await;
    w.acked_after(t, SERVE_AGAIN, "replica cut from the nodes")
        .await;
    lab.wait_etcd_members(&[1, 2]).await;
    cut_off_for_a_while(&mut lab, &w, 3).await;
    assert_eq!(lab.etcd_leader().await, Some((1, before.epoch)));
    assert_eq!(lab.h.cluster.running(), [1, 2, 3]);
    let synced = lab.lines_of(3, "received the full state");
    lab.cuts.heal().expect("heal");
    lab.h.wait_member(3).await;
    assert!(lab.lines_of(3, "received the full state") > synced);
    w.acked_after(w.now(), SERVE_AGAIN, "after the heal").await;
    w.finish(&lab).await;
}

/// Node 1 dies; node 2 wins the takeover in etcd but dies before node 3, cut off from it, took
/// its state. Node 3, which never followed epoch 2's leader, takes over from it once it has
/// tried to follow it long enough (it is still listed in etcd, so that leader could commit
/// nothing without it), and serves alone with every acknowledged bid.
async fn a_successor_that_dies_before_any_member_took_its_state_is_replaced() {
    let mut lab = Lab::start(13, "successor-dies", 1).await;
    let w = Workload::start(&lab, 2).await;
    let before = lab
        .wait_for("three members", |s| member_ids(s) == [1, 2, 3])
        .await;
    lab.cuts.cut(&[lab.ip(3)], &lab.ips(&[2])).expect("cut");
    let t = w.now();
    lab.h.cluster.kill(1).await;
    // Node 2 wins in etcd; it dies at once, long before it would remove node 3 (absent for a
    // timeout).
    let deadline = Instant::now() + WAIT;
    let won = loop {
        if let Some((2, epoch)) = lab.etcd_leader().await {
            break epoch;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 did not take over in etcd"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    lab.h.cluster.kill(2).await;
    assert!(won > before.epoch);
    let after = lab.wait_new_leader(2, won, &[3]).await;
    assert_eq!(leader_of(&after), 3);
    w.acked_after(
        t,
        SERVE_AGAIN,
        "kill -9 leader, then its successor before anyone followed it",
    )
    .await;
    lab.cuts.heal().expect("heal");
    w.finish(&lab).await;
}
