//! The seed's scenario, with the real binaries: two servers, one interactive client, the leader
//! crashes, a lower bid fails, the new leader closes the auction, the client reads the winner.

use std::time::Duration;

use auction::cluster::{free_port, leader_of};
use auction_lab::harness::{DEMO, Harness, WAIT};

async fn answer(p: &mut auction::cluster::Proc, line: &str) -> String {
    p.send_line(line).await.unwrap();
    p.next_line(WAIT)
        .await
        .unwrap_or_else(|| panic!("no answer to {line:?}"))
}

#[tokio::test]
async fn the_seed_scenario() {
    // 1. Server 5400 (leader), server 5401 (replica), one client.
    let mut h = Harness::start(&[5400, 5401]).await;
    let mut client = h.interactive_client("1");
    let greeting = client.next_line(WAIT).await.unwrap();
    assert!(greeting.contains("connected"), "{greeting}");
    // 2. The first leader opened auction 1 when it founded the cluster.
    let s = h.wait_leader(5400).await;
    assert_eq!(s.auction.number, 1);
    assert!(s.auction.open);
    // 3-4. The client bids; the leader replicates before it answers.
    let a = answer(&mut client, "100").await;
    assert!(a.starts_with("bid: success"), "{a}");
    // 5-6. The result.
    let a = answer(&mut client, "result").await;
    assert!(a.contains("highest bid 100 by 1"), "{a}");
    // 7. The leader crashes; the replica takes over.
    h.cluster.kill(5400).await;
    // 8-9. A lower bid fails, answered by the new leader.
    let a = answer(&mut client, "50").await;
    assert!(
        a.starts_with("bid: fail") && a.contains("not higher than the highest bid of 100"),
        "{a}"
    );
    assert_eq!(leader_of(&h.wait_leader(5401).await), 5401);
    // 10. The new leader closes the auction from its terminal.
    let node = h.cluster.node(5401).unwrap();
    let a = answer(node, "close").await;
    assert!(a.starts_with("ok: auction 1 is closed"), "{a}");
    // 11-12. The result names the winner.
    let a = answer(&mut client, "result").await;
    assert!(a.contains("auction 1 is closed: 1 won with 100"), "{a}");
    client.close_stdin();
    assert!(client.wait(WAIT).await.is_some_and(|s| s.success()));
    h.assert_no_panics();
}

#[tokio::test]
async fn a_replicas_terminal_says_who_leads_and_the_leaders_acts() {
    let mut h = Harness::start(&[5400, 5401]).await;
    let replica = h.cluster.node(5401).unwrap();
    let a = answer(replica, "close").await;
    assert!(a.contains("replica; node 5400 leads"), "{a}");
    let a = answer(replica, "launch").await;
    assert!(a.contains("unknown command"), "{a}");
    let leader = h.cluster.node(5400).unwrap();
    let a = answer(leader, "status").await;
    assert!(a.starts_with("leader 5400, next in line [5401]"), "{a}");
    let a = answer(leader, "start 30").await;
    assert!(a.contains("still open"), "{a}");
    assert!(answer(leader, "close").await.starts_with("ok"));
    let a = answer(leader, "start 30").await;
    assert!(a.starts_with("ok: auction 2 is open"), "{a}");
    h.assert_no_panics();
}

#[tokio::test]
async fn the_demo_plays_the_seed_scenario_that_log_txt_records() {
    let (client_port, leader_port) = (free_port().unwrap(), free_port().unwrap());
    // Secrets of this test's own, not the user's ~/.auction.
    let auth_dir = std::env::temp_dir().join(format!("auction-seed-{client_port}"));
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&*DEMO)
            .args(["--scenario", "seed"])
            .args(["--client-port", &client_port.to_string()])
            .args(["--leader-port", &leader_port.to_string()])
            .env("AUCTION_AUTH_DIR", &auth_dir)
            .output(),
    )
    .await
    .expect("the demo finished")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("took over the replica port"), "{stdout}");
    assert!(stdout.contains("[client 1] result: auction 1 is closed: 1 won with 100"));
    assert!(stdout.trim_end().ends_with("[demo] done"));
    let _ = std::fs::remove_dir_all(auth_dir);
}
