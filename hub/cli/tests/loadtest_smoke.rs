//! The loadtest's CI smoke run (issue 5): 200 simulated Envoys against a real
//! `keelson serve`, SotW and Delta, one scenario each. Every proxy must
//! connect, sync, and converge on every change, with zero errors.

mod support;

use std::time::Duration;

use keelson_loadtest::options::{Args, Options};
use keelson_loadtest::proxy::Mode;
use support::Serve;

const PROXIES: usize = 200;

fn args(serve: &Serve, token: std::path::PathBuf, mode: Mode, scenario: &str) -> Args {
    Args {
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
        node_namespace: None,
        hub_pid: Some(serve.child.id()),
        json: None,
        plot: None,
        sync_timeout: Some(Duration::from_secs(60)),
        quiet: true,
        istio_version: None,
        istio_revision: None,
        virtual_services: None,
        destination_rules: None,
        service_entries: None,
    }
}

/// `plot`: the plot file's extension (svg or png).
fn run(mode: Mode, scenario: &str, plot: &str) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "smoke-token\n").unwrap();
    let serve = Serve::start(&dir.path().join("data"), &["--api-token-file", token.to_str().unwrap()]);
    let mut args = args(&serve, token, mode, scenario);
    if plot == "svg" {
        // Read the hub's cost from its /metrics process series instead of /proc.
        args.hub_pid = None;
    }
    args.json = Some(dir.path().join("report.json"));
    let plot_path = dir.path().join(format!("report.{plot}"));
    args.plot = Some(plot_path.clone());
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
    assert!(report.hub_rss_bytes.is_some_and(|b| b > 1 << 20), "hub RSS sampled: {}", report.table());
    assert!(report.hub_cpu_s.is_some(), "hub CPU sampled: {}", report.table());
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
    let plot_bytes = std::fs::read(&plot_path).unwrap();
    match plot {
        "png" => assert!(plot_bytes.starts_with(b"\x89PNG\r\n\x1a\n") && plot_bytes.len() > 10_000, "a real PNG"),
        _ => assert!(String::from_utf8_lossy(&plot_bytes).contains("<svg")),
    }
    serve.sigterm();
}

#[test]
fn smoke_200_sotw_proxies_converge_on_eds_churn() {
    run(Mode::Sotw, "eds-churn", "svg");
}

#[test]
fn smoke_200_delta_proxies_converge_on_a_full_change() {
    run(Mode::Delta, "full-change", "png");
}

/// Peer mode, pointed at Keelson itself: each change is a POST to a small
/// trigger server (what another control plane's harness would be), which
/// makes the change through Keelson's API; convergence runs from the POST to
/// each proxy ACKing a different RDS version.
#[test]
fn peer_mode_measures_from_the_trigger_post() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "peer-token\n").unwrap();
    let serve = Serve::start(&dir.path().join("data"), &["--api-token-file", token.to_str().unwrap()]);
    // The config the proxies hold before any trigger: a listener and its route.
    let route = |n: u32| {
        serde_json::json!({"apiVersion": "xds.keelson.dev/v1", "kind": "RouteConfiguration", "metadata": {"name": "peer-route"},
            "spec": {"name": "peer-route", "virtual_hosts": [{"name": "v", "domains": ["*"],
                "routes": [{"name": format!("r{n}"), "match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]}})
        .to_string()
    };
    let listener = serde_json::json!({"apiVersion": "xds.keelson.dev/v1", "kind": "Listener", "metadata": {"name": "peer-listener"},
        "spec": {"name": "peer-listener", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10998}},
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "p", "rds": {"route_config_name": "peer-route", "config_source": {"ads": {}}},
                "http_filters": [{"name": "router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}});
    for (path, body) in [
        ("/v1/resources/xds.keelson.dev/RouteConfiguration/-/peer-route", route(0)),
        ("/v1/resources/xds.keelson.dev/Listener/-/peer-listener", listener.to_string()),
    ] {
        let (status, answer) = serve.put(path, "peer-token", &body);
        assert_eq!(status, 200, "{path}: {answer}");
    }

    let trigger = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let trigger_url = format!("http://{}/change", trigger.local_addr().unwrap());
    let admin = serve.admin.clone();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for (n, conn) in (1u32..).zip(trigger.incoming()) {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let (status, _) = support::http_request(
                &admin,
                "PUT",
                "/v1/resources/xds.keelson.dev/RouteConfiguration/-/peer-route",
                Some("peer-token"),
                &route(n),
            );
            let _ = write!(conn, "HTTP/1.1 {status} OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let mut a = args(&serve, token, Mode::Sotw, "rds-change");
    a.admin = None;
    a.token_file = None;
    a.trigger_url = Some(trigger_url);
    a.proxies = Some(20);
    let options = Options::resolve(a).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (report, _) = rt.block_on(keelson_loadtest::run(&options)).unwrap();
    assert!(report.clean(), "{}", report.table());
    assert!(report.changes >= 3 && report.per_change.iter().all(|c| c.reached == 20), "{}", report.table());
    // Convergence includes the hub's snapshot debounce (100 ms quiet).
    assert!(report.convergence_ms.p50 >= 50.0, "{}", report.table());
    serve.sigterm();
}
