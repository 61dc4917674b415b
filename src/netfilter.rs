//! Network partitions between loopback addresses, made with nftables: packets between the two
//! sides of a cut are dropped, in both directions, as a cut cable would lose them, and
//! [`Partitions::heal`] lets them through again. `auction-demo --etcd` cuts its nodes off with it
//! (in the host's network namespace, in a table of its own); the lab's tests do the same inside
//! a private network namespace (`auction_lab::partition`, which refuses the host's).
//!
//! Each [`Partitions`] owns an nftables table of its own (family `inet`, named by its creator),
//! and touches no other; the table goes with the value. Every change rewrites the whole table in
//! one `nft -f -` transaction, so the rules in force always match [`Partitions::dropped`], and
//! repeating a cut or a heal changes nothing. Writing a table needs root (`CAP_NET_ADMIN`).
//!
//! Addresses on the wire: a process that binds its sockets to its own address sends from it
//! (the nodes do, with `--host`); one that does not would send from 127.0.0.1, whatever address
//! it listens on, so a cut could not tell its packets apart from any other's.
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

/// The packet filters of one owner: the pairs of addresses between which packets are dropped.
///
/// Dropping the value removes its table (and with it every cut).
#[derive(Debug)]
pub struct Partitions {
    /// The nftables table's name (family `inet`), the owner's own.
    table: String,
    /// (source, destination) pairs whose packets are dropped; a cut adds both directions.
    drops: BTreeSet<(IpAddr, IpAddr)>,
}

impl Partitions {
    /// Creates the (empty) table `inet TABLE`, replacing one of that name: nothing is dropped
    /// yet. Name it for its owner, so it never meets another program's table
    /// (`auction_demo_<pid>`, `auction_lab_<pid>_<n>`).
    ///
    /// This writes packet filters in the calling thread's network namespace, whichever it is:
    /// the lab's wrapper refuses the host's.
    ///
    /// # Errors
    /// `table` is not a plain name (letters, digits, `_`), the `nft` program (Debian's
    /// `nftables`) is missing, or it refused the table (without root, for one).
    pub fn new(table: impl Into<String>) -> io::Result<Self> {
        let table = table.into();
        let plain = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if table.is_empty() || !table.chars().all(plain) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an nftables table name of letters, digits and _, not {table:?}"),
            ));
        }
        let partitions = Self {
            table,
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
                "auction::netfilter: could not remove table inet {}: {e}",
                self.table
            );
        }
    }
}

/// Runs `nft` with `args`, `stdin` piped in when given; returns its stdout.
///
/// # Errors
/// `nft` is missing (the message names Debian's package), could not run, or failed (the message
/// has its error output, and the script).
pub fn nft(args: &[&str], stdin: Option<&str>) -> io::Result<String> {
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
