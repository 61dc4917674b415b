//! The auction in multi-host mode on one machine, as the benchmarks start it: one local etcd
//! (the lab's [`Etcd`]) and three nodes, each on a loopback address of its own (127.0.0.31 to
//! 127.0.0.33), with `--etcd` and `--cluster`. etcd decides who leads; only the leader serves
//! clients, so a client is given every node's client address.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use auction::cluster::{LocalCluster, Spec, Transcript};
use auction_lab::etcd::{Etcd, EtcdSpec};

/// The nodes' ids, in the order they are started (the first founds the cluster).
pub const NODES: [u16; 3] = [5400, 5401, 5402];

/// etcd's own address when it must be cut off by a partition (it then plays a host of its own).
pub const ETCD_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 30);

/// Node `NODES[i]`'s own address: 127.0.0.31 + i.
fn node_host(i: usize) -> IpAddr {
    let last = 31 + u8::try_from(i).expect("three nodes");
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A running multi-host cluster. Dropping it kills the nodes and etcd.
pub struct MultiHost {
    /// The nodes. Declared before `etcd`, so they go first.
    pub nodes: LocalCluster,
    /// The etcd that decides who leads.
    pub etcd: Etcd,
}

impl MultiHost {
    /// Starts etcd, then the nodes of [`NODES`] (`node_bin` with `node_args`, each on its own
    /// address), and waits until the first leads and the others are members, within
    /// `patience`. With `own_etcd_host`, etcd serves on [`ETCD_HOST`] and plays that host, so a
    /// partition can cut it off: that needs the private network namespace
    /// ([`auction_lab::netns::enter_private`]). Without, it serves on 127.0.0.1, in any
    /// namespace.
    ///
    /// # Errors
    /// etcd (Debian's `etcd-server`) or a node could not be started, or the cluster did not form
    /// within `patience`.
    pub async fn start(
        node_bin: &Path,
        node_args: &[String],
        own_etcd_host: bool,
        patience: Duration,
    ) -> anyhow::Result<Self> {
        let transcript = Transcript::new(false);
        let etcd = if own_etcd_host {
            let mut spec = EtcdSpec::on(&[IpAddr::V4(ETCD_HOST)]);
            spec.client_port = auction::cluster::free_port()?;
            spec.peer_port = auction::cluster::free_port()?;
            Etcd::start(spec, &transcript).await
        } else {
            Etcd::local(&transcript).await
        }
        .context("starting etcd")?;
        let mut spec = Spec::on_free_ports(node_bin)?;
        spec.node_args = node_args.to_vec();
        spec.node_args.extend([
            "--etcd".into(),
            etcd.client_urls().join(","),
            "--cluster".into(),
            format!("bench-{}", std::process::id()),
            "--duration".into(),
            "36000".into(),
        ]);
        spec.hosts = NODES
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, node_host(i)))
            .collect::<BTreeMap<_, _>>();
        let mut nodes = LocalCluster::new(spec, transcript);
        nodes
            .start_nodes(&NODES, patience)
            .await
            .map_err(anyhow::Error::msg)
            .context("starting the multi-host nodes")?;
        Ok(Self { nodes, etcd })
    }

    /// Every node's client address: what a client of the cluster is given.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.spec.client_addrs()
    }
}
