//! Clients of a cluster across hosts (`--etcd`): every node serves its client port, one that
//! does not lead redirects to the leader and the client follows; `auction-client --etcd` finds
//! the leader through etcd; `status` shows the mode, the leader's and the members' addresses in
//! succession order, and the epoch. Each node on a loopback address of its own (127.0.0.141 to
//! 149, which no other test uses), with a real etcd.

use std::net::SocketAddr;

use auction::auction::Decision;
use auction::client::Client;
use auction::cluster::leader_of;
use auction::etcd::registry::Registry;
use auction::pb::{self, LEADER_METADATA};
use auction::types::{Amount, BidderId};
use auction_lab::etcd::Etcd;
use auction_lab::harness::{CLIENT, Harness, WAIT, json, run_client, wait_for_lines};
use tokio::process::Command;

/// Nodes 1, 2 and 3 on 127.0.0.`base`+1.. (the test's own addresses), in cluster `name`, node 1
/// leading.
async fn cluster(etcd: &Etcd, name: &str, base: u8) -> Harness {
    let spec = Harness::multi_host_spec(&etcd.client_urls(), name, base, &[]);
    let h = Harness::start_with_spec(spec, &[1, 2, 3]).await;
    let status = h.wait_leader(1).await;
    assert_eq!(status.members.len(), 3, "{status:?}");
    h
}

/// Where node `id` (1-based) serves clients.
fn client_addr(h: &Harness, id: u16) -> SocketAddr {
    h.cluster.spec.client_addrs()[usize::from(id) - 1]
}

/// A client that knows only `addr`, with the cluster's operator token.
fn client_of(h: &Harness, addr: SocketAddr) -> Client {
    let mut client = Client::new(addr, WAIT);
    if let Ok(token) = auction::auth::AuthDir::new(&h.cluster.spec.auth_dir).operator_token() {
        client.set_operator_token(token);
    }
    client
}

#[tokio::test]
async fn a_client_given_only_a_replicas_address_has_its_bids_served_by_the_leader() {
    let etcd = Etcd::for_test().await;
    let h = cluster(&etcd, "redirect", 140).await;
    let (leader, replica) = (client_addr(&h, 1), client_addr(&h, 2));
    // What any gRPC client (grpcurl) sees at the replica: UNAVAILABLE, naming the leader in the
    // metadata and in words.
    let mut raw = pb::auction_client::AuctionClient::connect(format!("http://{replica}"))
        .await
        .expect("the replica serves its client port");
    let refused = raw.result(pb::ResultRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let named = refused
        .metadata()
        .get(LEADER_METADATA)
        .and_then(|v| v.to_str().ok());
    assert_eq!(named, Some(leader.to_string().as_str()), "{refused:?}");
    assert!(
        refused.message().contains(&leader.to_string()),
        "{}",
        refused.message()
    );
    // The client follows the redirect: its bids are the leader's.
    let mut client = client_of(&h, replica);
    let ann = BidderId::new("ann").unwrap();
    for amount in 1..=3 {
        let outcome = client
            .bid(&ann, Amount::new(amount).unwrap())
            .await
            .unwrap();
        assert_eq!(outcome.decision, Decision::Ok(()));
    }
    assert_eq!(client.server(), Some(leader), "it now talks to the leader");
    let mut at_leader = client_of(&h, leader);
    assert_eq!(
        at_leader.result().await.unwrap().highest_amount(),
        Some(3),
        "the leader holds the bids"
    );
    // Operator requests follow too.
    let closed = client.close().await.unwrap();
    assert_eq!(closed.decision, Decision::Ok(()));
    assert!(!at_leader.result().await.unwrap().open);
    h.assert_no_panics();
}

#[tokio::test]
async fn after_the_leader_is_killed_a_client_of_one_replica_follows_to_the_new_leader_and_loses_no_bid()
 {
    let etcd = Etcd::for_test().await;
    let mut h = cluster(&etcd, "follow", 143).await;
    // Node 3: not next in line, so after the kill it still has to redirect (to node 2).
    let mut client = client_of(&h, client_addr(&h, 3));
    let ann = BidderId::new("ann").unwrap();
    for amount in 1..=5 {
        let outcome = client
            .bid(&ann, Amount::new(amount).unwrap())
            .await
            .unwrap();
        assert_eq!(outcome.decision, Decision::Ok(()), "bid {amount}");
    }
    h.cluster.kill(1).await;
    // Every bid from here is answered once, by the new leader: a bid lost or applied twice
    // would come back refused (not higher than itself) or leave another highest bid.
    for amount in 6..=10 {
        let outcome = client
            .bid(&ann, Amount::new(amount).unwrap())
            .await
            .unwrap();
        assert_eq!(outcome.decision, Decision::Ok(()), "bid {amount}");
        assert_eq!(outcome.auction.highest_amount(), Some(amount));
    }
    let after = h.wait_for(|s| leader_of(s) != 1).await;
    let new_leader = client_addr(&h, leader_of(&after));
    assert_eq!(client.server(), Some(new_leader));
    let view = client.result().await.unwrap();
    assert_eq!((view.highest_amount(), view.bidders), (Some(10), 1));
    h.assert_no_panics();
}

/// `auction-client --etcd URL --cluster NAME ARGS` with the cluster's secrets.
async fn etcd_client(h: &Harness, etcd: &Etcd, name: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(&*CLIENT)
        .args(["--etcd", &etcd.client_urls().join(","), "--cluster", name])
        .args(args)
        .env("AUCTION_AUTH_DIR", &h.cluster.spec.auth_dir)
        .env_remove("AUCTION_OPERATOR_TOKEN")
        .output()
        .await
        .expect("run auction-client");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_client_finds_the_leader_through_etcd_and_any_node_shows_the_clusters_layout() {
    let etcd = Etcd::for_test().await;
    let name = "layout";
    let mut h = cluster(&etcd, name, 146).await;
    let addrs: Vec<String> = (1..=3).map(|i| client_addr(&h, i).to_string()).collect();
    // Bids and results through etcd alone.
    let (code, out, err) =
        etcd_client(&h, &etcd, name, &["--id", "ann", "--json", "bid", "7"]).await;
    assert_eq!(
        (code, json(&out)["outcome"].as_str()),
        (0, Some("success")),
        "{out}{err}"
    );
    let (code, out, err) = etcd_client(&h, &etcd, name, &["--json", "result"]).await;
    assert_eq!(
        (code, json(&out)["highest_bid"].as_u64()),
        (0, Some(7)),
        "{out}{err}"
    );
    // The status of a node that does not lead: mode, the leader's address, the members with
    // theirs in succession order, and the epoch etcd holds.
    let registry = Registry::new(&etcd.client_urls(), name, None).unwrap();
    let lead = registry.leadership().await.unwrap().expect("a leader");
    let auth = &h.cluster.spec.auth_dir;
    let (code, out, err) = run_client(&addrs[2], auth, &["--json", "status"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let status = json(&out);
    assert_eq!(status["mode"], "multi-host", "{status}");
    assert_eq!(status["leader"], 1, "{status}");
    assert_eq!(status["leader_address"], addrs[0].as_str(), "{status}");
    assert_eq!(status["members"], serde_json::json!([1, 2, 3]), "{status}");
    assert_eq!(
        status["member_addresses"],
        serde_json::json!(addrs),
        "{status}"
    );
    assert_eq!(status["epoch"].as_u64(), Some(lead.epoch), "{status}");
    assert_eq!(lead.leader.0, 1);
    assert_eq!(status["answered_by"], 3, "{status}");
    assert_eq!(status["answered_by_leader"], false, "{status}");
    // Through etcd, the leader answers (and says the same).
    let (code, out, err) = etcd_client(&h, &etcd, name, &["--json", "status"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let status = json(&out);
    assert_eq!(
        (&status["answered_by"], &status["leader_address"]),
        (&serde_json::json!(1), &serde_json::json!(addrs[0])),
        "{status}"
    );
    assert_eq!(status["epoch"].as_u64(), Some(lead.epoch), "{status}");
    // In words, too.
    let (_, out, _) = run_client(&addrs[1], auth, &["status"]).await;
    let layout = format!(
        "multi-host: leader 1 at {}, members in succession order [1 at {}, 2 at {}, 3 at {}]",
        addrs[0], addrs[0], addrs[1], addrs[2]
    );
    assert!(out.contains(&layout), "{out}");
    assert!(out.contains(&format!("epoch {}", lead.epoch)), "{out}");
    // Each node's terminal shows them: the leader's and a replica's.
    for id in [1, 2] {
        let node = h.cluster.node(id).expect("node");
        node.send_line("status").await.unwrap();
        let lines = wait_for_lines(&h.cluster.transcript, 1, |l| {
            l.starts_with(&format!("[node {id}]")) && l.contains(&layout)
        })
        .await;
        assert!(
            lines[0].contains(&format!("epoch {}", lead.epoch)),
            "{lines:?}"
        );
        if id == 2 {
            assert!(lines[0].contains("this node is a replica"), "{lines:?}");
        }
    }
    h.assert_no_panics();
}
