//! Compiles the project's own .proto files with protox (pure Rust: no system
//! `protoc` is needed) and generates prost types for them; and builds one
//! descriptor set of the Envoy resource types (from the `.proto` sources the
//! envoy-types crate ships) and the Istio kinds (the project's own files),
//! for proto3-JSON transcoding at run time.

use std::path::{Path, PathBuf};
use std::process::Command;

const PROTOS: &[&str] = &[
    "keelson/log/v1/event.proto",
    "keelson/xds/v1/preencoded.proto",
    "istio/mcp/v1alpha1/metadata.proto",
    "istio/mcp/v1alpha1/resource.proto",
    // Legacy Galley MCP services (docs/mcp-legacy.md).
    "istio/mcp/v1alpha1/mcp.proto",
];

/// Envoy types users may write in config files, directly or inside a typed
/// `Any`. Every type they reference is compiled in with them; an `@type` that
/// is not here fails transcoding with a clear error (docs/config.md lists it).
const ENVOY_ROOTS: &[&str] = &[
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/service/discovery/v3/discovery.proto",
    // The ADS service itself, so gRPC reflection can describe it.
    "envoy/service/discovery/v3/ads.proto",
];

const ENVOY_INCLUDES: &[&str] =
    &["data-plane-api", "xds", "googleapis", "protoc-gen-validate", "cel-spec", "opentelemetry-proto", "client_model"];

/// The envoy-types package directory, from `cargo metadata`.
fn envoy_types_dir() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let cargo = std::env::var("CARGO")?;
    let manifest = Path::new(&std::env::var("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--filter-platform", &std::env::var("TARGET")?])
        .arg("--manifest-path")
        .arg(&manifest)
        .output()?;
    if !out.status.success() {
        return Err(format!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let pkg = meta["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "envoy-types"))
        .ok_or("envoy-types is not among the resolved packages")?;
    let manifest_path = pkg["manifest_path"].as_str().ok_or("envoy-types has no manifest_path")?;
    Ok(Path::new(manifest_path).parent().ok_or("manifest has no parent")?.to_path_buf())
}

/// Every `.proto` file under `dir`, as paths relative to `root`, sorted.
fn protos_under(root: &Path, dir: &str) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut found = Vec::new();
    let mut pending = vec![root.join(dir)];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "proto") {
                let rel = path.strip_prefix(root)?.to_str().ok_or("non-UTF-8 proto path")?;
                found.push(rel.replace(std::path::MAIN_SEPARATOR, "/"));
            }
        }
    }
    found.sort();
    Ok(found)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());

    // One descriptor pool for every message Keelson transcodes: the Envoy
    // resource types and the Istio kinds (the project's own .proto files
    // under proto/istio, written from istio/api's wire format).
    let envoy = envoy_types_dir()?.join("proto");
    let mut includes: Vec<PathBuf> = ENVOY_INCLUDES.iter().map(|d| envoy.join(d)).collect();
    includes.push(root.clone());
    let mut roots: Vec<String> = ENVOY_ROOTS.iter().map(|s| s.to_string()).collect();
    roots.extend(protos_under(&root, "istio")?);
    let pool_fds = protox::compile(&roots, &includes)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptor_set.bin"), prost::Message::encode_to_vec(&pool_fds))?;

    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    // mcp.proto imports google/rpc/status.proto from googleapis; the Rust
    // type is envoy-types' copy, so a NACK's error_detail is one type everywhere.
    let fds = protox::compile(PROTOS, [root.clone(), envoy.join("googleapis")])?;
    tonic_prost_build::configure()
        .build_client(false)
        // The sinks crate writes its own servers (pre-encoded responses).
        .build_server(false)
        .extern_path(".google.rpc", "::envoy_types::pb::google::rpc")
        // Payloads and pre-encoded resources are shared, not copied.
        .bytes(".")
        // Sorted maps encode the same in every process: an MCP item's bytes
        // are a function of the object and its version alone.
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
