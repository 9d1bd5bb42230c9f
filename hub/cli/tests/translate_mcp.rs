//! The merged registry for istiods (issue 12, item 8): with `[translate]
//! mcp_registry = true`, every Kubernetes service of every cluster reaches
//! an istiod-like MCP client (tests/clients/mcp_istiod.py, see real_mcp.rs
//! for how it mirrors istiod's pkg/adsc) as a ServiceEntry with a
//! workloadSelector and WorkloadEntries carrying localities and pod labels,
//! each decoding as Istio's own protos with no unknown field. An endpoint
//! going not ready takes its WorkloadEntry away.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::real::*;
use support::{Proc, Serve, workspace_root};

const SE_URL: &str = "networking.istio.io/v1/ServiceEntry";
const WE_URL: &str = "networking.istio.io/v1/WorkloadEntry";

/// The items of the newest response of `type_url`, by name.
fn items(client: &Proc, type_url: &str) -> Option<Vec<Value>> {
    let newest = client
        .stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|v| v["event"] == "response" && v["type_url"] == type_url)?;
    newest["items"].as_array().cloned()
}

fn names(items: &[Value]) -> Vec<&str> {
    items.iter().filter_map(|i| i["name"].as_str()).collect()
}

#[test]
fn istiod_gets_the_merged_registry_as_service_entries_and_workload_entries() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::copy(workspace_root().join("examples/translation/reviews.yaml"), config.join("reviews.yaml")).unwrap();
    let toml = dir.path().join("keelson.toml");
    let text = format!(
        "sources = [\"file:{}\"]\n[translate]\nmcp_registry = true\n[snapshot]\nquiet = \"20ms\"\n[file]\nrescan = \"500ms\"\n",
        config.display()
    );
    std::fs::write(&toml, text).unwrap();
    let serve = Serve::start(&dir.path().join("data"), &["--config", toml.to_str().unwrap()]);
    serve.wait_for("/readyz", "a first snapshot", |status, _| status == 200);

    let client = start_mcp_istiod("istiod", dir.path(), &serve.grpc, &format!("{SE_URL},{WE_URL}"), &[]);
    let diag = || format!("{}\n{}", client.output(), serve_log(&serve));
    let entries = poll("istiod's ServiceEntries", WAIT, &diag, |_| items(&client, SE_URL).filter(|i| !i.is_empty()));
    assert_eq!(names(&entries), ["default/keelson-reviews"], "{entries:?}");
    let body = &entries[0]["body"];
    assert_eq!(body["hosts"], serde_json::json!(["reviews.default.svc.cluster.local"]), "{body}");
    assert_eq!(body["resolution"], "STATIC");
    assert_eq!(body["workloadSelector"]["labels"]["keelson.dev/service"], "reviews");

    let workloads = poll("istiod's WorkloadEntries", WAIT, &diag, |_| items(&client, WE_URL).filter(|i| i.len() == 2));
    for w in &workloads {
        let b = &w["body"];
        assert_eq!(b["labels"]["keelson.dev/service"], "reviews", "selected by the entry: {w}");
        assert_eq!(b["locality"], "/z1/", "the slice's zone: {w}");
        assert!(b["labels"]["version"].is_string(), "the pod's labels, for subsets: {w}");
    }
    let version = |w: &Value| w["body"]["labels"]["version"].as_str().map(str::to_string);
    let mut versions: Vec<String> = workloads.iter().filter_map(version).collect();
    versions.sort();
    assert_eq!(versions, ["v1", "v2"]);

    // v2's endpoint goes not ready: its WorkloadEntry goes, v1's stays.
    let file = config.join("reviews.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let v2_at = text.find("name: reviews-v2\n").expect("the v2 slice");
    let ready_at = v2_at + text[v2_at..].find("ready: true").expect("its readiness");
    let edited = format!("{}ready: false{}", &text[..ready_at], &text[ready_at + "ready: true".len()..]);
    let tmp = config.join(".reviews.yaml.tmp");
    std::fs::write(&tmp, edited).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let left = poll("v2's WorkloadEntry to go", WAIT, &diag, |_| items(&client, WE_URL).filter(|i| i.len() == 1));
    assert_eq!(version(&left[0]).as_deref(), Some("v1"), "{left:?}");
    client.close_stdin();
    assert!(client.wait_exit(Duration::from_secs(30)).success(), "{}", client.output());
}
