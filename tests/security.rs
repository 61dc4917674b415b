//! Nobody gets in where they do not belong: nodes without the cluster secret, processes that
//! name another process as themselves, bidders in another bidder's name, and start or close
//! without the operator token are all refused, and nothing changes.

use std::time::Duration;

use auction::auth::{AuthDir, ClusterSecret};
use auction::cluster::{LocalCluster, Proc, Spec, Transcript, free_port, is_member, leader_of};
use auction::handshake::{self, Joining, NONCE_LEN};
use auction::pb::{
    self, FromLeader, FromReplica, auction_client::AuctionClient, from_leader, from_replica,
    replication_client::ReplicationClient,
};
use auction::process;
use auction::replication::Member;
use auction::types::{NodeId, Token};
use auction_lab::harness::{Harness, NODE, TIMEOUT_MS, WAIT, json, run_client, wait_for_lines};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

/// A secret other than the cluster's.
fn wrong_secret() -> Token {
    Token::new("not-the-cluster-secret-not-the-cluster-secret").unwrap()
}

fn secret_of(h: &Harness) -> ClusterSecret {
    AuthDir::new(&h.cluster.spec.auth_dir)
        .cluster_secret()
        .unwrap()
}

#[tokio::test]
async fn a_node_without_the_cluster_secret_cannot_join() {
    let mut h = Harness::start(&[5400]).await;
    let spec = h.cluster.spec.clone();
    let mut cmd = tokio::process::Command::new(&*NODE);
    cmd.args(["--port", "5401"])
        .args(["--client-port", &spec.client_port.to_string()])
        .args(["--leader-port", &spec.leader_port.to_string()])
        .env("AUCTION_AUTH_DIR", &spec.auth_dir)
        .env("AUCTION_CLUSTER_SECRET", wrong_secret().expose());
    let mut stranger = Proc::spawn(cmd, "stranger", &h.cluster.transcript).unwrap();
    let status = stranger.wait(WAIT).await.expect("the stranger gives up");
    assert!(!status.success());
    wait_for_lines(&h.cluster.transcript, 1, |l| {
        l.starts_with("[stranger] error:")
            && l.contains("does not share this node's cluster secret")
    })
    .await;
    // It got nothing and changed nothing; the leader is untouched.
    let s = h.wait_for(|s| s.members.len() == 1).await;
    assert_eq!(s.version, 1);
    assert!(!h.cluster.node(5400).unwrap().exited());
    h.assert_no_panics();
}

/// The replica side of a handshake, driven by the test: returns the leader's first message and
/// the stream, after answering the challenge with a proof made with `secret` for `claimed`.
async fn handshake(
    h: &Harness,
    secret: &ClusterSecret,
    claimed: Member,
) -> (mpsc::Sender<FromReplica>, Streaming<FromLeader>) {
    let url = format!("http://127.0.0.1:{}", h.cluster.spec.leader_port);
    let mut r = ReplicationClient::connect(url).await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    let nonce = [9u8; NONCE_LEN];
    let joining = Joining::with_nonce(claimed, nonce);
    tx.send(joining.join()).await.unwrap();
    let mut stream = r
        .follow(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a challenge");
    // The leader proves itself with the cluster's secret.
    if let Err(e) = joining.answer(&secret_of(h), first.clone()) {
        panic!("the leader did not prove itself ({e}): {first:?}");
    }
    let Some(from_leader::Msg::Challenge(c)) = first.msg else {
        panic!("expected a challenge first, got {first:?}");
    };
    let proof = handshake::replica_proof(secret, &c.nonce, &nonce, &claimed);
    tx.send(FromReplica {
        msg: Some(from_replica::Msg::Prove(pb::Prove { proof })),
    })
    .await
    .unwrap();
    (tx, stream)
}

#[tokio::test]
async fn a_wrong_proof_gets_no_state() {
    let h = Harness::start(&[5400]).await;
    let me = process::this_node(NodeId(5401)).unwrap();
    let wrong = ClusterSecret::new(wrong_secret());
    let (_tx, mut stream) = handshake(&h, &wrong, me).await;
    let e = stream.message().await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert!(e.message().contains("cluster secret"), "{e}");
    h.assert_no_panics();
}

#[tokio::test]
async fn a_process_that_names_another_process_is_refused_and_nobody_is_fenced() {
    let h = Harness::start(&[5400]).await;
    // The right secret, but the pid of an innocent process that does not hold the connection.
    let mut innocent = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let claimed = Member {
        id: NodeId(5401),
        pid: innocent.id(),
        start_time: process::start_time(innocent.id()).unwrap(),
    };
    let (_tx, mut stream) = handshake(&h, &secret_of(&h), claimed).await;
    let e = stream.message().await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("does not hold this connection"), "{e}");
    // Its own pid holds the connection, but it is not an auction-node: refused too.
    let me = process::this_node(NodeId(5402)).unwrap();
    let (_tx, mut stream) = handshake(&h, &secret_of(&h), me).await;
    let e = stream.message().await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("not an auction-node"), "{e}");
    // Well past the leader's timeout, the named process is alive and nothing joined.
    let past_timeout = tokio::time::Instant::now() + Duration::from_millis(3 * TIMEOUT_MS);
    while tokio::time::Instant::now() < past_timeout {
        assert!(
            innocent.try_wait().unwrap().is_none(),
            "the innocent was signalled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = h.wait_for(|s| s.members.len() == 1).await;
    assert_eq!(s.version, 1);
    innocent.kill().unwrap();
    innocent.wait().unwrap();
    h.assert_no_panics();
}

/// A leader impostor on the replica port: it answers every Join with a challenge whose proof is
/// wrong, and reports every message it receives after the Join.
#[derive(Debug)]
struct Impostor {
    after_join: mpsc::UnboundedSender<FromReplica>,
}

#[tonic::async_trait]
impl pb::replication_server::Replication for Impostor {
    type FollowStream = ReceiverStream<Result<FromLeader, Status>>;

    async fn follow(
        &self,
        req: tonic::Request<Streaming<FromReplica>>,
    ) -> Result<tonic::Response<Self::FollowStream>, Status> {
        let mut inbound = req.into_inner();
        let _join = inbound.message().await?;
        let (tx, rx) = mpsc::channel(4);
        let challenge = FromLeader {
            seq: 0,
            msg: Some(from_leader::Msg::Challenge(pb::Challenge {
                leader: Some(pb::NodeIdentity {
                    id: 5400,
                    pid: std::process::id(),
                    start_time: process::start_time(std::process::id()).unwrap(),
                }),
                nonce: vec![1; NONCE_LEN],
                proof: vec![0; 32],
            })),
        };
        tx.send(Ok(challenge)).await.unwrap();
        let report = self.after_join.clone();
        tokio::spawn(async move {
            // Keeps the stream open while the node reads; reports what else arrives.
            let _tx = tx;
            while let Ok(Some(m)) = inbound.message().await {
                let _ = report.send(m);
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

#[tokio::test]
async fn a_node_gives_nothing_to_an_impostor_on_the_replica_port() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut spec = Spec::on_free_ports(&*NODE).unwrap();
    let leader_addr = listener.local_addr().unwrap();
    spec.leader_port = leader_addr.port();
    let (after_join, mut received) = mpsc::unbounded_channel();
    let server = tonic::transport::Server::builder()
        .add_service(pb::replication_server::ReplicationServer::new(Impostor {
            after_join,
        }))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    let server = tokio::spawn(server);
    // The node cannot bind the replica port, so it follows whoever holds it.
    let mut cluster = LocalCluster::new(spec, Transcript::new(false));
    cluster.start(5401).unwrap();
    let status = cluster.node(5401).unwrap().wait(WAIT).await.expect("exits");
    assert!(!status.success());
    wait_for_lines(&cluster.transcript, 1, |l| {
        l.contains("does not share this node's cluster secret")
    })
    .await;
    // Once the service and the stream's reader are gone, everything the node sent after its
    // Join has been reported.
    server.abort();
    let after = tokio::time::timeout(WAIT, received.recv())
        .await
        .expect("the reader ends");
    assert!(after.is_none(), "the node sent {after:?} to an impostor");
}

#[tokio::test]
async fn start_and_close_need_the_operator_token() {
    let h = Harness::start(&[5400]).await;
    let spec = &h.cluster.spec;
    let server = spec.client_addr().to_string();
    // A user whose auth dir holds no operator token.
    let elsewhere = std::env::temp_dir().join(format!("auction-sec-{}", free_port().unwrap()));
    let (code, _, stderr) = run_client(&server, &elsewhere, &["close"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no operator token"), "{stderr}");
    // A wrong token is refused by the node.
    let mut c = AuctionClient::connect(format!("http://{server}"))
        .await
        .unwrap();
    let close = pb::CloseRequest {
        id: Some(pb::RequestId { session: 7, seq: 1 }),
        operator_token: wrong_secret().expose().into(),
    };
    let e = c.close(close).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let start = pb::StartRequest {
        id: Some(pb::RequestId { session: 7, seq: 2 }),
        duration_ms: 0,
        operator_token: String::new(),
    };
    let e = c.start(start).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    // Nothing changed: the first auction is still open.
    let (code, stdout, _) = h.client_cmd(&["--json", "result"]).await;
    assert_eq!((code, json(&stdout)["state"].as_str()), (0, Some("open")));
    // The operator (whose auth dir holds the token) may.
    let (code, stdout, _) = h.client_cmd(&["--json", "close"]).await;
    assert_eq!(
        (code, json(&stdout)["outcome"].as_str()),
        (0, Some("success"))
    );
    let _ = std::fs::remove_dir_all(elsewhere);
    h.assert_no_panics();
}

#[tokio::test]
async fn nobody_bids_in_another_bidders_name() {
    let h = Harness::start(&[5400]).await;
    let (code, _, stderr) = h.client_cmd(&["--id", "alice", "bid", "10"]).await;
    assert_eq!(code, 0, "{stderr}");
    // Mallory keeps her tokens elsewhere, so she holds no token of alice's.
    let mallory = std::env::temp_dir().join(format!("auction-sec-{}", free_port().unwrap()));
    let server = h.cluster.spec.client_addr().to_string();
    let (code, stdout, _) =
        run_client(&server, &mallory, &["--json", "--id", "alice", "bid", "50"]).await;
    assert_eq!(code, 1, "{stdout}");
    let r = json(&stdout);
    assert_eq!(r["outcome"], "fail");
    assert!(
        r["reason"].as_str().unwrap().contains("another token"),
        "{r}"
    );
    // A bid with no token at all is refused before it is decided.
    let mut c = AuctionClient::connect(format!("http://{server}"))
        .await
        .unwrap();
    let bid = pb::BidRequest {
        id: Some(pb::RequestId { session: 8, seq: 1 }),
        bidder: "alice".into(),
        amount: 60,
        token: String::new(),
    };
    let e = c.bid(bid).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    // Alice's bid stands, and she can still bid.
    let (_, stdout, _) = h.client_cmd(&["--json", "result"]).await;
    let r = json(&stdout);
    assert_eq!(
        (r["highest_bid"].as_u64(), r["highest_bidder"].as_str()),
        (Some(10), Some("alice"))
    );
    let (code, _, stderr) = h.client_cmd(&["--id", "alice", "bid", "11"]).await;
    assert_eq!(code, 0, "{stderr}");
    // Mallory registers a name of her own.
    let (code, _, stderr) = run_client(&server, &mallory, &["--id", "mallory", "bid", "12"]).await;
    assert_eq!(code, 0, "{stderr}");
    let _ = std::fs::remove_dir_all(mallory);
    h.assert_no_panics();
}

#[tokio::test]
async fn registrations_survive_a_failover() {
    let mut h = Harness::start(&[5400, 5401]).await;
    let (code, _, stderr) = h.client_cmd(&["--id", "alice", "bid", "10"]).await;
    assert_eq!(code, 0, "{stderr}");
    h.cluster.kill(5400).await;
    h.wait_for(|s| leader_of(s) == 5401 && !is_member(s, 5400))
        .await;
    let mallory = std::env::temp_dir().join(format!("auction-sec-{}", free_port().unwrap()));
    let server = h.cluster.spec.client_addr().to_string();
    let (code, stdout, _) =
        run_client(&server, &mallory, &["--json", "--id", "alice", "bid", "50"]).await;
    assert_eq!(code, 1, "{stdout}");
    let (code, _, stderr) = h.client_cmd(&["--id", "alice", "bid", "11"]).await;
    assert_eq!(code, 0, "{stderr}");
    let _ = std::fs::remove_dir_all(mallory);
    h.assert_no_panics();
}

/// A one-node cluster started with more `auction-node` arguments.
async fn single_node(args: &[&str]) -> LocalCluster {
    let mut spec = Spec::on_free_ports(&*NODE).unwrap();
    spec.node_args = args.iter().map(ToString::to_string).collect();
    let mut cluster = LocalCluster::new(spec, Transcript::new(false));
    cluster.start(5400).unwrap();
    cluster
        .wait_for(WAIT, |s| leader_of(s) == 5400)
        .await
        .unwrap();
    cluster
}

#[tokio::test]
async fn a_session_over_its_rate_is_refused_and_nothing_of_it_is_applied() {
    let cluster = single_node(&["--session-rate", "5"]).await;
    let url = format!("http://{}", cluster.spec.client_addr());
    let mut c = AuctionClient::connect(url).await.unwrap();
    let token = auction::host::random_token().unwrap();
    let requests: Vec<pb::SessionRequest> = (1..=40u64)
        .map(|n| pb::SessionRequest {
            tag: n,
            op: Some(pb::session_request::Op::Bid(pb::BidRequest {
                id: Some(pb::RequestId { session: 9, seq: n }),
                bidder: "eager".into(),
                amount: n,
                token: token.expose().into(),
            })),
        })
        .collect();
    let mut replies = c
        .session(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let (mut accepted, mut limited) = (Vec::new(), 0);
    for _ in 0..40 {
        let reply = replies
            .message()
            .await
            .unwrap()
            .expect("one reply per request");
        match reply.reply.unwrap() {
            pb::session_reply::Reply::Decision(d) if d.decision.unwrap().accepted => {
                accepted.push(reply.tag);
            }
            pb::session_reply::Reply::Error(e) => {
                assert_eq!(e.code, Code::ResourceExhausted as i32, "{e:?}");
                assert!(e.message.contains("requests per second"), "{e:?}");
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        limited > 0 && !accepted.is_empty(),
        "{accepted:?}, {limited}"
    );
    // The highest bid is the last accepted one: no refused request was applied.
    let s = cluster.status(WAIT).await.unwrap();
    assert_eq!(s.auction.highest_amount(), accepted.iter().max().copied());
    assert!(cluster.transcript.panics().is_empty());
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_and_the_node_goes_on() {
    let cluster = single_node(&["--max-connections", "2"]).await;
    let url = format!("http://{}", cluster.spec.client_addr());
    let connect = || async {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await?;
        let mut c = AuctionClient::new(channel);
        c.result(pb::ResultRequest {})
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, Box<dyn std::error::Error>>(c)
    };
    // Two stay open; until the node has seen the earlier polls' connections close, a
    // connection may be refused, so each is retried within the deadline.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut open = Vec::new();
    while open.len() < 2 {
        match connect().await {
            Ok(c) => open.push(c),
            Err(_) => {
                assert!(tokio::time::Instant::now() < deadline, "cannot connect");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert!(connect().await.is_err(), "a third connection is refused");
    wait_for_lines(&cluster.transcript, 1, |l| {
        l.contains("too many connections")
    })
    .await;
    // Closing one lets a new one in.
    open.pop();
    loop {
        match connect().await {
            Ok(c) => {
                open.push(c);
                break;
            }
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cluster.transcript.panics().is_empty());
}

#[tokio::test]
async fn tls_end_to_end_across_a_failover() {
    let mut spec = Spec::on_free_ports(&*NODE).unwrap();
    spec.tls = true;
    spec.node_args = ["--heartbeat-ms", "50", "--timeout-ms", "800"]
        .map(String::from)
        .to_vec();
    let mut cluster = LocalCluster::new(spec, Transcript::new(false));
    cluster.start_nodes(&[5400, 5401], WAIT).await.unwrap();
    let server = cluster.spec.client_addr().to_string();
    let auth_dir = cluster.spec.auth_dir.clone();
    let (code, stdout, stderr) = run_client(
        &server,
        &auth_dir,
        &["--tls", "--json", "--id", "ann", "bid", "10"],
    )
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    // Plain HTTP/2 gets nowhere on a TLS port.
    let (code, stdout, _) = run_client(
        &server,
        &auth_dir,
        &["--retry-ms", "300", "--json", "result"],
    )
    .await;
    assert_eq!(
        (code, json(&stdout)["outcome"].as_str()),
        (2, Some("exception"))
    );
    // The replica dialed the leader over TLS; it takes over and serves TLS too.
    cluster.kill(5400).await;
    cluster
        .wait_for(WAIT, |s| leader_of(s) == 5401 && !is_member(s, 5400))
        .await
        .unwrap();
    let (code, stdout, stderr) = run_client(
        &server,
        &auth_dir,
        &["--tls", "--json", "--id", "ann", "bid", "11"],
    )
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(json(&stdout)["highest_bid"].as_u64(), Some(11));
    assert!(cluster.transcript.panics().is_empty());
}

#[tokio::test]
async fn a_silent_connection_to_the_replica_port_is_closed_after_the_timeout() {
    use tokio::io::AsyncReadExt;
    let mut h = Harness::start(&[5400, 5401]).await;
    let port = h.cluster.spec.leader_port;
    let opened = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // It holds a slot until it proves itself, which it never does: the node closes it (after
    // its own greeting, which is read and ignored here).
    let closed = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 256];
        while let Ok(n) = silent.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent connection stayed open");
    assert!(opened.elapsed() >= Duration::from_millis(TIMEOUT_MS / 2));
    // The member that proved itself long ago is still connected and a member.
    let s = h.wait_for(|s| is_member(s, 5401)).await;
    assert_eq!(s.members.len(), 2);
    assert!(!h.cluster.node(5401).unwrap().exited());
    h.assert_no_panics();
}
