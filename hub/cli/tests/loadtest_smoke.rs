//! The loadtest's CI smoke run (issue 5): 200 simulated Envoys against a real
//! `keelson serve`, SotW and Delta, one scenario each. Every proxy must
//! connect, sync, and converge on every change, with zero errors.

mod support;

use std::time::Duration;

use keelson_loadtest::options::{Args, Options};
use keelson_loadtest::proxy::Mode;
use support::Serve;

const PROXIES: usize = 200;

fn run(mode: Mode, scenario: &str) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "smoke-token\n").unwrap();
    let serve = Serve::start(&dir.path().join("data"), &["--api-token-file", token.to_str().unwrap()]);
    let args = Args {
        target: serve.grpc.clone(),
        admin: Some(serve.admin.clone()),
        token_file: Some(token),
        trigger_url: None,
        proxies: Some(PROXIES),
        mode: Some(mode),
        scenario: scenario.into(),
        duration: Some(Duration::from_secs(3)),
        interval: Some(Duration::from_millis(500)),
        services: Some(3),
        endpoints: Some(5),
        connect_rate: Some(1000),
        nack_rate: None,
        nack_pattern: None,
        node_cluster: None,
        hub_pid: Some(serve.child.id()),
        json: Some(dir.path().join("report.json")),
        plot: Some(dir.path().join("report.svg")),
        sync_timeout: Some(Duration::from_secs(60)),
        quiet: true,
    };
    let options = Options::resolve(args).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (report, _) = rt.block_on(keelson_loadtest::run(&options)).unwrap();
    let log = || serve.log.lock().unwrap().clone();
    assert!(report.clean(), "{}\nhub log:\n{}", report.table(), log());
    assert_eq!((report.connected, report.synced, report.errors), (PROXIES, PROXIES, 0));
    assert!(report.changes >= 3, "{}", report.table());
    for (i, c) in report.per_change.iter().enumerate() {
        assert_eq!((c.reached, c.missed), (PROXIES, 0), "change {i} did not reach every proxy: {c:?}");
    }
    assert!(report.acks >= (PROXIES * report.changes) as u64, "{}", report.table());
    assert!(report.hub_rss_bytes.is_some_and(|b| b > 0), "hub sampled from /proc");
    // The outputs outside scripts read.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap()).unwrap();
    for field in [
        "proxies",
        "mode",
        "scenario",
        "connected",
        "initial_sync_s",
        "convergence_ms",
        "changes",
        "acks",
        "nacks",
        "errors",
        "hub_rss_bytes",
        "hub_cpu_s",
        "bytes_received",
    ] {
        assert!(json.get(field).is_some(), "report.json lacks {field}");
    }
    assert!(std::fs::read_to_string(dir.path().join("report.svg")).unwrap().contains("<svg"));
    serve.sigterm();
}

#[test]
fn smoke_200_sotw_proxies_converge_on_eds_churn() {
    run(Mode::Sotw, "eds-churn");
}

#[test]
fn smoke_200_delta_proxies_converge_on_a_full_change() {
    run(Mode::Delta, "full-change");
}
