//! `keelson serve`'s xDS server against a real Envoy 1.40 over ADS (SotW and
//! Delta): routing real HTTP traffic, following a config edit, NACKing a bad
//! Listener, and outliving the hub's shutdown.
//!
//! Envoy comes from `scripts/install-test-deps` (target/test-deps); without it
//! these tests fail and say so. Every process binds 127.0.0.1 only, runs
//! under `timeout`, and is stopped by PID when its guard drops; every wait
//! polls with a deadline.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::real::*;
use support::{Backend, Proc, Serve, free_port, keelson, quickstart, try_http};

// ------------------------------------------------------------------ Envoy

/// A running Envoy with ADS pointed at a hub.
struct Envoy {
    proc: Proc,
    /// Its admin address, `127.0.0.1:PORT`.
    admin: String,
}

impl Envoy {
    /// Starts Envoy with an ADS bootstrap (`api_type` GRPC or DELTA_GRPC) for
    /// node `node` (cluster "test") against `hub` (`127.0.0.1:PORT`) and
    /// waits until its admin endpoint answers.
    fn start(dir: &Path, hub: &str, node: &str, api_type: &str) -> Envoy {
        let (proc, admin) = start_envoy(dir, hub, node, api_type, &[]);
        Envoy { proc, admin }
    }

    fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        try_http(&self.admin, path)
    }

    fn config_dump(&self) -> Value {
        let (status, body) = self.get("/config_dump").unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// A counter or gauge from `/stats`, e.g. `listener_manager.lds.update_rejected`.
    fn stat(&self, name: &str) -> Option<u64> {
        let (_, body) = self.get(&format!("/stats?filter={name}")).ok()?;
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok())
    }
}

/// Names of the dynamic resources Envoy has in use: active clusters, warmed
/// (active) listeners, and route configurations.
fn dump_names(dump: &Value) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let (mut clusters, mut listeners, mut routes) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let name = |v: &Value| v.as_str().map(str::to_string);
    for c in dump["configs"].as_array().into_iter().flatten() {
        let ty = c["@type"].as_str().unwrap_or_default();
        if ty.ends_with("ClustersConfigDump") {
            clusters.extend(
                c["dynamic_active_clusters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| name(&x["cluster"]["name"])),
            );
        } else if ty.ends_with("ListenersConfigDump") {
            listeners.extend(
                c["dynamic_listeners"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|l| !l["active_state"].is_null())
                    .filter_map(|l| name(&l["name"])),
            );
        } else if ty.ends_with("RoutesConfigDump") {
            routes.extend(
                c["dynamic_route_configs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| name(&r["route_config"]["name"])),
            );
        }
    }
    (clusters, listeners, routes)
}

/// A hub serving a copy of examples/quickstart whose ports are OS-chosen:
/// the listener on a free port, the two `reviews` endpoints on two live
/// backends answering "reviews-a" and "reviews-b".
struct Quickstart {
    dir: tempfile::TempDir,
    config: PathBuf,
    data: PathBuf,
    listener_port: u16,
    _backends: Vec<Backend>,
    serve: Serve,
}

impl Quickstart {
    fn start() -> Quickstart {
        let dir = tempfile::tempdir().unwrap();
        let config = quickstart(dir.path());
        let (a, b) = (Backend::start("reviews-a"), Backend::start("reviews-b"));
        let listener_port = free_port();
        edit(&config.join("ingress.yaml"), "port_value: 10000", &format!("port_value: {listener_port}"));
        edit(&config.join("reviews.yaml"), "port_value: 9081", &format!("port_value: {}", a.port));
        edit(&config.join("reviews.yaml"), "port_value: 9082", &format!("port_value: {}", b.port));
        let data = dir.path().join("data");
        let serve = Serve::start(&data, &["--source", &format!("file:{}", config.display())]);
        Quickstart { dir, config, data, listener_port, _backends: vec![a, b], serve }
    }

    /// One GET / through Envoy's listener: (status, body), or the error.
    fn request(&self) -> Result<(u16, String), String> {
        try_http(&format!("127.0.0.1:{}", self.listener_port), "/").map_err(|e| e.to_string())
    }
}

fn diag(q: &Quickstart, envoy: &Envoy) -> String {
    format!("{}\n{}\n--- syncz: {}", envoy.proc.output(), serve_log(&q.serve), syncz(&q.serve))
}

/// Envoy (ADS `api_type`, node `node`) on the quickstart: ready, config as
/// expected, traffic to both endpoints, SYNCED in syncz and `keelson status`;
/// then a new cluster and a route edit, followed by real requests.
fn envoy_serves_quickstart_and_follows_a_route_edit(api_type: &str, node: &str, stream: &str) {
    let t0 = Instant::now();
    let q = Quickstart::start();
    let envoy = Envoy::start(q.dir.path(), &q.serve.grpc, node, api_type);
    let d = || diag(&q, &envoy);

    poll("Envoy /ready = LIVE", WAIT, &d, |last| {
        let r = envoy.get("/ready");
        *last = format!("{r:?}");
        matches!(r, Ok((200, ref body)) if body.trim() == "LIVE").then_some(())
    });
    let (clusters, listeners, routes) = dump_names(&envoy.config_dump());
    assert!(clusters.contains("reviews"), "clusters {clusters:?}\n{}", d());
    assert!(listeners.contains("ingress_http"), "listeners {listeners:?}\n{}", d());
    assert!(routes.contains("local_route"), "routes {routes:?}\n{}", d());

    // Round robin over both EDS endpoints: both backends answer.
    let mut seen = BTreeSet::new();
    poll("requests through Envoy to reach reviews-a and reviews-b", WAIT, &d, |last| {
        match q.request() {
            Ok((200, body)) => {
                seen.insert(body);
            }
            other => *last = format!("{other:?}"),
        }
        *last = format!("{last} seen {seen:?}");
        (seen.contains("reviews-a") && seen.contains("reviews-b")).then_some(())
    });
    assert_eq!(seen.len(), 2, "unexpected bodies {seen:?}");

    let z = poll("syncz: Envoy SYNCED for CDS, EDS, LDS, RDS", WAIT, &d, |last| {
        let z = syncz(&q.serve);
        *last = z.to_string();
        all_synced(&z, node, stream, &[CDS, EDS, LDS, RDS]).then_some(z)
    });
    let p = proxy(&z, node).unwrap();
    assert_eq!(p["cluster"], "test", "{p}");
    assert!(p["user_agent"].as_str().is_some_and(|ua| ua.starts_with("envoy")), "{p}");
    assert!(z["version"].as_u64().is_some_and(|v| v > 0), "{z}");

    let out = keelson(&["status", "--admin", &q.serve.admin]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "keelson status: {}{}", text, String::from_utf8_lossy(&out.stderr));
    let row = text.lines().find(|l| l.split_whitespace().next() == Some(node)).unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains(stream) && row.matches("SYNCED").count() >= 4, "row {row:?} in\n{text}");
    assert!(!text.contains("NACK"), "{text}");

    // A new cluster with its own backend (CDS + EDS), then the route moves to it (RDS).
    let ratings = Backend::start("ratings");
    std::fs::write(
        q.config.join("ratings.yaml"),
        format!(
            r#"apiVersion: xds.keelson.dev/v1
kind: Cluster
metadata: {{name: ratings}}
spec:
  name: ratings
  type: EDS
  connect_timeout: 1s
  eds_cluster_config: {{eds_config: {{ads: {{}}, resource_api_version: V3}}}}
---
apiVersion: xds.keelson.dev/v1
kind: ClusterLoadAssignment
metadata: {{name: ratings}}
spec:
  cluster_name: ratings
  endpoints:
    - locality: {{zone: z1}}
      load_balancing_weight: 1
      lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}
"#,
            ratings.port
        ),
    )
    .unwrap();
    poll("Envoy to add cluster ratings", WAIT, &d, |last| {
        let (clusters, ..) = dump_names(&envoy.config_dump());
        *last = format!("{clusters:?}");
        clusters.contains("ratings").then_some(())
    });
    edit(&q.config.join("ingress.yaml"), "route: { cluster: reviews }", "route: { cluster: ratings }");
    poll("requests through Envoy to reach ratings after the route edit", WAIT, &d, |last| {
        let r = q.request();
        *last = format!("{r:?}");
        matches!(r, Ok((200, ref body)) if body == "ratings").then_some(())
    });
    for _ in 0..5 {
        assert_eq!(q.request(), Ok((200, "ratings".to_string())), "\n{}", d());
    }
    poll("syncz: Envoy SYNCED again after the edit", WAIT, &d, |last| {
        let z = syncz(&q.serve);
        *last = z.to_string();
        all_synced(&z, node, stream, &[CDS, EDS, LDS, RDS]).then_some(())
    });
    eprintln!("{node}: passed in {:?}", t0.elapsed());
}

#[test]
fn envoy_sotw_serves_quickstart_and_follows_a_route_edit() {
    envoy_serves_quickstart_and_follows_a_route_edit("GRPC", "envoy-sotw-1", "sotw");
}

#[test]
fn envoy_delta_serves_quickstart_and_follows_a_route_edit() {
    envoy_serves_quickstart_and_follows_a_route_edit("DELTA_GRPC", "envoy-delta-1", "delta");
}

/// Valid for Keelson (a well-formed envoy.config.listener.v3.Listener) but
/// rejected by Envoy: two filter chains with the same (empty) match. Envoy
/// 1.40 says "filter chain 'second' has the same matching rules defined as
/// 'first'" (checked with `envoy --mode validate`).
const BAD_LISTENER: &str = r#"apiVersion: xds.keelson.dev/v1
kind: Listener
metadata: {name: bad_dup}
spec:
  name: bad_dup
  address: {socket_address: {address: 127.0.0.1, port_value: PORT}}
  filter_chains:
    - name: first
      filters:
        - name: envoy.filters.network.tcp_proxy
          typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: a, cluster: reviews}
    - name: second
      filters:
        - name: envoy.filters.network.tcp_proxy
          typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: b, cluster: reviews}
"#;
const ENVOY_DUP_ERROR: &str = "has the same matching rules defined as";

/// `nack` events of the hub's log (read through its admin API) for `node`.
fn nack_events(admin: &str, node: &str) -> Vec<Value> {
    let out = keelson(&["log", "--admin", admin, "--json"]);
    assert!(out.status.success(), "keelson log: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["op"] == "nack" && e["node"] == node)
        .collect()
}

#[test]
fn envoy_nack_is_recorded_once_and_fix_resyncs() {
    let t0 = Instant::now();
    let node = "envoy-nack-1";
    let q = Quickstart::start();
    let envoy = Envoy::start(q.dir.path(), &q.serve.grpc, node, "GRPC");
    let d = || diag(&q, &envoy);
    poll("syncz: Envoy SYNCED for CDS, EDS, LDS, RDS", WAIT, &d, |last| {
        let z = syncz(&q.serve);
        *last = z.to_string();
        all_synced(&z, node, "sotw", &[CDS, EDS, LDS, RDS]).then_some(())
    });
    assert_eq!(envoy.stat("listener_manager.lds.update_rejected"), Some(0), "\n{}", d());
    assert!(nack_events(&q.serve.admin, node).is_empty());

    let bad = q.config.join("bad-listener.yaml");
    std::fs::write(&bad, BAD_LISTENER.replace("PORT", &free_port().to_string())).unwrap();
    let z = poll("syncz: LDS NACKED with Envoy's error", WAIT, &d, |last| {
        let z = syncz(&q.serve);
        *last = z.to_string();
        (status_of(&z, node, LDS) == Some("NACKED")).then_some(z)
    });
    let lds = type_entry(proxy(&z, node).unwrap(), LDS).unwrap().clone();
    let error = lds["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains(ENVOY_DUP_ERROR), "LDS entry {lds}\n{}", d());
    let nacked_version =
        lds["nacked_version"].as_str().unwrap_or_else(|| panic!("no nacked_version in {lds}")).to_string();
    // The other types are unaffected.
    for short in [CDS, EDS, RDS] {
        assert_eq!(status_of(&z, node, short), Some("SYNCED"), "{short} in {z}");
    }
    // Envoy keeps serving the listener it had.
    assert_eq!(q.request().map(|(s, _)| s), Ok(200), "\n{}", d());

    let out = keelson(&["status", "--admin", &q.serve.admin]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "keelson status: {text}{}", String::from_utf8_lossy(&out.stderr));
    let row = text.lines().find(|l| l.split_whitespace().next() == Some(node)).unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("NACKED"), "row {row:?} in\n{text}");
    let nack_line = text
        .lines()
        .find(|l| l.starts_with(&format!("NACK {node} LDS version {nacked_version}:")))
        .unwrap_or_else(|| panic!("no NACK line for {node} LDS version {nacked_version} in\n{text}"));
    assert!(nack_line.contains(ENVOY_DUP_ERROR), "{nack_line}");

    let nacks = poll("a nack event in the log", WAIT, &d, |last| {
        let n = nack_events(&q.serve.admin, node);
        *last = format!("{n:?}");
        (!n.is_empty()).then_some(n)
    });
    assert_eq!(nacks.len(), 1, "{nacks:?}");
    let ev = &nacks[0];
    assert_eq!(ev["type_url"], "type.googleapis.com/envoy.config.listener.v3.Listener", "{ev}");
    assert_eq!(ev["version"].as_str(), Some(nacked_version.as_str()), "{ev}");
    assert!(ev["error"].as_str().is_some_and(|e| e.contains(ENVOY_DUP_ERROR)), "{ev}");

    poll("Envoy stat lds.update_rejected = 1", WAIT, &d, |last| {
        let n = envoy.stat("listener_manager.lds.update_rejected");
        *last = format!("{n:?}");
        (n == Some(1)).then_some(())
    });
    // A deliberate observation window, not a wait for a condition: nothing may
    // happen here. A hub that re-sends the rejected version (or a NACK loop)
    // would make Envoy reject again and the log record more nacks.
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(envoy.stat("listener_manager.lds.update_rejected"), Some(1), "NACK repeated\n{}", d());
    assert_eq!(nack_events(&q.serve.admin, node).len(), 1, "nack recorded more than once\n{}", d());
    assert_eq!(status_of(&syncz(&q.serve), node, LDS), Some("NACKED"));

    // The fix: the bad listener goes, LDS is SYNCED again with a new version.
    let success_before = envoy.stat("listener_manager.lds.update_success").unwrap();
    std::fs::remove_file(&bad).unwrap();
    poll("syncz: LDS SYNCED again after the fix", WAIT, &d, |last| {
        let z = syncz(&q.serve);
        *last = z.to_string();
        all_synced(&z, node, "sotw", &[CDS, EDS, LDS, RDS]).then_some(())
    });
    poll("Envoy stat lds.update_success to grow", WAIT, &d, |last| {
        let n = envoy.stat("listener_manager.lds.update_success");
        *last = format!("{n:?} (was {success_before})");
        n.is_some_and(|n| n > success_before).then_some(())
    });
    assert_eq!(envoy.stat("listener_manager.lds.update_rejected"), Some(1));
    // `keelson status` lists current NACKs only: LDS is SYNCED again, so no
    // NACK line for it. (syncz may keep the old error as history.)
    let out = keelson(&["status", "--admin", &q.serve.admin]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let row = text.lines().find(|l| l.split_whitespace().next() == Some(node)).unwrap_or_else(|| panic!("{text}"));
    assert!(!row.contains("NACKED"), "row {row:?} in\n{text}");
    assert!(
        !text.lines().any(|l| l.starts_with(&format!("NACK {node} LDS"))),
        "keelson status still reports the fixed NACK:\n{text}\nsyncz LDS: {}",
        type_entry(proxy(&syncz(&q.serve), node).unwrap(), LDS).unwrap()
    );
    assert_eq!(q.request().map(|(s, _)| s), Ok(200), "\n{}", d());

    // With the hub stopped, the nack is in the log on disk, once. Envoy goes
    // first: stopping the hub under a connected proxy is
    // `serve_stops_on_sigterm_with_envoy_connected_and_envoy_keeps_serving`.
    drop(envoy);
    let mut q = q;
    let st = q.serve.sigterm_within(Duration::from_secs(15));
    assert!(st.is_some_and(|s| s.success()), "keelson serve: {st:?} 15 s after SIGTERM\n{}", serve_log(&q.serve));
    let on_disk: Vec<Value> =
        support::log_ops(&q.data).into_iter().filter(|e| e["op"] == "nack" && e["node"] == node).collect();
    assert_eq!(on_disk.len(), 1, "{on_disk:?}");
    eprintln!("{node}: passed in {:?}", t0.elapsed());
}
/// SIGTERM to the hub while Envoy holds its ADS stream open: the hub exits
/// promptly (it does not wait for proxies to hang up), its log is intact, and
/// Envoy keeps routing with the config it has.
#[test]
fn serve_stops_on_sigterm_with_envoy_connected_and_envoy_keeps_serving() {
    let t0 = Instant::now();
    let node = "envoy-term-1";
    let mut q = Quickstart::start();
    let envoy = Envoy::start(q.dir.path(), &q.serve.grpc, node, "GRPC");
    {
        let d = || diag(&q, &envoy);
        poll("syncz: Envoy SYNCED for CDS, EDS, LDS, RDS", WAIT, &d, |last| {
            let z = syncz(&q.serve);
            *last = z.to_string();
            all_synced(&z, node, "sotw", &[CDS, EDS, LDS, RDS]).then_some(())
        });
        poll("a request through Envoy", WAIT, &d, |last| {
            let r = q.request();
            *last = format!("{r:?}");
            matches!(r, Ok((200, _))).then_some(())
        });
    }
    let stopped = Instant::now();
    let st = q.serve.sigterm_within(Duration::from_secs(10));
    assert!(
        st.is_some(),
        "keelson serve still running 10 s after SIGTERM with Envoy connected\n{}\n{}",
        serve_log(&q.serve),
        envoy.proc.output()
    );
    assert!(st.unwrap().success(), "exit {st:?}\n{}", serve_log(&q.serve));
    eprintln!("{node}: hub exited {:?} after SIGTERM", stopped.elapsed());
    let out = keelson(&["verify", "--data-dir", q.data.to_str().unwrap()]);
    assert!(out.status.success(), "keelson verify: {}", String::from_utf8_lossy(&out.stdout));
    // The data plane outlives its control plane.
    for _ in 0..3 {
        assert!(matches!(q.request(), Ok((200, ref b)) if b.starts_with("reviews-")), "{}", envoy.proc.output());
    }
    assert!(envoy.proc.try_status().is_none(), "Envoy exited with the hub\n{}", envoy.proc.output());
    eprintln!("{node}: passed in {:?}", t0.elapsed());
}
