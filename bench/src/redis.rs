//! Redis: the bid and its client, for load runs against one primary and for failover runs
//! through Sentinel; and the primary the Sentinels name as the leader a failover run kills.
//!
//! A bid is a Lua script that accepts only a higher amount, followed by `WAIT` for replicas
//! (pipelined). Under load it waits for both replicas, as the auction replicates synchronously;
//! under failover for one, so the bid is on a majority of the three servers (two cannot be met
//! between the kill and the killed server's return, so they would measure the restart rather
//! than the failover).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::time::{Instant, timeout};

use super::client::{Bidder, Patience, Retries};
use super::failover::{FaultMode, FaultTarget, kill_listener, request_restart, until_whole};
use super::resp::{Conn, Value};
use super::{KEY_BIDDER, KEY_HIGHEST};

/// The bid: sets the highest bid and bidder only if the amount is higher.
const BID_SCRIPT: &str = "local cur = tonumber(redis.call('GET', KEYS[1]) or '0') \
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]); \
redis.call('SET', KEYS[2], ARGV[2]); return 1 end return 0";

/// The process name of a Redis server (`/proc/PID/comm`).
const REDIS_PROGRAM: &str = "redis-server";

/// How many replicas a bid waits for (`WAIT replicas timeout_ms`) before it counts as answered.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wait {
    pub(crate) replicas: u32,
    pub(crate) timeout_ms: u32,
}

impl Wait {
    /// Under load: both replicas, as the auction replicates to every member.
    pub(crate) const BOTH_REPLICAS: Self = Self {
        replicas: 2,
        timeout_ms: 1000,
    };
    /// Under failover: one replica, for at most 250 ms (then the attempt fails and is made
    /// again).
    pub(crate) const ONE_REPLICA: Self = Self {
        replicas: 1,
        timeout_ms: 250,
    };
}

/// Loads the bid script on `conn`; returns its SHA, for `EVALSHA`.
async fn load_script(conn: &mut Conn) -> anyhow::Result<Vec<u8>> {
    match conn
        .call(&[b"SCRIPT", b"LOAD", BID_SCRIPT.as_bytes()])
        .await?
    {
        Value::Bulk(Some(sha)) => Ok(sha),
        other => bail!("SCRIPT LOAD answered {other:?}"),
    }
}

/// Sends one bid on `conn`: the script (`sha`, loaded there) and the `WAIT`, pipelined. `Ok`
/// once the bid was accepted or refused, and is on `wait.replicas` replicas.
async fn send_bid(
    conn: &mut Conn,
    sha: &[u8],
    amount: u64,
    name: &[u8],
    wait: Wait,
) -> anyhow::Result<()> {
    let amount = amount.to_string();
    let eval: [&[u8]; 7] = [
        b"EVALSHA",
        sha,
        b"2",
        KEY_HIGHEST,
        KEY_BIDDER,
        amount.as_bytes(),
        name,
    ];
    let (replicas, wait_ms) = (wait.replicas.to_string(), wait.timeout_ms.to_string());
    conn.queue(&eval).await?;
    conn.queue(&[b"WAIT", replicas.as_bytes(), wait_ms.as_bytes()])
        .await?;
    match conn.finish(2).await?.as_slice() {
        [Value::Int(0 | 1), Value::Int(acked)] if *acked >= i64::from(wait.replicas) => Ok(()),
        other => bail!("the bid was answered {other:?}"),
    }
}

/// Deletes the auction's keys on the primary at `primary`, so bids start from nothing.
pub(crate) async fn reset(primary: SocketAddr) -> anyhow::Result<()> {
    let mut conn = Conn::connect(primary).await?;
    match conn.call(&[b"DEL", KEY_HIGHEST, KEY_BIDDER]).await? {
        Value::Int(_) => Ok(()),
        other => bail!("DEL answered {other:?}"),
    }
}

/// Where a client finds the primary.
pub(crate) enum Primary {
    /// Always at this address.
    At(SocketAddr),
    /// Wherever the Sentinels say, asked again after any error, each time another Sentinel
    /// first (starting at `first`).
    Sentinels {
        sentinels: Vec<SocketAddr>,
        master: String,
        first: usize,
    },
}

/// A Redis client: it finds the primary, connects and loads the bid script there at its first
/// request, and after any error drops its connection and starts over.
pub(crate) struct RedisBidder {
    primary: Primary,
    wait: Wait,
    patience: Patience,
    name: Vec<u8>,
    /// The connection to the primary, and the bid script's SHA there.
    conn: Option<(Conn, Vec<u8>)>,
}

/// One request.
#[derive(Clone, Copy)]
enum Op {
    Bid(u64),
    Read,
}

impl RedisBidder {
    /// A client bidding as `name`, its bids waiting for `wait`.
    pub(crate) fn new(primary: Primary, wait: Wait, name: &str, patience: Patience) -> Self {
        Self {
            primary,
            wait,
            patience,
            name: name.as_bytes().to_vec(),
            conn: None,
        }
    }

    async fn attempt(&mut self, op: Op) -> anyhow::Result<()> {
        let (conn, sha) = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let primary = match &self.primary {
                    Primary::At(addr) => *addr,
                    Primary::Sentinels {
                        sentinels,
                        master,
                        first,
                    } => ask_primary(sentinels, *first, master).await?,
                };
                let mut conn = Conn::connect(primary)
                    .await
                    .with_context(|| format!("connecting to the primary {primary}"))?;
                let sha = load_script(&mut conn).await?;
                self.conn.insert((conn, sha))
            }
        };
        match op {
            Op::Bid(amount) => send_bid(conn, sha, amount, &self.name, self.wait).await,
            Op::Read => match conn.call(&[b"MGET", KEY_HIGHEST, KEY_BIDDER]).await? {
                Value::Array(Some(_)) => Ok(()),
                other => bail!("MGET answered {other:?}"),
            },
        }
    }

    /// `op`, attempted again within the patience after any error.
    async fn request(&mut self, op: Op) -> anyhow::Result<()> {
        let mut retries = Retries::new(self.patience.budget);
        loop {
            let error = match timeout(self.patience.attempt, self.attempt(op)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => anyhow!("no answer within {:?}", self.patience.attempt),
            };
            // Whatever failed, find the primary again (asking another Sentinel first) and
            // reconnect.
            self.conn = None;
            if let Primary::Sentinels { first, .. } = &mut self.primary {
                *first = first.wrapping_add(1);
            }
            if !retries.wait().await {
                return Err(error.context(format!(
                    "no answer from Redis within {:?}",
                    self.patience.budget
                )));
            }
        }
    }
}

impl Bidder for RedisBidder {
    async fn bid(&mut self, amount: u64) -> anyhow::Result<()> {
        self.request(Op::Bid(amount)).await
    }

    async fn read(&mut self) -> anyhow::Result<()> {
        self.request(Op::Read).await
    }
}

/// The primary's address as the first Sentinel that answers (from `first` on) names it.
async fn ask_primary(
    sentinels: &[SocketAddr],
    first: usize,
    master: &str,
) -> anyhow::Result<SocketAddr> {
    let mut last = anyhow!("no Sentinel addresses");
    for k in 0..sentinels.len() {
        let Some(&sentinel) = sentinels.get(first.wrapping_add(k) % sentinels.len()) else {
            continue;
        };
        match ask_sentinel(sentinel, master).await {
            Ok(addr) => return Ok(addr),
            Err(e) => last = e.context(format!("Sentinel {sentinel}")),
        }
    }
    Err(last)
}

async fn ask_sentinel(sentinel: SocketAddr, master: &str) -> anyhow::Result<SocketAddr> {
    let mut conn = Conn::connect(sentinel).await?;
    let reply = conn
        .call(&[b"SENTINEL", b"get-master-addr-by-name", master.as_bytes()])
        .await?;
    let (host, port) = master_addr(&reply, master)?;
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to no address"))
}

/// The host and port in a reply to `SENTINEL get-master-addr-by-name`.
fn master_addr(reply: &Value, master: &str) -> anyhow::Result<(String, u16)> {
    match reply {
        Value::Array(Some(items)) => match items.as_slice() {
            [Value::Bulk(Some(host)), Value::Bulk(Some(port))] => {
                let host = String::from_utf8(host.clone()).context("a host that is not UTF-8")?;
                let port = std::str::from_utf8(port)
                    .ok()
                    .and_then(|p| p.parse().ok())
                    .context("a port that is not a number")?;
                Ok((host, port))
            }
            _ => bail!("unexpected reply {reply:?}"),
        },
        Value::Array(None) | Value::Bulk(None) => {
            bail!("the Sentinel monitors no master named {master:?}")
        }
        Value::Error(e) => bail!("{e}"),
        _ => bail!("unexpected reply {reply:?}"),
    }
}

/// The field-value pairs of a reply such as `SENTINEL master NAME`.
fn pairs(reply: &Value) -> anyhow::Result<HashMap<String, String>> {
    let Value::Array(Some(items)) = reply else {
        match reply {
            Value::Error(e) => bail!("{e}"),
            _ => bail!("unexpected reply {reply:?}"),
        }
    };
    let text = |v: &Value| match v {
        Value::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    };
    items
        .chunks(2)
        .map(|kv| match kv {
            [k, v] => text(k).zip(text(v)),
            _ => None,
        })
        .collect::<Option<_>>()
        .with_context(|| format!("unexpected reply {reply:?}"))
}

/// From `INFO replication`: whether the server is a primary, and how many replicas are online.
fn replication(info: &str) -> (bool, usize) {
    let mut primary = false;
    let mut online = 0;
    for line in info.lines() {
        let Some((key, value)) = line.trim_end().split_once(':') else {
            continue;
        };
        if key == "role" {
            primary = value == "master";
        }
        let numbered = key
            .strip_prefix("slave")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if numbered && value.split(',').any(|f| f == "state=online") {
            online += 1;
        }
    }
    (primary, online)
}

/// A Redis primary with its replicas, watched by Sentinels, all on this host.
pub(super) struct RedisCluster {
    sentinels: Vec<SocketAddr>,
    master: String,
    restart: fn(&str),
}

impl RedisCluster {
    pub(super) fn new(sentinels: Vec<SocketAddr>, master: String, restart: fn(&str)) -> Self {
        Self {
            sentinels,
            master,
            restart,
        }
    }

    /// Deletes the auction's keys, so bids start from nothing.
    pub(super) async fn reset(&mut self) -> anyhow::Result<()> {
        let work = async { reset(ask_primary(&self.sentinels, 0, &self.master).await?).await };
        timeout(Duration::from_secs(5), work)
            .await
            .context("the Redis primary did not answer")?
    }

    /// The primary, once the cluster is whole: every Sentinel knows the others, names the same
    /// primary and sees it up, and knows of at least one replica; every replica a Sentinel
    /// knows of is up and linked to the primary in its view, and online on the primary. (A
    /// Sentinel promotes only a replica it has seen so.)
    async fn check(&self) -> anyhow::Result<SocketAddr> {
        let mut agreed: Option<(SocketAddr, usize)> = None;
        for &sentinel in &self.sentinels {
            let (primary, known) = self
                .sentinel_view(sentinel)
                .await
                .with_context(|| format!("Sentinel {sentinel}"))?;
            match agreed {
                Some((seen, _)) if seen != primary => {
                    bail!("the Sentinels name {seen} and {primary}");
                }
                Some((_, most)) => agreed = Some((primary, most.max(known))),
                None => agreed = Some((primary, known)),
            }
        }
        let (primary, known) = agreed.context("no Sentinel addresses")?;
        let mut conn = Conn::connect(primary)
            .await
            .with_context(|| format!("the primary {primary}"))?;
        let info = match conn.call(&[b"INFO", b"replication"]).await {
            Ok(Value::Bulk(Some(b))) => String::from_utf8_lossy(&b).into_owned(),
            other => bail!("INFO answered {other:?}"),
        };
        match replication(&info) {
            (false, _) => bail!("{primary} is not a primary yet"),
            (true, online) if online < known => {
                bail!("{online} of {known} replicas are online on {primary}")
            }
            (true, _) => Ok(primary),
        }
    }
}

impl RedisCluster {
    /// What `sentinel` sees: the primary, and how many replicas it knows of, when it sees the
    /// primary, the other Sentinels, and at least one replica, all up.
    async fn sentinel_view(&self, sentinel: SocketAddr) -> anyhow::Result<(SocketAddr, usize)> {
        let mut conn = Conn::connect(sentinel).await?;
        let name = self.master.as_bytes();
        let reply = conn.call(&[b"SENTINEL", b"master", name]).await?;
        let primary = pairs(&reply)?;
        let field = |k: &str| primary.get(k).map(String::as_str).unwrap_or_default();
        if field("flags") != "master" {
            bail!("flags the primary {}", field("flags"));
        }
        let ip: std::net::IpAddr = field("ip")
            .parse()
            .with_context(|| format!("names the primary's ip {:?}", field("ip")))?;
        let port: u16 = field("port")
            .parse()
            .with_context(|| format!("names the primary's port {:?}", field("port")))?;
        let others: usize = field("num-other-sentinels").parse().unwrap_or(0);
        if others + 1 < self.sentinels.len() {
            bail!("knows {others} other Sentinels");
        }
        let reply = conn.call(&[b"SENTINEL", b"replicas", name]).await?;
        let Value::Array(Some(replicas)) = reply else {
            bail!("listed the replicas as {reply:?}");
        };
        if replicas.is_empty() {
            bail!("knows of no replica");
        }
        for replica in &replicas {
            let replica = pairs(replica)?;
            let field = |k: &str| replica.get(k).map(String::as_str).unwrap_or_default();
            if field("flags") != "slave" || field("master-link-status") != "ok" {
                bail!(
                    "sees the replica {}:{} as {}, link {}",
                    field("ip"),
                    field("port"),
                    field("flags"),
                    field("master-link-status")
                );
            }
        }
        Ok((SocketAddr::new(ip, port), replicas.len()))
    }
}

impl FaultTarget for RedisCluster {
    type Leader = SocketAddr;

    async fn whole(&mut self, patience: Duration) -> anyhow::Result<SocketAddr> {
        until_whole("Redis", patience, || self.check()).await
    }

    async fn fault(&mut self, leader: &SocketAddr, _mode: FaultMode) -> anyhow::Result<Instant> {
        kill_listener(*leader, REDIS_PROGRAM)
    }

    async fn restore(&mut self, leader: SocketAddr, patience: Duration) -> anyhow::Result<()> {
        request_restart(leader, self.restart, patience).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn the_sentinel_reply_names_the_primary() {
        let reply = Value::Array(Some(vec![bulk("127.0.0.1"), bulk("17002")]));
        assert_eq!(
            master_addr(&reply, "auction").unwrap(),
            ("127.0.0.1".into(), 17002)
        );
        let unknown = master_addr(&Value::Array(None), "auction")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("no master named"), "{unknown}");
        let bad_port = Value::Array(Some(vec![bulk("127.0.0.1"), bulk("port")]));
        assert!(master_addr(&bad_port, "auction").is_err());
        assert!(master_addr(&Value::Error("ERR no".into()), "auction").is_err());
    }

    #[test]
    fn info_replication_counts_only_online_replicas() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
            slave0:ip=127.0.0.1,port=17002,state=online,offset=42,lag=0\r\n\
            slave1:ip=127.0.0.1,port=17001,state=wait_bgsave,offset=0,lag=0\r\n\
            master_failover_state:no-failover\r\nslave_read_only:1\r\n";
        assert_eq!(replication(info), (true, 1));
        let replica = "role:slave\r\nmaster_host:127.0.0.1\r\nslave_priority:100\r\n";
        assert_eq!(replication(replica), (false, 0));
    }

    /// Reads one command (an array of bulk strings); `None` at EOF or on anything else.
    async fn read_command(
        r: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    ) -> Option<Vec<Vec<u8>>> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        let mut line = String::new();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let n: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
        let mut args = Vec::with_capacity(n);
        for _ in 0..n {
            line.clear();
            r.read_line(&mut line).await.ok()?;
            let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
            let mut buf = vec![0; len + 2];
            r.read_exact(&mut buf).await.ok()?;
            buf.truncate(len);
            args.push(buf);
        }
        Some(args)
    }

    /// A fake server that answers each command with `answer(command)`, one connection at a
    /// time; aborting its task closes its connection.
    async fn serve(
        answer: impl Fn(&[Vec<u8>]) -> String + Send + 'static,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let mut stream = tokio::io::BufReader::new(stream);
                while let Some(command) = read_command(&mut stream).await {
                    let reply = answer(&command);
                    if stream.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            }
        });
        (addr, task)
    }

    /// A primary that acknowledges every bid on one replica, and counts the bids.
    async fn primary() -> (
        SocketAddr,
        tokio::task::JoinHandle<()>,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let bids = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = bids.clone();
        let (addr, task) = serve(move |command| match command.first().map(Vec::as_slice) {
            Some(b"SCRIPT") => format!("$40\r\n{}\r\n", "0".repeat(40)),
            Some(b"EVALSHA") => {
                counted.fetch_add(1, Ordering::Relaxed);
                ":1\r\n".into()
            }
            Some(b"WAIT") => ":1\r\n".into(),
            _ => "-ERR unexpected\r\n".into(),
        })
        .await;
        (addr, task, bids)
    }

    #[tokio::test]
    async fn after_an_error_the_client_asks_the_sentinels_again() {
        use std::sync::atomic::Ordering;
        let (a, a_task, a_bids) = primary().await;
        let (b, _b_task, b_bids) = primary().await;
        let named = std::sync::Arc::new(std::sync::Mutex::new(a));
        let now_named = named.clone();
        let (sentinel, _sentinel_task) = serve(move |command| {
            let asks = [&b"SENTINEL"[..], b"get-master-addr-by-name", b"auction"];
            if command != asks {
                return "-ERR unexpected\r\n".into();
            }
            let addr = *now_named.lock().unwrap();
            let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
            format!(
                "*2\r\n${}\r\n{ip}\r\n${}\r\n{port}\r\n",
                ip.len(),
                port.len()
            )
        })
        .await;
        let sentinels = Primary::Sentinels {
            sentinels: vec![sentinel],
            master: "auction".into(),
            first: 0,
        };
        let patience = Patience {
            attempt: Duration::from_millis(500),
            budget: Duration::from_secs(30),
        };
        let mut client = RedisBidder::new(sentinels, Wait::ONE_REPLICA, "b0", patience);
        client.bid(1).await.unwrap();
        assert_eq!(a_bids.load(Ordering::Relaxed), 1);
        // The primary dies with the client's connection open; the Sentinel names another.
        a_task.abort();
        let _ = a_task.await;
        *named.lock().unwrap() = b;
        client.bid(2).await.unwrap();
        assert_eq!(a_bids.load(Ordering::Relaxed), 1);
        assert_eq!(b_bids.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn field_value_replies_become_a_map() {
        let reply = Value::Array(Some(vec![bulk("flags"), bulk("master"), bulk("port")]));
        assert!(pairs(&reply).is_err(), "an odd number of items");
        let reply = Value::Array(Some(vec![bulk("flags"), bulk("master")]));
        assert_eq!(pairs(&reply).unwrap()["flags"], "master");
    }
}
