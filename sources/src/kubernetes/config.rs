//! `[[kubernetes]]`: which cluster to watch, how to reach it, what to watch.

use std::path::PathBuf;
use std::time::Duration;

use keelson_hub::kinds::{self, ENVOY_GROUP, KindInfo};
use keelson_hub::{SourceId, SourceKind};

/// Where the service-account credentials of a pod are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to reach the API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    /// A kubeconfig file (`None`: `$KUBECONFIG`, then `~/.kube/config`) and
    /// one of its contexts (`None`: its current context).
    Kubeconfig { path: Option<PathBuf>, context: Option<String> },
    /// Running in a pod: `KUBERNETES_SERVICE_HOST`/`PORT` and the mounted
    /// service-account token and CA (`dir`, by default [`SERVICE_ACCOUNT_DIR`]).
    InCluster { dir: PathBuf },
}

/// One watched cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// The cluster's name in Keelson: provenance, the `@cluster` of its
    /// registry keys, metrics labels. A DNS-1123 label.
    pub name: String,
    pub connection: Connection,
    /// Namespaces to watch; empty = all.
    pub namespaces: Vec<String>,
    /// Only objects with these labels (namespaced kinds; Nodes are always
    /// watched whole, for their topology labels).
    pub label_selector: Option<String>,
    /// The kinds to watch.
    pub kinds: Vec<&'static KindInfo>,
    /// How often a kind whose CRD is not installed is looked for again.
    pub crd_recheck: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("kubernetes source {name:?}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("cannot read the kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
}

impl KubernetesConfig {
    /// A cluster watched through a kubeconfig, every default kind.
    pub fn new(name: &str, connection: Connection) -> Self {
        KubernetesConfig {
            name: name.to_string(),
            connection,
            namespaces: Vec::new(),
            label_selector: None,
            kinds: default_kinds(),
            crd_recheck: Duration::from_secs(30),
        }
    }

    /// The source's identity: `k8s/<name>`, its cluster `<name>`.
    pub fn id(&self) -> SourceId {
        SourceId { kind: SourceKind::Kubernetes, name: self.name.clone(), cluster: self.name.clone() }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid { name: self.name.clone(), reason };
        keelson_hub::names::check_cluster(&self.name).map_err(|e| invalid(format!("name: {e}")))?;
        for ns in &self.namespaces {
            keelson_hub::names::check_namespace(ns).map_err(|e| invalid(format!("namespaces: {e}")))?;
        }
        if self.kinds.is_empty() {
            return Err(invalid("kinds is empty: nothing to watch".into()));
        }
        Ok(())
    }
}

/// Every kind a cluster can hold that Keelson knows: the Istio kinds,
/// Service, EndpointSlice, Pod and Node (raw Envoy kinds are files and API only).
pub fn default_kinds() -> Vec<&'static KindInfo> {
    kinds::KINDS.iter().filter(|k| k.group != ENVOY_GROUP).collect()
}

/// Parses `kinds = [...]` entries: `Kind` or `group/Kind` (`core/Service`).
pub fn parse_kinds(names: &[String]) -> Result<Vec<&'static KindInfo>, String> {
    let known = default_kinds();
    let mut out = Vec::new();
    for name in names {
        let (group, kind) = match name.rsplit_once('/') {
            Some(("core", kind)) => (Some(""), kind),
            Some((group, kind)) => (Some(group), kind),
            None => (None, name.as_str()),
        };
        let matches: Vec<_> =
            known.iter().copied().filter(|k| k.kind == kind && group.is_none_or(|g| g == k.group)).collect();
        match matches.as_slice() {
            [one] if !out.contains(one) => out.push(*one),
            [_] => {}
            [] => {
                let all: Vec<&str> = known.iter().map(|k| k.kind).collect();
                return Err(format!("kinds: {name:?} is not a kind Keelson watches (it knows {})", all.join(", ")));
            }
            _ => return Err(format!("kinds: {name:?} is in several groups; write group/{kind}")),
        }
    }
    Ok(out)
}

/// The cluster name Istio would give a kubeconfig context: the name of the
/// context's cluster (istio `pkg/kube/multicluster`), if it is a DNS label.
pub fn cluster_name_from_kubeconfig(path: Option<&PathBuf>, context: Option<&str>) -> Result<String, ConfigError> {
    let shown = path.map_or_else(|| "$KUBECONFIG or ~/.kube/config".to_string(), |p| p.display().to_string());
    let failed = |reason: String| ConfigError::Kubeconfig { path: shown.clone(), reason };
    let kubeconfig = match path {
        Some(p) => kube::config::Kubeconfig::read_from(p),
        None => kube::config::Kubeconfig::read(),
    }
    .map_err(|e| failed(e.to_string()))?;
    let context = context
        .map(str::to_string)
        .or(kubeconfig.current_context.clone())
        .ok_or_else(|| failed("it has no current-context; name one with k8s:CONTEXT".into()))?;
    let named = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context)
        .ok_or_else(|| failed(format!("it has no context {context:?}")))?;
    let cluster = named.context.as_ref().map(|c| c.cluster.clone()).unwrap_or_default();
    keelson_hub::names::check_cluster(&cluster).map_err(|e| {
        failed(format!(
            "context {context:?}: {e}; give the cluster a name Keelson can use with [[kubernetes]] name = \"...\""
        ))
    })?;
    Ok(cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_by_name_or_group() {
        let k = parse_kinds(&["VirtualService".into(), "core/Service".into(), "discovery.k8s.io/EndpointSlice".into()])
            .unwrap();
        let names: Vec<&str> = k.iter().map(|k| k.kind).collect();
        assert_eq!(names, ["VirtualService", "Service", "EndpointSlice"]);
        assert!(parse_kinds(&["Cluster".into()]).unwrap_err().contains("not a kind Keelson watches"));
        assert!(default_kinds().iter().any(|k| k.kind == "Pod") && default_kinds().iter().any(|k| k.kind == "Node"));
    }

    #[test]
    fn names_must_be_dns_labels() {
        let mut c = KubernetesConfig::new("east", Connection::InCluster { dir: SERVICE_ACCOUNT_DIR.into() });
        assert!(c.validate().is_ok());
        c.name = "arn:aws:eks:eu-west-1:1234:cluster/east".into();
        assert!(c.validate().unwrap_err().to_string().contains("name"));
    }
}
