//! Sidecar scoping: which hosts the proxies of a namespace see (istiod's
//! `SidecarScope`, `model/sidecar.go`), so an Envoy is sent the clusters,
//! endpoints, listeners and routes of the services it may call and not
//! every service of the mesh.
//!
//! A Sidecar without `workloadSelector` applies to every proxy of its
//! namespace; its `egress[].hosts` (`namespace/dnsName`) say what they see.
//! Translation publishes one [`Visibility`] per such namespace with the
//! snapshot, and marks every derived resource with what it belongs to
//! ([`Visible`]): the sinks serve a proxy the resources its namespace's
//! visibility admits. Proxies of one namespace share one visibility, so
//! they share every serialized body (crate's DESIGN.md §5: nothing per proxy).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use serde_json::Value;

use super::policy::Warn;
use crate::event::ResourceKey;
use crate::state::State;

/// What a derived resource belongs to, for scoped proxies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Visible {
    /// Raw resources and everything not tied to a host: served to everyone.
    #[default]
    All,
    /// A service's clusters, endpoints and gRPC resources.
    Host(Arc<str>),
    /// A port's outbound listener: served if a visible service is on it.
    Port(u32),
    /// The route table of a port as every service makes it: served to
    /// proxies without a Sidecar (scoped ones get their own, [`Visible::Only`]).
    Unscoped,
    /// A route table of a port as the proxies of this namespace see it.
    Only(Arc<str>),
}

/// What the proxies of one namespace see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Visibility {
    pub namespace: Arc<str>,
    /// The largest seq among the Sidecars that decided it (and their
    /// departures): a proxy whose visibility changed is pushed at a version
    /// no lower than this.
    pub version: u64,
    /// The hosts it sees; `None` once the namespace's Sidecar is gone (the
    /// visibility stays, unrestricted, for its version).
    pub hosts: Option<HashSet<Arc<str>>>,
    /// Ports with a visible service (their listeners are served).
    pub ports: BTreeSet<u32>,
}

impl Visibility {
    pub fn restricts(&self) -> bool {
        self.hosts.is_some()
    }

    /// Is a resource marked `v` served to the proxies of this namespace?
    pub fn admits(&self, v: &Visible) -> bool {
        let Some(hosts) = &self.hosts else { return !matches!(v, Visible::Only(_)) };
        match v {
            Visible::All => true,
            Visible::Host(h) => hosts.contains(h),
            Visible::Port(p) => self.ports.contains(p),
            Visible::Unscoped => false,
            Visible::Only(ns) => *ns == self.namespace,
        }
    }
}

/// Is a resource marked `v` served to a proxy of `visibility` (`None`: a
/// proxy of no scoped namespace, or one without a namespace)?
pub fn admits(visibility: Option<&Visibility>, v: &Visible) -> bool {
    match visibility {
        Some(vis) => vis.admits(v),
        None => !matches!(v, Visible::Only(_)),
    }
}

/// One `egress[].hosts` entry, `namespace/dnsName`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Import {
    /// `None`: any namespace (`*`); `Some("")`: none (`~`).
    namespace: Option<String>,
    host: String,
}

impl Import {
    fn parse(text: &str, own: &str) -> Option<Import> {
        let (ns, host) = text.split_once('/')?;
        let namespace = match ns {
            "*" => None,
            "." => Some(own.to_string()),
            "~" => Some(String::new()),
            ns => Some(ns.to_string()),
        };
        (!host.is_empty()).then(|| Import { namespace, host: host.to_string() })
    }

    /// istiod's `hostMatch`: `*` any, `*.suffix` by suffix, else the host exactly.
    fn matches(&self, namespace: &str, host: &str) -> bool {
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return false;
        }
        match self.host.strip_prefix('*') {
            Some("") => true,
            Some(suffix) => host.ends_with(suffix),
            None => self.host == host,
        }
    }
}

/// A namespace's Sidecar, read: what it imports.
pub struct Sidecar {
    pub key: ResourceKey,
    pub version: u64,
    imports: Vec<Import>,
}

impl Sidecar {
    pub fn sees(&self, namespace: &str, host: &str) -> bool {
        self.imports.iter().any(|i| i.matches(namespace, host))
    }
}

/// The fields of a Sidecar's spec translation applies; the rest is warned.
const KNOWN: &[&str] = &["egress"];

/// The Sidecar that scopes the proxies of `namespace`, among `candidates`
/// (the Sidecars of that namespace): the oldest without a
/// `workloadSelector` (istiod uses the oldest when several apply). Warnings
/// go to `warn`, per object.
pub fn pick(
    state: &State,
    candidates: &BTreeSet<ResourceKey>,
    warn: &mut dyn FnMut(&ResourceKey, String),
) -> (Option<Sidecar>, u64) {
    let mut version = 0;
    let mut found = Vec::new();
    for k in candidates {
        let Some(e) = state.resources.get(k) else { continue };
        version = version.max(e.version);
        let body = e.body.to_value();
        let spec = body.get("spec").cloned().unwrap_or(Value::Null);
        if spec.get("workloadSelector").is_some() {
            warn(
                k,
                "spec.workloadSelector: Sidecars of selected workloads are not applied; only namespace-wide ones"
                    .into(),
            );
            continue;
        }
        found.push((e.created_at, k, e.version, spec));
    }
    found.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut rest = found.into_iter();
    let Some((_, key, v, spec)) = rest.next() else { return (None, version) };
    for (_, other, _, _) in rest {
        warn(
            other,
            format!("Sidecar {key} is older and also applies to namespace {}; only that one is used", key.namespace),
        );
    }
    let mut w = Warn::default();
    w.unknown_fields(&spec, "spec", KNOWN);
    let mut imports = Vec::new();
    let egress = spec.get("egress").and_then(Value::as_array);
    for (i, listener) in egress.into_iter().flatten().enumerate() {
        w.unknown_fields(listener, &format!("spec.egress[{i}]"), &["hosts"]);
        for h in listener.get("hosts").and_then(Value::as_array).into_iter().flatten() {
            let text = h.as_str().unwrap_or_default();
            match Import::parse(text, &key.namespace) {
                Some(import) => imports.push(import),
                None => w
                    .messages
                    .push(format!("spec.egress[{i}].hosts {text:?} is not namespace/host; it imports nothing")),
            }
        }
    }
    if egress.is_none() {
        // istiod: a Sidecar without egress imports what the mesh default does: everything.
        imports.push(Import { namespace: None, host: "*".into() });
    }
    for m in w.messages {
        warn(key, m);
    }
    (Some(Sidecar { key: key.clone(), version: v, imports }), version)
}

/// The visibility of `namespace` under `sidecar`, over `hosts` (every
/// translated host with its namespace and ports).
pub fn visibility(
    namespace: &str,
    sidecar: Option<&Sidecar>,
    version: u64,
    hosts: &BTreeMap<Arc<str>, (String, Vec<u32>)>,
) -> Visibility {
    let mut vis = Visibility { namespace: Arc::from(namespace), version, hosts: None, ports: BTreeSet::new() };
    if let Some(sidecar) = sidecar {
        let mut seen = HashSet::new();
        for (host, (ns, ports)) in hosts {
            if sidecar.sees(ns, host) {
                seen.insert(host.clone());
                vis.ports.extend(ports);
            }
        }
        vis.hosts = Some(seen);
    }
    vis
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_hosts_match_like_istiod() {
        let i = |t: &str| Import::parse(t, "default").unwrap();
        assert!(i("./*").matches("default", "reviews.default.svc.cluster.local"));
        assert!(!i("./*").matches("other", "ratings.other.svc.cluster.local"));
        assert!(i("*/*.example.com").matches("egress", "api.example.com"));
        assert!(!i("*/*.example.com").matches("egress", "example.com"));
        assert!(i("other/ratings.other.svc.cluster.local").matches("other", "ratings.other.svc.cluster.local"));
        assert!(!i("~/*").matches("default", "reviews.default.svc.cluster.local"));
        assert!(Import::parse("reviews", "default").is_none(), "a host without namespace/");
        let vis =
            Visibility { namespace: "default".into(), version: 1, hosts: Some(HashSet::new()), ports: [80].into() };
        assert!(vis.admits(&Visible::Port(80)) && !vis.admits(&Visible::Port(81)));
        assert!(!vis.admits(&Visible::Unscoped) && vis.admits(&Visible::Only("default".into())));
        assert!(!admits(None, &Visible::Only("default".into())) && admits(None, &Visible::Unscoped));
    }
}
