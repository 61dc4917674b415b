//! Exactly-once and concurrent bids, with raw gRPC requests so the tests choose the request ids.

use std::sync::Arc;

use auction::cluster::leader_of;
use auction::pb::{self, BidRequest, DecisionReply, RefusalKind, auction_client::AuctionClient};
use auction_lab::harness::{Harness, WAIT};
use tokio::sync::Barrier;
use tonic::transport::Channel;

async fn connect(h: &Harness) -> AuctionClient<Channel> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let url = format!("http://{}", h.cluster.spec.client_addr());
        if let Ok(c) = AuctionClient::connect(url).await {
            return c;
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A bid with the bidder's own token (its name, padded).
fn bid(session: u64, seq: u64, bidder: &str, amount: u64) -> BidRequest {
    BidRequest {
        id: Some(pb::RequestId { session, seq }),
        bidder: bidder.into(),
        amount,
        token: format!("{bidder:_<40}"),
    }
}

fn operator_token(h: &Harness) -> String {
    auction::auth::AuthDir::new(&h.cluster.spec.auth_dir)
        .operator_token()
        .unwrap()
        .expose()
        .into()
}

/// Sends `req`, reconnecting until some leader answers.
async fn send(h: &Harness, req: &BidRequest) -> DecisionReply {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c = connect(h).await;
        match c.bid(req.clone()).await {
            Ok(r) => return r.into_inner(),
            Err(s) => assert!(tokio::time::Instant::now() < deadline, "{s}"),
        }
    }
}

fn accepted(r: &DecisionReply) -> bool {
    r.decision.as_ref().is_some_and(|d| d.accepted)
}

#[tokio::test]
async fn a_request_retried_after_failover_returns_its_first_outcome() {
    let mut h = Harness::start(&[5400, 5401]).await;
    let first = send(&h, &bid(77, 1, "ann", 100)).await;
    assert!(accepted(&first));
    let refused = send(&h, &bid(78, 1, "bob", 50)).await;
    let refusal = refused.decision.unwrap().refusal.unwrap();
    assert_eq!(refusal.kind(), RefusalKind::NotHigher);
    assert_eq!(refusal.highest, 100);

    h.cluster.kill(5400).await;
    h.wait_leader(5401).await;

    // The retry of the accepted bid is not refused as "not higher than itself"...
    let retried = send(&h, &bid(77, 1, "ann", 100)).await;
    assert!(accepted(&retried), "{retried:?}");
    // ... and the retry of the refused bid gets the same refusal.
    let again = send(&h, &bid(78, 1, "bob", 50)).await;
    assert_eq!(again.decision, refused.decision);

    // Even once the bid would succeed (a new auction), its retry keeps its first outcome.
    let mut c = connect(&h).await;
    let close = pb::CloseRequest {
        id: Some(pb::RequestId {
            session: 79,
            seq: 1,
        }),
        operator_token: operator_token(&h),
    };
    assert!(accepted(&c.close(close).await.unwrap().into_inner()));
    let start = pb::StartRequest {
        id: Some(pb::RequestId {
            session: 79,
            seq: 2,
        }),
        duration_ms: 60_000,
        operator_token: operator_token(&h),
    };
    assert!(accepted(&c.start(start).await.unwrap().into_inner()));
    let stale = send(&h, &bid(78, 1, "bob", 50)).await;
    assert_eq!(stale.decision, refused.decision);
    let view = stale.auction.unwrap();
    assert_eq!((view.number, view.highest_bid), (2, 0), "nothing applied");

    // The session goes on with its next request.
    assert!(accepted(&send(&h, &bid(78, 2, "bob", 50)).await));
    // A request older than the session's last is refused as stale, not applied.
    let old = send(&h, &bid(78, 1, "bob", 50)).await;
    let kind = old.decision.unwrap().refusal.unwrap().kind();
    assert_eq!(kind, RefusalKind::StaleRequest);
    assert_eq!(old.auction.unwrap().highest_bid, 50);
    h.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_equal_bids_at_the_same_moment_have_exactly_one_winner() {
    let h = Harness::start(&[5400, 5401]).await;
    let rounds = 25u64;
    let barrier = Arc::new(Barrier::new(2));
    let mut tasks = Vec::new();
    for (session, name) in [(1u64, "ann"), (2u64, "bob")] {
        let mut c = connect(&h).await;
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            for round in 1..=rounds {
                barrier.wait().await;
                let r = c.bid(bid(session, round, name, round * 10)).await.unwrap();
                wins.push(accepted(&r.into_inner()));
            }
            wins
        }));
    }
    let ann = tasks.remove(0).await.unwrap();
    let bob = tasks.remove(0).await.unwrap();
    for round in 0..rounds as usize {
        assert!(
            ann[round] != bob[round],
            "round {}: ann {} bob {}",
            round + 1,
            ann[round],
            bob[round]
        );
    }
    let s = h.wait_for(|s| leader_of(s) == 5400).await;
    assert_eq!(s.auction.highest_amount(), Some(rounds * 10));
    h.assert_no_panics();
}
