//! The auction's rules, without I/O: what the nodes decide, apart from how they talk.
//!
//! - [`types`]: validated newtypes (amounts, bidder names, auction times, ids);
//! - [`auction`]: the auction as a pure state machine, with exactly-once sessions; the
//!   linearizability checker uses it as its sequential model;
//! - [`replication`]: the replicated state (members, epochs, versions), the leader's
//!   bookkeeping of acknowledgements, and the auction clock's readings;
//! - [`engine`]: the leader's rules, events in and actions out;
//! - [`follower`]: a replica's rules for its leader's stream;
//! - [`role`]: a node's choice between founding, following and taking over.
//!
//! Nothing here reads a clock, a socket or a file: callers pass `now` in. Cargo keeps tokio
//! and tonic out (they are not dependencies), and `clippy.toml` forbids reading the clock.

pub mod auction;
pub mod engine;
pub mod follower;
pub mod replication;
pub mod role;
pub mod types;
