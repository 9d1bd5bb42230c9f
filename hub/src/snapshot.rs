//! Immutable, versioned snapshots of the config, as the sinks see it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::event::ResourceKey;
use crate::state::{ResourceEntry, ResourceMap, State};

/// The config at one version. Cheap to build (a clone of the persistent
/// map) and to share (`Arc`); never mutated once published.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Seq of the last event that changed the config.
    pub version: u64,
    /// Last seq applied when it was built (markers included).
    pub seq: u64,
    pub resources: ResourceMap,
    pub counts: BTreeMap<(String, String), usize>,
    pub built_at: SystemTime,
    /// Per `group/kind`: the seq of the last event that changed a resource of
    /// that kind. Kinds unchanged since the hub started hold `base_version`.
    /// The sinks use it as the per-type `version_info`: the state as of that
    /// seq, restricted to the kind, is exactly what a response of it holds.
    pub kind_versions: Arc<BTreeMap<(String, String), u64>>,
    pub base_version: u64,
    /// What changed since the previous published snapshot, so a sink that
    /// saw that one can diff only these keys instead of whole kinds.
    pub changes: Arc<ChangeSet>,
    /// What the proxies of each Sidecar-scoped namespace see
    /// (crate::translate::visibility); empty when no Sidecar scopes any.
    pub visibilities: crate::translate::Visibilities,
}

/// Keys created, updated or deleted between two published snapshots.
#[derive(Clone, Debug, Default)]
pub struct ChangeSet {
    /// Version of the previous published snapshot; `None` for the first.
    pub since: Option<u64>,
    pub keys: std::collections::BTreeSet<ResourceKey>,
}

impl Snapshot {
    /// A snapshot of `state` where no kind has changed since `state` was loaded.
    pub fn of(state: &State) -> Self {
        Self::with_kind_versions(state, Arc::default(), state.version)
    }

    pub fn with_kind_versions(
        state: &State,
        kind_versions: Arc<BTreeMap<(String, String), u64>>,
        base_version: u64,
    ) -> Self {
        Snapshot {
            version: state.version,
            seq: state.seq,
            resources: state.resources.clone(),
            counts: state.counts.clone(),
            built_at: SystemTime::now(),
            kind_versions,
            base_version,
            changes: Arc::default(),
            visibilities: Arc::default(),
        }
    }

    /// A snapshot serving `served` (the state's resources with the derived
    /// ones, crate::translate::Served) rather than the state's alone.
    pub fn serving(
        state: &State,
        served: &crate::translate::Served,
        kind_versions: Arc<BTreeMap<(String, String), u64>>,
        base_version: u64,
    ) -> Self {
        Snapshot {
            resources: served.resources().clone(),
            counts: served.counts(state),
            visibilities: served.visibilities(),
            ..Self::with_kind_versions(state, kind_versions, base_version)
        }
    }

    /// The same snapshot, saying what changed since the previous one.
    pub fn with_changes(mut self, changes: ChangeSet) -> Self {
        self.changes = Arc::new(changes);
        self
    }

    /// The version of one kind: the last seq that changed it.
    pub fn kind_version(&self, group: &str, kind: &str) -> u64 {
        // BTreeMap<(String, String), _> cannot be probed with (&str, &str);
        // the map is small (one entry per kind), so a scan is fine.
        self.kind_versions.iter().find(|((g, k), _)| g == group && k == kind).map_or(self.base_version, |(_, v)| *v)
    }

    /// What the proxies of `namespace` see, if a Sidecar ever scoped it.
    pub fn visibility(&self, namespace: &str) -> Option<&Arc<crate::translate::visibility::Visibility>> {
        self.visibilities.get(namespace)
    }

    /// The version a proxy of `visibility` holds a kind at: the kind's, or
    /// the visibility's if that changed later (a Sidecar edit changes what
    /// the proxy gets without changing any resource of the kind).
    pub fn scoped_kind_version(
        &self,
        group: &str,
        kind: &str,
        visibility: Option<&crate::translate::visibility::Visibility>,
    ) -> u64 {
        self.kind_version(group, kind).max(visibility.map_or(0, |v| v.version))
    }

    /// One resource, if present.
    pub fn get(&self, group: &str, kind: &str, namespace: &str, name: &str) -> Option<&Arc<ResourceEntry>> {
        self.resources.get(&ResourceKey::new(group, kind, namespace, name))
    }

    /// Resources of one kind, in key order.
    pub fn of_kind<'a>(
        &'a self,
        group: &str,
        kind: &str,
    ) -> impl Iterator<Item = (&'a ResourceKey, &'a Arc<ResourceEntry>)> {
        let start = ResourceKey::new(group, kind, "", "");
        let (group, kind) = (group.to_string(), kind.to_string());
        self.resources.range(start..).take_while(move |(k, _)| k.group == group && k.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Body, Event, Op, SourceId, SourceKind};

    #[test]
    fn snapshots_share_entries_and_bodies_with_the_state() {
        // One copy per object: a snapshot holds the state's entries, not copies of them.
        let mut state = State::default();
        let key = ResourceKey::new("", "Service", "default", "a");
        let op = Op::Upsert {
            key: key.clone(),
            source_version: String::new(),
            body: Body::from_value(&serde_json::json!({ "spec": { "ports": [{ "port": 80 }] } })),
            location: String::new(),
            author: String::new(),
        };
        state.apply(Event { seq: 1, at: SystemTime::UNIX_EPOCH, origin: SourceId::new(SourceKind::File, "f"), op });
        let snapshot = Snapshot::of(&state);
        let (in_state, in_snapshot) = (&state.resources[&key], &snapshot.resources[&key]);
        assert!(Arc::ptr_eq(in_state, in_snapshot));
        assert_eq!(in_state.body.json().as_ptr(), in_snapshot.body.json().as_ptr());
    }
}
