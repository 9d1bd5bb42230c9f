//! `keelson serve` with a Kubernetes source, end to end (issue 11): a hub
//! running in-cluster (the service-account token file and CA, and
//! `KUBERNETES_SERVICE_HOST`/`PORT` pointing at a fake API server that
//! serves TLS and checks the bearer token like kube-apiserver), an
//! istiod-like MCP client (tests/clients/mcp_istiod.py, see real_mcp.rs)
//! subscribed to VirtualServices, and a VirtualService applied in the
//! cluster: it reaches the istiod with the log seq of its change as its
//! version, and `keelson history` tells where it came from.

mod support;

use std::time::Duration;

use keelson_fake_kube::{Auth, FakeConfig, FakeKube};
use serde_json::{Value, json};
use support::real::*;
use support::{Proc, Serve, keelson};

const VS_URL: &str = "networking.istio.io/v1/VirtualService";

fn vs(host: &str) -> Value {
    json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": { "name": "reviews", "namespace": "bookinfo" },
        "spec": { "hosts": [host], "http": [{ "route": [{ "destination": { "host": host } }] }] } })
}

/// The item `bookinfo/reviews` of the newest VirtualService response, if any.
fn reviews(client: &Proc) -> Option<Value> {
    client
        .stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|v| v["event"] == "response" && v["type_url"] == VS_URL)?["items"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == "bookinfo/reviews")
        .cloned()
}

#[test]
fn a_virtualservice_applied_in_the_cluster_reaches_istiod_with_its_seq_as_version() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = FakeConfig { tls: Some(Default::default()), auth: Auth::token("sa-token"), ..FakeConfig::default() };
    let fake = rt.block_on(FakeKube::start(config)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sa = fake.write_service_account(&dir.path().join("sa"), "istio-system", Some("sa-token")).unwrap();
    let toml = dir.path().join("keelson.toml");
    std::fs::write(
        &toml,
        "[[kubernetes]]\nname = \"east\"\nin_cluster = true\nservice_account_dir = \"sa\"\n[snapshot]\nquiet = \"20ms\"\n",
    )
    .unwrap();
    let serve = Serve::start_env(
        &dir.path().join("data"),
        &["--config", toml.to_str().unwrap()],
        &[("KUBERNETES_SERVICE_HOST", &sa.host), ("KUBERNETES_SERVICE_PORT", &sa.port)],
    );
    let diag = || serve_log(&serve);
    poll("the cluster's first listing", WAIT, &diag, |_| (serve.get("/readyz").0 == 200).then_some(()));

    let client = start_mcp_istiod("istiod", dir.path(), &serve.grpc, VS_URL, &[]);
    let diag = || format!("{}\n{}", client.output(), serve_log(&serve));
    poll("istiod's first VirtualService response", WAIT, &diag, |_| {
        client.stdout().contains(&format!("\"type_url\": \"{VS_URL}\"")).then_some(())
    });
    assert!(reviews(&client).is_none(), "the cluster holds no VirtualService yet");

    for host in ["reviews", "reviews-v2"] {
        fake.store().upsert_as(vs(host), "kubectl-client-side-apply").unwrap();
        let item = poll("the VirtualService at istiod", WAIT, &diag, |_| {
            reviews(&client).filter(|i| i["body"]["hosts"][0] == host)
        });
        let (_, history) = serve.get("/v1/history?key=networking.istio.io/VirtualService/bookinfo/reviews");
        let newest = &history.as_array().expect("history")[0];
        assert_eq!(item["version"], newest["seq"].to_string(), "the MCP version is the log seq of the change");
        assert_eq!(newest["origin"], json!({ "kind": "k8s", "name": "east", "cluster": "east" }));
        assert_eq!(newest["author"], "kubectl-client-side-apply", "{newest}");
    }
    let out = keelson(&["history", "--admin", &serve.admin, "VirtualService/bookinfo/reviews"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("k8s/east") && text.contains("by kubectl-client-side-apply"), "{text}");
    client.close_stdin();
    assert!(client.wait_exit(Duration::from_secs(30)).success(), "{}", client.output());
    drop(serve);
    drop(fake);
}
