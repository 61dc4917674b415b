//! Redis under failover: a Sentinel-aware client, and the primary the Sentinels name as the
//! leader a failover run kills.
//!
//! A bid is the same Lua script as under load, followed by `WAIT 1`: the bid is on a majority of
//! the three servers. (`WAIT 2`, as under load, cannot be met between the kill and the killed
//! server's return, so it would measure the restart rather than the failover.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{Instant, timeout};

use super::failover::{
    BID_BUDGET, Bidder, FaultMode, FaultTarget, Retries, kill_listener, request_restart,
    until_whole,
};
use super::resp::{Conn, Value};
use super::{KEY_BIDDER, KEY_HIGHEST, REDIS_BID};

/// The longest one attempt (ask a Sentinel, connect, bid) may take before it is given up and the
/// Sentinels are asked again: far above a bid's latency, well below Sentinel's detection time.
const ATTEMPT: Duration = Duration::from_millis(500);

/// The bid's replication wait: one replica, for at most 250 ms (then the attempt fails and is
/// made again).
const WAIT: [&[u8]; 3] = [b"WAIT", b"1", b"250"];

/// The process name of a Redis server (`/proc/PID/comm`).
const REDIS_PROGRAM: &str = "redis-server";

/// A client that finds the primary through the Sentinels and, after any error, asks them again
/// and reconnects.
pub(super) struct SentinelClient {
    sentinels: Vec<SocketAddr>,
    master: String,
    name: Vec<u8>,
    /// Which Sentinel is asked first; moves on after every failed attempt.
    first: usize,
    conn: Option<Conn>,
}

impl SentinelClient {
    /// Client `i`, bidding as `name`. It connects at its first bid.
    pub(super) fn new(sentinels: Vec<SocketAddr>, master: String, name: Vec<u8>, i: usize) -> Self {
        Self {
            sentinels,
            master,
            name,
            first: i,
            conn: None,
        }
    }

    async fn attempt(&mut self, amount: &[u8]) -> Result<(), String> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let primary = ask_primary(&self.sentinels, self.first, &self.master).await?;
                let conn = Conn::connect(primary)
                    .await
                    .map_err(|e| format!("connecting to the primary {primary}: {e}"))?;
                self.conn.insert(conn)
            }
        };
        let eval: [&[u8]; 7] = [
            b"EVAL",
            REDIS_BID.as_bytes(),
            b"2",
            KEY_HIGHEST,
            KEY_BIDDER,
            amount,
            &self.name,
        ];
        conn.queue(&eval).await.map_err(|e| e.to_string())?;
        conn.queue(&WAIT).await.map_err(|e| e.to_string())?;
        match conn.finish(2).await.map_err(|e| e.to_string())?.as_slice() {
            // Accepted or refused, and on a replica.
            [Value::Int(0 | 1), Value::Int(acked)] if *acked >= 1 => Ok(()),
            other => Err(format!("the bid was answered {other:?}")),
        }
    }
}

impl Bidder for SentinelClient {
    async fn bid(&mut self, amount: u64) -> Result<bool, String> {
        let amount = amount.to_string();
        let mut retries = Retries::new(BID_BUDGET);
        loop {
            if let Ok(Ok(())) = timeout(ATTEMPT, self.attempt(amount.as_bytes())).await {
                return Ok(true);
            }
            // Whatever failed, ask the Sentinels again (another one first) and reconnect.
            self.conn = None;
            self.first = self.first.wrapping_add(1);
            if !retries.wait().await {
                return Ok(false);
            }
        }
    }
}

/// The primary's address as the first Sentinel that answers (from `first` on) names it.
async fn ask_primary(
    sentinels: &[SocketAddr],
    first: usize,
    master: &str,
) -> Result<SocketAddr, String> {
    let mut last = String::from("no Sentinel addresses");
    for k in 0..sentinels.len() {
        let Some(&sentinel) = sentinels.get(first.wrapping_add(k) % sentinels.len()) else {
            continue;
        };
        match ask_sentinel(sentinel, master).await {
            Ok(addr) => return Ok(addr),
            Err(e) => last = format!("Sentinel {sentinel}: {e}"),
        }
    }
    Err(last)
}

async fn ask_sentinel(sentinel: SocketAddr, master: &str) -> Result<SocketAddr, String> {
    let mut conn = Conn::connect(sentinel).await.map_err(|e| e.to_string())?;
    let reply = conn
        .call(&[b"SENTINEL", b"get-master-addr-by-name", master.as_bytes()])
        .await
        .map_err(|e| e.to_string())?;
    let (host, port) = master_addr(&reply, master)?;
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))
}

/// The host and port in a reply to `SENTINEL get-master-addr-by-name`.
fn master_addr(reply: &Value, master: &str) -> Result<(String, u16), String> {
    match reply {
        Value::Array(Some(items)) => match items.as_slice() {
            [Value::Bulk(Some(host)), Value::Bulk(Some(port))] => {
                let host =
                    String::from_utf8(host.clone()).map_err(|_| "a host that is not UTF-8")?;
                let port = std::str::from_utf8(port)
                    .ok()
                    .and_then(|p| p.parse().ok())
                    .ok_or("a port that is not a number")?;
                Ok((host, port))
            }
            _ => Err(format!("unexpected reply {reply:?}")),
        },
        Value::Array(None) | Value::Bulk(None) => {
            Err(format!("the Sentinel monitors no master named {master:?}"))
        }
        Value::Error(e) => Err(e.clone()),
        _ => Err(format!("unexpected reply {reply:?}")),
    }
}

/// The field-value pairs of a reply such as `SENTINEL master NAME`.
fn pairs(reply: &Value) -> Result<HashMap<String, String>, String> {
    let Value::Array(Some(items)) = reply else {
        return match reply {
            Value::Error(e) => Err(e.clone()),
            _ => Err(format!("unexpected reply {reply:?}")),
        };
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
        .ok_or_else(|| format!("unexpected reply {reply:?}"))
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
    pub(super) async fn reset(&mut self) -> Result<(), String> {
        let work = async {
            let primary = ask_primary(&self.sentinels, 0, &self.master).await?;
            let mut conn = Conn::connect(primary).await.map_err(|e| e.to_string())?;
            match conn.call(&[b"DEL", KEY_HIGHEST, KEY_BIDDER]).await {
                Ok(Value::Int(_)) => Ok(()),
                other => Err(format!("DEL answered {other:?}")),
            }
        };
        timeout(Duration::from_secs(5), work)
            .await
            .map_err(|_| "the Redis primary did not answer".to_string())?
    }

    /// The primary, once the cluster is whole: every Sentinel knows the others, names the same
    /// primary and sees it up, and knows of at least one replica; every replica a Sentinel
    /// knows of is up and linked to the primary in its view, and online on the primary. (A
    /// Sentinel promotes only a replica it has seen so.)
    async fn check(&self) -> Result<SocketAddr, String> {
        let mut agreed: Option<(SocketAddr, usize)> = None;
        for &sentinel in &self.sentinels {
            let (primary, known) = self
                .sentinel_view(sentinel)
                .await
                .map_err(|e| format!("Sentinel {sentinel}: {e}"))?;
            match agreed {
                Some((seen, _)) if seen != primary => {
                    return Err(format!("the Sentinels name {seen} and {primary}"));
                }
                Some((_, most)) => agreed = Some((primary, most.max(known))),
                None => agreed = Some((primary, known)),
            }
        }
        let (primary, known) = agreed.ok_or("no Sentinel addresses")?;
        let mut conn = Conn::connect(primary)
            .await
            .map_err(|e| format!("the primary {primary}: {e}"))?;
        let info = match conn.call(&[b"INFO", b"replication"]).await {
            Ok(Value::Bulk(Some(b))) => String::from_utf8_lossy(&b).into_owned(),
            other => return Err(format!("INFO answered {other:?}")),
        };
        match replication(&info) {
            (false, _) => Err(format!("{primary} is not a primary yet")),
            (true, online) if online < known => Err(format!(
                "{online} of {known} replicas are online on {primary}"
            )),
            (true, _) => Ok(primary),
        }
    }
}

impl RedisCluster {
    /// What `sentinel` sees: the primary, and how many replicas it knows of, when it sees the
    /// primary, the other Sentinels, and at least one replica, all up.
    async fn sentinel_view(&self, sentinel: SocketAddr) -> Result<(SocketAddr, usize), String> {
        let mut conn = Conn::connect(sentinel).await.map_err(|e| e.to_string())?;
        let name = self.master.as_bytes();
        let reply = conn
            .call(&[b"SENTINEL", b"master", name])
            .await
            .map_err(|e| e.to_string())?;
        let primary = pairs(&reply)?;
        let field = |k: &str| primary.get(k).map(String::as_str).unwrap_or_default();
        if field("flags") != "master" {
            return Err(format!("flags the primary {}", field("flags")));
        }
        let ip: std::net::IpAddr = field("ip")
            .parse()
            .map_err(|_| format!("names the primary's ip {:?}", field("ip")))?;
        let port: u16 = field("port")
            .parse()
            .map_err(|_| format!("names the primary's port {:?}", field("port")))?;
        let others: usize = field("num-other-sentinels").parse().unwrap_or(0);
        if others + 1 < self.sentinels.len() {
            return Err(format!("knows {others} other Sentinels"));
        }
        let reply = conn
            .call(&[b"SENTINEL", b"replicas", name])
            .await
            .map_err(|e| e.to_string())?;
        let Value::Array(Some(replicas)) = reply else {
            return Err(format!("listed the replicas as {reply:?}"));
        };
        if replicas.is_empty() {
            return Err("knows of no replica".into());
        }
        for replica in &replicas {
            let replica = pairs(replica)?;
            let field = |k: &str| replica.get(k).map(String::as_str).unwrap_or_default();
            if field("flags") != "slave" || field("master-link-status") != "ok" {
                return Err(format!(
                    "sees the replica {}:{} as {}, link {}",
                    field("ip"),
                    field("port"),
                    field("flags"),
                    field("master-link-status")
                ));
            }
        }
        Ok((SocketAddr::new(ip, port), replicas.len()))
    }
}

impl FaultTarget for RedisCluster {
    type Leader = SocketAddr;

    async fn whole(&mut self, patience: Duration) -> Result<SocketAddr, String> {
        until_whole("Redis", patience, || self.check()).await
    }

    async fn fault(&mut self, leader: &SocketAddr, _mode: FaultMode) -> Result<Instant, String> {
        kill_listener(*leader, REDIS_PROGRAM)
    }

    async fn restore(&mut self, leader: SocketAddr, patience: Duration) -> Result<(), String> {
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
        let unknown = master_addr(&Value::Array(None), "auction").unwrap_err();
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
            Some(b"EVAL") => {
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
        let mut client = SentinelClient::new(vec![sentinel], "auction".into(), b"b0".to_vec(), 0);
        assert_eq!(client.bid(1).await, Ok(true));
        assert_eq!(a_bids.load(Ordering::Relaxed), 1);
        // The primary dies with the client's connection open; the Sentinel names another.
        a_task.abort();
        let _ = a_task.await;
        *named.lock().unwrap() = b;
        assert_eq!(client.bid(2).await, Ok(true));
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
