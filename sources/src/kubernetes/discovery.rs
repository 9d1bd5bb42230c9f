//! Which API version and resource serve a kind in this cluster.
//!
//! Built-in kinds have one stable version (core/v1, discovery.k8s.io/v1).
//! Istio's CRDs have served several over the years: `v1` since Istio 1.22,
//! `v1beta1` and `v1alpha3` before (PROTOCOL.md §6). The version is chosen
//! from API discovery (`/apis/{group}`), newest stable first, so one Keelson
//! reads clusters of any Istio age; the body keeps whatever version it was
//! read in (Keelson's schemas accept every one, PROTOCOL.md §4).

use keelson_hub::kinds::KindInfo;
use kube::core::{ApiResource, GroupVersionKind};

/// Versions tried, in order of preference.
const ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3", "v1alpha1"];

/// What discovery says about a kind.
#[derive(Debug)]
pub enum Resolved {
    Served(ApiResource),
    /// The group or the kind is not served: its CRD is not installed.
    Absent,
}

/// Resolves `info` in the cluster `client` talks to.
pub async fn resolve(client: &kube::Client, info: &KindInfo) -> Result<Resolved, kube::Error> {
    if let Some(resource) = built_in(info) {
        return Ok(Resolved::Served(resource));
    }
    let group = match kube::discovery::oneshot::group(client, info.group).await {
        Ok(group) => group,
        Err(kube::Error::Discovery(_)) => return Ok(Resolved::Absent),
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(Resolved::Absent),
        Err(e) => return Err(e),
    };
    let served: Vec<&str> = group.versions().collect();
    for version in ISTIO_VERSIONS.iter().filter(|v| served.contains(v)) {
        if let Some((resource, _)) = group.versioned_resources(version).into_iter().find(|(r, _)| r.kind == info.kind) {
            return Ok(Resolved::Served(resource));
        }
    }
    Ok(Resolved::Absent)
}

/// Is the kind found through discovery (a CRD, which may come and go)?
pub fn discovered(info: &KindInfo) -> bool {
    built_in(info).is_none()
}

/// Kinds every cluster serves at one version, needing no discovery.
fn built_in(info: &KindInfo) -> Option<ApiResource> {
    let (group, version, plural) = match (info.group, info.kind) {
        ("", "Service") => ("", "v1", "services"),
        ("", "Pod") => ("", "v1", "pods"),
        ("", "Node") => ("", "v1", "nodes"),
        ("discovery.k8s.io", "EndpointSlice") => ("discovery.k8s.io", "v1", "endpointslices"),
        _ => return None,
    };
    Some(ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, info.kind), plural))
}
