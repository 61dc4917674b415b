//! A real etcd server process on this machine (Debian's `etcd-server`, 3.4 or newer): the one
//! `auction-demo --etcd` starts, and each member of the lab's test clusters
//! (`auction_lab::etcd`). This module builds a member's command line, starts it with a message
//! that names the package when the program is missing, tells whether it is healthy, and kills
//! it; the caller owns its data directory.
//!
//! It speaks to etcd over its HTTP/JSON gateway ([`http`]) with a few lines of HTTP/1.0 over a
//! socket: the nodes use their own client (`crate::etcd`).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::cluster::{Proc, Transcript};

/// Debian's package with the `etcd` program.
pub const PACKAGE: &str = "etcd-server";

/// How long one HTTP request to a member may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// One etcd member's command line.
#[derive(Clone, Copy, Debug)]
pub struct Member<'a> {
    /// The etcd program: a name looked up in `PATH`, or a path.
    pub program: &'a Path,
    /// The member's name (`--name`), as `initial_cluster` names it.
    pub name: &'a str,
    /// Its data directory, kept across restarts of the member.
    pub data_dir: &'a Path,
    /// Where it serves clients (`--listen-client-urls`, advertised as such).
    pub client: SocketAddr,
    /// Where it speaks to its peers.
    pub peer: SocketAddr,
    /// Every member as `NAME=http://PEER`, comma-separated (`--initial-cluster`).
    pub initial_cluster: &'a str,
    /// `--initial-cluster-token`: unique, so members of two clusters never join each other.
    pub token: &'a str,
    /// Skips fsync (`--unsafe-no-fsync`) where the program has that flag (3.5 and newer): much
    /// faster writes, lost on a machine crash, never on a process kill.
    pub no_fsync: bool,
    /// More etcd arguments, for example `--heartbeat-interval=50`, `--log-level=warn`.
    pub extra_args: &'a [String],
}

impl Member<'_> {
    /// The command that starts this member of a new cluster, logging to stderr.
    pub fn command(&self) -> Command {
        let client_url = format!("http://{}", self.client);
        let peer_url = format!("http://{}", self.peer);
        let mut cmd = Command::new(self.program);
        cmd.arg("--name")
            .arg(self.name)
            .arg("--data-dir")
            .arg(self.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", self.token])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if self.no_fsync && supports_no_fsync(self.program) {
            cmd.arg("--unsafe-no-fsync");
        }
        cmd.args(self.extra_args);
        cmd
    }

    /// Starts `cmd` (this member's [`Member::command`], perhaps adjusted) as [`Proc::spawn`]
    /// does, its output in `transcript` under the member's name. Call it from a thread that
    /// lives as long as the member (see [`Proc::spawn`]).
    ///
    /// # Errors
    /// The program is missing (the error, of kind `NotFound`, names Debian's package
    /// [`PACKAGE`]) or could not be started.
    pub fn spawn(&self, cmd: Command, transcript: &Transcript) -> io::Result<Proc> {
        Proc::spawn(cmd, self.name, transcript).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    e.kind(),
                    format!(
                        "the etcd program ({}) is missing: apt-get install {PACKAGE} \
                         (Debian's package)",
                        self.program.display()
                    ),
                )
            } else {
                io::Error::new(e.kind(), format!("could not start {}: {e}", self.name))
            }
        })
    }
}

/// Whether the member serving clients at `client` says it is healthy now (`GET /health`: it has
/// a leader and answers a read); `false` when it does not answer within [`REQUEST_TIMEOUT`].
pub async fn healthy(client: SocketAddr) -> bool {
    match http(client, "GET", "/health", None).await {
        Ok(body) => {
            serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| v["health"] == "true")
        }
        Err(_) => false,
    }
}

/// SIGKILLs `proc` (also when it is paused) and polls until it is reaped, at most `timeout`.
/// Blocks the calling thread between checks, so it may run from `Drop`.
///
/// # Errors
/// The signal could not be sent, or the process was not gone within `timeout`.
pub fn kill_and_reap(proc: &mut Proc, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    if !proc.exited() {
        proc.signal(Signal::KILL)?;
    }
    while !proc.exited() {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} (pid {}) outlived SIGKILL", proc.name(), proc.pid()),
            ));
        }
        // Not inside a runtime's task necessarily (this runs from `Drop` too): a short blocking
        // pause between two checks.
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Whether `program` knows `--unsafe-no-fsync` (etcd 3.5 and newer), from its `--help`.
fn supports_no_fsync(program: &Path) -> bool {
    std::process::Command::new(program)
        .arg("--help")
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout).contains("--unsafe-no-fsync")
                || String::from_utf8_lossy(&out.stderr).contains("--unsafe-no-fsync")
        })
}

/// One HTTP/1.0 request to etcd's gateway at `addr` (HTTP/1.0, so the reply is neither chunked
/// nor kept alive: it ends when the server closes), within [`REQUEST_TIMEOUT`]. Returns the
/// body of a 200 reply.
///
/// # Errors
/// No connection, no complete reply in time, a reply that is not HTTP, or a status other than
/// 200 (the message has the body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> io::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        Ok::<_, io::Error>(reply)
    };
    let reply = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{method} {path} on {addr}: no reply within {REQUEST_TIMEOUT:?}"),
            )
        })??;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("{method} {path} on {addr}: not HTTP")))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status == "200" {
        Ok(body.to_string())
    } else {
        Err(io::Error::other(format!(
            "{method} {path} on {addr}: {status}: {body}"
        )))
    }
}
