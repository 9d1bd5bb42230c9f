//! Shared by the real-client tests (real_envoy.rs, real_proxyless.rs,
//! real_mcp.rs): where the installed clients live, `/debug/syncz` readers,
//! and polling.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Proc, Serve, test_dep, try_http, workspace_root};

/// How long a client or proxy process may live at most (its `timeout`).
pub const PROC_SECS: u64 = 180;
/// Deadline for one awaited condition (xDS delivery, traffic, a status).
pub const WAIT: Duration = Duration::from_secs(45);

pub const CDS: &str = "CDS";
pub const EDS: &str = "EDS";
pub const LDS: &str = "LDS";
pub const RDS: &str = "RDS";

// ---------------------------------------------------------------- helpers

pub fn envoy_bin() -> PathBuf {
    test_dep("target/test-deps/envoy-venv/bin/envoy")
}

pub fn grpc_python() -> PathBuf {
    test_dep("target/test-deps/grpc-venv/bin/python")
}

pub fn clients_dir() -> PathBuf {
    workspace_root().join("hub/cli/tests/clients")
}

/// Replaces `from` (which must occur) by `to` in the file at `path`.
pub fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}:\n{text}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

/// The proxy `node` in a `/debug/syncz` answer.
pub fn proxy<'a>(syncz: &'a Value, node: &str) -> Option<&'a Value> {
    syncz["proxies"].as_array()?.iter().find(|p| p["node"] == node)
}

/// The per-type entry `short` (CDS, LDS, ...) of a syncz proxy.
pub fn type_entry<'a>(proxy: &'a Value, short: &str) -> Option<&'a Value> {
    proxy["types"].as_array()?.iter().find(|t| t["short"] == short)
}

pub fn status_of<'a>(syncz: &'a Value, node: &str, short: &str) -> Option<&'a str> {
    type_entry(proxy(syncz, node)?, short)?["status"].as_str()
}

/// True when `node` is connected over `stream` and every type in `shorts`
/// is SYNCED (acked the version it was sent).
pub fn all_synced(syncz: &Value, node: &str, stream: &str, shorts: &[&str]) -> bool {
    let Some(p) = proxy(syncz, node) else { return false };
    p["connected"] == true
        && p["stream"] == stream
        && shorts.iter().all(|s| {
            type_entry(p, s).is_some_and(|t| {
                t["status"] == "SYNCED" && !t["sent_version"].is_null() && t["acked_version"] == t["sent_version"]
            })
        })
}

/// Polls `f` (which may note what it saw in its `&mut String`) until it
/// returns `Some`; at `deadline` panics with that note and `diag()`.
pub fn poll<T>(
    what: &str,
    deadline: Duration,
    diag: &dyn Fn() -> String,
    mut f: impl FnMut(&mut String) -> Option<T>,
) -> T {
    let end = Instant::now() + deadline;
    let mut last = String::new();
    loop {
        if let Some(v) = f(&mut last) {
            return v;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}\nlast: {last}\n{}", diag());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn serve_log(serve: &Serve) -> String {
    format!("--- keelson serve log:\n{}", serve.log.lock().unwrap())
}

pub fn syncz(serve: &Serve) -> Value {
    serve.get("/debug/syncz").1
}

/// Starts Envoy with an ADS bootstrap (`api_type` GRPC or DELTA_GRPC) for
/// node `node` (cluster "test") against `hub` (`127.0.0.1:PORT`), with
/// `extra` command-line arguments, and waits until its admin endpoint
/// answers; (the process, its admin address).
pub fn start_envoy(dir: &Path, hub: &str, node: &str, api_type: &str, extra: &[&str]) -> (Proc, String) {
    use std::sync::atomic::{AtomicU32, Ordering};
    let (host, port) = hub.rsplit_once(':').unwrap();
    // initial_fetch_timeout 0s: Envoy stays un-ready until CDS and LDS
    // really arrive, so /ready = LIVE proves delivery (the default 15 s
    // would let it go LIVE without any config).
    let bootstrap = format!(
        r#"node: {{id: "{node}", cluster: test}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: keelson}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3, initial_fetch_timeout: 0s}}
  lds_config: {{ads: {{}}, resource_api_version: V3, initial_fetch_timeout: 0s}}
static_resources:
  clusters:
  - name: keelson
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: keelson
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {host}, port_value: {port}}}}}}}
"#
    );
    let file_name: String = node.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    let boot = dir.join(format!("envoy-{file_name}.yaml"));
    std::fs::write(&boot, bootstrap).unwrap();
    let addr_file = dir.join(format!("envoy-{file_name}.admin"));
    // --base-id only matters for hot restart (disabled); unique anyway so
    // parallel Envoys never share a shared-memory name.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base_id = (std::process::id() % 100_000) * 100 + NEXT.fetch_add(1, Ordering::Relaxed) % 100;
    let base_id = base_id.to_string();
    let mut args =
        vec!["-c", boot.to_str().unwrap(), "--base-id", &base_id, "--disable-hot-restart", "--admin-address-path"];
    args.extend([addr_file.to_str().unwrap(), "-l", "warn"]);
    args.extend_from_slice(extra);
    let proc = Proc::start(&format!("envoy {node}"), PROC_SECS, &envoy_bin(), &args, &[]);
    let admin = poll("Envoy to write its admin address", WAIT, &String::new, |last| {
        if let Some(st) = proc.try_status() {
            panic!("Envoy exited ({st}) during startup\n{}", proc.output());
        }
        let a = std::fs::read_to_string(&addr_file).unwrap_or_default();
        *last = a.clone();
        let a = a.trim();
        (!a.is_empty() && try_http(a, "/ready").is_ok()).then(|| a.to_string())
    });
    (proc, admin)
}

/// The hub's xDS responses sent so far, per type (`keelson_xds_pushes_total`).
pub fn pushes(serve: &Serve) -> BTreeMap<String, u64> {
    let text = super::http_text(&serve.admin, "/metrics");
    text.lines()
        .filter_map(|l| l.strip_prefix("keelson_xds_pushes_total{type=\""))
        .filter_map(|l| {
            let (ty, rest) = l.split_once('"')?;
            Some((ty.to_string(), rest.trim_start_matches('}').trim().parse().ok()?))
        })
        .collect()
}

/// The istiod-like MCP client (clients/mcp_istiod.py, see real_mcp.rs)
/// against `server`, subscribed to `types` (comma-separated type URLs),
/// generating its stubs under `work/gen`; `extra` arguments after.
pub fn start_mcp_istiod(name: &str, work: &Path, server: &str, types: &str, extra: &[&str]) -> Proc {
    let script = clients_dir().join("mcp_istiod.py");
    let protos = workspace_root().join("proto/proto");
    let gen_dir = work.join("gen");
    let mut args = vec![
        script.to_str().unwrap(),
        "--server",
        server,
        "--proto-dir",
        protos.to_str().unwrap(),
        "--gen-dir",
        gen_dir.to_str().unwrap(),
        "--types",
        types,
        "--timeout",
        "120",
    ];
    args.extend_from_slice(extra);
    Proc::start(name, PROC_SECS, &grpc_python(), &args, &[])
}
