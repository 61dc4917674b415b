//! Faults of the host rather than of a process (issue #13): the wall clock steps, as NTP, a
//! restored snapshot or an operator's `date -s` step it, and files in /tmp vanish (as
//! systemd-tmpfiles deletes them) or are private to each node (a service with `PrivateTmp=yes`).
//! docs/design.md, "Time" and "State never goes backwards": no decision rests on either.
//!
//! The clock tests run every node on one [`FakeClock`] (Debian's `faketime`), whose offset steps
//! the wall clock of all nodes at once while their monotonic clock runs on.

use std::time::Duration;

use auction::auction::Decision;
use auction::cluster::{is_member, leader_of};
use auction::pb::{self, auction_client::AuctionClient};
use auction::types::{Amount, BidderId, RequestId, Token};
use auction::view::Status;
use auction_lab::fake_clock::FakeClock;
use auction_lab::harness::{Harness, TIMEOUT_MS, WAIT, json};
use rustix::process::Signal;
use serde_json::Value;
use tokio::time::Instant;

/// One hour, in seconds: a step far beyond any auction here and beyond the session lifetime.
const HOUR: i64 = 3600;
/// How late after its deadline an auction may still be seen open: heartbeats, a takeover and a
/// busy 2-core machine, with room to spare.
const SLACK: Duration = Duration::from_secs(2);
/// The length of the auctions whose closing time is checked: a few seconds, so tests stay fast.
const SECS: u64 = 4;
/// Node ids: the founding leader and the two members that join it, in this order.
const IDS: [u16; 3] = [5400, 5401, 5402];

// ---------------------------------------------------------------------------------------------
// Helpers

/// A cluster of `IDS` whose nodes all run on one fake wall clock, at offset 0 for now. Their
/// first auction is long (ten hours), so a test opens the auctions whose deadline it checks.
/// Fails, naming the package, if libfaketime is not installed.
async fn on_fake_clock() -> (Harness, FakeClock) {
    let mut spec = Harness::spec(&["--duration", "36000"]);
    // Missing libfaketime fails the test, with the package to install: never a skip.
    let clock = FakeClock::new(spec.auth_dir.join("wall-clock-offset"))
        .unwrap_or_else(|e| panic!("cannot put the nodes on a fake wall clock: {e}"));
    spec.node_env = clock.env();
    (Harness::start_with_spec(spec, &IDS).await, clock)
}

/// Steps the wall clock of every node to `secs` from the real one.
fn step(clock: &FakeClock, secs: i64) {
    clock.set_offset(secs).expect("write the clock offset");
}

/// `auction-client --json ARGS`, retrying for up to [`WAIT`] (across a failover): its exit code
/// (0 success, 1 refused) and its answer. An exception (exit 2) fails the test.
async fn client(h: &Harness, args: &[&str]) -> (i32, Value) {
    let budget = WAIT.as_millis().to_string();
    let mut all = vec!["--retry-ms", budget.as_str(), "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = h.client_cmd(&all).await;
    assert!(
        code == 0 || code == 1,
        "auction-client {args:?} got no outcome (exit {code}): {out}{err}"
    );
    (code, json(&out))
}

async fn result(h: &Harness) -> Value {
    client(h, &["result"]).await.1
}

async fn bid(h: &Harness, who: &str, amount: u64) -> (i32, Value) {
    client(h, &["--id", who, "bid", &amount.to_string()]).await
}

async fn assert_bid_accepted(h: &Harness, who: &str, amount: u64) {
    let (code, out) = bid(h, who, amount).await;
    assert_eq!(code, 0, "{who}'s bid of {amount} was refused: {out}");
}

async fn assert_bid_refused(h: &Harness, who: &str, amount: u64) {
    let (code, out) = bid(h, who, amount).await;
    assert_eq!(code, 1, "{who}'s bid of {amount} was accepted: {out}");
}

/// Closes whatever auction is open, then opens one of [`SECS`] seconds. Returns its number and
/// the instants just before the start was sent and just after it was answered: its deadline
/// lies between them, [`SECS`] later.
async fn open_short_auction(h: &Harness) -> (u64, Instant, Instant) {
    // Refused (exit 1) if nothing is open; either way nothing is open afterwards.
    client(h, &["close"]).await;
    let sent = Instant::now();
    let (code, out) = client(h, &["start", "--duration", &SECS.to_string()]).await;
    let answered = Instant::now();
    assert_eq!(code, 0, "start refused: {out}");
    (
        out["auction"].as_u64().expect("auction number"),
        sent,
        answered,
    )
}

/// Polls the result until the auction is closed. It must not be seen closed before `earliest`,
/// nor still open after `latest`, and it must still be auction `number`.
async fn assert_closes_between(h: &Harness, number: u64, earliest: Instant, latest: Instant) {
    let mut c = h.cluster.client(WAIT);
    loop {
        let asked = Instant::now();
        let a = c.result().await.expect("a result");
        let answered = Instant::now();
        assert_eq!(a.number, number, "another auction: {a:?}");
        if !a.open {
            assert!(
                answered >= earliest,
                "auction {number} closed {:?} before its deadline: {a:?}",
                earliest - answered
            );
            return;
        }
        assert!(
            asked <= latest,
            "auction {number} still open {:?} after its deadline (allowed: {SLACK:?}): {a:?}",
            asked - latest + SLACK
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The auction opened between `sent` and `answered` closes [`SECS`] after it was opened: not
/// before, and at most [`SLACK`] late.
async fn assert_closes_on_time(h: &Harness, number: u64, sent: Instant, answered: Instant) {
    let length = Duration::from_secs(SECS);
    assert_closes_between(h, number, sent + length, answered + length + SLACK).await;
}

/// Polls the result until the auction is closed, and returns it.
async fn wait_closed(h: &Harness) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = result(h).await;
        if r["state"] == "closed" {
            return r;
        }
        assert!(Instant::now() < deadline, "never closed: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_closed_won_by(r: &Value, who: &str, amount: u64) {
    assert!(
        r["state"] == "closed" && r["winner"] == who && r["winning_bid"] == amount,
        "expected the auction closed, won by {who} with {amount}: {r}"
    );
}

/// Waits for a leader other than `old`.
async fn wait_new_leader(h: &Harness, old: u16) -> Status {
    h.wait_for(|s| leader_of(s) != old).await
}

/// A client session with a token of its own for `who`, for requests whose id the test replays.
fn session_for(h: &Harness, who: &str) -> (auction::client::Client, BidderId, Token) {
    let mut c = h.cluster.client(WAIT);
    let bidder = BidderId::new(who).unwrap();
    let token = Token::new(format!("{who:_<40}")).unwrap();
    c.set_token(bidder.clone(), token.clone());
    (c, bidder, token)
}

/// Sends the bid with request id `id` again, as a client does that lost the answer, through a
/// raw gRPC client so the id is the original one; reconnects until some leader answers.
async fn replay_bid(
    h: &Harness,
    id: RequestId,
    bidder: &BidderId,
    amount: u64,
    token: &Token,
) -> Decision {
    let request = pb::BidRequest {
        id: Some(id.into()),
        bidder: bidder.to_string(),
        amount,
        token: token.expose().to_string(),
    };
    let url = format!("http://{}", h.cluster.spec.client_addr());
    let deadline = Instant::now() + WAIT;
    loop {
        let last = match AuctionClient::connect(url.clone()).await {
            Ok(mut c) => match c.bid(request.clone()).await {
                Ok(reply) => {
                    let d = reply.into_inner().decision.expect("a decision");
                    return Decision::try_from(d).expect("a well-formed decision");
                }
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        assert!(Instant::now() < deadline, "replay got no answer: {last}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deletes whatever files this cluster keeps in /tmp, as a cleaner of /tmp would: its lock file,
/// `/tmp/auction-node-HOST-PORT.lock`, before the member marks replaced it; none since.
fn delete_cluster_files(h: &Harness) -> usize {
    let port = h.cluster.spec.leader_port.to_string();
    let mut deleted = 0;
    for entry in std::fs::read_dir("/tmp").expect("read /tmp").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("auction-node-")
            && name.split(['-', '.']).any(|part| part == port.as_str());
        if !ours {
            continue;
        }
        let path = entry.path();
        let gone = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if gone.is_ok() {
            deleted += 1;
        }
    }
    deleted
}

/// Where the nodes keep their /tmp.
#[derive(Clone, Copy, Debug)]
enum Tmp {
    /// The host's /tmp, whose cluster files the test deletes.
    Shared,
    /// A /tmp of each node's own, empty at its start (systemd's `PrivateTmp=yes`).
    Private,
}

async fn start_cluster(tmp: Tmp) -> Harness {
    let mut spec = Harness::spec(&[]);
    spec.private_tmp = matches!(tmp, Tmp::Private);
    Harness::start_with_spec(spec, &IDS).await
}

/// Fails if `s` is not the state with ann's 100 and bob's 200: a node leads another state.
fn assert_holds_the_bids(s: &Status) {
    let a = &s.auction;
    assert!(
        a.number == 1
            && a.highest_amount() == Some(200)
            && a.highest_bidder() == Some("bob")
            && a.bidders == 2,
        "node {:?} leads a state without the acknowledged bids: {s:?}",
        leader_of(s)
    );
}

// ---------------------------------------------------------------------------------------------
// The wall clock steps back

/// Issue #13, case 1.
#[tokio::test]
async fn a_closed_auction_stays_closed_when_the_wall_clock_steps_back() {
    let (h, clock) = on_fake_clock().await;
    open_short_auction(&h).await;
    assert_bid_accepted(&h, "ann", 100).await;
    assert_closed_won_by(&wait_closed(&h).await, "ann", 100);
    step(&clock, -HOUR);
    assert_closed_won_by(&result(&h).await, "ann", 100);
    assert_bid_refused(&h, "bob", 200).await;
    assert_closed_won_by(&result(&h).await, "ann", 100);
    h.assert_no_panics();
}

/// The leader dies right after the auction closed, and its successor starts on a wall clock an
/// hour behind.
#[tokio::test]
async fn a_closed_auction_stays_closed_when_the_wall_clock_steps_back_across_a_failover() {
    let (mut h, clock) = on_fake_clock().await;
    open_short_auction(&h).await;
    assert_bid_accepted(&h, "ann", 100).await;
    assert_closed_won_by(&wait_closed(&h).await, "ann", 100);
    h.cluster.kill(IDS[0]).await;
    step(&clock, -HOUR);
    wait_new_leader(&h, IDS[0]).await;
    assert_closed_won_by(&result(&h).await, "ann", 100);
    assert_bid_refused(&h, "bob", 200).await;
    assert_closed_won_by(&result(&h).await, "ann", 100);
    h.assert_no_panics();
}

/// A step back before the deadline must not keep the auction open for the hour stepped back.
#[tokio::test]
async fn an_open_auction_closes_on_time_when_the_wall_clock_steps_back_before_its_deadline() {
    let (h, clock) = on_fake_clock().await;
    let (number, sent, answered) = open_short_auction(&h).await;
    assert_bid_accepted(&h, "ann", 100).await;
    step(&clock, -HOUR);
    assert_closes_on_time(&h, number, sent, answered).await;
    assert_closed_won_by(&result(&h).await, "ann", 100);
    h.assert_no_panics();
}

// ---------------------------------------------------------------------------------------------
// The wall clock steps forward

/// A step forward before the deadline must not end the auction early. A read while the clock is
/// ahead must say open, and so must every read after it, until the real deadline.
#[tokio::test]
async fn an_open_auction_does_not_close_early_when_the_wall_clock_steps_forward() {
    let (h, clock) = on_fake_clock().await;
    let (number, sent, answered) = open_short_auction(&h).await;
    step(&clock, HOUR);
    let r = result(&h).await;
    assert_eq!(r["state"], "open", "closed early by a wall-clock step: {r}");
    assert_bid_accepted(&h, "ann", 100).await;
    step(&clock, 0);
    assert_eq!(result(&h).await["state"], "open");
    assert_closes_on_time(&h, number, sent, answered).await;
    assert_closed_won_by(&result(&h).await, "ann", 100);
    h.assert_no_panics();
}

/// Issue #13, case 2: one request decided while the wall clock was an hour ahead must not
/// freeze the auction clock once the wall clock is back.
#[tokio::test]
async fn an_auction_started_after_the_wall_clock_stepped_forward_and_back_closes_on_time() {
    let (h, clock) = on_fake_clock().await;
    client(&h, &["close"]).await;
    step(&clock, HOUR);
    assert_bid_refused(&h, "ann", 100).await;
    step(&clock, 0);
    let (number, sent, answered) = open_short_auction(&h).await;
    assert_bid_accepted(&h, "bob", 100).await;
    assert_closes_on_time(&h, number, sent, answered).await;
    assert_closed_won_by(&result(&h).await, "bob", 100);
    h.assert_no_panics();
}

/// As above, and the leader is killed while the auction runs: its successor resumes the auction
/// clock, not the hour-ahead wall clock of a decision it replicated.
#[tokio::test]
async fn an_auction_closes_on_time_across_a_failover_after_a_wall_clock_step_forward_and_back() {
    let (mut h, clock) = on_fake_clock().await;
    client(&h, &["close"]).await;
    step(&clock, HOUR);
    assert_bid_refused(&h, "ann", 100).await;
    step(&clock, 0);
    let (number, sent, answered) = open_short_auction(&h).await;
    h.cluster.kill(IDS[0]).await;
    assert_bid_accepted(&h, "bob", 100).await;
    wait_new_leader(&h, IDS[0]).await;
    assert_closes_on_time(&h, number, sent, answered).await;
    assert_closed_won_by(&result(&h).await, "bob", 100);
    h.assert_no_panics();
}

// ---------------------------------------------------------------------------------------------
// Sessions and a forward jump past their lifetime (10 minutes)

/// A request retried with its original id after the wall clock jumped an hour ahead returns its
/// first outcome: the jump did not expire the session, so the bid is neither applied again nor
/// refused as not higher than itself.
#[tokio::test]
async fn a_retried_bid_keeps_its_first_outcome_after_a_wall_clock_jump_past_the_session_lifetime() {
    let (h, clock) = on_fake_clock().await;
    let (mut c, ann, token) = session_for(&h, "ann");
    let first = c.bid(&ann, Amount::new(100).unwrap()).await.unwrap();
    assert_eq!(first.decision, Ok(()));
    let id = c.last_request().unwrap();
    step(&clock, HOUR);
    let again = replay_bid(&h, id, &ann, 100, &token).await;
    assert_eq!(again, first.decision, "the retry got another outcome");
    let r = result(&h).await;
    assert_eq!(
        (r["highest_bid"].as_u64(), r["bidders"].as_u64()),
        (Some(100), Some(1)),
        "{r}"
    );
    h.assert_no_panics();
}

/// As above, with the leader killed after the jump: the successor, whose wall clock is an hour
/// ahead from its first decision on, still knows the session.
#[tokio::test]
async fn a_retried_bid_keeps_its_first_outcome_across_a_failover_after_the_wall_clock_jumps() {
    let (mut h, clock) = on_fake_clock().await;
    let (mut c, ann, token) = session_for(&h, "ann");
    let first = c.bid(&ann, Amount::new(100).unwrap()).await.unwrap();
    assert_eq!(first.decision, Ok(()));
    let id = c.last_request().unwrap();
    step(&clock, HOUR);
    h.cluster.kill(IDS[0]).await;
    wait_new_leader(&h, IDS[0]).await;
    let again = replay_bid(&h, id, &ann, 100, &token).await;
    assert_eq!(again, first.decision, "the retry got another outcome");
    let r = result(&h).await;
    assert_eq!(
        (r["highest_bid"].as_u64(), r["bidders"].as_u64()),
        (Some(100), Some(1)),
        "{r}"
    );
    h.assert_no_panics();
}

// ---------------------------------------------------------------------------------------------
// Files in /tmp deleted, or /tmp private to each node

/// Issue #13, case 3a: the leader's files are gone (deleted, or in its own /tmp), its members
/// are paused when it crashes and restarts at once. It must not found a new cluster: the
/// acknowledged bids stay, and it ends up a member of the surviving cluster.
async fn leader_restarted_while_members_pause_keeps_the_acknowledged_bids(tmp: Tmp) {
    let mut h = start_cluster(tmp).await;
    assert_bid_accepted(&h, "ann", 100).await;
    assert_bid_accepted(&h, "bob", 200).await;
    delete_cluster_files(&h);
    for &id in &IDS[1..] {
        h.cluster.signal(id, Signal::STOP).unwrap();
    }
    h.cluster.kill(IDS[0]).await;
    h.cluster.start(IDS[0]).unwrap();
    // Real time passing is the fault here: the members stay paused this long (longer than the
    // timeout), ample for the restarted node to found a cluster if it would. Whoever answers
    // meanwhile must hold the bids.
    let paused_until = Instant::now() + Duration::from_millis(2 * TIMEOUT_MS);
    let mut c = h.cluster.client(Duration::from_millis(200));
    while Instant::now() < paused_until {
        if let Ok(s) = c.status().await {
            assert_holds_the_bids(&s);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for &id in &IDS[1..] {
        h.cluster.signal(id, Signal::CONT).unwrap();
    }
    // A surviving member leads again, and whoever answers on the way holds the bids.
    h.wait_for(|s| {
        assert_holds_the_bids(s);
        leader_of(s) != IDS[0]
    })
    .await;
    let s = h.wait_member(IDS[0]).await;
    assert_holds_the_bids(&s);
    assert_eq!(s.members.len(), IDS.len(), "{s:?}");
    let r = result(&h).await;
    assert_eq!(
        (r["highest_bid"].as_u64(), &r["highest_bidder"]),
        (Some(200), &Value::from("bob")),
        "{r}"
    );
    assert_bid_refused(&h, "bob", 150).await;
    h.assert_no_panics();
}

#[tokio::test]
async fn acknowledged_bids_survive_a_leader_restart_after_its_tmp_files_are_deleted() {
    leader_restarted_while_members_pause_keeps_the_acknowledged_bids(Tmp::Shared).await;
}

#[tokio::test]
async fn acknowledged_bids_survive_a_leader_restart_when_each_node_has_a_private_tmp() {
    leader_restarted_while_members_pause_keeps_the_acknowledged_bids(Tmp::Private).await;
}

/// Issue #13, case 3b: a replica whose files are gone crashes and restarts: it rejoins, and so
/// does a new node after it.
async fn replica_restarted_rejoins(tmp: Tmp) {
    let mut h = start_cluster(tmp).await;
    assert_bid_accepted(&h, "ann", 100).await;
    delete_cluster_files(&h);
    h.cluster.kill(IDS[2]).await;
    h.wait_for(|s| !is_member(s, IDS[2])).await;
    h.start_member(IDS[2]).await;
    h.start_member(5403).await;
    let s = h.wait_leader(IDS[0]).await;
    assert_eq!(s.members.len(), 4, "{s:?}");
    assert_bid_accepted(&h, "bob", 200).await;
    h.assert_no_panics();
}

#[tokio::test]
async fn a_replica_restarted_after_its_tmp_files_are_deleted_rejoins_as_a_member() {
    replica_restarted_rejoins(Tmp::Shared).await;
}

#[tokio::test]
async fn a_replica_restarted_with_a_private_tmp_rejoins_as_a_member() {
    replica_restarted_rejoins(Tmp::Private).await;
}

/// The leader crashes and a member takes over; the files are deleted before the old leader
/// restarts. It rejoins the surviving cluster, which keeps every bid.
async fn killed_leader_restarted_later_rejoins(tmp: Tmp) {
    let mut h = start_cluster(tmp).await;
    assert_bid_accepted(&h, "ann", 100).await;
    h.cluster.kill(IDS[0]).await;
    assert_bid_accepted(&h, "bob", 200).await;
    wait_new_leader(&h, IDS[0]).await;
    delete_cluster_files(&h);
    let s = h.start_member(IDS[0]).await;
    assert_holds_the_bids(&s);
    assert_ne!(leader_of(&s), IDS[0], "{s:?}");
    assert_bid_refused(&h, "ann", 150).await;
    h.assert_no_panics();
}

#[tokio::test]
async fn a_killed_leader_restarted_after_its_tmp_files_are_deleted_rejoins_the_surviving_cluster() {
    killed_leader_restarted_later_rejoins(Tmp::Shared).await;
}

#[tokio::test]
async fn a_killed_leader_restarted_with_a_private_tmp_rejoins_the_surviving_cluster() {
    killed_leader_restarted_later_rejoins(Tmp::Private).await;
}

/// The files are deleted while the members fence a stopped leader and one of them takes over.
/// The fenced node, restarted, rejoins; the last original member alone then still holds every
/// bid.
#[tokio::test]
async fn tmp_files_deleted_during_a_takeover_neither_lose_bids_nor_block_rejoining() {
    let mut h = start_cluster(Tmp::Shared).await;
    assert_bid_accepted(&h, "ann", 100).await;
    h.cluster.signal(IDS[0], Signal::STOP).unwrap();
    // The members notice the silence only after the timeout: the deletion falls in the takeover.
    delete_cluster_files(&h);
    assert_bid_accepted(&h, "bob", 200).await;
    h.wait_exited(IDS[0]).await;
    let s = wait_new_leader(&h, IDS[0]).await;
    assert_holds_the_bids(&s);
    let new_leader = leader_of(&s);
    h.start_member(IDS[0]).await;
    // The restarted node holds the whole state: with the new leader gone, the survivors lead it.
    h.cluster.kill(new_leader).await;
    let s = wait_new_leader(&h, new_leader).await;
    assert_holds_the_bids(&s);
    assert_bid_refused(&h, "bob", 150).await;
    h.assert_no_panics();
}
