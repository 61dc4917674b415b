//! The multi-host mode's records in a real etcd: founding, takeovers and membership changes are
//! transactions that compare the leader key's revision (the epoch), so at most one change wins
//! per epoch, and a deposed leader learns it at its next write.

use auction::cluster::free_port;
use auction::etcd::registry::{NodeRecord, Registry, RegistryError};
use auction::types::NodeId;
use auction_lab::etcd::Etcd;

fn registry(etcd: &Etcd, cluster: &str) -> Registry {
    Registry::new(&etcd.client_urls(), cluster, None).expect("valid endpoints")
}

#[tokio::test]
async fn one_founder_wins_and_its_epoch_is_the_leader_keys_revision() {
    let etcd = Etcd::for_test().await;
    let r = registry(&etcd, "founding");
    assert_eq!(r.leadership().await.unwrap(), None, "nobody leads yet");
    let epoch = r
        .found(NodeId(1))
        .await
        .unwrap()
        .expect("the first founder wins");
    assert_eq!(
        r.found(NodeId(2)).await.unwrap(),
        None,
        "a second founder loses"
    );
    let lead = r.leadership().await.unwrap().expect("a leader");
    assert_eq!((lead.leader, lead.epoch), (NodeId(1), epoch));
    assert_eq!(r.members().await.unwrap().ids, [NodeId(1)]);
    // Another cluster in the same etcd is another prefix.
    let other = registry(&etcd, "another");
    assert!(other.found(NodeId(1)).await.unwrap().is_some());
}

#[tokio::test]
async fn one_member_takes_over_per_epoch_and_the_deposed_leader_cannot_change_members() {
    let etcd = Etcd::for_test().await;
    let r = registry(&etcd, "takeover");
    let first = r.found(NodeId(1)).await.unwrap().unwrap();
    r.set_members(first, &[NodeId(1), NodeId(2), NodeId(3)])
        .await
        .unwrap();
    let members = r.members().await.unwrap();
    // Nodes 2 and 3 both stop hearing leader 1 and try to take over from what they read.
    let won = r
        .take_over(NodeId(2), first, NodeId(1), &members)
        .await
        .unwrap()
        .expect("the first takeover wins");
    assert!(won > first, "epochs grow");
    let lost = r
        .take_over(NodeId(3), first, NodeId(1), &members)
        .await
        .unwrap();
    assert_eq!(lost, None, "a second takeover of the same epoch loses");
    let lead = r.leadership().await.unwrap().unwrap();
    assert_eq!((lead.leader, lead.epoch), (NodeId(2), won));
    assert_eq!(r.members().await.unwrap().ids, [NodeId(2), NodeId(3)]);
    // The old leader, which did not hear of it, tries to remove a member: it learns it lost.
    assert!(matches!(
        r.set_members(first, &[NodeId(1)]).await,
        Err(RegistryError::Deposed)
    ));
    assert_eq!(r.members().await.unwrap().ids, [NodeId(2), NodeId(3)]);
    // The new leader can.
    r.set_members(won, &[NodeId(2)]).await.unwrap();
    assert_eq!(r.members().await.unwrap().ids, [NodeId(2)]);
    // A node that is not a member never takes over.
    let members = r.members().await.unwrap();
    assert_eq!(
        r.take_over(NodeId(3), won, NodeId(2), &members)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn nodes_register_where_they_serve() {
    let etcd = Etcd::for_test().await;
    let r = registry(&etcd, "directory");
    assert_eq!(r.node(NodeId(7)).await.unwrap(), None);
    let record = NodeRecord {
        id: 7,
        replica: "127.0.0.17:5400".parse().unwrap(),
        client: "127.0.0.17:5000".parse().unwrap(),
    };
    r.register(&record).await.unwrap();
    assert_eq!(r.node(NodeId(7)).await.unwrap(), Some(record));
}

#[tokio::test]
async fn an_unreachable_etcd_is_an_error_not_a_hang() {
    let port = free_port().unwrap();
    let r = Registry::new(&[format!("http://127.0.0.1:{port}")], "nowhere", None).unwrap();
    assert!(matches!(
        r.leadership().await,
        Err(RegistryError::Unavailable(_))
    ));
    assert!(matches!(
        Registry::new(&["not a url".to_string()], "x", None),
        Err(RegistryError::Access(_))
    ));
}

/// Two members fall silent together: the leader fences both at once, and etcd's member list
/// loses both (each removal reads, changes and writes the list; side by side one would undo
/// the other).
#[tokio::test]
async fn two_fences_at_once_both_remove_their_member() {
    use auction::authority::{Authority, Vacancy};
    use auction::etcd::authority::EtcdAuthority;
    use auction::replication::Member;
    let etcd = Etcd::for_test().await;
    let me = NodeRecord {
        id: 1,
        replica: "127.0.0.1:0".parse().unwrap(),
        client: "127.0.0.1:0".parse().unwrap(),
    };
    let authority = EtcdAuthority::new(registry(&etcd, "fences"), me);
    assert!(matches!(
        authority.vacancy().await.unwrap(),
        Vacancy::Free { .. }
    ));
    let member = |id| Member {
        id: NodeId(id),
        pid: u32::from(id),
        start_time: 1,
    };
    for id in 2..=5 {
        authority.admit(&member(id)).await.unwrap();
    }
    let (two, three, five) = (member(2), member(3), member(5));
    let (a, b, c) = tokio::join!(
        authority.fence(&two),
        authority.fence(&three),
        authority.fence(&five),
    );
    for fenced in [a, b, c] {
        fenced.unwrap();
    }
    let members = registry(&etcd, "fences").members().await.unwrap().ids;
    assert_eq!(members, [NodeId(1), NodeId(4)]);
}
