//! The loadtest's MCP mode end to end (issue 10): simulated istiods against
//! a real `keelson serve` on 127.0.0.1, the istio-churn scenario creating its
//! VirtualServices, DestinationRules and ServiceEntries through the push API
//! and editing VirtualServices. Every istiod must become ready (every
//! requested type answered) and ACK every edit, with nothing dropped.
//!
//! There is no istiod binary on this machine; the simulated istiods behave
//! as istiod's adsc client does (loadtest/src/istio.rs), and the server is
//! the production one.

mod support;

use clap::Parser;
use keelson_loadtest::options::{Args, Options};
use support::Serve;

const ISTIODS: usize = 20;

fn run(istio_version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "mcp-smoke-token\n").unwrap();
    let serve = Serve::start(&dir.path().join("data"), &["--api-token-file", token.to_str().unwrap()]);
    let json = dir.path().join("report.json");
    let pid = serve.child.id().to_string();
    let args = Args::parse_from([
        "keelson-loadtest",
        "--target",
        &serve.grpc,
        "--admin",
        &serve.admin,
        "--token-file",
        token.to_str().unwrap(),
        "--mode",
        "mcp",
        "--istio-version",
        istio_version,
        "--scenario",
        "istio-churn",
        "--proxies",
        &ISTIODS.to_string(),
        "--virtual-services",
        "30",
        "--destination-rules",
        "20",
        "--service-entries",
        "10",
        "--duration",
        "3s",
        "--interval",
        "500ms",
        "--sync-timeout",
        "60s",
        "--hub-pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
        "--quiet",
    ]);
    let options = Options::resolve(args).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let result = rt.block_on(keelson_loadtest::run(&options));
    let log = || serve.log.lock().unwrap().clone();
    let (report, _) = result.unwrap_or_else(|e| panic!("the run failed: {e}\nhub log:\n{}", log()));
    assert!(report.clean(), "{}\nhub log:\n{}", report.table(), log());
    assert_eq!((report.connected, report.synced, report.dropped_items), (ISTIODS, ISTIODS, 0), "{}", report.table());
    assert_eq!(report.istio_version.as_deref(), Some(istio_version));
    assert!(report.changes >= 3, "{}", report.table());
    for (i, c) in report.per_change.iter().enumerate() {
        assert_eq!((c.reached, c.missed), (ISTIODS, 0), "change {i} did not reach every istiod: {c:?}");
    }
    // 14 Istio types ACKed by each istiod at readiness, then one
    // VirtualService ACK per istiod per edit; MeshConfig is never ACKed.
    assert!(report.acks >= (ISTIODS * (14 + report.changes)) as u64, "{}", report.table());
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for field in ["istio_version", "sync_ms", "initial_sync_s", "convergence_ms", "dropped_items", "per_change"] {
        assert!(json.get(field).is_some(), "report.json lacks {field}");
    }
    assert_eq!(json["mode"], "mcp");
    serve.sigterm();
}

#[test]
fn smoke_istio_1_24_istiods_ready_and_converged_on_istio_churn() {
    run("1.24");
}

#[test]
fn smoke_istio_1_23_istiods_ready_and_converged_on_istio_churn() {
    run("1.23");
}
