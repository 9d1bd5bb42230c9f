//! `keelson serve` with a file source, end to end: files → log → snapshot,
//! edits, broken saves, deletions, an outage of the directory, SIGKILL and
//! warm restart, and `state --at` reproducing what was served.

mod support;

use std::path::Path;

use support::{Serve, keelson, log_ops, quickstart, workspace_root};

const VS: &str = "networking.istio.io/VirtualService/default/reviews";

fn count(ops: &[serde_json::Value], op: &str) -> usize {
    ops.iter().filter(|o| o["op"] == op).count()
}

/// A hub serving a copy of examples/quickstart: (temp dir, config dir, data dir, hub).
fn serve_quickstart() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf, Serve) {
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart(dir.path());
    let data = dir.path().join("data");
    let s = serve_untranslated(dir.path(), &data, &config);
    (dir, config, data, s)
}

/// These tests count what the file source wrote, so they turn translation
/// off: the quickstart's Service would otherwise add derived resources.
/// What translation serves is the last test's subject.
fn serve_untranslated(dir: &Path, data: &Path, source: &Path) -> Serve {
    let cfg = dir.join("untranslated.toml");
    std::fs::write(&cfg, format!("sources = [\"file:{}\"]\n[translate]\nenabled = false\n", source.display())).unwrap();
    Serve::start(data, &["--config", cfg.to_str().unwrap()])
}

fn ready(s: &Serve) -> serde_json::Value {
    s.wait_for("/readyz", "readiness", |status, _| status == 200)
}

fn snapshot(s: &Serve) -> serde_json::Value {
    s.get("/debug/snapshot?resources=1").1
}

#[test]
fn files_become_one_durable_batch_and_a_snapshot() {
    let (_dir, _config, data, s) = serve_quickstart();
    let v = ready(&s);
    assert_eq!(v["degraded"], false);
    let snap = snapshot(&s);
    assert_eq!(snap["counts"]["xds.keelson.dev/Cluster"], 1);
    assert_eq!(snap["counts"]["networking.istio.io/VirtualService"], 1);
    assert_eq!(snap["resources"].as_array().unwrap().len(), 6);
    // Envoy kinds carry their encoded Any; the version is a log seq.
    let cluster =
        snap["resources"].as_array().unwrap().iter().find(|r| r["key"] == "xds.keelson.dev/Cluster//reviews").unwrap();
    assert!(cluster["encoded"].as_str().is_some_and(|e| !e.is_empty()));
    s.sigterm();
    let ops = log_ops(&data);
    let kinds: Vec<&str> = ops.iter().map(|o| o["op"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"sync_start"));
    assert_eq!(kinds.last(), Some(&"sync_done"));
    assert_eq!(count(&ops, "upsert"), 6);
    assert!(ops.iter().filter(|o| o["op"] == "upsert").all(|o| o["location"].as_str().unwrap().contains(".yaml:")));
}

#[test]
fn an_edit_makes_exactly_one_new_version_and_a_broken_save_changes_nothing() {
    let (_dir, config, _data, s) = serve_quickstart();
    ready(&s);
    let before = s.version();

    let file = config.join("reviews.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("weight: 90", "weight: 80").replace("weight: 10", "weight: 20")).unwrap();
    let after = s.wait_for("/debug/snapshot", "the edit", |_, v| v["version"].as_u64() > Some(before));
    let history = s.get(&format!("/v1/history?key={VS}")).1;
    assert_eq!(history.as_array().unwrap().len(), 2, "one new version of the edited object: {history}");
    assert_eq!(history[0]["seq"], after["version"]);
    assert_eq!(history[0]["body"]["spec"]["http"][0]["route"][0]["weight"], 80);

    // A broken save: YAML that does not parse. The objects keep their last good version.
    let edited = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, edited.replace("hosts: [reviews]", "hosts: [reviews")).unwrap();
    let health = s.wait_for("/debug/sources", "the parse error", |_, v| {
        v.as_object().unwrap().values().any(|h| h["errors"].as_array().is_some_and(|e| !e.is_empty()))
    });
    let errors = health.as_object().unwrap().values().next().unwrap()["errors"].to_string();
    assert!(errors.contains("reviews.yaml:"), "errors name the file and line: {errors}");
    let snap = snapshot(&s);
    assert_eq!(snap["version"], after["version"], "a broken save changes nothing");
    assert_eq!(snap["resources"].as_array().unwrap().len(), 6);
    let metrics = support::http_text(&s.admin, "/metrics");
    let line = metrics.lines().find(|l| l.starts_with("keelson_validation_errors_total{")).unwrap_or_default();
    assert!(line.ends_with(" 1"), "one rejection counted: {line:?}");
    // Fix it again: back to the edited content, which is already current, so no new version.
    std::fs::write(&file, &edited).unwrap();
    s.wait_for("/debug/sources", "errors to clear", |_, v| {
        v.as_object().unwrap().values().all(|h| h["errors"].as_array().is_some_and(|e| e.is_empty()))
    });
    assert_eq!(s.version(), after["version"].as_u64().unwrap());
}

#[test]
fn a_deleted_file_deletes_its_objects_and_a_missing_directory_deletes_nothing() {
    let (dir, config, _data, s) = serve_quickstart();
    ready(&s);
    std::fs::remove_file(config.join("ingress.yaml")).unwrap();
    let snap =
        s.wait_for("/debug/snapshot", "the deletion", |_, v| v["counts"].get("xds.keelson.dev/Listener").is_none());
    assert!(snap["counts"].get("xds.keelson.dev/RouteConfiguration").is_none());
    assert_eq!(snap["counts"]["xds.keelson.dev/Cluster"], 1, "objects of other files stay");
    let version = snap["version"].as_u64().unwrap();

    // The whole directory goes away: the source is down, nothing is deleted.
    std::fs::rename(&config, dir.path().join("elsewhere")).unwrap();
    let health = s.wait_for("/debug/sources", "the source to go down", |_, v| {
        v.as_object().unwrap().values().any(|h| h["up"] == false)
    });
    let h = health.as_object().unwrap().values().next().unwrap();
    assert!(h["last_error"].as_str().unwrap().contains("cannot read"), "{h}");
    let snap = snapshot(&s);
    assert_eq!(snap["version"].as_u64(), Some(version));
    assert_eq!(snap["resources"].as_array().unwrap().len(), 4);
    let (_, readyz) = s.get("/readyz");
    assert_eq!(readyz["version"].as_u64(), Some(version), "still ready, serving the last good config");
}

fn config_file(dir: &Path, source: &Path) -> std::path::PathBuf {
    let path = dir.join("keelson.toml");
    // A long sync_timeout: readiness after a warm restart must not come from it.
    std::fs::write(&path, format!("sources = [\"file:{}\"]\n[snapshot]\nsync_timeout = \"120s\"\n", source.display()))
        .unwrap();
    path
}

#[test]
fn sigkill_then_restart_without_the_directory_serves_the_same_version_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = quickstart(dir.path());
    let data = dir.path().join("data");
    let cfg = config_file(dir.path(), &config);
    let s = Serve::start(&data, &["--config", cfg.to_str().unwrap()]);
    ready(&s);
    let served = snapshot(&s);
    s.sigkill();

    // Restart with the source directory gone: the log alone is enough.
    std::fs::rename(&config, dir.path().join("away")).unwrap();
    let s = Serve::start(&data, &["--config", cfg.to_str().unwrap()]);
    let v = ready(&s);
    assert_eq!(v["version"], served["version"]);
    assert_eq!(snapshot(&s)["resources"], served["resources"], "same resources, same encoded bytes");
    s.sigterm();

    // Back with the directory unchanged: the relist creates no new versions.
    let upserts_before = count(&log_ops(&data), "upsert");
    std::fs::rename(dir.path().join("away"), &config).unwrap();
    let s = Serve::start(&data, &["--config", cfg.to_str().unwrap()]);
    s.wait_for("/debug/sources", "the resync", |_, v| v.as_object().unwrap().values().any(|h| h["synced"] == true));
    assert_eq!(s.version(), served["version"].as_u64().unwrap());
    s.sigterm();
    let ops = log_ops(&data);
    assert_eq!(count(&ops, "upsert"), upserts_before, "no new upserts after an unchanged relist");
    assert_eq!(count(&ops, "delete"), 0);
}

#[test]
fn state_at_reproduces_an_earlier_snapshot_byte_for_byte() {
    let (dir, config, data, s) = serve_quickstart();
    ready(&s);
    let earlier = snapshot(&s);
    let v1 = earlier["version"].as_u64().unwrap();
    let file = config.join("ingress.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("port_value: 10000", "port_value: 10001")).unwrap();
    s.wait_for("/debug/snapshot", "the edit", |_, v| v["version"].as_u64() > Some(v1));
    // Through the running hub...
    let live = keelson(&["state", "--admin", &s.admin, "--at", &v1.to_string(), "--json"]);
    assert!(live.status.success(), "{}", String::from_utf8_lossy(&live.stderr));
    let live: serde_json::Value = serde_json::from_slice(&live.stdout).unwrap();
    assert_eq!(live["resources"], earlier["resources"]);
    s.sigterm();
    // ...and from the data dir in another process, after the hub stopped,
    // translating (here: not) as the hub's config says.
    let hub_config = dir.path().join("untranslated.toml");
    let out = keelson(&[
        "state",
        "--data-dir",
        data.to_str().unwrap(),
        "--config",
        hub_config.to_str().unwrap(),
        "--at",
        &v1.to_string(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state["version"].as_u64(), Some(v1));
    assert_eq!(state["resources"], earlier["resources"], "same keys, versions, bodies and encoded bytes");
}

#[test]
fn the_push_api_needs_its_token_and_returns_the_durable_seq() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let s = Serve::start(&data, &["--api-token-file", token.to_str().unwrap()]);
    ready(&s);
    let path = "/v1/resources/networking.istio.io/VirtualService/default/ratings";
    let body = r#"{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"ratings"},"spec":{"hosts":["ratings"]}}"#;
    assert_eq!(s.put(path, "wrong", body).0, 401);
    let (status, v) = s.put(path, "t0ken", body);
    assert_eq!(status, 200, "{v}");
    let seq = v["seq"].as_u64().unwrap();
    assert!(seq > 0);
    // The same body again changes nothing and appends nothing.
    let (_, again) = s.put(path, "t0ken", body);
    assert_eq!((again["changed"].as_bool(), again["seq"].as_u64()), (Some(false), None));
    // A body that does not validate, or names another object, is a 400 with the reason.
    let (status, v) = s.put(
        path,
        "t0ken",
        r#"{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"ratings"},"spec":{}}"#,
    );
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("spec.hosts"));
    let (status, _) = s.put("/v1/resources/networking.istio.io/VirtualService/default/other", "t0ken", body);
    assert_eq!(status, 400);
    s.wait_for("/debug/snapshot", "the API change", |_, v| v["version"].as_u64() == Some(seq));
    // Reading the data dir of a running hub: told it is locked and how to read it instead.
    let locked = keelson(&["log", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(locked.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&locked.stderr);
    assert!(stderr.contains("locked") && stderr.contains("--admin"), "{stderr}");
    let history = keelson(&["history", "VirtualService/default/ratings", "--admin", &s.admin, "--json"]);
    let text = String::from_utf8(history.stdout).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains(&format!("\"seq\":{seq}")));
}

#[test]
fn a_file_deleted_while_the_hub_was_down_is_deleted_on_resync() {
    let (dir, config, data, s) = serve_quickstart();
    ready(&s);
    s.sigterm();
    std::fs::remove_file(config.join("ingress.yaml")).unwrap();
    let s = serve_untranslated(dir.path(), &data, &config);
    let snap =
        s.wait_for("/debug/snapshot", "the reconcile", |_, v| v["counts"].get("xds.keelson.dev/Listener").is_none());
    assert!(snap["counts"].get("xds.keelson.dev/RouteConfiguration").is_none());
    s.sigterm();
    let ops = log_ops(&data);
    let deletes: Vec<_> = ops.iter().filter(|o| o["op"] == "delete").collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    assert!(deletes.iter().all(|d| d["source_version"] == "resync"));
    drop(dir);
}

#[test]
fn a_cold_hub_waits_for_its_sources_then_publishes_degraded_after_sync_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("keelson.toml");
    let missing = dir.path().join("not-there");
    std::fs::write(&cfg, format!("sources = [\"file:{}\"]\n[snapshot]\nsync_timeout = \"2s\"\n", missing.display()))
        .unwrap();
    let s = Serve::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let (status, _) = s.get("/readyz");
    assert_eq!(status, 503, "no snapshot before the source synced or the timeout passed");
    let v = ready(&s);
    assert_eq!(v["degraded"], true);
    assert_eq!(v["version"], 0);
}

/// Translation is a pure function of the log: the derived resources a
/// running hub served are, byte for byte, what `keelson state --at`
/// rebuilds in other processes, each marked derived with its inputs.
#[test]
fn derived_resources_served_are_what_state_at_rebuilds_in_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let example = workspace_root().join("examples/translation/reviews.yaml");
    std::fs::copy(&example, config.join("reviews.yaml")).unwrap();
    let data = dir.path().join("data");
    let s = Serve::start(&data, &["--source", &format!("file:{}", config.display())]);
    ready(&s);
    let live = snapshot(&s);
    let version = live["version"].as_u64().unwrap();
    let derived = |doc: &serde_json::Value| -> Vec<serde_json::Value> {
        doc["resources"].as_array().unwrap().iter().filter(|r| r["derived"] == true).cloned().collect()
    };
    let served = derived(&live);
    let names: Vec<&str> = served.iter().filter_map(|r| r["key"].as_str()).collect();
    for want in [
        "xds.keelson.dev/Cluster//outbound|9080|v2|reviews.default.svc.cluster.local",
        "xds.keelson.dev/ClusterLoadAssignment//outbound|9080||reviews.default.svc.cluster.local",
        "xds.keelson.dev/Listener//127.0.0.1_9080",
        "xds.keelson.dev/Listener//reviews.default.svc.cluster.local:9080",
        "xds.keelson.dev/RouteConfiguration//9080",
    ] {
        assert!(names.contains(&want), "{want} not served: {names:?}");
    }
    let cla = served
        .iter()
        .find(|r| {
            r["key"]
                .as_str()
                .is_some_and(|k| k.ends_with("ClusterLoadAssignment//outbound|9080||reviews.default.svc.cluster.local"))
        })
        .unwrap();
    assert!(
        cla["inputs"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("discovery.k8s.io/EndpointSlice/default/reviews-v1")),
        "{cla}"
    );
    s.sigterm();
    // Two more processes, from the data dir: the same keys, versions and bytes.
    for _ in 0..2 {
        let out = keelson(&["state", "--data-dir", data.to_str().unwrap(), "--at", &version.to_string(), "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(derived(&state), served, "state --at {version} differs from what was served");
    }
}
