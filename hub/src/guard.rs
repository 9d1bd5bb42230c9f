//! The mass-deletion guard: a listing that would wipe most of a source's
//! objects is held until it persists or an operator confirms it.
//!
//! By the reconcile rule, whatever a source stops listing is deleted. That is
//! right for an edit and wrong for a briefly empty ConfigMap mount or a
//! Kubernetes relist that comes back empty after an RBAC change: one such
//! listing would delete the mesh's config at once. So when a submission
//! would shrink a source by more than `max_delete_fraction` of its objects,
//! its deletions are held (everything else in it is applied), reported, and
//! applied only once `confirm_after` passes with the source still not
//! listing them, or when an operator confirms. A held object the source
//! lists again is released. Churn is not shrinkage: a rename deletes one key
//! and adds another, so the guard weighs deletions net of new keys.
//!
//! Explicit deletes through the push API are operator actions and are never
//! held.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use crate::event::{ResourceKey, SourceId, SourceKind};

/// `[reconcile]` settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeletionGuard {
    /// Hold a submission that would delete more than this fraction of a
    /// source's objects (net of objects it adds). 1.0 turns the guard off.
    pub max_delete_fraction: f64,
    /// Apply held deletions once they have been held this long.
    pub confirm_after: Duration,
}

impl Default for DeletionGuard {
    fn default() -> Self {
        DeletionGuard { max_delete_fraction: 0.5, confirm_after: Duration::from_secs(30) }
    }
}

impl DeletionGuard {
    /// Whether deleting `deleting` of a source's `held` objects, while it
    /// adds `adding` new ones, is a mass deletion.
    pub fn trips(&self, held: usize, deleting: usize, adding: usize) -> bool {
        let net = deleting.saturating_sub(adding);
        net > 0 && held > 0 && (net as f64) > self.max_delete_fraction * held as f64
    }

    pub fn applies_to(origin: &SourceId) -> bool {
        !matches!(origin.kind, SourceKind::Api | SourceKind::Hub)
    }
}

/// What `/debug/sources` shows of a source's held deletions.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct HeldReport {
    pub count: usize,
    /// RFC 3339 time the deletions were first held.
    pub since: String,
    /// RFC 3339 time they apply unless the source lists them again.
    pub applies_at: String,
    /// A few of the held keys, to show what would go.
    pub sample: Vec<String>,
}

/// The deletions held for one source.
#[derive(Debug)]
pub struct Held {
    pub keys: BTreeSet<ResourceKey>,
    pub since: Instant,
    since_wall: SystemTime,
}

/// Held deletions of every source.
#[derive(Debug, Default)]
pub struct HeldDeletions {
    by_source: BTreeMap<SourceId, Held>,
}

impl HeldDeletions {
    /// Adds `keys` to what is held for `origin`; the clock starts at the first hold.
    pub fn hold(&mut self, origin: &SourceId, keys: impl IntoIterator<Item = ResourceKey>) {
        let held = self.by_source.entry(origin.clone()).or_insert_with(|| Held {
            keys: BTreeSet::new(),
            since: Instant::now(),
            since_wall: SystemTime::now(),
        });
        held.keys.extend(keys);
    }

    pub fn is_held(&self, origin: &SourceId, key: &ResourceKey) -> bool {
        self.by_source.get(origin).is_some_and(|h| h.keys.contains(key))
    }

    /// The source listed `key` again: its deletion is off. True if it was held.
    pub fn release(&mut self, origin: &SourceId, key: &ResourceKey) -> bool {
        let Some(held) = self.by_source.get_mut(origin) else { return false };
        let released = held.keys.remove(key);
        if held.keys.is_empty() {
            self.by_source.remove(origin);
        }
        released
    }

    /// Removes and returns everything held for `origin`.
    pub fn take(&mut self, origin: &SourceId) -> Option<Held> {
        self.by_source.remove(origin)
    }

    /// The earliest moment some held deletions become due.
    pub fn next_due(&self, guard: &DeletionGuard) -> Option<Instant> {
        self.by_source.values().map(|h| h.since + guard.confirm_after).min()
    }

    /// Sources whose held deletions are due at `now`.
    pub fn due(&self, guard: &DeletionGuard, now: Instant) -> Vec<SourceId> {
        self.by_source.iter().filter(|(_, h)| h.since + guard.confirm_after <= now).map(|(s, _)| s.clone()).collect()
    }

    /// Finds a source by its display name (`file/config`, as `/debug/sources` shows it).
    pub fn source_named(&self, name: &str) -> Option<SourceId> {
        self.by_source.keys().find(|s| s.to_string() == name).cloned()
    }

    pub fn report(&self, origin: &SourceId, guard: &DeletionGuard) -> Option<HeldReport> {
        let held = self.by_source.get(origin)?;
        let rfc3339 = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
        Some(HeldReport {
            count: held.keys.len(),
            since: rfc3339(held.since_wall),
            applies_at: rfc3339(held.since_wall + guard.confirm_after),
            sample: held.keys.iter().take(5).map(ToString::to_string).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_net_shrinkage_past_the_fraction_trips() {
        let g = DeletionGuard::default();
        assert!(!g.trips(10, 5, 0), "half is not more than half");
        assert!(g.trips(10, 6, 0));
        assert!(!g.trips(10, 10, 10), "renaming everything is churn, not a wipe");
        assert!(g.trips(1, 1, 0), "a source's last object is more than half of it");
        assert!(!g.trips(0, 0, 0));
        let off = DeletionGuard { max_delete_fraction: 1.0, ..g };
        assert!(!off.trips(10, 10, 0));
    }

    #[test]
    fn released_keys_leave_the_hold() {
        let origin = SourceId::new(SourceKind::File, "f");
        let k = |n: &str| ResourceKey::new("xds.keelson.dev", "Cluster", "", n);
        let mut h = HeldDeletions::default();
        h.hold(&origin, [k("a"), k("b")]);
        assert!(h.is_held(&origin, &k("a")));
        assert!(h.release(&origin, &k("a")));
        assert!(!h.release(&origin, &k("a")));
        assert_eq!(h.report(&origin, &DeletionGuard::default()).unwrap().count, 1);
        assert!(h.release(&origin, &k("b")));
        assert!(h.next_due(&DeletionGuard::default()).is_none());
        assert_eq!(h.source_named("file/f"), None);
    }
}
