//! deploy/kubernetes/clusterrole.yaml grants exactly what the source uses:
//! list and watch of every kind it watches by default, and nothing more.

use std::collections::BTreeSet;

use keelson_sources::kubernetes::config::default_kinds;

#[test]
fn the_cluster_role_lists_exactly_the_watched_kinds_with_list_and_watch() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes/clusterrole.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let role: serde_json::Value = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::from_value::<serde_json::Value>(serde::Deserialize::deserialize(d).unwrap()).unwrap())
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let verbs: BTreeSet<&str> = rule["verbs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(verbs, BTreeSet::from(["list", "watch"]), "{rule}");
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                granted.insert((group.as_str().unwrap().to_string(), resource.as_str().unwrap().to_string()));
            }
        }
    }
    // The resource (plural) names as an API server serves them: the fake's
    // catalog, which its own tests check against kubectl's discovery.
    let catalog = keelson_fake_kube::default_kinds();
    let needed: BTreeSet<(String, String)> = default_kinds()
        .iter()
        .map(|k| {
            let served = catalog.iter().find(|c| c.group == k.group && c.kind == k.kind).expect("in the catalog");
            (k.group.to_string(), served.resource.clone())
        })
        .collect();
    assert_eq!(granted, needed);
}
