//! API discovery documents, shaped as the apiserver's legacy (non-aggregated)
//! discovery: `/api` APIVersions, `/apis` APIGroupList, `/apis/{g}` APIGroup,
//! `/api/v1` and `/apis/{g}/{v}` APIResourceList. Clients asking for aggregated
//! discovery (`as=APIGroupDiscoveryList`) fall back to these when the reply is
//! plain `application/json` (client-go `discovery/aggregated_discovery.go`).

use serde_json::{Value, json};

use crate::kinds::ResourceKind;

/// The verbs the real server lists for a CRD or built-in resource.
const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// Versions of `group` in serving order (the first kind's order wins, the rest appended).
fn group_versions<'a>(kinds: impl Iterator<Item = &'a ResourceKind>, group: &str) -> Vec<String> {
    let mut versions: Vec<String> = Vec::new();
    for k in kinds.filter(|k| k.group == group) {
        for v in &k.versions {
            if !versions.contains(v) {
                versions.push(v.clone());
            }
        }
    }
    versions
}

fn version_entry(group: &str, version: &str) -> Value {
    json!({"groupVersion": format!("{group}/{version}"), "version": version})
}

/// `APIGroup` for `group`, or `None` when no visible kind is in it.
pub fn api_group<'a>(kinds: impl Iterator<Item = &'a ResourceKind> + Clone, group: &str) -> Option<Value> {
    let versions = group_versions(kinds, group);
    let preferred = versions.first()?;
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": versions.iter().map(|v| version_entry(group, v)).collect::<Vec<_>>(),
        "preferredVersion": version_entry(group, preferred),
    }))
}

pub fn api_group_list<'a>(kinds: impl Iterator<Item = &'a ResourceKind> + Clone) -> Value {
    let mut groups: Vec<&str> = Vec::new();
    for k in kinds.clone() {
        if !k.group.is_empty() && !groups.contains(&k.group.as_str()) {
            groups.push(&k.group);
        }
    }
    let mut list: Vec<Value> = groups.iter().filter_map(|g| api_group(kinds.clone(), g)).collect();
    for g in &mut list {
        if let Some(obj) = g.as_object_mut() {
            obj.remove("kind");
            obj.remove("apiVersion");
        }
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list})
}

/// `APIResourceList` of one group version, or `None` if nothing is served there.
pub fn api_resource_list<'a>(
    kinds: impl Iterator<Item = &'a ResourceKind>,
    group: &str,
    version: &str,
) -> Option<Value> {
    let resources: Vec<Value> = kinds
        .filter(|k| k.group == group && k.serves(version))
        .map(|k| {
            let mut r = json!({
                "name": k.resource, "singularName": k.singular, "namespaced": k.namespaced,
                "kind": k.kind, "verbs": VERBS,
            });
            if !k.short_names.is_empty() {
                r["shortNames"] = json!(k.short_names);
            }
            if group.ends_with(".istio.io") {
                r["categories"] =
                    json!(["istio-io", group.split('.').next().unwrap_or_default().to_owned() + "-istio-io"]);
            }
            r
        })
        .collect();
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}
