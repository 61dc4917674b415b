//! Node processes on this host: who we are, fencing another node with SIGKILL through a pidfd,
//! finding which process holds a listening port, and the cluster lock that tells whether any node
//! of a cluster is alive.
//!
//! Fencing never signals a process unless it is exactly the node it is meant to be: the pidfd is
//! opened first, then the process behind the pid is checked to be an `auction-node` of this user
//! with the recorded start time, so a pid reused by another program is never hit.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use rustix::fs::{FlockOperation, fcntl_lock};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

use crate::replication::Member;
use crate::types::NodeId;

/// The process name every node runs under; fencing refuses any other.
pub const NODE_PROCESS_NAME: &str = "auction-node";

/// The start time of process `pid`, in clock ticks since boot (field 22 of `/proc/PID/stat`).
///
/// # Errors
/// The process does not exist, or its stat line cannot be read.
pub fn start_time(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: the fields after it start
    // after the last ')'.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::other("malformed /proc stat line"))?;
    after
        .split_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other("malformed /proc stat line"))
}

/// This process as a node with id `id`.
///
/// # Errors
/// `/proc/self/stat` cannot be read.
pub fn this_node(id: NodeId) -> io::Result<Member> {
    let pid = std::process::id();
    Ok(Member {
        id,
        pid,
        start_time: start_time(pid)?,
    })
}

/// Whether `pid` is, right now, the node process `m` describes: same start time, an
/// `auction-node`, owned by this user.
fn is_exactly(m: &Member) -> bool {
    let pid = m.pid;
    let same_start = start_time(pid).is_ok_and(|t| t == m.start_time);
    let same_name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.trim_end() == NODE_PROCESS_NAME);
    let same_user = std::fs::metadata(format!("/proc/{pid}"))
        .is_ok_and(|md| md.uid() == rustix::process::geteuid().as_raw());
    same_start && same_name && same_user
}

/// A handle on one node process that stays valid even if the process dies and its pid is reused.
#[derive(Debug)]
pub struct ProcessHandle {
    pidfd: OwnedFd,
    member: Member,
}

impl ProcessHandle {
    /// Opens a handle on `m`. `Ok(None)` when that process no longer exists, or the pid now
    /// belongs to something else.
    ///
    /// # Errors
    /// `pidfd_open` fails for another reason than a missing process.
    pub fn open(m: &Member) -> io::Result<Option<Self>> {
        let Some(pid) = i32::try_from(m.pid).ok().and_then(Pid::from_raw) else {
            return Ok(None);
        };
        let pidfd = match pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // Checked after the pidfd is open: if the pid was reused before the open, the check sees
        // the new process and fails; after the open, the pidfd keeps naming the checked one.
        Ok(is_exactly(m).then_some(Self { pidfd, member: *m }))
    }

    pub fn member(&self) -> &Member {
        &self.member
    }

    /// SIGKILLs the process. A process that already exited is not an error.
    ///
    /// # Errors
    /// The signal could not be sent (for example, no permission).
    pub fn kill(&self) -> io::Result<()> {
        match pidfd_send_signal(&self.pidfd, Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// What fencing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// The process was alive and has been sent SIGKILL.
    Killed,
    /// The process was already gone.
    AlreadyGone,
}

/// Fences node `m`: SIGKILL if it is still the same process, nothing if it is gone.
///
/// # Errors
/// The process exists but could not be signalled.
pub fn fence(m: &Member) -> io::Result<Fenced> {
    match ProcessHandle::open(m)? {
        Some(h) => h.kill().map(|()| Fenced::Killed),
        None => Ok(Fenced::AlreadyGone),
    }
}

/// The pid of the process that listens on `addr`, if any process of this user does.
///
/// # Errors
/// `/proc/net/tcp*` cannot be read.
pub fn listener_pid(addr: SocketAddr) -> io::Result<Option<u32>> {
    let table = if addr.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let local = proc_net_address(addr);
    let text = std::fs::read_to_string(table)?;
    let inode = text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Fields: sl local rem st tx:rx tr:when retrnsmt uid timeout inode; "0A" is LISTEN.
        (f.len() > 9 && f[1].eq_ignore_ascii_case(&local) && f[3] == "0A").then(|| f[9].to_owned())
    });
    let Some(inode) = inode else {
        return Ok(None);
    };
    let wanted = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()) {
                return Ok(Some(pid));
            }
        }
    }
    Ok(None)
}

/// `addr` as `/proc/net/tcp*` writes it: the address's 32-bit words in host order, in hex.
fn proc_net_address(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => format!("{:08X}", u32::from_ne_bytes(v4.octets())),
        std::net::IpAddr::V6(v6) => v6
            .octets()
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect(),
    };
    format!("{ip}:{:04X}", addr.port())
}

/// Tells whether any node of a cluster is alive. Every member holds a shared lock on the
/// cluster's lock file for as long as it lives (the kernel drops it when the process dies, even
/// by SIGKILL). A node founds a new cluster only if it can take the lock exclusively: no member
/// is alive, so no committed state can be lost. POSIX record locks convert between shared and
/// exclusive atomically, which `flock` does not promise.
#[derive(Debug)]
pub struct ClusterLock {
    file: File,
    path: PathBuf,
}

impl ClusterLock {
    /// Opens the lock file of the cluster whose replica port is `leader_addr`, in the temporary
    /// directory. Takes no lock.
    ///
    /// # Errors
    /// The file cannot be created or opened.
    pub fn open(leader_addr: SocketAddr) -> io::Result<Self> {
        let name = format!(
            "auction-node-{}-{}.lock",
            leader_addr.ip().to_string().replace(':', "_"),
            leader_addr.port()
        );
        let path = std::env::temp_dir().join(name);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(&path)?;
        Ok(Self { file, path })
    }

    /// Takes the lock exclusively if no other process holds it. Returns `false` if one does.
    ///
    /// # Errors
    /// The lock call fails for another reason than contention.
    pub fn try_exclusive(&self) -> io::Result<bool> {
        self.try_lock(FlockOperation::NonBlockingLockExclusive)
    }

    /// Takes (or converts to) a shared lock. Returns `false` if a founder holds it exclusively.
    ///
    /// # Errors
    /// The lock call fails for another reason than contention.
    pub fn try_shared(&self) -> io::Result<bool> {
        self.try_lock(FlockOperation::NonBlockingLockShared)
    }

    /// Drops whatever lock this process holds.
    ///
    /// # Errors
    /// The unlock call fails.
    pub fn release(&self) -> io::Result<()> {
        fcntl_lock(&self.file, FlockOperation::NonBlockingUnlock).map_err(Into::into)
    }

    fn try_lock(&self, op: FlockOperation) -> io::Result<bool> {
        match fcntl_lock(&self.file, op) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::ACCESS) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_start_time() {
        let me = this_node(NodeId(1)).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(start_time(me.pid).unwrap(), me.start_time);
    }

    #[test]
    fn fencing_refuses_a_process_that_is_not_the_member() {
        // This test binary is not an auction-node, so it must never be signalled.
        let me = this_node(NodeId(1)).unwrap();
        assert!(ProcessHandle::open(&me).unwrap().is_none());
        assert_eq!(fence(&me).unwrap(), Fenced::AlreadyGone);
        let gone = Member {
            pid: u32::MAX - 1,
            ..me
        };
        assert_eq!(fence(&gone).unwrap(), Fenced::AlreadyGone);
    }

    #[test]
    fn the_listener_of_a_port_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert_eq!(listener_pid(addr).unwrap(), Some(std::process::id()));
        drop(l);
        assert_eq!(listener_pid(addr).unwrap(), None);
    }

    #[test]
    fn proc_net_addresses_are_little_endian_words() {
        let a: SocketAddr = "127.0.0.1:5400".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(proc_net_address(a), "0100007F:1518");
        }
    }
}
