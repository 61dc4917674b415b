//! A replicated auction: passive replication over gRPC, on one host, that survives the crash or
//! the pause of any node.
//!
//! The rules live in the pure core, `auction-core` (re-exported here as [`types`], [`auction`]
//! and [`replication`]); this crate gives them processes, sockets and clocks. Its modules, each
//! using only those listed before it:
//! - [`host`]: the OS's randomness and the wall clock (display only); [`backoff`]: the pause
//!   between attempts;
//! - [`view`] and [`pb`]: what a reader sees (an auction, the cluster's status), as the leader
//!   makes it; the generated gRPC code and validated conversions, to and from those views too;
//!   [`digest`]: one number for a whole replicated state; [`display`]: views in words;
//! - [`tls`]: the optional TLS certificate of both ports: what a node serves, what a client
//!   trusts;
//! - [`auth`]: the secrets and where they live: the cluster secret, the operator and bidder
//!   tokens; [`handshake`]: how a replica and its leader prove that they hold the cluster secret;
//! - [`limits`]: connections, streams, message sizes and request rates a client may take;
//! - [`process`]: node processes: identity, fencing by pidfd, port holders, the member marks;
//! - [`etcd`]: the multi-host mode's authority: etcd's API, the cluster's records, the
//!   transactions that change them;
//! - [`authority`]: who leads, who is a member, and fencing, behind one trait; its single-host
//!   implementation;
//! - [`spin`]: the leader's busy-polling after light activity (`--spin-us 0` turns it off);
//! - [`leader`], [`server`], [`replica`]: the leader task, its gRPC services, and a replica's
//!   stream;
//! - [`node`]: role switching and port ownership; [`console`]: the node's terminal;
//! - [`client`] and [`input`]: the retrying client session and what a person types;
//! - [`cluster`]: starting and breaking real node processes, for the demo and the tests;
//!   [`etcd_process`]: starting a real etcd server, for `auction-demo --etcd` and the lab;
//!   [`netfilter`]: partitions between loopback addresses with nftables, for the same.
//!
//! The fault lab (`lab/`) and the benchmarks (`bench/`) are crates of their own that use this
//! one.

pub use auction_core::{auction, replication, types};

pub mod auth;
pub mod authority;
pub mod backoff;
pub mod client;
pub mod cluster;
pub mod console;
pub mod digest;
pub mod display;
pub mod etcd;
pub mod etcd_process;
pub mod handshake;
pub mod host;
pub mod input;
pub mod leader;
pub mod limits;
pub mod netfilter;
pub mod node;
pub mod pb;
pub mod process;
pub mod replica;
pub mod server;
pub mod spin;
pub mod tls;
pub mod view;
