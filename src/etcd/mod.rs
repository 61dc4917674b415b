//! etcd, the configuration authority of the multi-host mode (docs/design.md): the subset of its
//! v3 API this project speaks, generated from `proto/etcd_kv.proto` ([`api`]), and the
//! cluster's records there with the transactions that change them ([`registry`]).

/// The code generated from `proto/etcd_kv.proto` (package `etcdserverpb`): the KV service
/// (Range, Put, Txn) and the Maintenance service's Status, client side only.
#[allow(clippy::all, clippy::pedantic)]
pub mod api {
    tonic::include_proto!("etcdserverpb");
}

pub mod access;
pub mod authority;
pub mod registry;
