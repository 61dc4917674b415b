//! Network partitions between loopback addresses, made with nftables inside the test's private
//! network namespace ([`crate::netns`]): packets between the two sides of a cut are dropped, in
//! both directions, as a cut cable would lose them, and [`Partitions::heal`] lets them through
//! again.
//!
//! Each [`Partitions`] owns an nftables table of its own (`inet auction_lab_<pid>_<n>`), so tests
//! running side by side in one namespace never touch each other's rules; the table goes with the
//! value. Every change rewrites the whole table in one `nft -f -` transaction, so the rules in
//! force always match [`Partitions::dropped`], and repeating a cut or a heal changes nothing.
//!
//! Addresses on the wire: a process that binds its sockets to its own address sends from it; one
//! that does not (etcd's peers, most clients) would send from 127.0.0.1, whatever address it
//! listens on, unless it was started through [`crate::netns::as_host`], which makes its
//! connections leave from its host's address. Only then can a cut tell its packets apart.
//!
//! How a cut drops: one chain on the `prerouting` hook, which every packet on `lo` passes as it
//! arrives. Its rules name a packet's hosts by the connection it belongs to, as connection
//! tracking records it after address translation (`ct reply ip saddr` is the server's address,
//! `ct reply ip daddr` the client's, translated or not), and by its direction (`ct direction`):
//! the addresses in the packet itself would not do, because the reply to a translated
//! connection already carries 127.0.0.1 again when it arrives (on `lo` the reverse translation
//! happens as the reply leaves). A rule that drops A→B, with its twin that drops B→A, stops the
//! handshake of a new connection (its SYN never arrives; `connect` waits until its timeout) and
//! silences an established flow (data and acknowledgements never arrive; the sender retransmits
//! until the cut heals, and then the flow resumes). Dropping on arrival rather than on departure
//! keeps the senders unaware: a drop on the output hook would fail some sends locally with
//! `EPERM`, which no real network does. The rules `drop`, never `reject`, like a cut cable. The
//! chain's priority, -150, comes after connection tracking (-200), so even a packet that was not
//! tracked as it left has its connection when the rules look.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// The packet filters of one test: the pairs of addresses between which packets are dropped.
///
/// Dropping the value removes its table (and with it every cut).
#[derive(Debug)]
pub struct Partitions {
    /// The nftables table's name, unique in the namespace.
    table: String,
    /// (source, destination) pairs whose packets are dropped; a cut adds both directions.
    drops: BTreeSet<(IpAddr, IpAddr)>,
}

/// Tells tables of one process apart.
static NEXT_TABLE: AtomicU64 = AtomicU64::new(0);

impl Partitions {
    /// Creates this test's (empty) table: nothing is dropped yet.
    ///
    /// # Errors
    /// The calling thread is in the network namespace of PID 1 (the host's: the lab never
    /// writes packet filters there; call [`crate::netns::enter_private`] first in `main`), the
    /// `nft` program (Debian's `nftables`) is missing, or it refused the table.
    pub fn new() -> io::Result<Self> {
        if !crate::netns::is_private()? {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "refusing to write packet filters in the host's network namespace: \
                 call auction_lab::netns::enter_private() first thing in main",
            ));
        }
        let n = NEXT_TABLE.fetch_add(1, Ordering::Relaxed);
        let partitions = Self {
            table: format!("auction_lab_{}_{n}", std::process::id()),
            drops: BTreeSet::new(),
        };
        partitions.apply()?;
        Ok(partitions)
    }

    /// Cuts every address of `a` from every address of `b`, in both directions: isolating
    /// 127.0.0.11 from {127.0.0.12, 127.0.0.13} is `cut(&[a11], &[a12, a13])`; cutting a node
    /// from etcd only is `cut(&[node], &etcd_members)`. Cuts add up; repeating one changes
    /// nothing. Traffic within `a`, within `b`, and to any other address still flows.
    ///
    /// # Errors
    /// `nft` failed; the cuts in force are then those before the call.
    pub fn cut<A: Into<IpAddr> + Copy>(&mut self, a: &[A], b: &[A]) -> io::Result<()> {
        let mut drops = self.drops.clone();
        for &x in a {
            for &y in b {
                let (x, y) = (x.into(), y.into());
                drops.insert((x, y));
                drops.insert((y, x));
            }
        }
        self.replace(drops)
    }

    /// Drops packets from every address of `from` to every address of `to`, in that direction
    /// only (an asymmetric fault: `to` still reaches `from`, but gets no answer over TCP).
    ///
    /// # Errors
    /// `nft` failed; the cuts in force are then those before the call.
    pub fn cut_one_way<A: Into<IpAddr> + Copy>(&mut self, from: &[A], to: &[A]) -> io::Result<()> {
        let mut drops = self.drops.clone();
        for &x in from {
            for &y in to {
                drops.insert((x.into(), y.into()));
            }
        }
        self.replace(drops)
    }

    /// Removes every cut: all packets flow again. Healing a healed network changes nothing.
    ///
    /// # Errors
    /// `nft` failed; the cuts in force are then those before the call.
    pub fn heal(&mut self) -> io::Result<()> {
        self.replace(BTreeSet::new())
    }

    /// The (source, destination) pairs whose packets are dropped now.
    pub fn dropped(&self) -> impl Iterator<Item = (IpAddr, IpAddr)> + '_ {
        self.drops.iter().copied()
    }

    /// The nftables table's name (family `inet`), to look at it: `nft list table inet NAME`.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// How many packets the rules in force have dropped since they were last written (each
    /// change resets the count).
    ///
    /// # Errors
    /// `nft` failed, or its output could not be read.
    pub fn dropped_packets(&self) -> io::Result<u64> {
        let out = nft(&["-j", "list", "table", "inet", &self.table], None)?;
        let json: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| io::Error::other(format!("nft's JSON: {e}")))?;
        // {"nftables": [.., {"rule": {"expr": [.., {"counter": {"packets": N, ..}}, ..]}}]}
        let packets = json["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["rule"]["expr"].as_array())
            .flatten()
            .filter_map(|expr| expr["counter"]["packets"].as_u64())
            .sum();
        Ok(packets)
    }

    /// Writes `drops` in force, then records them.
    fn replace(&mut self, drops: BTreeSet<(IpAddr, IpAddr)>) -> io::Result<()> {
        let old = std::mem::replace(&mut self.drops, drops);
        if old == self.drops {
            return Ok(());
        }
        self.apply().inspect_err(|_| self.drops = old)
    }

    /// Rewrites the table from `self.drops`, in one transaction.
    fn apply(&self) -> io::Result<()> {
        nft(&["-f", "-"], Some(&self.script())).map(drop)
    }

    /// The nft script that makes the table hold exactly `self.drops`. Declaring the table
    /// before deleting it makes the delete succeed when the table does not exist yet; the whole
    /// script is one transaction, so no packet sees the table half written.
    fn script(&self) -> String {
        let t = &self.table;
        let mut s = format!(
            "table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n  chain arrive {{\n    \
             type filter hook prerouting priority -150; policy accept;\n"
        );
        let mut by_source: Vec<(IpAddr, Vec<IpAddr>)> = Vec::new();
        for &(from, to) in &self.drops {
            match by_source.last_mut() {
                Some((f, tos)) if *f == from => tos.push(to),
                _ => by_source.push((from, vec![to])),
            }
        }
        for (from, tos) in by_source {
            for family in ["ip", "ip6"] {
                let tos: Vec<String> = tos
                    .iter()
                    .filter(|to| to.is_ipv4() == (family == "ip"))
                    .map(ToString::to_string)
                    .collect();
                // An IPv4 address and an IPv6 one never exchange packets: nothing to drop.
                if tos.is_empty() || from.is_ipv4() != (family == "ip") {
                    continue;
                }
                let tos = tos.join(", ");
                // A packet goes from the client to the server in the original direction, and
                // back in the reply direction.
                let _ = writeln!(
                    s,
                    "    ct direction original ct reply {family} daddr {from} \
                     ct reply {family} saddr {{ {tos} }} counter drop\n    \
                     ct direction reply ct reply {family} saddr {from} \
                     ct reply {family} daddr {{ {tos} }} counter drop",
                );
            }
        }
        s.push_str("  }\n}\n");
        s
    }
}

impl Drop for Partitions {
    fn drop(&mut self) {
        if let Err(e) = nft(&["delete", "table", "inet", &self.table], None) {
            eprintln!(
                "auction_lab::partition: could not remove table {}: {e}",
                self.table
            );
        }
    }
}

/// Runs `nft` with `args`, `stdin` piped in when given; returns its stdout.
pub(crate) fn nft(args: &[&str], stdin: Option<&str>) -> io::Result<String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    e.kind(),
                    "the `nft` program is missing: apt-get install nftables (Debian's package)",
                )
            } else {
                io::Error::new(e.kind(), format!("could not run `nft`: {e}"))
            }
        })?;
    if let (Some(script), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "`nft {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdin.map(|s| format!("\nscript:\n{s}")).unwrap_or_default()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_drops_both_directions_of_a_cut_and_nothing_else() {
        let a: IpAddr = "127.0.0.11".parse().unwrap();
        let b: IpAddr = "127.0.0.12".parse().unwrap();
        let c: IpAddr = "127.0.0.13".parse().unwrap();
        let p = Partitions {
            table: "t".into(),
            drops: [(a, b), (b, a), (a, c), (c, a)].into(),
        };
        let script = p.script();
        for line in [
            "ct direction original ct reply ip daddr 127.0.0.11 \
             ct reply ip saddr { 127.0.0.12, 127.0.0.13 } counter drop",
            "ct direction reply ct reply ip saddr 127.0.0.11 \
             ct reply ip daddr { 127.0.0.12, 127.0.0.13 } counter drop",
            "ct direction original ct reply ip daddr 127.0.0.12 \
             ct reply ip saddr { 127.0.0.11 } counter drop",
            "ct direction reply ct reply ip saddr 127.0.0.13 \
             ct reply ip daddr { 127.0.0.11 } counter drop",
        ] {
            assert!(script.contains(line), "no {line} in {script}");
        }
        assert_eq!(script.matches(" drop").count(), 6, "{script}");
        assert!(script.starts_with("table inet t\ndelete table inet t\n"));
    }
}
