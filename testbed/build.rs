//! Compiles the CRI subset (`proto/cri.proto`) into a client with protox (pure Rust), so building
//! needs no system `protoc`, as kvstore's build does.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/cri.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
