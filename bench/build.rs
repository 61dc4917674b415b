//! Compiles the benchmark's own protocol: its echo service, the transport floor. (The auction's
//! protocol and the subset of etcd's API come from the product.) protox is a pure-Rust
//! compiler: no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let echo = "proto/echo.proto";
    println!("cargo:rerun-if-changed={echo}");
    tonic_prost_build::configure().compile_fds(protox::compile([echo], ["proto"])?)?;
    Ok(())
}
