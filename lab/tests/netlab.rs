//! The network lab's own tests: loopback addresses in a private network namespace, nftables
//! partitions between them, and a real etcd of one or three members.
//!
//! A `harness = false` binary: `main` moves the process into a network namespace of its own
//! before any thread exists ([`auction_lab::netns::enter_private`]), then runs the tests with
//! libtest-mimic, which filters, lists, runs in threads and reports as libtest does
//! (`cargo test -p auction-lab --test netlab -- partition`). Needs root, `ip` (iproute2), `nft`
//! (nftables) and `etcd` (etcd-server); without them every test fails and says what is missing,
//! none is skipped. Each test has addresses of its own (127.0.0.<test's tens>.x), so they run
//! side by side.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use auction::cluster::Transcript;
use auction_lab::etcd::{Etcd, EtcdSpec};
use auction_lab::netns;
use auction_lab::netns::trial;
use auction_lab::partition::Partitions;
use libtest_mimic::Arguments;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let tests = vec![
        trial(
            "loopback_addresses_reach_each_other",
            loopback_addresses_reach_each_other,
        ),
        trial(
            "partition_times_out_new_connections",
            partition_times_out_new_connections,
        ),
        trial(
            "partition_silences_an_established_flow_until_healed",
            partition_silences_an_established_flow_until_healed,
        ),
        trial(
            "partition_of_one_pair_leaves_a_third_pair_working",
            partition_of_one_pair_leaves_a_third_pair_working,
        ),
        trial(
            "partition_cuts_and_heals_are_idempotent",
            partition_cuts_and_heals_are_idempotent,
        ),
        trial(
            "partition_cuts_a_process_playing_a_host_that_binds_nothing",
            partition_cuts_a_process_playing_a_host_that_binds_nothing,
        ),
        trial("etcd_one_member_answers", etcd_one_member_answers),
        trial("etcd_three_members_answer", etcd_three_members_answer),
        trial(
            "etcd_killed_leader_leaves_two_serving_then_rejoins",
            etcd_killed_leader_leaves_two_serving_then_rejoins,
        ),
        trial(
            "etcd_member_cut_off_loses_quorum_until_healed",
            etcd_member_cut_off_loses_quorum_until_healed,
        ),
    ];
    netns::run_tests("netlab", &args, tests)
}

/// How long a connection attempt may take before it counts as cut. On loopback an answered
/// connect takes well under a millisecond.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a flow must stay silent to count as cut.
const SILENCE: Duration = Duration::from_millis(700);

/// How long a healed flow may take to deliver again: TCP retransmits with exponential backoff
/// (200 ms, 400 ms, 800 ms, …) while the cut lasts, so the first retransmission after a heal
/// comes within about twice the cut's length.
const RESUME: Duration = Duration::from_secs(15);

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Connects from `from` to `to`, within [`CONNECT_TIMEOUT`].
async fn connect(from: IpAddr, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(to)).await {
        Ok(stream) => Ok(stream.with_context(|| format!("connect {from} -> {to}"))?),
        Err(_) => bail!("connect {from} -> {to}: timed out after {CONNECT_TIMEOUT:?}"),
    }
}

/// Whether a connection from `from` to `listener` is made, and accepted, within
/// [`CONNECT_TIMEOUT`]. Any failure other than a timeout is an error: a cut must look like
/// silence, never like a refusal.
async fn connects(from: IpAddr, listener: &TcpListener) -> anyhow::Result<bool> {
    let to = listener.local_addr()?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let Ok(stream) = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(to)).await else {
        return Ok(false);
    };
    let stream = stream.with_context(|| format!("connect {from} -> {to} failed, not timed out"))?;
    let (accepted, peer) = tokio::time::timeout(CONNECT_TIMEOUT, listener.accept())
        .await
        .context("connected but not accepted")??;
    ensure!(
        peer == stream.local_addr()?,
        "accepted {peer}, not our connection"
    );
    drop(accepted);
    Ok(true)
}

/// Sends `bytes` on `from` and reads them on `to`, within `within`. `Ok(false)` when nothing
/// arrived in that time (what was sent may arrive later).
async fn delivers(
    from: &mut TcpStream,
    to: &mut TcpStream,
    bytes: &[u8],
    within: Duration,
) -> anyhow::Result<bool> {
    from.write_all(bytes).await?;
    receives(to, bytes, within).await
}

/// Reads exactly `bytes` from `to` within `within`; `Ok(false)` when nothing came in that time.
async fn receives(to: &mut TcpStream, bytes: &[u8], within: Duration) -> anyhow::Result<bool> {
    let mut got = vec![0; bytes.len()];
    match tokio::time::timeout(within, to.read_exact(&mut got)).await {
        Err(_) => Ok(false),
        Ok(read) => {
            read.context("reading the flow")?;
            ensure!(got == bytes, "received {got:?}, sent {bytes:?}");
            Ok(true)
        }
    }
}

/// A connected pair of streams: (the one from `a`, the one `b` accepted).
async fn flow(a: IpAddr, b: IpAddr) -> anyhow::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind((b, 0)).await?;
    let from_a = connect(a, listener.local_addr()?).await?;
    let (at_b, _) = listener.accept().await?;
    Ok((from_a, at_b))
}

async fn loopback_addresses_reach_each_other() -> anyhow::Result<()> {
    ensure!(
        netns::is_private()?,
        "the test thread is in the host's network namespace"
    );
    let (a, b) = (ip(11), ip(12));
    let listener = TcpListener::bind((b, 0)).await?;
    ensure!(
        connects(a, &listener).await?,
        "{a} could not connect to {b}"
    );
    let (mut x, mut y) = flow(a, b).await?;
    ensure!(x.local_addr()?.ip() == a && y.local_addr()?.ip() == b);
    ensure!(
        delivers(&mut x, &mut y, b"ping", RESUME).await?,
        "{a} -> {b}: no data"
    );
    ensure!(
        delivers(&mut y, &mut x, b"pong", RESUME).await?,
        "{b} -> {a}: no data"
    );
    Ok(())
}

async fn partition_times_out_new_connections() -> anyhow::Result<()> {
    let (a, b) = (ip(21), ip(22));
    let at_a = TcpListener::bind((a, 0)).await?;
    let at_b = TcpListener::bind((b, 0)).await?;
    ensure!(
        connects(a, &at_b).await?,
        "before the cut, {a} could not connect to {b}"
    );

    let mut partitions = Partitions::new()?;
    partitions.cut(&[a], &[b])?;
    ensure!(
        !connects(a, &at_b).await?,
        "{a} connected to {b} through the cut"
    );
    ensure!(
        !connects(b, &at_a).await?,
        "{b} connected to {a} through the cut"
    );
    ensure!(
        partitions.dropped_packets()? > 0,
        "the cut's rules dropped nothing"
    );

    partitions.heal()?;
    ensure!(
        connects(a, &at_b).await?,
        "after the heal, {a} could not connect to {b}"
    );
    ensure!(
        connects(b, &at_a).await?,
        "after the heal, {b} could not connect to {a}"
    );
    Ok(())
}

async fn partition_silences_an_established_flow_until_healed() -> anyhow::Result<()> {
    let (a, b) = (ip(31), ip(32));
    let (mut x, mut y) = flow(a, b).await?;
    ensure!(
        delivers(&mut x, &mut y, b"before", RESUME).await?,
        "no data before the cut"
    );

    let mut partitions = Partitions::new()?;
    partitions.cut(&[a], &[b])?;
    ensure!(
        !delivers(&mut x, &mut y, b"a->b during", SILENCE).await?,
        "{a} -> {b} delivered through the cut"
    );
    ensure!(
        !delivers(&mut y, &mut x, b"b->a during", SILENCE).await?,
        "{b} -> {a} delivered through the cut"
    );

    partitions.heal()?;
    // What was sent during the cut arrives after the heal, by TCP's retransmission.
    ensure!(
        receives(&mut y, b"a->b during", RESUME).await?,
        "{a} -> {b}: nothing after heal"
    );
    ensure!(
        receives(&mut x, b"b->a during", RESUME).await?,
        "{b} -> {a}: nothing after heal"
    );
    ensure!(
        delivers(&mut x, &mut y, b"after", RESUME).await?,
        "no new data after the heal"
    );
    Ok(())
}

async fn partition_of_one_pair_leaves_a_third_pair_working() -> anyhow::Result<()> {
    let (a, b, c) = (ip(41), ip(42), ip(43));
    let at = [
        TcpListener::bind((a, 0)).await?,
        TcpListener::bind((b, 0)).await?,
        TcpListener::bind((c, 0)).await?,
    ];
    let (mut c_to_a, mut a_from_c) = flow(c, a).await?;

    let mut partitions = Partitions::new()?;
    partitions.cut(&[a], &[b])?;
    ensure!(
        !connects(a, &at[1]).await?,
        "{a} connected to {b} through the cut"
    );
    ensure!(
        !connects(b, &at[0]).await?,
        "{b} connected to {a} through the cut"
    );
    for (from, to, listener) in [
        (a, c, &at[2]),
        (c, a, &at[0]),
        (b, c, &at[2]),
        (c, b, &at[1]),
    ] {
        ensure!(
            connects(from, listener).await?,
            "{from} could not connect to {to}"
        );
    }
    ensure!(
        delivers(&mut c_to_a, &mut a_from_c, b"still", RESUME).await?,
        "an established flow {c} -> {a} stopped"
    );

    // Isolating one address from a set: b from {a, c}; a and c still talk.
    partitions.heal()?;
    partitions.cut(&[b], &[a, c])?;
    ensure!(!connects(b, &at[0]).await?, "{b} reached {a}");
    ensure!(!connects(b, &at[2]).await?, "{b} reached {c}");
    ensure!(!connects(c, &at[1]).await?, "{c} reached {b}");
    ensure!(connects(a, &at[2]).await?, "{a} could not connect to {c}");
    ensure!(connects(c, &at[0]).await?, "{c} could not connect to {a}");
    Ok(())
}

async fn partition_cuts_and_heals_are_idempotent() -> anyhow::Result<()> {
    let (a, b) = (ip(51), ip(52));
    let at_b = TcpListener::bind((b, 0)).await?;
    let mut partitions = Partitions::new()?;
    let table = partitions.table().to_string();
    ensure!(listed_tables()?.contains(&table), "no table {table}");

    partitions.cut(&[a], &[b])?;
    partitions.cut(&[b], &[a])?;
    let pairs: Vec<_> = partitions.dropped().collect();
    ensure!(pairs == [(a, b), (b, a)], "dropped pairs {pairs:?}");
    ensure!(
        !connects(a, &at_b).await?,
        "{a} connected to {b} through the cut"
    );

    partitions.heal()?;
    partitions.heal()?;
    ensure!(partitions.dropped().next().is_none());
    ensure!(
        connects(a, &at_b).await?,
        "after two heals, {a} could not connect to {b}"
    );

    partitions.cut(&[a], &[b])?;
    ensure!(
        !connects(a, &at_b).await?,
        "a cut after a heal let {a} through"
    );
    drop(partitions);
    ensure!(
        !listed_tables()?.contains(&table),
        "{table} outlived its Partitions"
    );
    ensure!(
        connects(a, &at_b).await?,
        "after the drop, {a} could not connect to {b}"
    );
    Ok(())
}

async fn partition_cuts_a_process_playing_a_host_that_binds_nothing() -> anyhow::Result<()> {
    let (host, b) = (Ipv4Addr::new(127, 0, 0, 101), ip(102));
    let listener = TcpListener::bind((b, 0)).await?;
    let to = listener.local_addr()?;
    // bash's /dev/tcp connects without binding a source address, as most clients do.
    let connect_from_host = || -> anyhow::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new("bash");
        cmd.args([
            "-c",
            &format!("echo hi >/dev/tcp/{}/{}", to.ip(), to.port()),
        ])
        .kill_on_drop(true);
        netns::as_host(cmd.as_std_mut(), host)?;
        Ok(cmd.spawn()?)
    };
    let accept = |within| {
        let listener = &listener;
        async move {
            tokio::time::timeout(within, listener.accept())
                .await
                .ok()
                .transpose()
        }
    };

    let _child = connect_from_host()?;
    let (_, peer) = accept(RESUME)
        .await?
        .context("the host's process did not connect")?;
    ensure!(
        peer.ip() == IpAddr::V4(host),
        "the host's process connected from {peer}"
    );

    let mut partitions = Partitions::new()?;
    partitions.cut(&[IpAddr::V4(host)], &[b])?;
    let _child = connect_from_host()?;
    if let Some((_, peer)) = accept(SILENCE).await? {
        bail!("{peer} connected to {b} through the cut");
    }
    partitions.heal()?;
    // The connection attempt made during the cut succeeds by retransmitting its SYN.
    let (_, peer) = accept(RESUME)
        .await?
        .context("no connection after the heal")?;
    ensure!(
        peer.ip() == IpAddr::V4(host),
        "the host's process connected from {peer}"
    );
    Ok(())
}

/// The nftables tables of this namespace, as `nft list tables` prints them.
fn listed_tables() -> anyhow::Result<String> {
    let out = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()?;
    ensure!(out.status.success(), "nft list tables: {}", out.status);
    Ok(String::from_utf8(out.stdout)?)
}

/// Starts etcd on `members` (quick elections, so failover tests are short).
async fn etcd(members: &[IpAddr], transcript: &Transcript) -> anyhow::Result<Etcd> {
    let mut spec = EtcdSpec::on(members);
    spec.no_fsync = true;
    spec.extra_args = vec![
        "--heartbeat-interval=50".into(),
        "--election-timeout=500".into(),
    ];
    Ok(Etcd::start(spec, transcript).await?)
}

/// Polls `f` until it succeeds, at most `timeout`; the last error if it never does.
async fn eventually<T, Fut>(timeout: Duration, mut f: impl FnMut() -> Fut) -> anyhow::Result<T>
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(t) => return Ok(t),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("still failing after {timeout:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn etcd_one_member_answers() -> anyhow::Result<()> {
    let transcript = Transcript::new(false);
    let etcd = etcd(&[ip(61)], &transcript).await?;
    ensure!(etcd.client_urls() == ["http://127.0.0.61:2379"]);
    ensure!(etcd.get(0, b"k").await?.is_none(), "a fresh etcd has k");
    etcd.put(0, b"k", b"v1").await?;
    ensure!(etcd.get(0, b"k").await? == Some(b"v1".to_vec()));
    ensure!(etcd.leader(Duration::from_secs(5)).await? == 0);
    Ok(())
}

async fn etcd_three_members_answer() -> anyhow::Result<()> {
    let transcript = Transcript::new(false);
    let etcd = etcd(&[ip(71), ip(72), ip(73)], &transcript).await?;
    etcd.put(0, b"k", b"through 0").await?;
    for i in 0..3 {
        let got = etcd.get(i, b"k").await?;
        ensure!(
            got == Some(b"through 0".to_vec()),
            "member {i} read {got:?}"
        );
    }
    etcd.put(2, b"k", b"").await?;
    ensure!(
        etcd.get(1, b"k").await? == Some(Vec::new()),
        "an empty value read back wrong"
    );
    Ok(())
}

async fn etcd_killed_leader_leaves_two_serving_then_rejoins() -> anyhow::Result<()> {
    let transcript = Transcript::new(false);
    let mut etcd = etcd(&[ip(81), ip(82), ip(83)], &transcript).await?;
    let leader = etcd.leader(Duration::from_secs(10)).await?;
    etcd.put(leader, b"k", b"before").await?;

    etcd.kill(leader)?;
    ensure!(!etcd.is_running(leader));
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = etcd.leader(Duration::from_secs(10)).await?;
    ensure!(
        others.contains(&new_leader),
        "leader {new_leader} after killing {leader}"
    );
    for &i in &others {
        let etcd = &etcd;
        eventually(Duration::from_secs(10), || async move {
            etcd.put(i, b"k", format!("through {i}").as_bytes()).await?;
            let got = etcd.get(i, b"k").await?;
            ensure!(
                got == Some(format!("through {i}").into_bytes()),
                "member {i} read {got:?}"
            );
            Ok(())
        })
        .await
        .with_context(|| format!("member {i} after the leader {leader} was killed"))?;
    }

    etcd.restart(leader).await?;
    let last = format!("through {}", others[1]).into_bytes();
    let got = etcd.get(leader, b"k").await?;
    ensure!(got == Some(last), "the restarted member read {got:?}");
    Ok(())
}

async fn etcd_member_cut_off_loses_quorum_until_healed() -> anyhow::Result<()> {
    let transcript = Transcript::new(false);
    let etcd = etcd(&[ip(91), ip(92), ip(93)], &transcript).await?;
    etcd.put(0, b"k", b"v").await?;
    let leader = etcd.leader(Duration::from_secs(10)).await?;
    // Cut a follower off, so the two others keep their leader.
    let alone = (0..3).find(|&i| i != leader).expect("three members");
    let addrs = etcd.addrs();
    let rest: Vec<IpAddr> = addrs
        .iter()
        .copied()
        .filter(|&a| a != addrs[alone])
        .collect();

    let mut partitions = Partitions::new()?;
    partitions.cut(&[addrs[alone]], &rest)?;
    // The two others still commit; the cut-off member cannot even read: a linearizable read
    // needs the leader. Had any packet of the leader's reached it, it would answer "during".
    etcd.put(leader, b"k", b"during").await?;
    if let Ok(v) = etcd.get(alone, b"k").await {
        bail!("member {alone} answered {v:?} through the cut");
    }
    ensure!(
        partitions.dropped_packets()? > 0,
        "the cut's rules dropped nothing"
    );
    let etcd = &etcd;

    partitions.heal()?;
    eventually(Duration::from_secs(15), || async move {
        let got = etcd.get(alone, b"k").await?;
        ensure!(
            got == Some(b"during".to_vec()),
            "member {alone} read {got:?}"
        );
        Ok(())
    })
    .await
    .with_context(|| format!("member {alone} after the heal"))?;
    Ok(())
}
