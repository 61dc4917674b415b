//! A node's life as its operator sees it: Ctrl-C stops it cleanly (exit 0, never a fencing
//! SIGKILL), the survivors say it left, a port held by another program stops it with the
//! holder's name, and its terminal survives any bytes typed into it.

use std::os::unix::process::ExitStatusExt;

use auction::cluster::{is_member, leader_of};
use auction_lab::harness::{Harness, NODE, WAIT, json, wait_for_lines};
use rustix::process::Signal;

/// Lines of the transcript that tell of a fencing: a clean stop has none.
fn fencings(h: &Harness) -> Vec<String> {
    h.cluster
        .transcript
        .lines()
        .into_iter()
        .filter(|l| l.contains("fenced") || l.contains("fencing"))
        .collect()
}

/// Sends Ctrl-C (SIGINT) to node `id` and returns how it exited.
async fn ctrl_c(h: &mut Harness, id: u16) -> std::process::ExitStatus {
    h.cluster.signal(id, Signal::INT).unwrap();
    let node = h.cluster.node(id).unwrap();
    node.wait(WAIT).await.expect("the node exits after Ctrl-C")
}

#[tokio::test]
async fn a_replica_stopped_with_ctrl_c_exits_0_and_the_leader_removes_it_without_fencing() {
    let mut h = Harness::start(&[5400, 5401, 5402]).await;
    let status = ctrl_c(&mut h, 5402).await;
    assert_eq!(
        (status.code(), status.signal()),
        (Some(0), None),
        "{status}"
    );
    h.wait_for(|s| !is_member(s, 5402)).await;
    wait_for_lines(&h.cluster.transcript, 1, |l| {
        l.starts_with("[node 5400]") && l.contains("member left") && l.contains("node=5402")
    })
    .await;
    assert_eq!(fencings(&h), Vec::<String>::new());
    // The cluster goes on with the member that is left.
    let (code, stdout, stderr) = h.client_cmd(&["--id", "ann", "--json", "bid", "10"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    h.assert_no_panics();
}

/// Three leaders in a row are stopped with Ctrl-C: each exits 0, hands over to the next in line
/// without being fenced, and no acknowledged bid is lost.
#[tokio::test]
async fn a_leader_stopped_with_ctrl_c_exits_0_and_hands_over_without_being_fenced() {
    let mut h = Harness::start(&[5400, 5401, 5402]).await;
    let mut leader = 5400;
    for round in 1..=3u64 {
        let bid = (round * 100).to_string();
        let (code, stdout, stderr) = h.client_cmd(&["--id", "ann", "--json", "bid", &bid]).await;
        assert_eq!(code, 0, "{stdout}{stderr}");
        let status = ctrl_c(&mut h, leader).await;
        assert_eq!(
            (status.code(), status.signal()),
            (Some(0), None),
            "leader {leader} in round {round}: {status}"
        );
        let next = h.wait_for(|s| leader_of(s) != leader).await;
        let (code, stdout, _) = h.client_cmd(&["--json", "result"]).await;
        assert_eq!(code, 0);
        assert_eq!(json(&stdout)["highest_bid"], round * 100, "{stdout}");
        // The stopped node comes back as a member, for the next round.
        h.start_member(leader).await;
        leader = leader_of(&next);
    }
    assert_eq!(fencings(&h), Vec::<String>::new());
    wait_for_lines(&h.cluster.transcript, 3, |l| l.contains("the leader left")).await;
    h.assert_no_panics();
}

#[tokio::test]
async fn a_foreign_program_on_the_client_port_stops_the_node_with_its_name() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut spec = Harness::spec(&[]);
    spec.client_port = squatter.local_addr().unwrap().port();
    let mut cluster =
        auction::cluster::LocalCluster::new(spec, auction::cluster::Transcript::new(false));
    cluster.start(5400).unwrap();
    let status = cluster.node(5400).unwrap().wait(WAIT).await.expect("exits");
    assert_eq!(status.code(), Some(1), "{status}");
    let holder = format!("is held by pid {} (", std::process::id());
    wait_for_lines(&cluster.transcript, 1, |l| {
        l.contains(&holder) && l.contains("--client-port")
    })
    .await;
}

#[tokio::test]
async fn a_line_that_is_not_utf8_on_the_node_terminal_is_reported_and_the_terminal_goes_on() {
    let mut h = Harness::start(&[5400]).await;
    let node = h.cluster.node(5400).unwrap();
    // Latin-1 "été", then a byte left by backspacing over half of "é".
    for bad in [&b"\xe9t\xe9\n"[..], b"clos\xc3\n"] {
        node.send_bytes(bad).await.unwrap();
        let line = node.next_line(WAIT).await.expect("an answer");
        assert!(line.contains("not UTF-8"), "{line}");
    }
    node.send_line("status").await.unwrap();
    let line = node.next_line(WAIT).await.expect("an answer");
    assert!(line.contains("version"), "{line}");
    h.assert_no_panics();
}

#[tokio::test]
async fn id_is_the_node_option_and_port_still_names_it() {
    for option in ["--id", "--port"] {
        // Taken as the node's id: what is refused is the duration after it.
        let out = tokio::process::Command::new(&*NODE)
            .args([option, "5400", "--duration", "0"])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("duration"), "{option}: {stderr}");
    }
    let help = tokio::process::Command::new(&*NODE)
        .arg("--help")
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--id <ID>"), "{help}");
}
