//! Crashes and pauses of leaders and replicas, against real node processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use auction::client::Client;
use auction::cluster::{is_member, leader_of};
use auction::types::{Amount, BidderId};
use auction_lab::harness::{Harness, WAIT};
use rustix::process::Signal;

fn bidder(name: &str) -> BidderId {
    BidderId::new(name).unwrap()
}
fn amount(v: u64) -> Amount {
    Amount::new(v).unwrap()
}

/// Bids `value` as `who`; whether the bid was accepted.
async fn accepted(c: &mut Client, who: &str, value: u64) -> bool {
    c.bid(&bidder(who), amount(value))
        .await
        .expect("an outcome")
        .decision
        .is_ok()
}

/// Polls `count` until it reaches `at_least`.
async fn wait_count(count: &AtomicUsize, at_least: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while count.load(Ordering::SeqCst) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {at_least} acknowledged bids",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_under_four_bidders_loses_no_acknowledged_bid() {
    let mut h = Harness::start(&[5400, 5401, 5402]).await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut bidders = Vec::new();
    for i in 0..4u64 {
        let mut client = h.cluster.client(WAIT);
        let (accepted, stop) = (accepted.clone(), stop.clone());
        bidders.push(tokio::spawn(async move {
            let name = bidder(&format!("bidder{i}"));
            let mut results = Vec::new();
            let mut k = 0u64;
            while !stop.load(Ordering::SeqCst) {
                k += 1;
                // Interleaved, growing amounts: distinct across bidders, mostly increasing.
                let value = k * 4 + i;
                let r = client.bid(&name, amount(value)).await;
                if matches!(&r, Ok(o) if o.decision.is_ok()) {
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
                results.push((value, r));
            }
            results
        }));
    }
    wait_count(&accepted, 20).await;
    h.cluster.kill(5400).await;
    let before = accepted.load(Ordering::SeqCst);
    wait_count(&accepted, before + 20).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    for b in bidders {
        for (value, r) in b.await.unwrap() {
            match r {
                Ok(o) if o.decision.is_ok() => acked.push(value),
                Ok(_) => {}
                Err(e) => panic!("bid {value} got no outcome: {e}"),
            }
        }
    }
    let max_acked = *acked.iter().max().unwrap();
    let status = h.wait_for(|s| leader_of(s) != 5400).await;
    assert_eq!(status.auction.highest_amount(), Some(max_acked));
    // The last survivor holds every acknowledged bid too.
    h.cluster.kill(leader_of(&status)).await;
    let last = h.wait_for(|s| s.members.len() == 1).await;
    assert_eq!(last.auction.highest_amount(), Some(max_acked));
    h.assert_no_panics();
}

/// Every other test runs leaders that busy-poll after runs of small batches (the default, and
/// one client bidding makes every batch small). One that never does answers, fails over and hands
/// its state over like any other.
#[tokio::test]
async fn a_leader_that_never_spins_serves_and_fails_over() {
    let mut h = Harness::start_with(&[5400, 5401, 5402], &["--spin-us", "0"]).await;
    let mut c = h.cluster.client(WAIT);
    for value in 1..=50 {
        assert!(accepted(&mut c, "ann", value).await);
    }
    h.cluster.kill(5400).await;
    assert!(accepted(&mut c, "bob", 51).await);
    let s = h.wait_for(|s| leader_of(s) != 5400).await;
    assert_eq!(s.auction.highest_amount(), Some(51));
    for value in 52..=100 {
        assert!(accepted(&mut c, "bob", value).await);
    }
    assert_eq!(c.result().await.unwrap().highest_amount(), Some(100));
    h.assert_no_panics();
}

#[tokio::test]
async fn killing_a_replica_leaves_the_leader_serving() {
    let mut h = Harness::start(&[5400, 5401, 5402]).await;
    let mut c = h.cluster.client(WAIT);
    assert!(accepted(&mut c, "ann", 10).await);
    h.cluster.kill(5401).await;
    assert!(accepted(&mut c, "bob", 20).await);
    let s = h.wait_for(|s| !is_member(s, 5401)).await;
    assert_eq!(leader_of(&s), 5400);
    assert!(is_member(&s, 5402));
    assert!(accepted(&mut c, "ann", 30).await);
    assert_eq!(c.result().await.unwrap().highest_amount(), Some(30));
    h.assert_no_panics();
}

#[tokio::test]
async fn a_stopped_leader_is_fenced_and_a_replica_takes_over() {
    let mut h = Harness::start(&[5400, 5401, 5402]).await;
    let mut c = h.cluster.client(WAIT);
    assert!(accepted(&mut c, "ann", 10).await);
    h.cluster.signal(5400, Signal::STOP).unwrap();
    // The client retries by itself until a new leader answers.
    let o = c.bid(&bidder("bob"), amount(20)).await.unwrap();
    assert!(o.decision.is_ok(), "{o:?}");
    h.wait_exited(5400).await;
    let s = h.wait_for(|s| leader_of(s) == 5401).await;
    assert!(!is_member(&s, 5400));
    assert_eq!(c.result().await.unwrap().highest_amount(), Some(20));
    h.assert_no_panics();
}

#[tokio::test]
async fn a_stopped_replica_is_fenced_and_the_leader_goes_on() {
    let mut h = Harness::start(&[5400, 5401, 5402]).await;
    let mut c = h.cluster.client(WAIT);
    h.cluster.signal(5402, Signal::STOP).unwrap();
    let o = c.bid(&bidder("ann"), amount(10)).await.unwrap();
    assert!(o.decision.is_ok(), "{o:?}");
    h.wait_exited(5402).await;
    let s = h.wait_for(|s| !is_member(s, 5402)).await;
    assert_eq!(leader_of(&s), 5400);
    assert!(is_member(&s, 5401));
    assert!(accepted(&mut c, "bob", 11).await);
    h.assert_no_panics();
}

#[tokio::test]
async fn a_killed_node_restarts_with_its_seed_port_and_rejoins_with_the_full_state() {
    let mut h = Harness::start(&[5400, 5401]).await;
    let mut c = h.cluster.client(WAIT);
    assert!(accepted(&mut c, "ann", 10).await);
    h.cluster.kill(5400).await;
    assert!(accepted(&mut c, "bob", 20).await);
    h.wait_leader(5401).await;
    // The seed's command for the first node works again: it joins as a replica.
    h.cluster.start_member(5400, WAIT).await.unwrap();
    assert_eq!(leader_of(&h.wait_leader(5401).await), 5401);
    // Once the only other node is gone, the restarted node leads with everything.
    h.cluster.kill(5401).await;
    let s = h.wait_leader(5400).await;
    let a = s.auction;
    assert_eq!(
        (a.highest_amount(), a.highest_bidder()),
        (Some(20), Some("bob"))
    );
    assert_eq!(a.bidders, 2);
    assert!(
        c.bid(&bidder("ann"), amount(15))
            .await
            .unwrap()
            .decision
            .is_err()
    );
    assert!(accepted(&mut c, "ann", 30).await);
    h.assert_no_panics();
}

#[tokio::test]
async fn pausing_the_whole_cluster_past_the_timeout_fences_nobody() {
    let mut h = Harness::start(&[5400, 5401, 5402]).await;
    let mut c = h.cluster.client(WAIT);
    assert!(accepted(&mut c, "ann", 10).await);
    let ids = [5400, 5401, 5402];
    for id in ids {
        h.cluster.signal(id, Signal::STOP).unwrap();
    }
    // The fault itself: every node is paused for twice the timeout, as by Ctrl-Z.
    tokio::time::sleep(Duration::from_millis(2 * auction_lab::harness::TIMEOUT_MS)).await;
    for id in ids {
        h.cluster.signal(id, Signal::CONT).unwrap();
    }
    // Each node notices that the silence was its own.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let lines = h.cluster.transcript.lines();
        let stalled = |id: u16| {
            lines
                .iter()
                .any(|l| l.starts_with(&format!("[node {id}]")) && l.contains("stalled"))
        };
        if ids.iter().all(|&id| stalled(id)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no stall noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(accepted(&mut c, "bob", 20).await);
    let s = h.wait_leader(5400).await;
    assert_eq!(s.members.len(), 3, "{s:?}");
    assert_eq!(h.cluster.running(), ids.to_vec());
    let fenced: Vec<String> = h
        .cluster
        .transcript
        .lines()
        .into_iter()
        .filter(|l| l.contains("fenced"))
        .collect();
    assert!(fenced.is_empty(), "{fenced:#?}");
    h.assert_no_panics();
}
