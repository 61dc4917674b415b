//! Network partitions between loopback addresses inside the test's private network namespace
//! ([`crate::netns`]): the product's [`auction::netfilter::Partitions`] (how a cut drops, in
//! its module's documentation), which this wrapper refuses to create in the host's namespace,
//! with a table named for the test process (`inet auction_lab_<pid>_<n>`), so tests running side
//! by side in one namespace never touch each other's rules.
//!
//! Addresses on the wire: a process that does not bind its sockets to its own address (etcd's
//! peers, most clients) would send from 127.0.0.1 unless it was started through
//! [`crate::netns::as_host`], which makes its connections leave from its host's address. Only
//! then can a cut tell its packets apart.
//!
//! Every method of the product's type ([`cut`](auction::netfilter::Partitions::cut),
//! [`cut_one_way`](auction::netfilter::Partitions::cut_one_way),
//! [`heal`](auction::netfilter::Partitions::heal), `dropped`, `table`, `dropped_packets`)
//! applies to this one.

use std::io;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};

/// The packet filters of one test: the pairs of addresses between which packets are dropped.
///
/// Dropping the value removes its table (and with it every cut).
#[derive(Debug)]
pub struct Partitions(auction::netfilter::Partitions);

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
        auction::netfilter::Partitions::new(format!("auction_lab_{}_{n}", std::process::id()))
            .map(Self)
    }

    // The three that change the cuts are forwarded rather than reached through `DerefMut`, so a
    // call may borrow the owner of this value for its arguments (`lab.cuts.cut(&[lab.ip(1)], ..)`).

    /// [`auction::netfilter::Partitions::cut`].
    ///
    /// # Errors
    /// As for it.
    pub fn cut<A: Into<IpAddr> + Copy>(&mut self, a: &[A], b: &[A]) -> io::Result<()> {
        self.0.cut(a, b)
    }

    /// [`auction::netfilter::Partitions::cut_one_way`].
    ///
    /// # Errors
    /// As for it.
    pub fn cut_one_way<A: Into<IpAddr> + Copy>(&mut self, from: &[A], to: &[A]) -> io::Result<()> {
        self.0.cut_one_way(from, to)
    }

    /// [`auction::netfilter::Partitions::heal`].
    ///
    /// # Errors
    /// As for it.
    pub fn heal(&mut self) -> io::Result<()> {
        self.0.heal()
    }
}

impl Deref for Partitions {
    type Target = auction::netfilter::Partitions;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
