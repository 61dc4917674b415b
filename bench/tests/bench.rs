//! The benchmark tool works: it loads a real cluster and the echo floor, and its JSON carries the
//! documented fields. (How fast things are is measured by running it, never asserted here.)

use auction::cluster::{Proc, free_port};
use auction_lab::harness::{BENCH, Harness, WAIT, json};

async fn bench(args: &[&str]) -> serde_json::Value {
    let out = tokio::process::Command::new(&*BENCH)
        .args(args)
        .output()
        .await
        .expect("run auction-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&String::from_utf8_lossy(&out.stdout))
}

fn assert_answered(r: &serde_json::Value) {
    for field in ["bids_per_s", "p50_us", "p99_us", "p999_us"] {
        assert!(r[field].as_f64().is_some_and(|v| v > 0.0), "{field}: {r}");
    }
    assert_eq!(r["errors"], 0, "{r}");
}

#[tokio::test]
async fn the_bench_loads_a_cluster_and_reports_json() {
    let h = Harness::start(&[5400, 5401]).await;
    let server = h.cluster.spec.client_addr().to_string();
    for workload in ["contended", "mix"] {
        let r = bench(&[
            "--server",
            &server,
            "--clients",
            "4",
            "--secs",
            "1",
            "--workload",
            workload,
            "--json",
        ])
        .await;
        assert_answered(&r);
        if workload == "mix" {
            assert!(r["reads_per_s"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
    let r = bench(&[
        "--server",
        &server,
        "--clients",
        "2",
        "--secs",
        "1",
        "--rate",
        "200",
        "--json",
    ])
    .await;
    assert_answered(&r);
    // Every bid was a real one: the auction's highest bid moved.
    let s = h.wait_for(|s| s.auction.highest.is_some()).await;
    assert!(s.version > 10);
    h.assert_no_panics();
}

#[tokio::test]
async fn the_bench_measures_the_echo_floor() {
    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let mut cmd = tokio::process::Command::new(&*BENCH);
    cmd.args(["--serve-echo", &addr]);
    let transcript = auction::cluster::Transcript::new(false);
    let mut server = Proc::spawn(cmd, "echo", &transcript).unwrap();
    // Wait until the echo service accepts connections.
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "echo service did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for target in ["echo-unary", "echo-stream"] {
        let r = bench(&[
            "--server",
            &addr,
            "--target",
            target,
            "--clients",
            "4",
            "--secs",
            "1",
            "--json",
        ])
        .await;
        assert_answered(&r);
    }
    server.kill().await;
}

#[tokio::test]
async fn failover_of_redis_or_etcd_needs_their_addresses_and_a_kill() {
    // Each is refused before anything is connected to: no Redis or etcd needed.
    let cases: [(&[&str], &str); 5] = [
        (&["--failover", "kill", "--target", "redis"], "--sentinels"),
        (
            &[
                "--failover",
                "kill",
                "--target",
                "redis",
                "--sentinels",
                "nowhere",
            ],
            "--sentinels",
        ),
        (&["--failover", "kill", "--target", "etcd"], "--server"),
        (
            &[
                "--failover",
                "stop",
                "--target",
                "etcd",
                "--server",
                "127.0.0.1:1",
            ],
            "only with --target auction",
        ),
        (
            &["--failover", "kill", "--target", "echo-unary"],
            "auction, redis or etcd",
        ),
    ];
    for (args, expected) in cases {
        let out = tokio::process::Command::new(&*BENCH)
            .args(args)
            .output()
            .await
            .expect("run auction-bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
