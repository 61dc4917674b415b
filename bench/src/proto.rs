//! The code generated from `bench/proto/`: the protocols the benchmark speaks besides the
//! auction's own.

/// The echo service (`proto/echo.proto`): the transport floor.
#[allow(clippy::all, clippy::pedantic)]
pub mod echo {
    tonic::include_proto!("bench.echo.v1");
}

/// The subset of etcd's API that `auction-bench --target etcd` uses (`proto/etcd_kv.proto`):
/// its KV service, and the Maintenance service's Status.
#[allow(clippy::all, clippy::pedantic)]
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}
