//! Shared by the real-client tests (real_envoy.rs, real_proxyless.rs,
//! real_mcp.rs): where the installed clients live, `/debug/syncz` readers,
//! and polling.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Serve, test_dep, workspace_root};

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
