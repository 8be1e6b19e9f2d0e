//! Compiles the etcd v3 API subset and kvstore's internal records with protox (pure Rust),
//! so building needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/kv.proto",
        "proto/auth.proto",
        "proto/rpc.proto",
        "proto/internal.proto",
        "proto/peer.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".")
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
