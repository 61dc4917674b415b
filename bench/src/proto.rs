//! The code generated from `bench/proto/`: the echo service (`proto/echo.proto`), the transport
//! floor. The benchmark speaks etcd's API through the product's `auction::etcd::api`.

/// The echo service.
#[allow(clippy::all, clippy::pedantic)]
pub mod echo {
    tonic::include_proto!("bench.echo.v1");
}
