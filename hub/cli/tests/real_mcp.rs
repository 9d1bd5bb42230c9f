//! `keelson serve`'s MCP-over-xDS server against an istiod-like client
//! (issue 10): hub/cli/tests/clients/mcp_istiod.py, Python grpcio with stubs
//! generated at run time from the project's own `.proto` files.
//!
//! There is no istiod binary on this machine (none is installable here), so
//! the client does on the wire what istiod's config-source client does
//! (istio/istio `pkg/adsc/adsc.go`, shared/PROTOCOL.md §2a): one SotW ADS
//! stream; node `sidecar~<ip>~istiod-<n>.istio-system~istio-system.svc.cluster.local`
//! with GENERATOR=api, ISTIO_REVISION, ISTIO_VERSION=65536.65536.65536;
//! MeshConfig then every Istio type of the 1.23 or 1.24 set, each with a
//! timestamp nonce; every item decoded (Resource, `ns/name`, body on its
//! proto package, no unknown fields) before its ACK; no ACK for a non-empty
//! MeshConfig. Only its NACK switch goes beyond adsc (which never NACKs).
//! Nothing on the server side is faked: the real binary serves a file source.
//!
//! The client comes from `scripts/install-test-deps` (target/test-deps/
//! grpc-venv); without it these tests fail and say so. Everything binds
//! 127.0.0.1, processes are stopped by PID, every wait polls with a deadline.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{Value, json};
use support::real::*;
use support::{Proc, Serve, keelson};

#[path = "real_mcp/fixtures.rs"]
mod fixtures;
use fixtures::*;

// ------------------------------------------------------------ the hub

struct Hub {
    dir: tempfile::TempDir,
    serve: Serve,
}

impl Hub {
    /// `keelson serve --config keelson.toml`: a file source on `config/`
    /// holding OBJECTS (checked by `keelson validate` first) and the mesh
    /// config; ready once its first snapshot is out.
    fn start() -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config).unwrap();
        for (file, text) in OBJECTS {
            std::fs::write(config.join(file), text).unwrap();
        }
        let out = keelson(&["validate", config.to_str().unwrap()]);
        assert!(out.status.success(), "keelson validate: {}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        std::fs::write(dir.path().join("mesh.yaml"), MESH_CONFIG).unwrap();
        let toml = "sources = [\"file:config\"]\n[mcp]\nmesh_config = \"mesh.yaml\"\n[file]\nrescan = \"200ms\"\n";
        std::fs::write(dir.path().join("keelson.toml"), toml).unwrap();
        let toml = dir.path().join("keelson.toml");
        let serve = Serve::start(&dir.path().join("data"), &["--config", toml.to_str().unwrap()]);
        serve.wait_for("/readyz", "a first snapshot", |status, _| status == 200);
        Hub { dir, serve }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join("config").join(name)
    }

    /// Replaces `from` by `to` in a config file, atomically (a hidden temp
    /// file renamed over it), so the source never reads half a file.
    fn edit(&self, name: &str, from: &str, to: &str) {
        let path = self.file(name);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{name} has no {from:?}");
        let tmp = self.dir.path().join("config").join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text.replace(from, to)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    fn status_text(&self) -> String {
        let out = keelson(&["status", "--admin", &self.serve.admin]);
        assert!(out.status.success(), "keelson status: {}", String::from_utf8_lossy(&out.stderr));
        stdout(&out)
    }

    /// `nack` records of the hub's log (`keelson log --json`) for `node`.
    fn nack_records(&self, node: &str) -> Vec<Value> {
        let out = keelson(&["log", "--admin", &self.serve.admin, "--json"]);
        assert!(out.status.success(), "keelson log: {}", String::from_utf8_lossy(&out.stderr));
        stdout(&out)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["op"] == "nack" && e["node"] == node)
            .collect()
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------- the client

/// One run of mcp_istiod.py: one ADS stream, as one istiod.
struct Istiod {
    proc: Proc,
    node: String,
    set: Vec<&'static str>,
}

/// The last response per type_url.
type State = BTreeMap<String, Value>;

impl Istiod {
    fn start(hub: &Hub, pod: &str, version: &str, extra: &[&str]) -> Istiod {
        let istio_version = if version == "1.23" { IstioVersion::V1_23 } else { IstioVersion::V1_24 };
        let set = istio_types(istio_version);
        let mut args = vec!["--pod", pod];
        args.extend_from_slice(extra);
        let proc = start_mcp_istiod(pod, hub.dir.path(), &hub.serve.grpc, &set.join(","), &args);
        Istiod { proc, node: format!("sidecar~127.0.0.1~{pod}.istio-system~istio-system.svc.cluster.local"), set }
    }

    /// Every line the client printed so far (one JSON object each).
    fn lines(&self) -> Vec<Value> {
        let out = self.proc.stdout();
        out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
    }

    /// Every response reported so far, in arrival order.
    fn responses(&self) -> Vec<Value> {
        self.lines().into_iter().filter(|v| v["event"] == "response").collect()
    }

    /// Polls the responses until `f` finds what it wants; panics (with both
    /// sides' output) at the deadline or if the client exits first.
    fn wait<T>(&self, hub: &Hub, what: &str, mut f: impl FnMut(&[Value]) -> Option<T>) -> T {
        let diag = || self.diag(hub);
        poll(what, WAIT, &diag, |last| {
            if let Some(st) = self.proc.try_status() {
                panic!("{} exited ({st}) while waiting for {what}\n{}", self.proc.name, self.diag(hub));
            }
            let r = self.responses();
            *last = format!("{} responses", r.len());
            f(&r)
        })
    }

    /// Waits for adsc's HasSynced (a response for every type asked) and
    /// returns the state, checking the type_url set is exactly the request.
    fn synced(&self, hub: &Hub) -> State {
        self.wait(hub, "a response for every requested type", |_| {
            self.lines().iter().any(|l| l["event"] == "synced").then_some(())
        });
        let state = latest(&self.responses(), usize::MAX);
        let want: BTreeSet<&str> = self.set.iter().copied().chain([MESH]).collect();
        assert_eq!(state.keys().map(String::as_str).collect::<BTreeSet<_>>(), want, "type_urls answered");
        state
    }

    fn diag(&self, hub: &Hub) -> String {
        format!("{}\n{}\n--- syncz: {}", self.proc.output(), serve_log(&hub.serve), syncz(&hub.serve))
    }

    /// Closes its stdin (the client's signal to end) and expects exit 0: it
    /// saw no protocol violation in the whole run.
    fn stop(self, hub: &Hub) {
        self.proc.close_stdin();
        let st = self.proc.wait_exit(WAIT);
        assert!(st.success(), "{} exit {st}\n{}", self.proc.name, self.diag(hub));
    }
}

/// The last response per type among the first `upto` responses.
fn latest(responses: &[Value], upto: usize) -> State {
    let mut state = State::new();
    for r in responses.iter().take(upto) {
        state.insert(r["type_url"].as_str().unwrap().to_string(), r.clone());
    }
    state
}

/// A response's items by name.
fn items(response: &Value) -> BTreeMap<String, Value> {
    response["items"].as_array().unwrap().iter().map(|i| (i["name"].as_str().unwrap().to_string(), i.clone())).collect()
}

/// (type_url, name) → item version over a state.
fn versions(state: &State) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for (t, r) in state {
        for (name, item) in items(r) {
            out.insert((t.clone(), name), item["version"].as_str().unwrap().to_string());
        }
    }
    out
}

/// Checks every Istio type's items as istiod would take them: names,
/// body messages, versions (log seqs), and that the names are `expected`.
fn check_items(state: &State, expected: impl Fn(&str) -> BTreeSet<String>) {
    for (t, r) in state.iter().filter(|(t, _)| *t != MESH) {
        assert_eq!(r["type_url"], t.as_str());
        let got = items(r);
        assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), expected(kind_of(t)), "names under {t}");
        for (name, item) in &got {
            assert_eq!(name.split('/').count(), 2, "{name}");
            assert_eq!(item["body_type"], body_message(kind_of(t)), "{t} {name}");
            let v: u64 = item["version"].as_str().unwrap().parse().unwrap_or_else(|_| panic!("version of {item}"));
            assert!(v > 0, "{item}");
        }
    }
}

/// None when `node` is an MCP client whose tracked types are exactly `set`
/// (MeshConfig is not tracked: istiod never ACKs it), each SYNCED at the
/// version its last response carried; else what differs.
fn mcp_sync_mismatch(z: &Value, node: &str, set: &[&str], state: &State) -> Option<String> {
    let Some(p) = proxy(z, node) else { return Some(format!("{node} not in syncz")) };
    if p["protocol"] != "MCP" || p["stream"] != "sotw" || p["connected"] != true {
        return Some(format!("protocol/stream/connected: {} {} {}", p["protocol"], p["stream"], p["connected"]));
    }
    let types = p["types"].as_array().unwrap();
    let tracked: BTreeSet<&str> = types.iter().map(|t| t["type_url"].as_str().unwrap()).collect();
    if tracked != set.iter().copied().collect() {
        return Some(format!("tracked types {tracked:?}"));
    }
    types
        .iter()
        .find(|t| {
            let v = &state[t["type_url"].as_str().unwrap()]["version_info"];
            t["status"] != "SYNCED" || t["acked_version"] != *v || t["sent_version"] != *v
        })
        .map(|t| format!("not SYNCED at its version: {t}"))
}

fn wait_mcp_synced(hub: &Hub, c: &Istiod, state: &State) -> Value {
    poll(&format!("syncz: {} SYNCED on every type", c.node), WAIT, &|| c.diag(hub), |last| {
        let z = syncz(&hub.serve);
        match mcp_sync_mismatch(&z, &c.node, &c.set, state) {
            None => Some(z),
            Some(why) => {
                *last = why;
                None
            }
        }
    })
}

fn find_type<'a>(set: &[&'a str], kind: &str) -> &'a str {
    set.iter().copied().find(|t| kind_of(t) == kind).unwrap()
}

// -------------------------------------------------------------- tests

#[test]
fn both_istio_version_sets_are_answered_decoded_and_synced() {
    let hub = Hub::start();
    // Two istiods at once, one per Istio version set, one stream each.
    let old = Istiod::start(&hub, "istiod-123", "1.23", &[]);
    let new = Istiod::start(&hub, "istiod-124", "1.24", &[]);
    let mesh: Value = serde_yaml::from_str(MESH_CONFIG).unwrap();
    for c in [&old, &new] {
        let state = c.synced(&hub);
        check_items(&state, all_names);
        // Bodies as the generated classes parsed them (proto3 JSON).
        let vs = items(&state[find_type(&c.set, "VirtualService")]);
        let weights: Vec<&Value> = vs["bookinfo/reviews"]["body"]["http"][1]["route"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| &r["weight"])
            .collect();
        assert_eq!(weights, [&json!(50), &json!(50)], "{}", vs["bookinfo/reviews"]);
        let dr = &items(&state[find_type(&c.set, "DestinationRule")])["bookinfo/reviews"]["body"];
        let subsets: Vec<&Value> = dr["subsets"].as_array().unwrap().iter().map(|s| &s["name"]).collect();
        assert_eq!(subsets, [&json!("v1"), &json!("v2"), &json!("v3")]);
        assert_eq!(dr["trafficPolicy"]["loadBalancer"]["simple"], "RANDOM");
        let gw = &items(&state[find_type(&c.set, "Gateway")])["bookinfo/bookinfo-gateway"]["body"];
        assert_eq!(gw["servers"][1]["tls"], json!({"mode": "SIMPLE", "credentialName": "bookinfo-secret"}));
        let se = &items(&state[find_type(&c.set, "ServiceEntry")])["bookinfo/external-svc-https"]["body"];
        // MESH_EXTERNAL is the enum's zero: absent in proto3 JSON.
        assert_eq!((&se["location"], &se["resolution"]), (&Value::Null, &json!("DNS")), "{se}");
        assert_eq!(se["ports"], json!([{"number": 443, "name": "https", "protocol": "TLS"}]));
        let ap = &items(&state[find_type(&c.set, "AuthorizationPolicy")])["foo/httpbin"]["body"];
        assert_eq!(ap["rules"][0]["when"][0]["key"], "request.auth.claims[iss]");
        let pa = &items(&state[find_type(&c.set, "PeerAuthentication")])["istio-system/default"]["body"];
        assert_eq!(pa["mtls"]["mode"], "STRICT");
        let tel = &items(&state[find_type(&c.set, "Telemetry")])["istio-system/mesh-default"]["body"];
        assert_eq!(tel["tracing"][0]["randomSamplingPercentage"], 10.0);
        // Labels travel in the metadata (istiod's revision rule reads them).
        assert_eq!(vs["bookinfo/ratings-canary"]["labels"], json!({"istio.io/rev": "canary"}));
        // MeshConfig: unwrapped, exactly the configured one, and not ACKed.
        assert_eq!(state[MESH]["mesh_config"], mesh, "MeshConfig as istiod decodes it");
        assert_eq!(state[MESH]["reply"], "none");
        let acked = state.values().filter(|r| r["reply"] == "ack").count();
        assert_eq!(acked, c.set.len(), "every Istio type ACKed");
        wait_mcp_synced(&hub, c, &state);
    }
    // `keelson status`: both as MCP clients with all 14 Istio types SYNCED.
    let text = hub.status_text();
    for c in [&old, &new] {
        let row = text.lines().find(|l| l.starts_with(&c.node)).unwrap_or_else(|| panic!("{} in\n{text}", c.node));
        assert!(row.contains(" MCP ") && row.contains("SYNCED 14/14"), "row {row:?} in\n{text}");
    }
    assert!(!text.contains("NACK"), "{text}");
    old.stop(&hub);
    new.stop(&hub);
}

#[test]
fn an_edit_changes_only_that_version_a_delete_removes_and_a_reconnect_gets_full_state() {
    let hub = Hub::start();
    let c = Istiod::start(&hub, "istiod-0", "1.24", &[]);
    let before = c.synced(&hub);
    wait_mcp_synced(&hub, &c, &before);
    let vs_type = find_type(&istio_types(IstioVersion::V1_24), "VirtualService");
    let key = (vs_type.to_string(), "bookinfo/reviews".to_string());
    let v0 = versions(&before);

    // Edit one object: its version changes, every other keeps its own.
    let mark = c.responses().len();
    hub.edit(
        "vs-reviews.yaml",
        "weight: 50\n        - destination: {host: reviews, subset: v3}\n          weight: 50",
        "weight: 80\n        - destination: {host: reviews, subset: v3}\n          weight: 20",
    );
    let n = c.wait(&hub, "a VirtualService response with the edit", |rs| {
        rs.iter().enumerate().skip(mark).find_map(|(i, r)| {
            let it = items(r);
            (r["type_url"] == vs_type && it.get("bookinfo/reviews")?["body"]["http"][1]["route"][0]["weight"] == 80)
                .then_some(i + 1)
        })
    });
    let after_edit = latest(&c.responses(), n);
    wait_mcp_synced(&hub, &c, &after_edit);
    let rs = c.responses();
    let v1 = versions(&latest(&rs, rs.len()));
    assert_eq!(v1.keys().collect::<Vec<_>>(), v0.keys().collect::<Vec<_>>(), "same objects");
    assert_ne!(v1[&key], v0[&key], "the edited object has a new version");
    for (k, v) in &v0 {
        if *k != key {
            assert_eq!(&v1[k], v, "{k:?} was not edited: same version");
        }
    }

    // Delete a file: its object is gone from the next Gateway response.
    let mark = rs.len();
    let gw_type = find_type(&istio_types(IstioVersion::V1_24), "Gateway");
    std::fs::remove_file(hub.file("gateway.yaml")).unwrap();
    let n = c.wait(&hub, "a Gateway response without the deleted object", |rs| {
        rs.iter().enumerate().skip(mark).find_map(|(i, r)| (r["type_url"] == gw_type).then_some(i + 1))
    });
    let rs = c.responses();
    assert_eq!(rs[n - 1]["items"], json!([]), "full state: the deleted Gateway is absent");
    let after_delete = latest(&rs, rs.len());
    wait_mcp_synced(&hub, &c, &after_delete);
    let v2 = versions(&after_delete);
    let mut want = v1.clone();
    want.remove(&(gw_type.to_string(), "bookinfo/bookinfo-gateway".to_string()));
    assert_eq!(v2, want, "only the Gateway left; nothing else changed");
    c.stop(&hub);

    // The same istiod again (adsc's reconnect): a new stream, full state.
    let again = Istiod::start(&hub, "istiod-0", "1.24", &[]);
    let state = again.synced(&hub);
    assert_eq!(versions(&state), want, "a reconnect gets the full current state, same versions");
    let vs = items(&state[vs_type]);
    assert_eq!(vs["bookinfo/reviews"]["body"]["http"][1]["route"][1]["weight"], 20);
    wait_mcp_synced(&hub, &again, &state);
    again.stop(&hub);
}

#[test]
fn istio_revision_selects_the_objects_labelled_for_it() {
    let hub = Hub::start();
    let canary = Istiod::start(&hub, "istiod-1", "1.24", &["--revision", "canary"]);
    let stable = Istiod::start(&hub, "istiod-2", "1.24", &["--revision", "stable"]);
    let (cs, ss) = (canary.synced(&hub), stable.synced(&hub));
    // Unlabelled objects go to both; the canary-labelled one to canary only.
    check_items(&cs, all_names);
    check_items(&ss, |kind| {
        let mut names = all_names(kind);
        names.remove("bookinfo/ratings-canary");
        names
    });
    wait_mcp_synced(&hub, &canary, &cs);
    wait_mcp_synced(&hub, &stable, &ss);
    canary.stop(&hub);
    stable.stop(&hub);
}

#[test]
fn a_nack_is_recorded_shown_and_that_version_not_resent() {
    let hub = Hub::start();
    let dr_type = find_type(&istio_types(IstioVersion::V1_24), "DestinationRule");
    const ERROR: &str = "test NACK: subset v3 refused";
    let c = Istiod::start(&hub, "istiod-3", "1.24", &["--nack-type", dr_type, "--nack-message", ERROR]);
    let state = c.synced(&hub);
    assert_eq!(state[dr_type]["reply"], "nack");
    let nacked = state[dr_type]["version_info"].as_str().unwrap().to_string();

    // syncz: DestinationRule NACKED at that version with the client's error;
    // every other type SYNCED (once the client's ACKs are in).
    let settled = |z: &Value| {
        let types = proxy(z, &c.node)?["types"].as_array()?.clone();
        let dr = types.iter().find(|t| t["type_url"] == dr_type)?.clone();
        let others_synced = types.iter().filter(|t| t["type_url"] != dr_type).all(|t| t["status"] == "SYNCED");
        (types.len() == istio_types(IstioVersion::V1_24).len() && dr["status"] == "NACKED" && others_synced)
            .then_some(dr)
    };
    let dr = poll("syncz: DestinationRule NACKED, the rest SYNCED", WAIT, &|| c.diag(&hub), |last| {
        let z = syncz(&hub.serve);
        *last = z.to_string();
        settled(&z)
    });
    assert_eq!((&dr["nacked_version"], &dr["error"]), (&json!(nacked), &json!(ERROR)), "{dr}");
    assert_eq!(dr["acked_version"], Value::Null, "nothing of this type was ever accepted: {dr}");
    // `keelson status`: the row and a NACK line.
    let text = hub.status_text();
    let row = text.lines().find(|l| l.starts_with(&c.node)).unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("NACKED 1/14"), "row {row:?}");
    let line = format!("NACK {} DestinationRule version {nacked}: {ERROR}", c.node);
    assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    // The log: one nack record for that type and version.
    let records = poll("a nack record in the log", WAIT, &|| c.diag(&hub), |last| {
        let r = hub.nack_records(&c.node);
        *last = format!("{r:?}");
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!((&records[0]["type_url"], &records[0]["version"]), (&json!(dr_type), &json!(nacked)));
    assert_eq!(records[0]["error"], ERROR);

    // Another type changes: it is pushed, the NACKed DestinationRule is not.
    let mark = c.responses().len();
    let gw_type = find_type(&istio_types(IstioVersion::V1_24), "Gateway");
    hub.edit("gateway.yaml", "credentialName: bookinfo-secret", "credentialName: bookinfo-secret-2");
    c.wait(&hub, "the Gateway edit", |rs| rs.iter().skip(mark).any(|r| r["type_url"] == gw_type).then_some(()));
    // Then the DestinationRule itself changes: the next DestinationRule
    // response is the new version. The stream is ordered, so a re-send of
    // the NACKed version would have come before it.
    hub.edit("dr-reviews.yaml", "simple: RANDOM", "simple: LEAST_REQUEST");
    let rs = c.wait(&hub, "the DestinationRule edit", |rs| {
        rs.iter().skip(mark).any(|r| r["type_url"] == dr_type).then(|| rs.to_vec())
    });
    let drs: Vec<&Value> = rs.iter().skip(mark).filter(|r| r["type_url"] == dr_type).collect();
    assert_eq!(drs.len(), 1, "one DestinationRule response after the NACK: {drs:?}");
    assert_ne!(drs[0]["version_info"], json!(nacked), "the NACKed version is not sent again");
    let dr = &items(drs[0])["bookinfo/reviews"]["body"];
    assert_eq!(dr["trafficPolicy"]["loadBalancer"]["simple"], "LEAST_REQUEST");
    assert_eq!(drs[0]["reply"], "ack");
    // The client ACKs the new version (only the first was NACKed): SYNCED.
    let rs = c.responses();
    wait_mcp_synced(&hub, &c, &latest(&rs, rs.len()));
    assert_eq!(hub.nack_records(&c.node).len(), 1, "the NACK recorded once");
    c.stop(&hub);
}
