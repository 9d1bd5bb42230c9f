//! Hostile and oversized input through every way in (issue 9 items 3, 4, 10
//! and 12): the file source, the push API, `keelson validate`, and the human
//! output of `keelson log`. One bad object is rejected alone and says why;
//! nothing a user supplied can forge a line of output.

mod support;

use std::path::Path;
use std::time::Duration;

use keelson_hub::{EventStore, Op, SourceId, SourceKind};
use keelson_storage::OpenOptions;
use support::{Serve, http_request, keelson, wait_until};

const TOKEN: &str = "s3cret";

fn vs_yaml(namespace: &str, name: &str) -> String {
    let name = serde_json::to_string(name).unwrap(); // a JSON string is a YAML string, escapes and all
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  hosts: [r]\n"
    )
}

fn cla_yaml(name: &str, endpoints: usize) -> String {
    let mut y = format!(
        "apiVersion: xds.keelson.dev/v1\nkind: ClusterLoadAssignment\nspec:\n  cluster_name: {name}\n  endpoints:\n  - lb_endpoints:\n"
    );
    for i in 0..endpoints {
        y.push_str(&format!(
            "    - endpoint: {{address: {{socket_address: {{address: 10.{}.{}.{}, port_value: 8080}}}}}}\n",
            i >> 16 & 255,
            i >> 8 & 255,
            i & 255
        ));
    }
    y
}

fn start_with_api(dir: &Path, config: &Path, extra_toml: &str) -> Serve {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let toml = dir.join("keelson.toml");
    std::fs::write(&toml, format!("[snapshot]\nquiet = \"20ms\"\n[file]\nrescan = \"200ms\"\n{extra_toml}")).unwrap();
    Serve::start(
        &dir.join("data"),
        &[
            "--config",
            toml.to_str().unwrap(),
            "--source",
            &format!("file:{}", config.display()),
            "--api-token-file",
            token.to_str().unwrap(),
        ],
    )
}

fn resource_keys(s: &Serve) -> Vec<String> {
    let snap = s.get("/debug/snapshot?resources=1").1;
    snap["resources"].as_array().map_or(vec![], |r| r.iter().map(|r| r["key"].as_str().unwrap().into()).collect())
}

fn source_errors(s: &Serve) -> String {
    s.get("/debug/sources").1.to_string()
}

#[test]
fn a_hostile_name_is_rejected_alone_and_never_forges_output() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("good.yaml"), vs_yaml("default", "good")).unwrap();
    let long = "a".repeat(70_000);
    let evil =
        [vs_yaml("default", &long), vs_yaml("default", "x\n 99  2026-01-01T00:00:00Z  forged"), vs_yaml("a/b", "c")]
            .join("---\n");
    std::fs::write(config.join("evil.yaml"), evil).unwrap();
    let s = start_with_api(dir.path(), &config, "");
    s.wait_for("/readyz", "readiness", |status, _| status == 200);
    assert_eq!(resource_keys(&s), ["networking.istio.io/VirtualService/default/good"]);
    let errors = source_errors(&s);
    assert!(errors.contains("evil.yaml:1: name") && errors.contains("70000 bytes"), "{errors}");
    assert!(errors.contains("metadata.namespace \\\"a/b\\\" is not a valid namespace"), "{errors}");

    // A good file added alongside the bad one is applied.
    std::fs::write(config.join("more.yaml"), vs_yaml("default", "more")).unwrap();
    s.wait_for("/debug/snapshot?resources=1", "more.yaml applied", |_, v| v.to_string().contains("default/more"));

    // The push API runs the same validation: the ambiguous key and a newline are 400s.
    let put = |path: &str, body: &str| http_request(&s.admin, "PUT", path, Some(TOKEN), body);
    let (status, v) = put("/v1/resources/networking.istio.io/VirtualService/a/b/c", &vs_yaml("a/b", "c"));
    assert_eq!(status, 400, "{v}");
    let (status, v) =
        put("/v1/resources/networking.istio.io/VirtualService/default/x%0Ay", &vs_yaml("default", "x\ny"));
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("x\\ny"), "escaped in the error: {v}");

    // `keelson validate` reports the same errors, by file line.
    let out = keelson(&["validate", config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("evil.yaml:1:") && text.contains("evil.yaml:9:") && text.contains("evil.yaml:17:"), "{text}");
    s.sigterm();

    // A location or NACK error with a newline, already in a log (written
    // before names were checked, or sent by a client), stays on its line.
    let store = EventStore::open(&dir.path().join("data"), OpenOptions::default()).unwrap();
    let nack =
        Op::Nack { node: "n\nforged".into(), type_url: "t".into(), version: "1".into(), error: "a\nb\u{202E}".into() };
    store.append(&SourceId::new(SourceKind::Hub, "xds"), &[nack]).unwrap();
    let entries = store.entries_from(1).count();
    drop(store);
    let out = keelson(&["log", "--data-dir", dir.path().join("data").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), entries, "{text}");
    assert!(text.contains("n\\nforged rejected t v1: a\\nb\\u{202e}"), "{text}");
}

#[test]
fn an_oversized_object_is_rejected_and_its_last_good_version_stays() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("cla.yaml"), cla_yaml("big", 10)).unwrap();
    let s = start_with_api(dir.path(), &config, "[limits]\nmax_resource_bytes = 65536\n");
    s.wait_for("/readyz", "readiness", |status, _| status == 200);
    let before = s.version();
    // 8,000 endpoints: ~160 KiB encoded, above the 64 KiB limit.
    std::fs::write(config.join("cla.yaml"), cla_yaml("big", 8_000)).unwrap();
    let errors = s.wait_for("/debug/sources", "the size error", |_, v| v.to_string().contains("max_resource_bytes"));
    assert!(errors.to_string().contains("cla.yaml:1: the object is"), "{errors}");
    assert_eq!(s.version(), before, "the last good version stays");
    let snap = s.get("/debug/snapshot?resources=1").1;
    assert!(snap.to_string().contains("xds.keelson.dev/ClusterLoadAssignment//big"), "{snap}");
    s.sigterm();
}

#[test]
fn an_emptied_directory_is_held_until_an_operator_confirms() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    for i in 0..4 {
        std::fs::write(config.join(format!("vs{i}.yaml")), vs_yaml("default", &format!("vs{i}"))).unwrap();
    }
    let s = start_with_api(dir.path(), &config, "[reconcile]\nconfirm_after = \"1h\"\n");
    s.wait_for("/readyz", "readiness", |status, _| status == 200);
    assert_eq!(resource_keys(&s).len(), 4);

    // Deleting one of four is small: applied at once.
    std::fs::remove_file(config.join("vs0.yaml")).unwrap();
    s.wait_for("/debug/snapshot?resources=1", "vs0 deleted", |_, v| !v.to_string().contains("default/vs0"));

    // The rest vanish at once (an empty mount): held, and shown.
    for i in 1..4 {
        std::fs::remove_file(config.join(format!("vs{i}.yaml"))).unwrap();
    }
    let name = format!("file/{}", config.display());
    let sources = s.wait_for("/debug/sources", "held deletions", |_, v| v[&name]["held_deletions"]["count"] == 3);
    assert_eq!(resource_keys(&s).len(), 3, "nothing deleted while held: {sources}");
    let metrics = support::http_text(&s.admin, "/metrics");
    assert!(metrics.contains(&format!("keelson_deletions_held{{source=\"{name}\"}} 3")), "{metrics}");
    assert!(s.log.lock().unwrap().contains("mass deletion held"));

    let token = dir.path().join("token");
    let out = keelson(&["source", "confirm", &name, "--admin", &s.admin, "--api-token-file", token.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted 3 held object(s)"));
    wait_until("deletions applied", Duration::from_secs(10), |_| resource_keys(&s).is_empty().then_some(()));
    s.sigterm();
}

#[test]
fn times_work_through_the_admin_api_and_long_logs_page() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = EventStore::open(&data, OpenOptions { create: true, repair: false }).unwrap();
        let hub = SourceId::new(SourceKind::Hub, "xds");
        let nacks: Vec<Op> = (0..10_050)
            .map(|i| Op::Nack { node: format!("n{i}"), type_url: "t".into(), version: "1".into(), error: "e".into() })
            .collect();
        store.append(&hub, &nacks).unwrap();
    }
    let s = Serve::start(&data, &[]);
    s.wait_for("/readyz", "readiness", |status, _| status == 200);
    let out = keelson(&["log", "--admin", &s.admin, "--limit", "20000", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 10_050);
    let out = keelson(&["log", "--admin", &s.admin, "--limit", "10001"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 10_001);

    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(5)).to_string();
    let out = keelson(&["state", "--at", &now, "--admin", &s.admin]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("version "), "{}", String::from_utf8_lossy(&out.stdout));
    let out = keelson(&["state", "--at", "yesterday-ish", "--admin", &s.admin]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a seq nor an RFC 3339 time"));
    s.sigterm();
}

#[test]
fn validate_names_an_unreadable_entry_by_path_and_checks_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.yaml"), vs_yaml("default", "good")).unwrap();
    std::fs::write(dir.path().join("bad.yaml"), vs_yaml("default", "Bad_Name")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("nowhere.yaml"), dir.path().join("gone.yaml")).unwrap();
    let out = keelson(&["validate", dir.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("gone.yaml:0: "), "{text}");
    assert!(text.contains("bad.yaml:1: name \"Bad_Name\" is invalid"), "the other files were still checked: {text}");
    assert!(!text.contains("good.yaml"), "{text}");
}
