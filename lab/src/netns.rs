//! A private network namespace for a test binary, so tests can give each node a loopback address
//! of its own (127.0.0.11, 127.0.0.12, …) and cut traffic between them with packet filters
//! ([`crate::partition`]) without touching the host's own network: its loopback, addresses,
//! links and firewall stay as they were.
//!
//! A network namespace belongs to a thread, and a child process starts in the namespace of the
//! thread that spawned it. So a test binary enters its namespace first thing in `main`, before
//! any thread exists (a `harness = false` test, see `lab/tests/netlab.rs`): every thread it
//! starts afterwards, and every process those threads start (nodes, etcd, `nft`), lives in it.
//! Inside, `lo` answers on the whole of 127.0.0.0/8. The namespace ends with the last process
//! in it; nothing is left behind on the host.
//!
//! One namespace plays several hosts, one per loopback address. A process that binds its
//! sockets to its host's address sends from it; one that does not would send from 127.0.0.1
//! (the source the kernel picks for any 127.0.0.0/8 destination), so a partition could not tell
//! its packets from any other's. [`as_host`] fixes that for a child process: it runs with a
//! group id that names its host, and a source address translation rule rewrites 127.0.0.1 to the
//! host's address on its connections. The test's own threads keep 127.0.0.1: an observer that no
//! partition cuts unless it names 127.0.0.1.

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use rustix::thread::UnshareFlags;

/// Moves the calling process into a network namespace of its own and brings its loopback
/// interface up, so every address of 127.0.0.0/8 can be bound and reached.
///
/// Call it first thing in `main`, before any thread is spawned: only the calling thread moves,
/// so a thread started earlier would stay in the host's namespace. This is checked: the call
/// fails when the process has more than one thread.
///
/// # Errors
/// The process is not root (creating a network namespace needs `CAP_SYS_ADMIN`), has more than
/// one thread, the kernel refused the namespace, the `ip` program (Debian's `iproute2`) is
/// missing or failed, or loopback does not answer afterwards. Each error says which and what to
/// do.
pub fn enter_private() -> io::Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a private network namespace needs root (CAP_SYS_ADMIN): run the tests as root",
        ));
    }
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "enter_private must run before any thread is spawned (this process has {threads}): \
             call it first thing in main"
        )));
    }
    // SAFETY: `unshare_unsafe` is unsafe only for `UnshareFlags::FILES` (a file descriptor
    // table of one's own); a network namespace changes no file descriptor.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }.map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("unshare(CLONE_NEWNET) failed: {e} (a container may forbid namespaces)"),
        )
    })?;
    let _ = ENTERED.set(namespace("/proc/thread-self/ns/net")?);
    run_ip(&["link", "set", "lo", "up"])?;
    check_loopback()
}

/// Whether the calling thread is in a private network namespace: the one
/// [`enter_private`] made, or else one that differs from PID 1's (when `/proc/1` may be read;
/// a container may hide it). [`crate::partition`] refuses to write packet filters otherwise,
/// so a mistake can never change the host's firewall.
///
/// # Errors
/// `/proc` could not be read.
pub fn is_private() -> io::Result<bool> {
    let ours = namespace("/proc/thread-self/ns/net")?;
    if ENTERED.get() == Some(&ours) {
        return Ok(true);
    }
    match namespace("/proc/1/ns/net") {
        Ok(init) => Ok(ours != init),
        // Not allowed to look: only the namespace made here counts as private.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(false),
        Err(e) => Err(e),
    }
}

/// The namespace [`enter_private`] made, as [`namespace`] names it.
static ENTERED: OnceLock<(u64, u64)> = OnceLock::new();

/// A namespace's identity: the device and inode of its `/proc/…/ns/` file.
fn namespace(path: &str) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// Makes `cmd` start a process that plays the host at `addr` (a loopback address other than
/// 127.0.0.1): its outgoing connections that do not bind a source address leave from `addr`
/// rather than from 127.0.0.1, as they would from a machine of its own, so [`crate::partition`]
/// cuts them with `addr`. It runs with the group id [`host_gid`]`(addr)` (its user, root, and
/// so its privileges are unchanged), which a source address translation rule of this namespace
/// (table `ip auction_lab_hosts`, kept as long as the namespace) matches. For a tokio command:
/// `as_host(cmd.as_std_mut(), addr)`.
///
/// # Errors
/// `addr` is not a loopback address or is 127.0.0.1, the calling thread is not in a private
/// namespace (see [`is_private`]), or `nft` (Debian's `nftables`) is missing or failed.
pub fn as_host(cmd: &mut Command, addr: Ipv4Addr) -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    if !addr.is_loopback() || addr == Ipv4Addr::LOCALHOST {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a host's address must be in 127.0.0.0/8 and not 127.0.0.1, not {addr}"),
        ));
    }
    if !is_private()? {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "refusing to add address translation in the host's network namespace: \
             call auction_lab::netns::enter_private() first thing in main",
        ));
    }
    // Invariant: no code panics while holding this lock, so it is never poisoned.
    let mut hosts = HOSTS.lock().expect("hosts lock");
    if !hosts.contains(&addr) {
        let gid = host_gid(addr);
        auction::netfilter::nft(
            &["-f", "-"],
            Some(&format!(
                "table ip auction_lab_hosts {{\n  chain leave {{\n    \
                 type nat hook postrouting priority srcnat; policy accept;\n  }}\n}}\n\
                 add rule ip auction_lab_hosts leave ip saddr 127.0.0.1 ip daddr 127.0.0.0/8 \
                 meta skgid {gid} snat to {addr}\n"
            )),
        )?;
        hosts.insert(addr);
    }
    cmd.gid(host_gid(addr));
    Ok(())
}

/// The group id that a process playing the host at `addr` runs with ([`as_host`]): the address
/// as a number (127.0.0.11 is 2130706443), so it needs no allocation and names its host.
pub fn host_gid(addr: Ipv4Addr) -> u32 {
    u32::from(addr)
}

/// The hosts [`as_host`] has a translation rule for.
static HOSTS: Mutex<BTreeSet<Ipv4Addr>> = Mutex::new(BTreeSet::new());

/// How many threads this process has, from `/proc/self/status`.
fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no thread count in /proc/self/status"))
}

/// Runs `ip` with `args`, in the calling thread's namespace.
fn run_ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(
                e.kind(),
                "the `ip` program is missing: apt-get install iproute2 (Debian's package)",
            )
        } else {
            io::Error::new(e.kind(), format!("could not run `ip`: {e}"))
        }
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Checks that loopback answers beyond 127.0.0.1: a listener on 127.0.0.2 accepts a connection.
fn check_loopback() -> io::Result<()> {
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::time::Duration;
    let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), 0))?;
    let to = listener.local_addr()?;
    TcpStream::connect_timeout(&to, Duration::from_secs(2))
        .map_err(|e| io::Error::new(e.kind(), format!("loopback does not answer on {to}: {e}")))?;
    listener.accept()?;
    Ok(())
}

/// The `main` of a `harness = false` test binary whose tests need a network of their own: enters
/// a private network namespace before any thread exists ([`enter_private`]), then runs `tests`
/// as libtest does (filters, listing, threads, report). Listing needs no namespace (nor root).
/// `binary` names the binary in the error when the namespace cannot be entered.
pub fn run_tests(
    binary: &str,
    args: &libtest_mimic::Arguments,
    tests: Vec<libtest_mimic::Trial>,
) -> std::process::ExitCode {
    if !args.list
        && let Err(e) = enter_private()
    {
        eprintln!("{binary}: cannot enter a private network namespace: {e}");
        return std::process::ExitCode::FAILURE;
    }
    libtest_mimic::run(args, tests).exit_code()
}

/// A test of [`run_tests`]: `test` runs on a Tokio runtime of its own; an error or a panic fails
/// it.
pub fn trial<F, Fut>(name: &str, test: F) -> libtest_mimic::Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    libtest_mimic::Trial::test(name, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| libtest_mimic::Failed::from(format!("tokio runtime: {e}")))?;
        runtime
            .block_on(test())
            .map_err(|e| libtest_mimic::Failed::from(format!("{e:#}")))
    })
}
