//! A replicated auction: passive replication over gRPC, on one host, that survives the crash or
//! the pause of any node.
//!
//! The modules, each using only those listed before it:
//! - [`types`]: validated newtypes (amounts, bidder names, times, ids);
//! - [`auction`]: the auction as a pure state machine, with exactly-once sessions;
//! - [`replication`]: the replicated state (members, epochs, versions) and the leader's pure
//!   bookkeeping of acknowledgements;
//! - [`pb`]: the generated gRPC code and validated conversions;
//! - [`tls`]: the optional TLS certificate of both ports;
//! - [`auth`]: the cluster secret and the handshake proofs, the operator and bidder tokens;
//! - [`limits`]: connections, streams, message sizes and request rates a client may take;
//! - [`process`]: node processes: identity, fencing by pidfd, port holders, the member marks;
//! - [`spin`]: the leader's busy-polling after light activity (`--spin-us 0` turns it off);
//! - [`leader`], [`server`], [`replica`]: the leader task, its gRPC services, and a replica's
//!   stream;
//! - [`node`]: role switching and port ownership; [`console`]: the node's terminal;
//! - [`client`] and [`input`]: the retrying client session and what a person types;
//! - [`cluster`]: starting and breaking real node processes, for the demo and the tests;
//! - [`history`] and [`checker`]: recorded client operations and the linearizability checker
//!   whose sequential model is [`auction`] itself; [`nemesis`]: fault runs against a real
//!   cluster that record a history and check it;
//! - [`bench`](mod@bench): closed- and open-loop load for `auction-bench`.

pub mod auction;
pub mod auth;
pub mod bench;
pub mod checker;
pub mod client;
pub mod cluster;
pub mod console;
pub mod history;
pub mod input;
pub mod leader;
pub mod limits;
pub mod nemesis;
pub mod node;
pub mod pb;
pub mod process;
pub mod replica;
pub mod replication;
pub mod server;
pub mod spin;
pub mod tls;
pub mod types;
