//! Compiles the protocols the benchmark speaks besides the auction's own (which it takes from
//! the product): its echo service (the transport floor), and the subset of etcd's API it
//! compares against (client side only). protox is a pure-Rust compiler: no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let echo = "proto/echo.proto";
    let etcd = "proto/etcd_kv.proto";
    println!("cargo:rerun-if-changed={echo}");
    println!("cargo:rerun-if-changed={etcd}");
    tonic_prost_build::configure().compile_fds(protox::compile([echo], ["proto"])?)?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(protox::compile([etcd], ["proto"])?)?;
    Ok(())
}
