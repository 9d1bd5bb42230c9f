//! `keelson serve`'s xDS server against two proxyless gRPC clients (Python
//! C-core, Node grpc-js-xds) resolving `xds:///` targets through
//! LDS → RDS → CDS → EDS and health-checking a real backend.
//!
//! The clients come from `scripts/install-test-deps` (target/test-deps and
//! hub/cli/tests/clients/node/node_modules); without them these tests fail
//! and say so. Every process binds 127.0.0.1 only, runs under `timeout`, and
//! is stopped by PID when its guard drops; every wait polls with a deadline.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::real::*;
use support::{Proc, Serve, keelson, test_dep};

// ------------------------------------------------------- proxyless gRPC

/// The config a proxyless client needs for `xds:///svc.test:PORT`: the API
/// listener (HCM with RDS over ADS), its route to `svc-cluster`, the EDS
/// cluster and its endpoints (one locality) at 127.0.0.1:PORT.
fn proxyless_config(dir: &Path, port: u16) -> PathBuf {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("svc.yaml"),
        format!(
            r#"apiVersion: xds.keelson.dev/v1
kind: Listener
metadata: {{name: "svc.test:{port}"}}
spec:
  name: "svc.test:{port}"
  api_listener:
    api_listener:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      rds:
        route_config_name: svc-route
        config_source: {{ads: {{}}, resource_api_version: V3}}
      http_filters:
        - name: router
          typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
---
apiVersion: xds.keelson.dev/v1
kind: RouteConfiguration
metadata: {{name: svc-route}}
spec:
  name: svc-route
  virtual_hosts:
    - name: svc
      domains: ["*"]
      routes:
        - match: {{prefix: ""}}
          route: {{cluster: svc-cluster}}
---
apiVersion: xds.keelson.dev/v1
kind: Cluster
metadata: {{name: svc-cluster}}
spec:
  name: svc-cluster
  type: EDS
  connect_timeout: 1s
  lb_policy: ROUND_ROBIN
  eds_cluster_config:
    eds_config: {{ads: {{}}, resource_api_version: V3}}
---
apiVersion: xds.keelson.dev/v1
kind: ClusterLoadAssignment
metadata: {{name: svc-cluster}}
spec:
  cluster_name: svc-cluster
  endpoints:
    - locality: {{zone: z1}}
      load_balancing_weight: 1
      lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"#
        ),
    )
    .unwrap();
    config
}

/// A gRPC health server (SERVING) from the grpc venv; (process, port).
fn health_server() -> (Proc, u16) {
    let script = clients_dir().join("grpc_health_server.py");
    let p = Proc::start("health server", PROC_SECS, &grpc_python(), &[script.to_str().unwrap()], &[]);
    let line = p.wait_stdout_line("listening 127.0.0.1:", WAIT);
    let port = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    (p, port)
}

/// A proxyless client (`program args`, which must print SERVING and, given
/// --hold, stay connected until its stdin closes) resolving
/// `xds:///svc.test:PORT` through the hub as node `node`.
fn proxyless_resolves(node: &str, program: &Path, script: &Path, extra: &[&str]) {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = health_server();
    let config = proxyless_config(dir.path(), port);
    let out = keelson(&["validate", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "keelson validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let serve = Serve::start(&dir.path().join("data"), &["--source", &format!("file:{}", config.display())]);
    serve.wait_for("/readyz", "a first snapshot", |status, _| status == 200);

    let bootstrap = serde_json::json!({
        "xds_servers": [{"server_uri": serve.grpc, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": node, "cluster": "test", "locality": {"zone": "z1"}},
    })
    .to_string();
    let target = format!("xds:///svc.test:{port}");
    let mut args = vec![script.to_str().unwrap(), target.as_str(), "--hold"];
    args.extend_from_slice(extra);
    let client = Proc::start(node, 90, program, &args, &[("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap.as_str())]);
    let d = || format!("{}\n{}\n{}\n--- syncz: {}", client.output(), server.output(), serve_log(&serve), syncz(&serve));

    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if client.stdout().lines().any(|l| l.trim() == "SERVING") {
            break;
        }
        if let Some(st) = client.try_status() {
            panic!("{node} exited ({st}) without SERVING\n{}", d());
        }
        assert!(Instant::now() < end, "{node} printed no SERVING within 60 s\n{}", d());
        std::thread::sleep(Duration::from_millis(50));
    }
    let z = poll("syncz: the client SYNCED for LDS, RDS, CDS, EDS", WAIT, &d, |last| {
        let z = syncz(&serve);
        *last = z.to_string();
        all_synced(&z, node, "sotw", &[LDS, RDS, CDS, EDS]).then_some(z)
    });
    let p = proxy(&z, node).unwrap();
    assert_eq!(p["cluster"], "test", "{p}");
    client.close_stdin();
    let st = client.wait_exit(Duration::from_secs(20));
    assert!(st.success(), "{node} exit {st}\n{}", d());
    drop(server);
    eprintln!("{node}: passed in {:?}", t0.elapsed());
}

#[test]
fn grpc_python_proxyless_resolves_through_lds_rds_cds_eds() {
    let script = clients_dir().join("grpc_health_probe.py");
    proxyless_resolves("grpc-py-1", &grpc_python(), &script, &["--timeout", "45"]);
}

#[test]
fn grpc_node_proxyless_resolves_through_lds_rds_cds_eds() {
    test_dep("hub/cli/tests/clients/node/node_modules/@grpc/grpc-js-xds/package.json");
    let script = clients_dir().join("node/health_probe.js");
    proxyless_resolves("grpc-node-1", Path::new("node"), &script, &["--timeout-ms", "45000"]);
}
