//! The network of a multi-host fault run ([`Mode::MultiHost`](super::Mode)): each node on a
//! loopback address of its own, a three-member etcd that decides who leads, and nftables cuts
//! between those addresses. The nemesis cuts the leader off from its members, a replica off from
//! everything, a member off from etcd only, or every node off from etcd, and heals; it kills
//! etcd's own leader, and restarts etcd member by member.
//!
//! Needs the private network namespace of [`crate::netns::enter_private`] (root), `nft`
//! (Debian's nftables) and `etcd` (etcd-server).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use auction::cluster::{Spec, Transcript};
use tokio::time::Instant;

use super::NODES;
use crate::etcd::{Etcd, EtcdSpec};
use crate::partition::Partitions;

/// The address of the node at `index` in [`NODES`]: 127.0.0.11, .12, .13.
fn node_ip(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + index as u8))
}

/// The address of etcd's member `index`: 127.0.0.21, .22, .23.
fn etcd_ip(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 21 + index as u8))
}

/// etcd's members.
const ETCD_MEMBERS: usize = 3;

/// The etcd of a run, the cuts in force, and where each node is.
pub(super) struct Network {
    etcd: Etcd,
    cuts: Partitions,
    hosts: BTreeMap<u16, IpAddr>,
    /// The etcd cluster's key prefix for this run's nodes.
    name: String,
}

impl Network {
    /// Starts a three-member etcd (its output in `transcript`) and an empty table of cuts.
    ///
    /// # Errors
    /// Not in a private network namespace, `nft` or `etcd` is missing, or etcd did not start.
    pub(super) async fn start(seed: u64, transcript: &Transcript) -> Result<Self, String> {
        let cuts = Partitions::new().map_err(|e| format!("nftables: {e}"))?;
        let mut spec = EtcdSpec::on(&(0..ETCD_MEMBERS).map(etcd_ip).collect::<Vec<_>>());
        spec.no_fsync = true;
        // Quick elections, so etcd's own failovers are short beside a run's 20 s.
        spec.extra_args = vec![
            "--heartbeat-interval=50".into(),
            "--election-timeout=500".into(),
        ];
        let etcd = Etcd::start(spec, transcript)
            .await
            .map_err(|e| format!("etcd: {e}"))?;
        Ok(Self {
            etcd,
            cuts,
            hosts: NODES
                .iter()
                .enumerate()
                .map(|(i, &id)| (id, node_ip(i)))
                .collect(),
            name: format!("soak-{seed}"),
        })
    }

    /// Makes `spec` start multi-host nodes: each on its own address, with this etcd.
    pub(super) fn configure(&self, spec: &mut Spec) {
        spec.hosts = self.hosts.clone();
        spec.node_args.extend([
            "--etcd".into(),
            self.etcd.client_urls().join(","),
            "--cluster".into(),
            self.name.clone(),
        ]);
    }

    fn ip(&self, id: u16) -> IpAddr {
        self.hosts[&id]
    }

    fn others(&self, id: u16) -> Vec<IpAddr> {
        self.hosts
            .iter()
            .filter(|(other, _)| **other != id)
            .map(|(_, ip)| *ip)
            .collect()
    }

    /// Cuts `a` from `b` for `hold`, then heals; returns when the cut was in force (`nft`
    /// takes a while to start).
    async fn cut_for(
        &mut self,
        a: &[IpAddr],
        b: &[IpAddr],
        hold: Duration,
    ) -> Result<Instant, String> {
        self.cuts.cut(a, b).map_err(|e| format!("cutting: {e}"))?;
        let cut = Instant::now();
        tokio::time::sleep(hold).await;
        self.cuts.heal().map_err(|e| format!("healing: {e}"))?;
        Ok(cut)
    }

    /// Cuts node `id` off from the other nodes (not from etcd) for `hold`; returns when the cut
    /// was in force.
    pub(super) async fn isolate_from_nodes(
        &mut self,
        id: u16,
        hold: Duration,
    ) -> Result<Instant, String> {
        let (me, others) = ([self.ip(id)], self.others(id));
        self.cut_for(&me, &others, hold).await
    }

    /// Cuts node `id` off from the other nodes and from etcd for `hold`.
    pub(super) async fn isolate(&mut self, id: u16, hold: Duration) -> Result<Instant, String> {
        let mut rest = self.others(id);
        rest.extend(self.etcd.addrs());
        let me = [self.ip(id)];
        self.cut_for(&me, &rest, hold).await
    }

    /// Cuts `ids` off from etcd (not from each other) for `hold`.
    pub(super) async fn cut_from_etcd(
        &mut self,
        ids: &[u16],
        hold: Duration,
    ) -> Result<Instant, String> {
        let nodes: Vec<IpAddr> = ids.iter().map(|&id| self.ip(id)).collect();
        let etcd = self.etcd.addrs();
        self.cut_for(&nodes, &etcd, hold).await
    }

    /// Kills etcd's own leader (SIGKILL); [`Network::recover`] restarts it. Returns which
    /// member it was.
    pub(super) async fn kill_etcd_leader(&mut self) -> Result<usize, String> {
        let i = self
            .etcd
            .leader(Duration::from_secs(2))
            .await
            .map_err(|e| e.to_string())?;
        self.etcd.kill(i).map_err(|e| e.to_string())?;
        Ok(i)
    }

    /// Restarts every etcd member, one after the other, each once the one before is healthy.
    pub(super) async fn restart_etcd(&mut self) -> Result<(), String> {
        for i in 0..self.etcd.len() {
            self.etcd
                .restart(i)
                .await
                .map_err(|e| format!("restarting etcd-{i}: {e}"))?;
        }
        Ok(())
    }

    /// Restarts the etcd members that do not run.
    pub(super) async fn recover(&mut self) -> Result<(), String> {
        for i in 0..self.etcd.len() {
            if !self.etcd.is_running(i) {
                self.etcd
                    .restart(i)
                    .await
                    .map_err(|e| format!("restarting etcd-{i}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Removes every cut and restarts the etcd members that do not run.
    pub(super) async fn heal(&mut self) -> Result<(), String> {
        self.cuts.heal().map_err(|e| format!("healing: {e}"))?;
        self.recover().await
    }
}
