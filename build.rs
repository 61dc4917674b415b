//! Compiles `proto/auction.proto` with protox, a pure-Rust protobuf compiler, so a fresh machine
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let auction = "proto/auction.proto";
    println!("cargo:rerun-if-changed={auction}");
    tonic_prost_build::configure().compile_fds(protox::compile([auction], ["proto"])?)?;
    Ok(())
}
