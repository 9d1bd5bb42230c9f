//! `keelson log`, `history`, `verify` and `serve` against data dirs the tests write.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use keelson_hub::{Body, EventStore, Op, ResourceKey, SourceId, SourceKind};
use keelson_storage::OpenOptions;
use serde_json::Value;

fn keelson(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keelson")).args(args).output().unwrap()
}

fn vs(name: &str) -> ResourceKey {
    ResourceKey::new("networking.istio.io", "VirtualService", "default", name)
}

fn upsert(name: &str, hosts: &[&str]) -> Op {
    Op::Upsert {
        key: vs(name),
        source_version: "rv1".into(),
        body: Body::from_value(&serde_json::json!({ "spec": { "hosts": hosts } })),
        location: format!("{name}.yaml:1"),
        author: String::new(),
    }
}

/// seq 1 sync_start, 2 reviews, 3 ratings, 4 sync_done, 5 reviews v2, 6 delete ratings, 7 nack.
fn write_fixture(dir: &Path) {
    let store = EventStore::open(dir, OpenOptions { create: true, repair: false }).unwrap();
    let file = SourceId::new(SourceKind::File, "quickstart");
    store
        .append(&file, &[Op::SyncStart, upsert("reviews", &["reviews"]), upsert("ratings", &["ratings"]), Op::SyncDone])
        .unwrap();
    store.append(&file, &[upsert("reviews", &["reviews", "reviews.example"])]).unwrap();
    store
        .append(&file, &[Op::Delete { key: vs("ratings"), source_version: "rv2".into(), author: String::new() }])
        .unwrap();
    let hub = SourceId::new(SourceKind::Hub, "xds");
    store
        .append(
            &hub,
            &[Op::Nack {
                node: "sidecar~10.0.0.1".into(),
                type_url: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration".into(),
                version: "5".into(),
                error: "bad route".into(),
            }],
        )
        .unwrap();
}

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn log_json_is_the_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    let d = dir.path().to_str().unwrap();
    let lines = json_lines(&keelson(&["log", "--data-dir", d, "--json"]));
    let ops: Vec<&str> = lines.iter().map(|l| l["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["sync_start", "upsert", "upsert", "sync_done", "upsert", "delete", "nack"]);
    let up = &lines[4];
    assert_eq!(up["seq"], 5);
    assert_eq!(up["key"], "networking.istio.io/VirtualService/default/reviews");
    assert_eq!(up["origin"], serde_json::json!({ "kind": "file", "name": "quickstart", "cluster": "" }));
    assert_eq!(up["body"]["spec"]["hosts"][1], "reviews.example");
    assert_eq!(up["location"], "reviews.yaml:1");
    assert_eq!(up["source_version"], "rv1");
    assert_eq!(up["hash"].as_str().unwrap().len(), 32);
    assert!(up["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lines[6]["node"], "sidecar~10.0.0.1");
    assert_eq!(lines[6]["error"], "bad route");

    let page = json_lines(&keelson(&["log", "--data-dir", d, "--json", "--from", "3", "--limit", "2"]));
    assert_eq!(page.iter().map(|l| l["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [3, 4]);
}

#[test]
fn history_lists_versions_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    let d = dir.path().to_str().unwrap();
    let lines = json_lines(&keelson(&["history", "VirtualService/default/ratings", "--data-dir", d, "--json"]));
    assert_eq!(lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [6, 3]);
    assert_eq!(lines[0]["op"], "delete");
    let human = keelson(&["history", "networking.istio.io/VirtualService/default/reviews", "--data-dir", d]);
    let text = String::from_utf8(human.stdout).unwrap();
    let seqs: Vec<&str> = text.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(seqs, ["5", "2"]);
    let bad = keelson(&["history", "reviews", "--data-dir", d]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("group/kind/namespace/name"));
}

#[test]
fn verify_passes_clean_and_names_the_seq_of_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    let d = dir.path().to_str().unwrap();
    let ok = keelson(&["verify", "--data-dir", d]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("OK"));
    {
        let db = sled::open(dir.path().join("sled")).unwrap();
        let t = db.open_tree("log").unwrap();
        let key = [&[b'L'][..], &5u64.to_be_bytes()].concat();
        let mut v = t.get(&key).unwrap().unwrap().to_vec();
        let mid = v.len() / 2;
        v[mid] ^= 0x20;
        t.insert(key, v).unwrap();
        db.flush().unwrap();
    }
    // sled releases its directory lock when its flusher thread lets go of
    // the dropped Db, which can lag the drop on a loaded machine.
    let bad = until_unlocked(&["verify", "--data-dir", d]);
    assert_eq!(bad.status.code(), Some(1), "{}", String::from_utf8_lossy(&bad.stderr));
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(text.contains("DAMAGED") && text.contains("first: seq 5"), "{text}");
    let report: Value = serde_json::from_slice(&keelson(&["verify", "--data-dir", d, "--json"]).stdout).unwrap();
    assert_eq!((report["ok"].as_bool(), report["damage"][0]["seq"].as_u64()), (Some(false), Some(5)));
    // The damaged record is never printed as data.
    let log = keelson(&["log", "--data-dir", d, "--json"]);
    assert_eq!(log.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&log.stderr).contains("record 5 is damaged"));
    // Repair writes it off and keeps the rest.
    let fixed = keelson(&["verify", "--data-dir", d, "--repair", "--json"]);
    let report: Value = serde_json::from_slice(&fixed.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["repair"]["lost"], serde_json::json!([[5, 5]]));
    let lines = json_lines(&keelson(&["log", "--data-dir", d, "--json"]));
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[4]["op"], "lost");
}

#[test]
fn inspecting_a_missing_dir_is_an_error_not_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = keelson(&["log", "--data-dir", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!missing.exists(), "log must not create a data dir");
}

#[test]
fn serve_rebuilds_state_and_checkpoints_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    let d = dir.path().to_str().unwrap();
    // The source directory does not exist: the hub serves its log (a warm start).
    let s = support::Serve::start(dir.path(), &["--source", "file:/nonexistent"]);
    let ready = s.wait_for("/readyz", "readiness", |status, _| status == 200);
    assert_eq!(ready["version"], 6, "the last change (seq 7 is a NACK record, not a change)");
    let log = s.sigterm();
    assert!(log.contains("state rebuilt from the log") && log.contains("resources=1"), "{log}");
    assert!(log.contains("final checkpoint written"), "{log}");
    let report: Value = serde_json::from_slice(&keelson(&["verify", "--data-dir", d, "--json"]).stdout).unwrap();
    assert_eq!(report["checkpoints"], serde_json::json!([7]));
    // The checkpoint reproduces the replayed state.
    let store = EventStore::open(dir.path(), OpenOptions::default()).unwrap();
    let rebuilt = store.state_at(u64::MAX).unwrap();
    assert_eq!(rebuilt.from_checkpoint, 7);
    assert_eq!(rebuilt.state.resources[&vs("reviews")].version, 5);
}

#[test]
fn validate_reports_file_and_line_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "apiVersion: xds.keelson.dev/v1\nkind: Cluster\nspec: { name: c, connect_timeout: 1s }\n")
        .unwrap();
    let out = keelson(&["validate", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "# first\napiVersion: v1\nkind: Service\nmetadata: { name: s }\nspec: {}\n---\napiVersion: xds.keelson.dev/v1\nkind: Cluster\nspec: { name: c2, lb_policy: SOMETIMES }\n").unwrap();
    let out = keelson(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("bad.yaml:7: spec is not a valid envoy.config.cluster.v3.Cluster: at lb_policy"), "{text}");
    assert!(text.contains("1 error(s) in 2 file(s)"), "{text}");

    // A dangling EDS reference is a warning; the files are still valid.
    std::fs::remove_file(&bad).unwrap();
    std::fs::write(&good, "apiVersion: xds.keelson.dev/v1\nkind: Cluster\nspec: { name: c, type: EDS, eds_cluster_config: { eds_config: { ads: {} } } }\n").unwrap();
    let out = keelson(&["validate", dir.path().to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning: xds.keelson.dev/Cluster//c refers to xds.keelson.dev/ClusterLoadAssignment//c"),
        "{text}"
    );
}

#[test]
fn history_diff_shows_what_each_change_did() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    let out =
        keelson(&["history", "VirtualService/default/reviews", "--data-dir", dir.path().to_str().unwrap(), "--diff"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let first = text.find("=== seq 2").expect("oldest version first");
    let second = text.find("=== seq 5").expect("then the change");
    assert!(first < second, "{text}");
    assert!(text[second..].contains("+  - reviews.example"), "{text}");
    assert!(text.contains("by file/quickstart from reviews.yaml:1"), "{text}");
}

/// Runs `keelson args` until it no longer reports the data dir locked (a
/// just-closed sled handle), for at most the test deadline.
fn until_unlocked(args: &[&str]) -> std::process::Output {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = keelson(args);
        if !String::from_utf8_lossy(&out.stderr).contains("is locked by another process")
            || std::time::Instant::now() > end
        {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
