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
async fn the_bench_loads_a_multi_host_cluster_of_its_own() {
    let r = bench(&["--multi-host", "--clients", "4", "--secs", "1", "--json"]).await;
    assert_answered(&r);
}

/// The failover times of the multi-host cluster, after each fault: `faults` of them, each the
/// time from the fault to the first acknowledged bid sent after it.
async fn multi_host_failover(mode: &str, faults: usize, extra: &[&str]) -> Vec<f64> {
    let faults_arg = faults.to_string();
    let mut args = vec![
        "--failover",
        mode,
        "--faults",
        &faults_arg,
        "--clients",
        "4",
        "--json",
    ];
    args.extend(extra);
    let r = bench(&args).await;
    assert_eq!(r["target"], "auction-multi-host", "{r}");
    assert_eq!(r["mode"], mode, "{r}");
    assert_eq!(r["faults"], faults, "{r}");
    let times: Vec<f64> = r["times_ms"]
        .as_array()
        .expect("times_ms")
        .iter()
        .map(|t| t.as_f64().expect("a time in ms"))
        .collect();
    assert_eq!(times.len(), faults, "{r}");
    times
}

/// A kill -9 closes the leader's connections: its members take over at once, well before the
/// node timeout (1000 ms by default) that a silent leader would need.
#[tokio::test]
async fn the_bench_measures_multi_host_failover_after_a_kill() {
    let times = multi_host_failover("kill", 2, &["--multi-host"]).await;
    for t in times {
        assert!(t > 0.0 && t < 1000.0, "{t} ms");
    }
}

/// A partition leaves the leader running and silent: its members take over only once they have
/// heard nothing for the node timeout, so no failover can be measured shorter than the timeout
/// less one heartbeat (the last one before the cut may have come a heartbeat early). A cut that
/// cut nothing would measure a bid's latency instead. Runs in a network namespace of the
/// bench's own (root, `nft`, `ip` and `etcd` are needed: without them this fails).
#[tokio::test]
async fn the_bench_measures_multi_host_failover_after_a_partition() {
    let times = multi_host_failover(
        "partition",
        2,
        &["--timeout-ms", "600", "--heartbeat-ms", "100"],
    )
    .await;
    for t in times {
        assert!((500.0..10_000.0).contains(&t), "{t} ms");
    }
}

#[tokio::test]
async fn options_that_cannot_work_are_refused_before_anything_starts() {
    // Each is refused before anything is connected to: no Redis or etcd needed.
    let cases: [(&[&str], &str); 9] = [
        (&["--memory", "--multi-host"], "--memory"),
        (&["--multi-host", "--target", "redis"], "--target auction"),
        (
            &["--multi-host", "--server", "127.0.0.1:1"],
            "give it no --server",
        ),
        (
            &["--multi-host", "--failover", "kill", "--attempt-ms", "0"],
            "--attempt-ms",
        ),
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
