//! A cluster whose members all died: etcd still names its leader, so new nodes wait for it
//! until the operator says the cluster is dead (`auction-node --new-cluster`), and that is
//! refused while the old leader answers. Nodes on 127.0.0.171–173 in the host's namespace.

use auction::auction::Decision;
use auction::cluster::leader_of;
use auction::etcd::registry::Registry;
use auction::types::{Amount, BidderId};
use auction_lab::etcd::Etcd;
use auction_lab::harness::{Harness, WAIT, wait_for_lines};

#[tokio::test]
async fn new_cluster_replaces_only_a_cluster_whose_leader_no_longer_answers() {
    let etcd = Etcd::for_test().await;
    let spec = Harness::multi_host_spec(&etcd.client_urls(), "dead", 170, &[]);
    let mut h = Harness::start_with_spec(spec, &[1, 2]).await;
    let before = h.wait_for(|s| s.members.len() == 2).await;
    let mut client = h.cluster.client(WAIT);
    let ann = BidderId::new("ann").unwrap();
    let outcome = client.bid(&ann, Amount::new(5).unwrap()).await.unwrap();
    assert_eq!(outcome.decision, Decision::Ok(()));

    // While the leader lives, --new-cluster is refused and changes nothing.
    h.cluster.spec.node_args.push("--new-cluster".into());
    h.cluster.start(3).unwrap();
    h.wait_exited(3).await;
    wait_for_lines(&h.cluster.transcript, 1, |l| {
        l.starts_with("[node 3] error:") && l.contains("still answers")
    })
    .await;
    let registry = Registry::new(&etcd.client_urls(), "dead", None).unwrap();
    let lead = registry.leadership().await.unwrap().expect("a leader");
    assert_eq!((lead.leader.0, lead.epoch), (1, before.epoch));

    // Every member dies; the operator replaces the cluster.
    h.cluster.kill(1).await;
    h.cluster.kill(2).await;
    h.cluster.start(3).unwrap();
    let after = h.wait_for(|s| leader_of(s) == 3).await;
    assert!(after.epoch > before.epoch, "{after:?}");
    let lead = registry.leadership().await.unwrap().expect("a leader");
    assert_eq!((lead.leader.0, lead.epoch), (3, after.epoch));
    assert_eq!(registry.members().await.unwrap().ids.len(), 1);
    // The new cluster serves, from a new state (the dead members' bids died with them).
    let view = client.result().await.unwrap();
    assert_eq!(view.highest_amount(), None);
    h.assert_no_panics();
}
