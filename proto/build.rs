//! Compiles the project's own .proto files with protox (pure Rust: no system
//! `protoc` is needed) and generates prost types for them.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "keelson/log/v1/event.proto",
    "keelson/xds/v1/preencoded.proto",
    "istio/mcp/v1alpha1/metadata.proto",
    "istio/mcp/v1alpha1/resource.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let fds = protox::compile(PROTOS, [&root])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        // Payloads and pre-encoded resources are shared, not copied.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
