//! Node processes on this host: who we are, fencing another node with SIGKILL through a pidfd,
//! finding which process holds a listening port, and the member marks that tell whether any
//! member of a cluster is alive.
//!
//! Fencing never signals a process unless it is exactly the node it is meant to be: the pidfd is
//! opened first, then the process behind the pid is checked to have the member's recorded start
//! time, so a pid reused by another program is never hit. A process is taken for gone only when
//! that is certain; when it cannot be checked, fencing fails and the member stays.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

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
pub(crate) fn raise_open_file_limit() {
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
pub(crate) fn fence_port_holder(addr: SocketAddr) -> io::Result<Option<u32>> {
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
pub(crate) fn holds_connection(
    pid: u32,
    local: SocketAddr,
    remote: SocketAddr,
) -> io::Result<bool> {
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
    Ok(socket_holders(&[format!("socket:[{inode}]")])?
        .first()
        .copied())
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

/// The abstract socket names of the members of the cluster whose replica port is
/// `leader_addr` start with this.
fn mark_prefix(leader_addr: SocketAddr) -> String {
    format!("auction-node/{leader_addr}/member/")
}

/// The mark of a live member of one cluster, held until the process dies: a datagram socket
/// bound to a name in Linux's abstract socket namespace, `auction-node/<replica port
/// address>/member/<pid>`.
///
/// It tells a starting node whether any member of the cluster is alive ([`live_members`]), so
/// that no node founds a new, empty cluster beside members that hold committed changes. It lives
/// where the ports live: the abstract namespace belongs to the network namespace, like the
/// ports, and holds no file, so no cleaner of /tmp can remove it, a private /tmp cannot hide it,
/// and the kernel drops it when the process dies, even by SIGKILL (docs/design.md, "State never
/// goes backwards").
#[derive(Debug)]
pub struct MemberMark {
    /// Bound, never read: its name is the mark.
    _socket: UnixDatagram,
}

impl MemberMark {
    /// Binds this process's mark as a member of the cluster on `leader_addr`.
    ///
    /// # Errors
    /// The socket cannot be created or bound (the name is this process's own, so it is taken
    /// only if this process took it before).
    pub fn take(leader_addr: SocketAddr) -> io::Result<Self> {
        let name = format!("{}{}", mark_prefix(leader_addr), std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        Ok(Self {
            _socket: UnixDatagram::bind_addr(&addr)?,
        })
    }
}

/// The pids of the processes other than this one that hold a [`MemberMark`] of the cluster on
/// `leader_addr` and are `auction-node`s of this user: the cluster's live members (stopped ones
/// included). A mark held by anything else is not a member's, so no other user can keep a
/// cluster from being founded by binding such a name.
///
/// # Errors
/// `/proc/net/unix` or `/proc` cannot be read: whether a member lives is unknown.
pub(crate) fn live_members(leader_addr: SocketAddr) -> io::Result<Vec<u32>> {
    let prefix = format!("@{}", mark_prefix(leader_addr));
    // Fields: Num RefCount Protocol Flags Type St Inode Path.
    let marks: Vec<String> = std::fs::read_to_string("/proc/net/unix")?
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 8 && f[7].starts_with(&prefix)).then(|| format!("socket:[{}]", f[6]))
        })
        .collect();
    if marks.is_empty() {
        return Ok(Vec::new());
    }
    let me = std::process::id();
    Ok(socket_holders(&marks)?
        .into_iter()
        .filter(|&pid| pid != me && is_node_of_this_user(pid))
        .collect())
}

/// The pids of the processes with a descriptor open on any of `sockets` (as fd links name them:
/// `socket:[INODE]`). Processes whose descriptors cannot be read (another user's, when not
/// root) are not listed.
///
/// # Errors
/// `/proc` cannot be read.
fn socket_holders(sockets: &[String]) -> io::Result<Vec<u32>> {
    Ok(std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
            fds.flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|l| sockets.iter().any(|s| l.as_os_str() == s.as_str()))
                })
                .then_some(pid)
        })
        .collect())
}

/// The process that listens on an address, as an error message names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`), or "?" when it cannot be read.
    pub program: String,
    /// Whether it is an `auction-node` of this user.
    pub is_node: bool,
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.program)
    }
}

/// Who listens on `addr`, if a process whose descriptors this user may read does.
///
/// # Errors
/// `/proc/net/tcp*` cannot be read.
pub fn listener(addr: SocketAddr) -> io::Result<Option<Listener>> {
    let Some(pid) = listener_pid(addr)? else {
        return Ok(None);
    };
    let program = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_or_else(|_| "?".to_string(), |c| c.trim_end().to_string());
    Ok(Some(Listener {
        pid,
        program,
        is_node: is_node_of_this_user(pid),
    }))
}

/// A handle on the process that listens on `addr`, when it runs `program` (its
/// `/proc/PID/comm`): for a tool that kills a server it did not start, such as a benchmark
/// taking down another system's leader. The name is checked with the pidfd open, so the handle
/// names the checked process even if its pid is reused later. `Ok(None)` when no process this
/// user can see listens there.
///
/// # Errors
/// The listener could not be found or opened, or it runs another program: it must not be
/// signalled.
pub fn open_listener(addr: SocketAddr, program: &str) -> io::Result<Option<ProcessHandle>> {
    let Some(pid) = listener_pid(addr)? else {
        return Ok(None);
    };
    let raw = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::other(format!("{pid} is not a pid")))?;
    let pidfd = match pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim_end() != program {
        return Err(io::Error::other(format!(
            "{addr} is held by pid {pid} ({}), not by {program}",
            comm.trim_end()
        )));
    }
    Ok(Some(ProcessHandle { pidfd }))
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

    /// Starts `sleep 30` under the name of a node, so fencing may signal it, after `configure`
    /// has had its say on the command. The copy of `sleep` lives in a directory of its own,
    /// removed once the process runs (a running program needs no file), so tests leave nothing
    /// behind.
    fn spawn_fake_node(configure: impl FnOnce(&mut std::process::Command)) -> std::process::Child {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COPIES: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "auction-fake-node-{}-{}",
            std::process::id(),
            COPIES.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join(NODE_PROCESS_NAME);
        let sleep = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("sleep is installed");
        std::fs::copy(sleep, &bin).unwrap();
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg("30");
        configure(&mut cmd);
        let child = cmd.spawn().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        child
    }

    /// Starts `sleep 30` under the name of a node.
    fn fake_node() -> std::process::Child {
        spawn_fake_node(|_| {})
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

    /// An address that no other test uses, so marks of parallel tests never meet.
    fn private_cluster() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn a_member_mark_is_seen_while_its_node_lives_and_gone_when_it_dies() {
        let cluster = private_cluster();
        assert_eq!(live_members(cluster).unwrap(), Vec::<u32>::new());
        // This test process is no auction-node, and its own mark never counts anyway.
        let mine = MemberMark::take(cluster).unwrap();
        assert_eq!(live_members(cluster).unwrap(), Vec::<u32>::new());
        drop(mine);
        // A node process (a copy of sleep named auction-node) that inherited a mark is a member.
        let mark = MemberMark::take(cluster).unwrap();
        let mut child = fake_node_holding(&mark);
        drop(mark);
        assert_eq!(live_members(cluster).unwrap(), vec![child.id()]);
        // Another cluster's members are not this one's.
        assert_eq!(live_members(private_cluster()).unwrap(), Vec::<u32>::new());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(live_members(cluster).unwrap(), Vec::<u32>::new());
    }

    /// Starts a fake node that inherits `mark`'s socket, as a member holds its own.
    fn fake_node_holding(mark: &MemberMark) -> std::process::Child {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let fd = mark._socket.as_raw_fd();
        spawn_fake_node(|cmd| {
            // SAFETY: only async-signal-safe calls between fork and exec: clearing the
            // close-on-exec flag of a descriptor this process owns.
            unsafe {
                cmd.pre_exec(move || {
                    let borrowed = std::os::fd::BorrowedFd::borrow_raw(fd);
                    rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::empty())
                        .map_err(io::Error::from)
                });
            }
        })
    }

    #[test]
    fn a_port_holder_is_named_with_its_program() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let holder = listener(addr).unwrap().unwrap();
        assert_eq!(holder.pid, std::process::id());
        assert!(!holder.is_node);
        assert!(
            holder
                .to_string()
                .starts_with(&format!("pid {} (", holder.pid))
        );
        drop(l);
        assert_eq!(listener(addr).unwrap(), None);
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

    #[test]
    fn a_listener_is_opened_only_under_its_own_program() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let e = open_listener(addr, "no-such-program").unwrap_err();
        assert!(e.to_string().contains("not by no-such-program"), "{e}");
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        // This test process listens: a handle it must not use, since it would kill the test.
        assert!(open_listener(addr, comm.trim_end()).unwrap().is_some());
        drop(l);
        assert!(open_listener(addr, comm.trim_end()).unwrap().is_none());
    }
}
