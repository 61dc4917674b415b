//! A real etcd for a test: one member or several, each on a loopback address of its own (in the
//! test's private network namespace, [`crate::netns`], where every 127.0.0.x answers), each in
//! a fresh temporary data directory, its output in the test's [`Transcript`]. Members can be
//! killed, paused, resumed and restarted; all of them are killed when the [`Etcd`] is dropped,
//! also when the test panics (and by the kernel if the test process dies: see
//! [`Proc::spawn`]).
//!
//! Each member's command line, start, health check and kill are the product's
//! ([`auction::etcd_process`], which `auction-demo --etcd` uses too). The lab speaks to etcd over
//! its HTTP/JSON gateway (`/health`, `/v3/kv/*`, `/v3/maintenance/status`) with that module's
//! [`http`], so it needs no etcd client of its own; the nodes use theirs.
//!
//! Needs the `etcd` program (Debian's `etcd-server`; 3.4 or newer).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use auction::cluster::{Proc, Transcript};
use auction::etcd_process::{http, kill_and_reap};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustix::process::Signal;

/// How to start an etcd cluster.
#[derive(Clone, Debug)]
pub struct EtcdSpec {
    /// One address per member (usually one or three members), for example 127.0.0.21.
    pub members: Vec<IpAddr>,
    /// The port each member serves clients on, at its own address.
    pub client_port: u16,
    /// The port each member speaks to its peers on, at its own address.
    pub peer_port: u16,
    /// Skips fsync (`--unsafe-no-fsync`) where the etcd program has that flag (3.5 and newer),
    /// which makes writes much faster and loses them on a machine crash, never on a process
    /// kill. etcd 3.4 has no such flag; with it this asks nothing.
    pub no_fsync: bool,
    /// The etcd program: a name looked up in `PATH`, or a path.
    pub program: PathBuf,
    /// More etcd arguments, for example `--heartbeat-interval=50`, `--election-timeout=500`.
    pub extra_args: Vec<String>,
    /// How long a member may take to become healthy, at start and at restart.
    pub ready_timeout: Duration,
    /// Whether each member plays the host at its address ([`crate::netns::as_host`]), so that
    /// [`crate::partition::Partitions`] can cut it off: needs the private network namespace.
    /// Off, etcd runs anywhere, and its peers speak from 127.0.0.1.
    pub as_hosts: bool,
}

impl EtcdSpec {
    /// One member on each of `members`, on etcd's usual ports (2379 for clients, 2380 for
    /// peers: each member has an address of its own), each playing the host at its address,
    /// fsync on, ready within 30 s.
    pub fn on(members: &[IpAddr]) -> Self {
        Self {
            members: members.to_vec(),
            client_port: 2379,
            peer_port: 2380,
            no_fsync: false,
            program: PathBuf::from("etcd"),
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            as_hosts: true,
        }
    }
}

/// A running etcd cluster. Members are numbered from 0, in the order of [`EtcdSpec::members`].
#[derive(Debug)]
pub struct Etcd {
    spec: EtcdSpec,
    /// `--initial-cluster-token`: unique, so members of two clusters never join each other.
    token: String,
    transcript: Transcript,
    members: Vec<Member>,
}

/// One member: its data directory (kept across restarts) and its process while it runs.
#[derive(Debug)]
struct Member {
    name: String,
    proc: Option<Proc>,
    /// Declared after `proc`, so the directory outlives the process.
    dir: tempfile::TempDir,
}

/// Tells clusters of one process apart.
static NEXT_CLUSTER: AtomicU64 = AtomicU64::new(0);

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(50);

impl Etcd {
    /// One member on 127.0.0.1, on ports that were free, in the host's own network namespace
    /// (nothing can be cut off from it): for tests of etcd's decisions, not of partitions.
    ///
    /// # Errors
    /// As for [`Etcd::start`], or no port was free.
    pub async fn local(transcript: &Transcript) -> io::Result<Self> {
        let mut spec = EtcdSpec::on(&[IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)]);
        spec.client_port = auction::cluster::free_port()?;
        spec.peer_port = auction::cluster::free_port()?;
        spec.as_hosts = false;
        Self::start(spec, transcript).await
    }

    /// [`Etcd::local`] for a test: its output kept quiet, and a panic if it cannot start (the
    /// message says why, naming Debian's `etcd-server` when the program is missing).
    ///
    /// # Panics
    /// etcd did not start.
    pub async fn for_test() -> Self {
        match Self::local(&Transcript::new(false)).await {
            Ok(etcd) => etcd,
            Err(e) => panic!("etcd did not start: {e}"),
        }
    }

    /// Starts every member of `spec` and waits until each is healthy (it has a leader and
    /// answers a read), at most [`EtcdSpec::ready_timeout`]. Their output goes to `transcript`
    /// under `etcd-0`, `etcd-1`, …. Call it inside a tokio runtime, from a thread that lives as
    /// long as the cluster (see [`Proc::spawn`]).
    ///
    /// # Errors
    /// `spec` has no member, the etcd program is missing (the message names Debian's package
    /// `etcd-server`), a data directory could not be made, a member could not play its host
    /// ([`crate::netns::as_host`], with [`EtcdSpec::as_hosts`]), a member exited or was not
    /// healthy in time (the message has the end of its output).
    pub async fn start(spec: EtcdSpec, transcript: &Transcript) -> io::Result<Self> {
        if spec.members.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an etcd cluster needs at least one member",
            ));
        }
        let n = NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed);
        let mut members = Vec::new();
        for i in 0..spec.members.len() {
            members.push(Member {
                name: format!("etcd-{i}"),
                proc: None,
                dir: tempfile::Builder::new()
                    .prefix(&format!("auction-lab-etcd-{i}-"))
                    .tempdir()?,
            });
        }
        let mut etcd = Self {
            token: format!("auction-lab-{}-{n}", std::process::id()),
            spec,
            transcript: transcript.clone(),
            members,
        };
        for i in 0..etcd.len() {
            etcd.spawn(i)?;
        }
        // Members of a new cluster wait for each other: all are started before any is waited on.
        let deadline = Instant::now() + etcd.spec.ready_timeout;
        for i in 0..etcd.len() {
            etcd.wait_healthy_until(i, deadline).await?;
        }
        Ok(etcd)
    }

    /// How many members the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no member (never true of a started one).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Member `i`'s client address.
    ///
    /// # Panics
    /// `i` is not a member.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.spec.members[i], self.spec.client_port)
    }

    /// Member `i`'s client URL, `http://ADDR:PORT`.
    ///
    /// # Panics
    /// `i` is not a member.
    pub fn client_url(&self, i: usize) -> String {
        format!("http://{}", self.client_addr(i))
    }

    /// Every member's client URL: the endpoints to give an etcd client.
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.client_url(i)).collect()
    }

    /// Every member's address (to cut them off with [`crate::partition::Partitions`]).
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.spec.members.clone()
    }

    /// The transcript the members write to.
    pub fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    /// Whether member `i`'s process runs (or is paused); it is reaped if it exited.
    ///
    /// # Panics
    /// `i` is not a member.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i].proc.as_mut().is_some_and(|p| !p.exited())
    }

    /// Kills member `i` with SIGKILL and reaps it, as a crash would end it; its data directory
    /// stays for [`Etcd::restart`]. Killing a member that does not run does nothing.
    ///
    /// # Errors
    /// The signal could not be sent, or the process was not gone within 10 s.
    ///
    /// # Panics
    /// `i` is not a member.
    pub fn kill(&mut self, i: usize) -> io::Result<()> {
        let Some(mut proc) = self.members[i].proc.take() else {
            return Ok(());
        };
        kill_and_reap(&mut proc, Duration::from_secs(10))
    }

    /// Pauses member `i` (SIGSTOP), as a long garbage collection or a frozen VM would: its
    /// sockets stay open, it answers nothing.
    ///
    /// # Errors
    /// Member `i` does not run, or the signal could not be sent.
    ///
    /// # Panics
    /// `i` is not a member.
    pub fn stop(&self, i: usize) -> io::Result<()> {
        self.signal(i, Signal::STOP)
    }

    /// Resumes member `i` after [`Etcd::stop`] (SIGCONT).
    ///
    /// # Errors
    /// Member `i` does not run, or the signal could not be sent.
    ///
    /// # Panics
    /// `i` is not a member.
    pub fn cont(&self, i: usize) -> io::Result<()> {
        self.signal(i, Signal::CONT)
    }

    /// Restarts member `i` on its data directory (killing it first if it runs) and waits until
    /// it is healthy, at most [`EtcdSpec::ready_timeout`]. It rejoins the cluster it was in.
    ///
    /// # Errors
    /// As [`Etcd::kill`] and [`Etcd::start`].
    ///
    /// # Panics
    /// `i` is not a member.
    pub async fn restart(&mut self, i: usize) -> io::Result<()> {
        self.kill(i)?;
        self.spawn(i)?;
        let deadline = Instant::now() + self.spec.ready_timeout;
        self.wait_healthy_until(i, deadline).await
    }

    /// Whether member `i` says it is healthy now (`GET /health`: it has a leader and answers a
    /// read); `false` when it does not answer within 2 s.
    ///
    /// # Panics
    /// `i` is not a member.
    pub async fn healthy(&self, i: usize) -> bool {
        auction::etcd_process::healthy(self.client_addr(i)).await
    }

    /// Polls member `i` until it is healthy, at most `timeout`.
    ///
    /// # Errors
    /// Member `i` does not run, exited, or was not healthy in time; the message has the end of
    /// its output.
    ///
    /// # Panics
    /// `i` is not a member.
    pub async fn wait_healthy(&mut self, i: usize, timeout: Duration) -> io::Result<()> {
        self.wait_healthy_until(i, Instant::now() + timeout).await
    }

    /// Which member leads etcd's own Raft now, as the running members say
    /// (`/v3/maintenance/status`), polled until one says it leads, at most `timeout`.
    ///
    /// # Errors
    /// No member said it leads within `timeout`.
    pub async fn leader(&self, timeout: Duration) -> io::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            for i in 0..self.len() {
                if self.members[i].proc.is_none() {
                    continue;
                }
                let Ok(body) = http(
                    self.client_addr(i),
                    "POST",
                    "/v3/maintenance/status",
                    Some("{}"),
                )
                .await
                else {
                    continue;
                };
                let Ok(status) = serde_json::from_str::<serde_json::Value>(&body) else {
                    continue;
                };
                let me = &status["header"]["member_id"];
                if me.is_string() && *me == status["leader"] {
                    return Ok(i);
                }
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no etcd member said it leads within {timeout:?}"),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Writes `key` = `value` through member `i` (`/v3/kv/put`), once, within 2 s.
    ///
    /// # Errors
    /// The member did not answer, or refused (for example it has no quorum).
    ///
    /// # Panics
    /// `i` is not a member.
    pub async fn put(&self, i: usize, key: &[u8], value: &[u8]) -> io::Result<()> {
        let body = serde_json::json!({ "key": BASE64.encode(key), "value": BASE64.encode(value) });
        http(
            self.client_addr(i),
            "POST",
            "/v3/kv/put",
            Some(&body.to_string()),
        )
        .await
        .map(drop)
    }

    /// Reads `key` through member `i` (`/v3/kv/range`, linearizable: it needs a quorum), once,
    /// within 2 s. `None` when the key is not there.
    ///
    /// # Errors
    /// The member did not answer, refused, or answered something that is not etcd's JSON.
    ///
    /// # Panics
    /// `i` is not a member.
    pub async fn get(&self, i: usize, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let body = serde_json::json!({ "key": BASE64.encode(key) });
        let reply = http(
            self.client_addr(i),
            "POST",
            "/v3/kv/range",
            Some(&body.to_string()),
        )
        .await?;
        let reply: serde_json::Value = serde_json::from_str(&reply)
            .map_err(|e| io::Error::other(format!("etcd's range reply: {e}: {reply}")))?;
        let Some(value) = reply["kvs"].get(0) else {
            return Ok(None);
        };
        // etcd leaves out empty fields: an empty value has no "value".
        let value = value["value"].as_str().unwrap_or("");
        BASE64
            .decode(value)
            .map(Some)
            .map_err(|e| io::Error::other(format!("etcd's value is not base64: {e}")))
    }

    /// Starts member `i`'s process on its data directory.
    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let spec = &self.spec;
        let peer = |a: IpAddr| SocketAddr::new(a, spec.peer_port);
        let initial_cluster: Vec<String> = spec
            .members
            .iter()
            .enumerate()
            .map(|(j, &a)| format!("{}=http://{}", self.members[j].name, peer(a)))
            .collect();
        let initial_cluster = initial_cluster.join(",");
        let member = auction::etcd_process::Member {
            program: &spec.program,
            name: &self.members[i].name,
            data_dir: self.members[i].dir.path(),
            client: self.client_addr(i),
            peer: peer(spec.members[i]),
            initial_cluster: &initial_cluster,
            token: &self.token,
            no_fsync: spec.no_fsync,
            extra_args: &spec.extra_args,
        };
        let mut cmd = member.command();
        // Its peer connections bind no source address: without this they would leave from
        // 127.0.0.1, and a partition could not cut them.
        if let IpAddr::V4(addr) = spec.members[i]
            && spec.as_hosts
        {
            crate::netns::as_host(cmd.as_std_mut(), addr)?;
        }
        let proc = member.spawn(cmd, &self.transcript)?;
        self.members[i].proc = Some(proc);
        Ok(())
    }

    /// Polls member `i` until it is healthy; fails at once if it exits.
    async fn wait_healthy_until(&mut self, i: usize, deadline: Instant) -> io::Result<()> {
        loop {
            if !self.is_running(i) {
                return Err(self.member_error(i, "is not running"));
            }
            if self.healthy(i).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.member_error(i, "was not healthy in time"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// An error about member `i`, with the end of its output.
    fn member_error(&self, i: usize, what: &str) -> io::Error {
        let name = &self.members[i].name;
        let prefix = format!("[{name}] ");
        let lines: Vec<String> = self
            .transcript
            .lines()
            .into_iter()
            .filter(|l| l.starts_with(&prefix))
            .collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        io::Error::other(format!(
            "{name} at {} {what}; the end of its output:\n{tail}",
            self.client_url(i)
        ))
    }

    /// Sends `signal` to member `i`.
    fn signal(&self, i: usize, signal: Signal) -> io::Result<()> {
        match &self.members[i].proc {
            Some(proc) => proc.signal(signal),
            None => Err(io::Error::other(format!(
                "{} does not run",
                self.members[i].name
            ))),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut proc) = member.proc.take()
                && let Err(e) = kill_and_reap(&mut proc, Duration::from_secs(10))
            {
                eprintln!("auction_lab::etcd: {}: {e}", member.name);
            }
        }
    }
}
