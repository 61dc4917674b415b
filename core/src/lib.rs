//! The auction's rules, without I/O: what the nodes decide, apart from how they talk.
//!
//! - [`types`]: validated newtypes (amounts, bidder names, auction times, ids);
//! - [`auction`]: the auction as a pure state machine, with exactly-once sessions; the
//!   linearizability checker uses it as its sequential model;
//! - [`replication`]: the replicated state (members, epochs, versions), the leader's
//!   bookkeeping of acknowledgements, and the auction clock's readings.
//!
//! Nothing here reads a clock, a socket or a file: callers pass `now` in. Cargo keeps tokio
//! and tonic out (they are not dependencies), and `clippy.toml` forbids reading the clock.

pub mod auction;
pub mod engine;
pub mod follower;
pub mod replication;
pub mod role;
pub mod types;
