//! Compiles the etcd v3 API subset and kvstore's internal records with protox (pure Rust),
//! so building needs no system `protoc`. The descriptor set is kept too (`OUT_DIR/descriptors.bin`):
//! the JSON gateway reads message shapes from it (see `src/gateway/json.rs`).
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
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .bytes(".")
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
