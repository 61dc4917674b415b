//! Compiles the protos in `proto/` with protox, a pure-Rust protobuf compiler, so a fresh machine
//! needs no system `protoc`: the auction's own protocol, and the subset of etcd's API that the
//! multi-host mode and the benchmark speak (client side only). (The `etcd-client` crate would
//! need a system `protoc` at build time, which a newcomer's first build must not.)

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let auction = "proto/auction.proto";
    let etcd = "proto/etcd_kv.proto";
    println!("cargo:rerun-if-changed={auction}");
    println!("cargo:rerun-if-changed={etcd}");
    tonic_prost_build::configure().compile_fds(protox::compile([auction], ["proto"])?)?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(protox::compile([etcd], ["proto"])?)?;
    Ok(())
}
