//! The fault lab: real node processes broken on purpose, with every client operation recorded
//! and checked for linearizability. Not part of the product; it depends on it.
//!
//! - [`history`]: recorded client operations;
//! - [`checker`]: the linearizability checker, whose sequential model is the product's own
//!   state machine ([`auction::auction`]);
//! - [`nemesis`]: fault runs against a real cluster (crashes, pauses, wall-clock steps, /tmp
//!   deleted) that record a history and check it; `auction-soak` runs many;
//! - [`fake_clock`]: the wall clock the fault runs step;
//! - [`harness`]: the end-to-end test harness of the product's, the lab's and the bench's tests;
//! - [`netns`], [`partition`], [`etcd`]: the network lab for multi-host tests on one machine: a
//!   private network namespace where each node has a loopback address of its own, partitions
//!   between those addresses made with nftables, and a real etcd of one or three members.

pub mod checker;
pub mod etcd;
pub mod fake_clock;
pub mod harness;
pub mod history;
pub mod nemesis;
pub mod netns;
pub mod partition;
