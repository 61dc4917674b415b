//! Multi-host mode with a real etcd: each node on a loopback address of its own (127.0.0.x, in
//! the host's namespace: these tests cut no traffic), etcd deciding who leads and who is a
//! member, epochs that are etcd revisions.

use std::time::Duration;

use auction::auction::Decision;
use auction::client::{Client, ClientError};
use auction::cluster::leader_of;
use auction::etcd::registry::Registry;
use auction::types::{Amount, BidderId};
use auction_lab::etcd::Etcd;
use auction_lab::harness::{Harness, WAIT};
use rustix::process::Signal;

/// Nodes 1, 2 and 3 on 127.0.0.`base`+1.. (the test's own addresses), in cluster `name`.
async fn cluster(etcd: &Etcd, name: &str, base: u8) -> Harness {
    let spec = Harness::multi_host_spec(&etcd.client_urls(), name, base, &[]);
    Harness::start_with_spec(spec, &[1, 2, 3]).await
}

#[tokio::test]
async fn killing_the_leader_loses_no_acknowledged_bid_and_a_member_takes_over_at_a_later_epoch() {
    let etcd = Etcd::for_test().await;
    let mut h = cluster(&etcd, "kill-leader", 110).await;
    let before = h.wait_leader(1).await;
    assert_eq!(before.members.len(), 3, "{before:?}");
    let mut client = h.cluster.client(WAIT);
    let ann = BidderId::new("ann").unwrap();
    for amount in 1..=5 {
        let outcome = client
            .bid(&ann, Amount::new(amount).unwrap())
            .await
            .unwrap();
        assert_eq!(outcome.decision, Decision::Ok(()));
    }
    h.cluster.kill(1).await;
    // The next bid is answered by a new leader, which holds every acknowledged bid.
    let outcome = client.bid(&ann, Amount::new(6).unwrap()).await.unwrap();
    assert_eq!(outcome.decision, Decision::Ok(()));
    let after = h
        .wait_for(|s| leader_of(s) != 1 && s.members.len() == 2)
        .await;
    // Epochs are etcd revisions: the two admissions were written between the founding and the
    // takeover, and etcd names the leader the cluster reports.
    assert!(
        after.epoch >= before.epoch + 3,
        "{} then {}",
        before.epoch,
        after.epoch
    );
    let registry = Registry::new(&etcd.client_urls(), "kill-leader", None).unwrap();
    let lead = registry
        .leadership()
        .await
        .unwrap()
        .expect("a leader in etcd");
    assert_eq!(
        (lead.leader.0, lead.epoch),
        (leader_of(&after), after.epoch)
    );
    let members = registry.members().await.unwrap().ids;
    assert_eq!(
        members.len(),
        2,
        "the killed leader was dropped: {members:?}"
    );
    let view = client.result().await.unwrap();
    assert_eq!(view.highest_amount(), Some(6));
    // A node restarted in its place joins the new leader and gets the whole state.
    h.start_member(1).await;
    let whole = h.wait_for(|s| s.members.len() == 3).await;
    assert_eq!(leader_of(&whole), leader_of(&after));
    h.assert_no_panics();
}

#[tokio::test]
async fn every_node_of_a_cluster_in_etcd_serves_its_client_port_and_only_the_leader_decides() {
    let etcd = Etcd::for_test().await;
    let h = cluster(&etcd, "serving", 120).await;
    let status = h.wait_leader(1).await;
    assert_eq!(leader_of(&status), 1);
    // Every node's address takes clients; only the leader answers a read, the others name it.
    let addrs = h.cluster.spec.client_addrs();
    for (i, addr) in addrs.iter().enumerate() {
        let mut raw = auction::pb::auction_client::AuctionClient::connect(format!("http://{addr}"))
            .await
            .unwrap_or_else(|e| panic!("client port of node {} at {addr}: {e}", i + 1));
        let read = raw.result(auction::pb::ResultRequest {}).await;
        match read {
            Ok(_) => assert_eq!(i, 0, "node {} answered a read but does not lead", i + 1),
            Err(refused) => {
                assert_ne!(i, 0, "the leader refused a read: {refused:?}");
                let named = refused.metadata().get(auction::pb::LEADER_METADATA);
                assert_eq!(
                    named.and_then(|v| v.to_str().ok()),
                    Some(addrs[0].to_string().as_str()),
                    "{refused:?}"
                );
            }
        }
    }
}

/// A leader paused past the timeout is replaced through etcd. Once it runs again it answers no
/// read from its old state and commits nothing: its members have left it, and its first write
/// to etcd tells it it was deposed, so it exits.
#[tokio::test]
async fn a_paused_leader_is_replaced_and_once_resumed_answers_nothing_and_exits() {
    let etcd = Etcd::for_test().await;
    let mut h = cluster(&etcd, "pause-leader", 130).await;
    let before = h.wait_leader(1).await;
    let mut client = h.cluster.client(WAIT);
    let ann = BidderId::new("ann").unwrap();
    client.bid(&ann, Amount::new(1).unwrap()).await.unwrap();
    h.cluster.signal(1, Signal::STOP).unwrap();
    let after = h.wait_for(|s| leader_of(s) != 1).await;
    assert!(after.epoch > before.epoch);
    // A bid the new leader acknowledges, which the paused one never saw.
    client.bid(&ann, Amount::new(2).unwrap()).await.unwrap();
    h.cluster.signal(1, Signal::CONT).unwrap();
    // Straight to the old leader's address: no answer from its old state (highest 1).
    let old = h.cluster.spec.client_addrs()[0];
    let mut direct = Client::new(old, Duration::from_secs(3));
    match direct.result().await {
        Ok(view) => assert_eq!(
            view.highest_amount(),
            Some(2),
            "the deposed leader answered from its old state"
        ),
        Err(e) => assert!(matches!(e, ClientError::Exception { .. }), "{e}"),
    }
    h.wait_exited(1).await;
    let status = h.cluster.node(1).unwrap().exit_status().expect("exited");
    assert!(
        !status.success(),
        "a deposed leader exits with an error: {status:?}"
    );
    assert_eq!(client.result().await.unwrap().highest_amount(), Some(2));
}
