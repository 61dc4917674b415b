//! Node processes on this host: who we are, fencing another node with SIGKILL through a pidfd,
//! finding which process holds a listening port, and the cluster lock that tells whether any node
//! of a cluster is alive.
//!
//! Fencing never signals a process unless it is exactly the node it is meant to be: the pidfd is
//! opened first, then the process behind the pid is checked to have the member's recorded start
//! time, so a pid reused by another program is never hit. A process is taken for gone only when
//! that is certain; when it cannot be checked, fencing fails and the member stays.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, fcntl_lock};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

use crate::replication::Member;
use crate::types::NodeId;

/// The process name every node runs under; fencing refuses any other.
pub const NODE_PROCESS_NAME: &str = "auction-node";

/// What `/proc/PID/stat` says about a process.
struct Stat {
    /// One letter: `R` running, `S` sleeping, `T` stopped, `Z` zombie, ...
    state: char,
    /// Clock ticks since boot (field 22).
    start_time: u64,
}

fn stat(pid: u32) -> io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: the fields after it start
    // after the last ')'.
    let malformed = || io::Error::other("malformed /proc stat line");
    let after = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(malformed)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let state = fields
        .first()
        .and_then(|f| f.chars().next())
        .ok_or_else(malformed)?;
    let start_time = fields
        .get(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(malformed)?;
    Ok(Stat { state, start_time })
}

/// The start time of process `pid`, in clock ticks since boot (field 22 of `/proc/PID/stat`).
///
/// # Errors
/// The process does not exist, or its stat line cannot be read.
pub fn start_time(pid: u32) -> io::Result<u64> {
    stat(pid).map(|s| s.start_time)
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

/// Raises this process's soft limit on open files to the hard limit: a leader holds a socket per
/// client and must still be able to open a pidfd to fence a member.
pub fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// Whether the process behind `pid` is, right now, the node `m` describes.
///
/// `Ok(false)` only when that process is certainly gone: no such pid, another process under it
/// (another start time), or a zombie. Anything else we cannot read is an error, because treating
/// it as gone would let a live member be dropped without being fenced.
fn is_alive_member(m: &Member) -> io::Result<bool> {
    match stat(m.pid) {
        Ok(s) => Ok(s.start_time == m.start_time && !matches!(s.state, 'Z' | 'X')),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `pid` runs an `auction-node` of this user.
fn is_node_of_this_user(pid: u32) -> bool {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.trim_end() == NODE_PROCESS_NAME);
    let user = std::fs::metadata(format!("/proc/{pid}"))
        .is_ok_and(|md| md.uid() == rustix::process::geteuid().as_raw());
    name && user
}

/// A handle on one node process that stays valid even if the process dies and its pid is reused.
#[derive(Debug)]
pub struct ProcessHandle {
    pidfd: OwnedFd,
}

impl ProcessHandle {
    /// Opens a handle on `m`. `Ok(None)` when that process is certainly gone.
    ///
    /// # Errors
    /// The process may still be alive but cannot be checked or opened (for example, out of
    /// file descriptors), or it is not an `auction-node` of this user: it must never be
    /// signalled.
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
        if !is_alive_member(m)? {
            return Ok(None);
        }
        if !is_node_of_this_user(m.pid) {
            return Err(io::Error::other(format!(
                "pid {} is not an {NODE_PROCESS_NAME} of this user",
                m.pid
            )));
        }
        Ok(Some(Self { pidfd }))
    }

    /// SIGKILLs the process. A process that already exited is not an error: it is
    /// [`Fenced::AlreadyGone`].
    ///
    /// # Errors
    /// The signal could not be sent (for example, no permission).
    pub fn kill(&self) -> io::Result<Fenced> {
        match pidfd_send_signal(&self.pidfd, Signal::KILL) {
            Ok(()) => Ok(Fenced::Killed),
            Err(rustix::io::Errno::SRCH) => Ok(Fenced::AlreadyGone),
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
/// The process may be alive but could not be checked or signalled: it is not fenced.
pub fn fence(m: &Member) -> io::Result<Fenced> {
    match ProcessHandle::open(m)? {
        Some(h) => h.kill(),
        None => Ok(Fenced::AlreadyGone),
    }
}

/// Fences whatever `auction-node` of this user listens on `addr`, when it does not answer. Used
/// by a member when the port holder is not a member it knows: while a member is alive no node can
/// found a cluster, so the holder is a member that joined after this one's state, never a
/// stranger's node. Returns the pid it killed.
///
/// # Errors
/// The holder could not be found, checked or signalled.
pub fn fence_port_holder(addr: SocketAddr) -> io::Result<Option<u32>> {
    let Some(pid) = listener_pid(addr)? else {
        return Ok(None);
    };
    let holder = Member {
        id: NodeId(0),
        pid,
        start_time: start_time(pid)?,
    };
    // The handle checks, with the pidfd open, that the holder is a node of this user.
    let handle = ProcessHandle::open(&holder)
        .map_err(|e| io::Error::other(format!("{addr} is held by pid {pid}: {e}")))?;
    match handle {
        Some(h) => h
            .kill()
            .map(|fenced| (fenced == Fenced::Killed).then_some(pid)),
        None => Ok(None),
    }
}

/// Whether process `pid` holds the established TCP connection whose ends are `local` (its own
/// end) and `remote`. A leader checks this when a replica joins, so a replica cannot name
/// another process as itself and get that process fenced later.
///
/// # Errors
/// `/proc/net/tcp*` cannot be read.
pub fn holds_connection(pid: u32, local: SocketAddr, remote: SocketAddr) -> io::Result<bool> {
    let remote = proc_net_address(remote);
    // "01" is ESTABLISHED.
    let Some(inode) = socket_inode(local, |f| {
        f[2].eq_ignore_ascii_case(&remote) && f[3] == "01"
    })?
    else {
        return Ok(false);
    };
    let pid_dir = PathBuf::from(format!("/proc/{pid}"));
    Ok(holds_socket(&pid_dir, &format!("socket:[{inode}]")))
}

/// Whether the process of `/proc/PID` directory `pid_dir` has a descriptor open on `socket`
/// (as its fd links name it: `socket:[INODE]`). False if its descriptors cannot be read (it is
/// gone, or another user's).
fn holds_socket(pid_dir: &Path, socket: &str) -> bool {
    let Ok(fds) = std::fs::read_dir(pid_dir.join("fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == socket))
}

/// The inode of the TCP socket bound to `local` whose `/proc/net/tcp*` fields also pass `more`
/// (fields: sl local rem st tx:rx tr:when retrnsmt uid timeout inode).
fn socket_inode(local: SocketAddr, more: impl Fn(&[&str]) -> bool) -> io::Result<Option<String>> {
    let table = if local.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let local = proc_net_address(local);
    let text = std::fs::read_to_string(table)?;
    Ok(text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1].eq_ignore_ascii_case(&local) && more(&f)).then(|| f[9].to_owned())
    }))
}

/// The pid of the process that listens on `addr`, if any process of this user does.
///
/// # Errors
/// `/proc/net/tcp*` cannot be read.
pub fn listener_pid(addr: SocketAddr) -> io::Result<Option<u32>> {
    // "0A" is LISTEN.
    let Some(inode) = socket_inode(addr, |f| f[3] == "0A")? else {
        return Ok(None);
    };
    let socket = format!("socket:[{inode}]");
    Ok(std::fs::read_dir("/proc")?.flatten().find_map(|entry| {
        let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
        holds_socket(&entry.path(), &socket).then_some(pid)
    }))
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

/// `O_NOFOLLOW`, so a symbolic link planted in the shared directory is refused, not followed.
fn o_nofollow() -> i32 {
    // Invariant: the flag's bits fit an i32 on every Linux target.
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).expect("O_NOFOLLOW fits an i32")
}

/// Where the cluster lock files live: a fixed directory, not `$TMPDIR`, so that nodes started
/// from different environments still share one lock.
pub const LOCK_DIR: &str = "/tmp";

/// Tells whether any member of a cluster is alive. Every member holds a shared lock on the
/// cluster's lock file from the moment it is a member until it dies (the kernel drops the lock
/// when the process dies, even by SIGKILL). A node founds a new cluster only if it can take the
/// lock exclusively: no member is alive, so no committed state can be lost. Joining nodes hold
/// nothing, so a joiner that stalls blocks nobody. POSIX record locks convert between shared and
/// exclusive atomically, which `flock` does not promise.
#[derive(Debug)]
pub struct ClusterLock {
    file: File,
}

impl ClusterLock {
    /// Opens the lock file of the cluster whose replica port is `leader_addr`, in [`LOCK_DIR`].
    /// Takes no lock.
    ///
    /// The file must be this user's own: one planted by another user (who could then hold the
    /// lock, or delete it while members hold it) is refused, and a link is never followed. A
    /// file of this user's that others may open is made private.
    ///
    /// # Errors
    /// The file cannot be created or opened, or it belongs to another user.
    pub fn open(leader_addr: SocketAddr) -> io::Result<Self> {
        let name = format!(
            "auction-node-{}-{}.lock",
            leader_addr.ip().to_string().replace(':', "_"),
            leader_addr.port()
        );
        let path = PathBuf::from(LOCK_DIR).join(name);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .mode(0o600)
            .custom_flags(o_nofollow())
            .open(&path)?;
        let meta = file.metadata()?;
        if meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(io::Error::other(format!(
                "{} belongs to uid {}, not to this user; remove it",
                path.display(),
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(0o600))?;
        }
        Ok(Self { file })
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

    fn try_lock(&self, op: FlockOperation) -> io::Result<bool> {
        match fcntl_lock(&self.file, op) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::ACCESS) => Ok(false),
            Err(e) => Err(e.into()),
        }
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

    /// Starts `sleep 30` under the name of a node, so fencing may signal it.
    fn fake_node() -> std::process::Child {
        let dir = std::env::temp_dir().join(format!("auction-fake-node-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join(NODE_PROCESS_NAME);
        if !bin.exists() {
            let sleep = ["/bin/sleep", "/usr/bin/sleep"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .expect("sleep is installed");
            // Copied to a unique name first, so a concurrent test never runs a half-written file.
            let tmp = dir.join(format!("sleep-{:?}", std::thread::current().id()));
            std::fs::copy(sleep, &tmp).unwrap();
            let _ = std::fs::rename(&tmp, &bin);
        }
        std::process::Command::new(&bin).arg("30").spawn().unwrap()
    }

    #[test]
    fn only_nodes_of_this_user_are_fenced() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let not_a_node = Member {
            id: NodeId(1),
            pid,
            start_time: start_time(pid).unwrap(),
        };
        let e = fence(&not_a_node).unwrap_err();
        assert!(e.to_string().contains("not an auction-node"), "{e}");
        assert!(child.try_wait().unwrap().is_none(), "untouched");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_connection_is_held_by_the_process_at_its_end() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_server, _) = l.accept().unwrap();
        let (local, remote) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        assert!(holds_connection(std::process::id(), local, remote).unwrap());
        // The accepted end is this process's too, with the ends the other way round.
        assert!(holds_connection(std::process::id(), remote, local).unwrap());
        assert!(!holds_connection(1, local, remote).unwrap());
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(!holds_connection(std::process::id(), local, other).unwrap());
    }

    #[test]
    fn fencing_kills_exactly_the_member_and_nothing_else() {
        let mut child = fake_node();
        let pid = child.id();
        let member = Member {
            id: NodeId(1),
            pid,
            start_time: start_time(pid).unwrap(),
        };
        // The same pid with another start time is another process: never signalled.
        let impostor = Member {
            start_time: member.start_time + 1,
            ..member
        };
        assert_eq!(fence(&impostor).unwrap(), Fenced::AlreadyGone);
        assert!(
            child.try_wait().unwrap().is_none(),
            "the process is untouched"
        );
        assert_eq!(fence(&member).unwrap(), Fenced::Killed);
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        // Once reaped it is gone; a zombie counted as gone already.
        assert_eq!(fence(&member).unwrap(), Fenced::AlreadyGone);
        let nobody = Member {
            pid: u32::MAX - 1,
            ..member
        };
        assert_eq!(fence(&nobody).unwrap(), Fenced::AlreadyGone);
    }

    #[test]
    fn a_zombie_counts_as_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: wait until it is a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while stat(pid).unwrap().state != 'Z' {
            assert!(std::time::Instant::now() < deadline);
            std::thread::yield_now();
        }
        let m = Member {
            id: NodeId(1),
            pid,
            start_time: start_time(pid).unwrap(),
        };
        assert!(!is_alive_member(&m).unwrap());
        child.wait().unwrap();
    }

    #[test]
    fn only_an_auction_node_holding_a_port_is_fenced_as_its_holder() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // This test binary holds the port and is not an auction-node: refused, not killed.
        let e = fence_port_holder(l.local_addr().unwrap()).unwrap_err();
        assert!(e.to_string().contains("not an auction-node"), "{e}");
    }

    #[test]
    fn a_lock_file_must_be_this_users_own_and_private() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let path = PathBuf::from(LOCK_DIR).join(format!("auction-node-127.0.0.1-{port}.lock"));
        let _ = std::fs::remove_file(&path);
        use std::os::unix::fs::PermissionsExt;
        drop(ClusterLock::open(addr).unwrap());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        drop(ClusterLock::open(addr).unwrap());
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "made private");
        // A link planted in its place is not followed.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/null", &path).unwrap();
        assert!(ClusterLock::open(addr).is_err());
        std::fs::remove_file(&path).unwrap();
        // Another user's file is refused (only root can make one here).
        if rustix::process::geteuid().is_root() {
            drop(ClusterLock::open(addr).unwrap());
            let nobody = rustix::process::Uid::from_raw(65534);
            rustix::fs::chown(&path, Some(nobody), None).unwrap();
            let Err(e) = ClusterLock::open(addr) else {
                panic!("another user's lock file was used");
            };
            assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
        }
        let _ = std::fs::remove_file(&path);
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
