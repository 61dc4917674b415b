//! The command-line client as a newcomer meets it (issue #14): every address a name resolves
//! to is tried, every line of stdin is handled, a closed stdout ends the client quietly, and
//! every message says what happened.

use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use auction::client::{Client, resolve_all};
use auction::cluster::free_port;
use auction_lab::harness::{Harness, WAIT, client_command, json, run_client};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A fresh directory for secrets (mode 0700, as the client demands), for a client with no
/// cluster.
fn private_dir() -> std::path::PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "auction-client-cli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .expect("private dir");
    dir
}

/// An address where nothing listens.
fn nowhere() -> String {
    format!("127.0.0.1:{}", free_port().unwrap())
}

/// `auction-client --server SERVER ARGS` with `stdin` as its input: (exit code, stdout, stderr).
async fn run_with_stdin(
    server: &str,
    auth_dir: &std::path::Path,
    args: &[&str],
    stdin: &[u8],
) -> (i32, String, String) {
    let mut child = client_command(server, auth_dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run auction-client");
    let mut input = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    tokio::spawn(async move {
        let _ = input.write_all(&bytes).await;
    });
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the client finished")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An interactive client of `h`'s cluster, with `stdin` as its input.
async fn session(h: &Harness, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let spec = &h.cluster.spec;
    run_with_stdin(&spec.client_addr().to_string(), &spec.auth_dir, args, stdin).await
}

#[tokio::test]
async fn a_name_that_resolves_to_a_dead_address_first_still_reaches_the_node() {
    let h = Harness::start(&[5400]).await;
    let port = h.cluster.spec.client_port;
    let alive: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    // What `localhost` resolves to on a stock Debian or Ubuntu host: ::1 first, where no node
    // listens (nodes bind 127.0.0.1).
    let resolved = vec![format!("[::1]:{port}").parse().unwrap(), alive];
    let mut client = Client::with_addresses(resolved, Duration::from_secs(5));
    let view = client.result().await.expect("an answer through 127.0.0.1");
    assert_eq!(view.number, 1);
    // The address that worked is the one dialled first from now on.
    assert_eq!(client.server(), Some(alive));
    assert_eq!(client.last_attempts(), 1);
    // The binary dials every address too: here through the name itself.
    assert!(
        resolve_all(&format!("localhost:{port}"))
            .unwrap()
            .contains(&alive)
    );
    let (code, stdout, stderr) = run_client(
        &format!("localhost:{port}"),
        &h.cluster.spec.auth_dir,
        &["--json", "result"],
    )
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(json(&stdout)["auction"], 1);
    // Where no address answers, each one says why.
    let mut client = Client::with_addresses(
        vec![
            format!("[::1]:{}", free_port().unwrap()).parse().unwrap(),
            nowhere().parse().unwrap(),
        ],
        Duration::from_millis(200),
    );
    let e = client.result().await.unwrap_err().to_string();
    assert!(e.contains("[::1]:") && e.contains("127.0.0.1:"), "{e}");
    h.assert_no_panics();
}

#[tokio::test]
async fn lines_that_are_not_utf8_are_explained_and_later_lines_still_count() {
    let h = Harness::start(&[5400]).await;
    // Latin-1 "été", a byte left by backspacing over a multibyte character, then bids.
    let input = b"100\n\xe9t\xe9\n\xc3\n200\nresult\n";
    let (code, stdout, stderr) = session(&h, &["--id", "ann"], input).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[1].starts_with("bid: success"), "{stdout}");
    assert!(lines[2].starts_with("bid: success"), "{stdout}");
    assert!(lines[3].contains("highest bid 200 by ann"), "{stdout}");
    let explained: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("not sent: the line is not UTF-8 text"))
        .collect();
    assert_eq!(explained.len(), 2, "{stderr}");
    assert!(explained[0].contains("0xe9 at position 1"), "{stderr}");
    h.assert_no_panics();
}

#[tokio::test]
async fn a_closed_stdout_ends_the_client_quietly_with_the_status_of_what_it_did() {
    let h = Harness::start(&[5400]).await;
    let spec = &h.cluster.spec;
    // A one-shot bid whose reader has gone before it answers: the bid still counts, and so does
    // its exit status.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = client_command(&spec.client_addr().to_string(), &spec.auth_dir)
        .args(["--id", "ann", "bid", "10"])
        .stdout(writer)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let (_, stdout, _) = h.client_cmd(&["--json", "result"]).await;
    assert_eq!(json(&stdout)["highest_bid"], 10);

    // `auction-client --id bob | head -1`: head reads the greeting and leaves; the next answer
    // finds no reader.
    let mut child = client_command(&spec.client_addr().to_string(), &spec.auth_dir)
        .args(["--id", "bob"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut greeting = String::new();
    tokio::time::timeout(WAIT, stdout.read_line(&mut greeting))
        .await
        .expect("a greeting")
        .unwrap();
    assert!(greeting.starts_with("connected"), "{greeting}");
    drop(stdout);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"20\n").await.unwrap();
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the client ends")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    drop(stdin);
    let (_, stdout, _) = h.client_cmd(&["--json", "result"]).await;
    assert_eq!(json(&stdout)["highest_bid"], 20);
    h.assert_no_panics();
}

#[tokio::test]
async fn the_greeting_says_connected_only_once_a_leader_answered() {
    let h = Harness::start(&[5400]).await;
    let (code, stdout, _) = session(&h, &["--id", "ann"], b"").await;
    assert_eq!(code, 0);
    let port = h.cluster.spec.client_port;
    assert!(
        stdout.starts_with(&format!(
            "connected to 127.0.0.1:{port} (node 5400 leads) as ann; type an amount to bid"
        )),
        "{stdout}"
    );
    // Nothing listens: no "connected", and a session where nothing was answered fails.
    let dir = private_dir();
    let (code, stdout, _) =
        run_with_stdin(&nowhere(), &dir, &["--id", "ann", "--retry-ms", "200"], b"").await;
    assert!(
        stdout.starts_with("not connected to 127.0.0.1:"),
        "{stdout}"
    );
    assert!(stdout.contains("no leader answered"), "{stdout}");
    assert_eq!(code, 2, "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_interactive_session_whose_every_request_failed_exits_2() {
    let dir = private_dir();
    let (code, stdout, stderr) = run_with_stdin(
        &nowhere(),
        &dir,
        &["--id", "ann", "--retry-ms", "200"],
        b"100\nresult\n",
    )
    .await;
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stdout.contains("bid: exception (no leader answered"),
        "{stdout}"
    );
    assert!(stdout.contains("exception: no leader answered"), "{stdout}");
    // The same with --json, where there is no greeting.
    let (code, stdout, _) = run_with_stdin(
        &nowhere(),
        &dir,
        &["--json", "--id", "ann", "--retry-ms", "200"],
        b"100\n",
    )
    .await;
    assert_eq!(code, 2, "{stdout}");
    assert_eq!(json(&stdout)["outcome"], "exception");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_observer_greeting_does_not_invite_bids() {
    let h = Harness::start(&[5400]).await;
    let (code, stdout, stderr) = session(&h, &[], b"100\n\n").await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let greeting = stdout.lines().next().unwrap();
    assert!(greeting.contains("as an observer"), "{greeting}");
    assert!(!greeting.contains("to bid"), "{greeting}");
    assert!(
        stderr.contains("not sent: bidding needs --id NAME"),
        "{stderr}"
    );
    assert!(stdout.contains("result: auction 1 is open"), "{stdout}");
}

#[tokio::test]
async fn the_replica_port_is_named_as_the_wrong_port() {
    let h = Harness::start(&[5400]).await;
    let spec = &h.cluster.spec;
    let replica_port = format!("127.0.0.1:{}", spec.leader_port);
    let reason = "does not serve auction clients";
    for args in [&["result"][..], &["status"], &["--id", "ann", "bid", "5"]] {
        let (code, stdout, stderr) = run_client(&replica_port, &spec.auth_dir, args).await;
        assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
        assert!(stdout.contains(reason), "{args:?}: {stdout}");
        assert!(stdout.contains("replica port"), "{args:?}: {stdout}");
    }
    let (code, stdout, _) = run_client(
        &replica_port,
        &spec.auth_dir,
        &["--json", "--id", "ann", "bid", "5"],
    )
    .await;
    let r = json(&stdout);
    assert_eq!((code, r["outcome"].as_str()), (2, Some("exception")));
    assert!(r["reason"].as_str().unwrap().contains(reason), "{r}");
    // Interactively, at once, before any line is read.
    let (code, stdout, stderr) =
        run_with_stdin(&replica_port, &spec.auth_dir, &["--id", "ann"], b"").await;
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains(reason),
        "{stderr}"
    );
    // Nothing was applied.
    let (_, stdout, _) = h.client_cmd(&["--json", "result"]).await;
    assert_eq!(json(&stdout)["bidders"], 0);
    h.assert_no_panics();
}

#[tokio::test]
async fn the_client_shows_no_digest_where_there_is_none() {
    let mut h = Harness::start(&[5400]).await;
    let (code, stdout, _) = h.client_cmd(&["status"]).await;
    assert_eq!(code, 0);
    assert!(stdout.starts_with("status: leader 5400"), "{stdout}");
    assert!(!stdout.contains("digest"), "{stdout}");
    let (_, stdout, _) = session(&h, &[], b"status\n").await;
    assert!(stdout.contains("status: leader 5400"), "{stdout}");
    assert!(!stdout.contains("digest"), "{stdout}");
    // The node's own terminal has one.
    let node = h.cluster.node(5400).unwrap();
    node.send_line("status").await.unwrap();
    let line = node.next_line(WAIT).await.unwrap();
    assert!(line.contains(", digest "), "{line}");
    assert!(!line.contains("digest 0000000000000000"), "{line}");
}

#[tokio::test]
async fn a_usage_error_is_said_once() {
    let dir = private_dir();
    let server = nowhere();
    let cases: [(&[&str], &str); 4] = [
        (&["--id", "ann", "bid", "0"], "amount must be positive"),
        (
            &["--id", "ann", "bid", "99999999999999999999"],
            "amount is too large",
        ),
        (&["start", "0"], "duration must be between"),
        (&["start", "--duration", "0"], "duration must be between"),
    ];
    for (args, message) in cases {
        let (code, stdout, stderr) = with_operator_token(&server, &dir, args).await;
        assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
        assert_eq!(
            stderr.lines().collect::<Vec<_>>(),
            [stderr.lines().next().unwrap()],
            "{args:?}"
        );
        assert!(stderr.starts_with(&format!("error: {message}")), "{stderr}");
        let word = message.split(' ').next().unwrap();
        assert_eq!(stderr.matches(word).count(), 1, "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// As [`run_client`], with an operator token in the environment.
async fn with_operator_token(
    server: &str,
    dir: &std::path::Path,
    args: &[&str],
) -> (i32, String, String) {
    let token = "o".repeat(40);
    auction_lab::harness::run_client_with(server, dir, args, &[("AUCTION_OPERATOR_TOKEN", &token)])
        .await
}

/// The seconds left in the open auction, from a `--json result`.
async fn seconds_left(h: &Harness) -> u64 {
    let (_, stdout, _) = h.client_cmd(&["--json", "result"]).await;
    let r = json(&stdout);
    assert_eq!(r["state"], "open", "{r}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    r["deadline_ms"].as_u64().unwrap().saturating_sub(now_ms) / 1000
}

#[tokio::test]
async fn start_secs_means_the_same_as_in_a_nodes_terminal() {
    // Nodes open auctions of 120 s unless told otherwise.
    let h = Harness::start(&[5400]).await;
    let (code, _, _) = h.client_cmd(&["close"]).await;
    assert_eq!(code, 0);
    let (code, stdout, stderr) = h.client_cmd(&["start", "30"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.starts_with("start: success; auction 2 is open"),
        "{stdout}"
    );
    assert!((20..=30).contains(&seconds_left(&h).await), "{stdout}");
    // Both at once is ambiguous.
    let (code, _, stderr) = h.client_cmd(&["start", "30", "--duration", "40"]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    // Interactively, as in a node's terminal.
    let (code, stdout, stderr) = session(&h, &[], b"close\nstart 45\nstart soon\n").await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("close: success; auction 2 is closed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("start: success; auction 3 is open"),
        "{stdout}"
    );
    assert!((35..=45).contains(&seconds_left(&h).await), "{stdout}");
    assert!(
        stderr.contains("not sent: start SECS: SECS must be a whole number"),
        "{stderr}"
    );
    h.assert_no_panics();
}

#[tokio::test]
async fn json_usage_errors_are_one_json_object_on_stdout() {
    let dir = private_dir();
    let server = nowhere();
    let cases: [&[&str]; 6] = [
        &["--json", "bid"],
        &["--json", "--frobnicate", "result"],
        &["--json", "--id", "ann", "bid", "0"],
        &["--json", "bid", "5"],
        &["--json", "--id", "a b", "bid", "5"],
        // No operator token in this directory.
        &["--json", "close"],
    ];
    for args in cases {
        let (code, stdout, stderr) = run_client(&server, &dir, args).await;
        assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
        assert_eq!(stdout.lines().count(), 1, "{args:?}: {stdout}");
        let r = json(&stdout);
        assert_eq!(r["outcome"], "error", "{args:?}: {r}");
        let reason = r["reason"].as_str().unwrap();
        assert!(!reason.is_empty() && !reason.starts_with("error"), "{r}");
        // The message on stderr too (clap's spans several lines).
        let start = &reason[..reason.len().min(30)];
        assert!(stderr.contains(start), "{args:?}: {stderr} / {reason}");
    }
    let (code, stdout, _) = run_client("nowhere", &dir, &["--json", "result"]).await;
    assert_eq!(
        (code, json(&stdout)["outcome"].as_str()),
        (2, Some("error"))
    );
    // Interactively, a line that is not sent has its answer too.
    let (_, stdout, stderr) = run_with_stdin(
        &server,
        &dir,
        &["--json", "--id", "ann", "--retry-ms", "200"],
        b"0\n\xff\n",
    )
    .await;
    let answers: Vec<serde_json::Value> = stdout.lines().map(json).collect();
    assert_eq!(answers.len(), 2, "{stdout}");
    assert!(answers.iter().all(|a| a["outcome"] == "error"), "{stdout}");
    assert!(
        stderr.contains("not sent: amount must be positive"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
