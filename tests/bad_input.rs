//! Bad input from a user, a client or a peer gets a clear error and changes nothing.

use auction::cluster::{Spec, free_port};
use auction::pb::{
    self, BidRequest, FromReplica, auction_client::AuctionClient, from_replica,
    replication_client::ReplicationClient,
};
use auction_lab::harness::{Harness, NODE, WAIT, json, run_client, wait_for_lines};
use bytes::{Buf, BufMut};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

#[tokio::test]
async fn bad_amounts_and_names_are_refused_by_the_client_and_change_nothing() {
    let h = Harness::start(&[5400]).await;
    let cases: [(&[&str], &str); 7] = [
        (&["--id", "ann", "bid", "0"], "amount must be positive"),
        (&["--id", "ann", "bid", "-5"], "amount must be positive"),
        (&["--id", "ann", "bid", "1.5"], "whole number"),
        (&["--id", "ann", "bid", "ten"], "whole number"),
        (&["--id", "ann", "bid", "99999999999999999999"], "too large"),
        (&["bid", "5"], "bidding needs --id NAME"),
        (&["--id", "a b", "bid", "5"], "may use only"),
    ];
    for (args, message) in cases {
        let (code, _, stderr) = h.client_cmd(args).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let (code, stdout, _) = h.client_cmd(&["--json", "result"]).await;
    assert_eq!(code, 0);
    let r = json(&stdout);
    assert_eq!(r["state"], "open");
    assert_eq!(r["highest_bid"], serde_json::Value::Null);
    assert_eq!(r["bidders"], 0);
    h.assert_no_panics();
}

#[tokio::test]
async fn json_answers_and_exit_codes() {
    let h = Harness::start(&[5400]).await;
    let (code, stdout, _) = h.client_cmd(&["--json", "--id", "ann", "bid", "10"]).await;
    assert_eq!(code, 0);
    let r = json(&stdout);
    assert_eq!(
        (r["outcome"].as_str(), r["reason"].as_str()),
        (Some("success"), Some(""))
    );
    let (code, stdout, _) = h.client_cmd(&["--json", "--id", "bob", "bid", "10"]).await;
    assert_eq!(code, 1);
    let r = json(&stdout);
    assert_eq!(r["outcome"], "fail");
    assert!(r["reason"].as_str().unwrap().contains("not higher"));
    let (code, stdout, _) = h.client_cmd(&["--json", "close"]).await;
    assert_eq!(
        (code, json(&stdout)["outcome"].as_str()),
        (0, Some("success"))
    );
    let (code, stdout, _) = h.client_cmd(&["--json", "result"]).await;
    assert_eq!(code, 0);
    let r = json(&stdout);
    assert_eq!(r["state"], "closed");
    assert_eq!(
        (r["winner"].as_str(), r["winning_bid"].as_u64()),
        (Some("ann"), Some(10))
    );
    let (code, stdout, _) = h.client_cmd(&["--json", "status"]).await;
    assert_eq!((code, json(&stdout)["leader"].as_u64()), (0, Some(5400)));
    let (code, stdout, _) = h.client_cmd(&["--json", "start", "--duration", "60"]).await;
    assert_eq!((code, json(&stdout)["auction"].as_u64()), (0, Some(2)));
    h.assert_no_panics();
}

#[tokio::test]
async fn a_client_pointed_where_nothing_listens_reports_an_exception() {
    let server = format!("127.0.0.1:{}", free_port().unwrap());
    let started = std::time::Instant::now();
    let (code, stdout, _) = run_client(
        &server,
        &std::env::temp_dir(),
        &["--retry-ms", "300", "--json", "result"],
    )
    .await;
    assert_eq!(code, 2);
    let r = json(&stdout);
    assert_eq!(r["outcome"], "exception");
    assert!(r["reason"].as_str().unwrap().contains("no leader answered"));
    assert!(started.elapsed() < WAIT);
    let (code, _, stderr) = run_client("nowhere", &std::env::temp_dir(), &["result"]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("not HOST:PORT"), "{stderr}");
}

#[tokio::test]
async fn the_interactive_client_explains_bad_lines_and_sends_nothing() {
    let h = Harness::start(&[5400]).await;
    let mut client = h.interactive_client("ann");
    client.next_line(WAIT).await.expect("greeting");
    for line in ["0", "-5", "1.5"] {
        client.send_line(line).await.unwrap();
    }
    client.send_line("result").await.unwrap();
    let answer = client.next_line(WAIT).await.unwrap();
    assert!(answer.contains("no bids yet"), "{answer}");
    // The explanations go to stderr, read by another task.
    let explained = wait_for_lines(&h.cluster.transcript, 3, |l| {
        l.starts_with("[client ann] not sent:")
    })
    .await;
    assert_eq!(explained.len(), 3);
    assert!(explained[0].contains("amount must be positive"));
    assert!(explained[2].contains("whole number"));
}

#[tokio::test]
async fn a_second_node_with_a_port_in_use_is_refused() {
    let mut h = Harness::start(&[5400, 5401]).await;
    // Start another 5401 under a new name, so the harness keeps the first.
    let spec = h.cluster.spec.clone();
    let mut cmd = tokio::process::Command::new(&*NODE);
    cmd.args(["--port", "5401"])
        .args(["--client-port", &spec.client_port.to_string()])
        .args(["--leader-port", &spec.leader_port.to_string()])
        .env("AUCTION_AUTH_DIR", &spec.auth_dir);
    let mut dup = auction::cluster::Proc::spawn(cmd, "dup 5401", &h.cluster.transcript).unwrap();
    let status = dup.wait(WAIT).await.expect("the duplicate exits");
    assert!(!status.success());
    wait_for_lines(&h.cluster.transcript, 1, |l| {
        l.starts_with("[dup 5401] error: the leader refused this node: node id 5401 is already")
    })
    .await;
    // The first 5401 is still a member.
    h.wait_for(|s| auction::cluster::is_member(s, 5401)).await;
    assert!(!h.cluster.node(5401).unwrap().exited());
    h.assert_no_panics();
}

#[tokio::test]
async fn a_replica_port_held_by_another_program_is_reported() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut spec = Spec::on_free_ports(&*NODE).unwrap();
    spec.leader_port = squatter.local_addr().unwrap().port();
    let mut cluster =
        auction::cluster::LocalCluster::new(spec, auction::cluster::Transcript::new(false));
    cluster.start(5400).unwrap();
    let node = cluster.node(5400).unwrap();
    let status = node.wait(WAIT).await.expect("the node exits");
    assert!(!status.success());
    // The message names the holder: this test's own process.
    let holder = format!("is held by pid {} (", std::process::id());
    wait_for_lines(&cluster.transcript, 1, |l| {
        l.contains(&holder) && l.contains("which is not an auction node")
    })
    .await;
}

#[tokio::test]
async fn node_options_that_cannot_work_are_refused() {
    let out = tokio::process::Command::new(&*NODE)
        .args([
            "--port",
            "1",
            "--client-port",
            "7000",
            "--leader-port",
            "7000",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must differ"));
    let out = tokio::process::Command::new(&*NODE)
        .args(["--port", "1", "--duration", "0"])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("duration"));
    let out = tokio::process::Command::new(&*NODE)
        .args(["--port", "1", "--spin-us", "10001"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--spin-us must be at most 10000"));
}

async fn connect(h: &Harness) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", h.cluster.spec.client_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn malformed_and_oversized_rpcs_are_refused_and_the_node_goes_on() {
    let h = Harness::start(&[5400]).await;
    let mut c = AuctionClient::new(connect(&h).await);
    let id = Some(pb::RequestId { session: 5, seq: 1 });
    let bad = [
        BidRequest {
            id: None,
            bidder: "ann".into(),
            amount: 5,
            token: String::new(),
        },
        BidRequest {
            id,
            bidder: "ann".into(),
            amount: 0,
            token: String::new(),
        },
        BidRequest {
            id,
            bidder: "ann".into(),
            amount: u64::MAX,
            token: String::new(),
        },
        BidRequest {
            id,
            bidder: "x".repeat(65),
            amount: 5,
            token: String::new(),
        },
        BidRequest {
            id,
            bidder: String::new(),
            amount: 5,
            token: String::new(),
        },
    ];
    for req in bad {
        let e = c.bid(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{req:?}: {e}");
    }
    let huge = BidRequest {
        id,
        bidder: "x".repeat(100_000),
        amount: 5,
        token: String::new(),
    };
    assert!(c.bid(huge).await.is_err());
    // Bytes that are no protobuf message at all.
    let mut grpc = tonic::client::Grpc::new(connect(&h).await);
    grpc.ready().await.unwrap();
    let garbage = grpc
        .unary(
            tonic::Request::new(vec![0xff; 16]),
            http::uri::PathAndQuery::from_static("/auction.v1.Auction/Bid"),
            RawCodec,
        )
        .await;
    assert!(garbage.is_err());
    // Nothing changed and the node still answers.
    let view = c.result(pb::ResultRequest {}).await.unwrap().into_inner();
    assert_eq!(view.auction.unwrap().highest_bid, 0);
    h.assert_no_panics();
}

#[tokio::test]
async fn a_peer_that_breaks_the_replication_protocol_is_refused() {
    let h = Harness::start(&[5400]).await;
    let url = format!("http://127.0.0.1:{}", h.cluster.spec.leader_port);
    let mut r = ReplicationClient::connect(url.clone()).await.unwrap();
    let ack_first = FromReplica {
        msg: Some(from_replica::Msg::Ack(pb::Ack { seq: 1, version: 1 })),
    };
    let e = r
        .follow(tokio_stream::iter(vec![ack_first]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // A join whose challenge is not 32 bytes.
    let join = FromReplica {
        msg: Some(from_replica::Msg::Join(pb::Join {
            node: Some(pb::NodeIdentity {
                id: 5401,
                pid: 1,
                start_time: 1,
            }),
            nonce: vec![7; 3],
        })),
    };
    let mut r = ReplicationClient::connect(url).await.unwrap();
    let e = r.follow(tokio_stream::iter(vec![join])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let s = h.wait_for(|s| s.members.len() == 1).await;
    assert_eq!(s.version, 1);
    h.assert_no_panics();
}

/// Sends raw bytes as a gRPC message and reads raw bytes back.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        *self
    }
    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Self::Error> {
        let bytes = src.chunk().to_vec();
        src.advance(bytes.len());
        Ok(Some(bytes))
    }
}
