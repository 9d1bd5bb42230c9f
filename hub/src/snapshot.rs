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
}

impl Snapshot {
    pub fn of(state: &State) -> Self {
        Snapshot {
            version: state.version,
            seq: state.seq,
            resources: state.resources.clone(),
            counts: state.counts.clone(),
            built_at: SystemTime::now(),
        }
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
