//! Conflicts: one config key from two configured sources.
//!
//! Registry objects are held per cluster (their keys carry it), so two
//! clusters' Services never meet. A config object (an Istio kind, a raw
//! Envoy resource) has one key whoever writes it, and two clusters may both
//! hold `networking.istio.io/VirtualService/default/reviews`. Silently
//! letting the last writer win would make the served config depend on which
//! watch event arrived last. The rule instead: among the configured sources
//! (`--source` flags and `keelson.toml` sections, in order), the first
//! listed wins; the others' versions are kept aside, reported in
//! `/debug/sources` and `keelson_conflicts`, and the best of them takes over
//! when the winner deletes its own. This is the ordering istiod applies to
//! its config clusters (the primary's config store first), made explicit.
//!
//! Sources outside the configured list (the push API) are operator actions
//! and keep last-writer-wins. What is aside lives in memory only: every
//! source relists at start, which sets it aside again.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::event::{Body, Op, ResourceKey, SourceId};
use crate::state::ResourceEntry;

/// A losing source's version of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Aside {
    origin: SourceId,
    body: Body,
    source_version: String,
    location: String,
    author: String,
}

/// What to do with an upsert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it (there is no conflict, or this source wins).
    Apply,
    /// Keep it aside: a source listed earlier holds the key.
    SetAside,
}

/// What `/debug/sources` shows of a source's lost conflicts.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ConflictReport {
    pub count: usize,
    /// A few of the keys, each with the source that holds it.
    pub sample: Vec<String>,
}

/// The versions kept aside, and the order that ranks sources.
#[derive(Debug, Default)]
pub struct Conflicts {
    order: Vec<SourceId>,
    /// By key, then by rank (best first).
    aside: BTreeMap<ResourceKey, BTreeMap<usize, Aside>>,
}

impl Conflicts {
    /// `order`: the configured sources, first = highest precedence.
    pub fn new(order: Vec<SourceId>) -> Self {
        Conflicts { order, aside: BTreeMap::new() }
    }

    fn rank(&self, origin: &SourceId) -> Option<usize> {
        self.order.iter().position(|o| o == origin)
    }

    /// Decides an upsert of `key` by `origin`, given who holds it now. When
    /// `origin` outranks the holder, the holder's version goes aside.
    pub fn upsert(&mut self, key: &ResourceKey, origin: &SourceId, op: &Op, holder: Option<&ResourceEntry>) -> Verdict {
        let Op::Upsert { body, source_version, location, author, .. } = op else { return Verdict::Apply };
        let mine = self.rank(origin);
        let Some(holder) = holder.filter(|h| &h.origin != origin) else {
            self.forget(key, origin);
            return Verdict::Apply;
        };
        match (mine, self.rank(&holder.origin)) {
            (Some(mine), Some(theirs)) if mine > theirs => {
                let aside = Aside {
                    origin: origin.clone(),
                    body: body.clone(),
                    source_version: source_version.clone(),
                    location: location.clone(),
                    author: author.clone(),
                };
                self.aside.entry(key.clone()).or_default().insert(mine, aside);
                Verdict::SetAside
            }
            (Some(mine), Some(theirs)) => {
                self.forget(key, origin);
                let demoted = Aside {
                    origin: holder.origin.clone(),
                    body: holder.body.clone(),
                    source_version: holder.source_version.clone(),
                    location: holder.location.clone(),
                    author: String::new(),
                };
                debug_assert!(mine < theirs);
                self.aside.entry(key.clone()).or_default().insert(theirs, demoted);
                Verdict::Apply
            }
            _ => Verdict::Apply,
        }
    }

    /// May `origin` delete `key`, held by `holder`? A ranked source deletes
    /// only its own version; deleting one it lost drops it from aside.
    pub fn may_delete(&mut self, key: &ResourceKey, origin: &SourceId, holder: &SourceId) -> bool {
        if holder == origin || self.rank(origin).is_none() || self.rank(holder).is_none() {
            return true;
        }
        self.forget(key, origin);
        false
    }

    /// Drops `origin`'s version of `key` from aside; true if it was there.
    pub fn forget(&mut self, key: &ResourceKey, origin: &SourceId) -> bool {
        let Some(rank) = self.rank(origin) else { return false };
        let Some(versions) = self.aside.get_mut(key) else { return false };
        let had = versions.remove(&rank).is_some();
        if versions.is_empty() {
            self.aside.remove(key);
        }
        had
    }

    /// After `origin` finished a listing: what it did not list is no longer
    /// aside, except versions whose location the listing keeps (a partial
    /// listing, such as one Kubernetes kind's relist, says nothing of them).
    pub fn forget_unlisted(&mut self, origin: &SourceId, listed: &HashSet<ResourceKey>, kept: impl Fn(&str) -> bool) {
        let Some(rank) = self.rank(origin) else { return };
        self.aside.retain(|key, versions| {
            if !listed.contains(key) && versions.get(&rank).is_some_and(|a| !kept(&a.location)) {
                versions.remove(&rank);
            }
            !versions.is_empty()
        });
    }

    /// The best version aside for a key its holder just deleted, taken out:
    /// the source it belongs to, and the upsert that restores it.
    pub fn successor(&mut self, key: &ResourceKey) -> Option<(SourceId, Op)> {
        let versions = self.aside.get_mut(key)?;
        let (_, best) = versions.pop_first()?;
        if versions.is_empty() {
            self.aside.remove(key);
        }
        let op = Op::Upsert {
            key: key.clone(),
            source_version: best.source_version,
            body: best.body,
            location: best.location,
            author: best.author,
        };
        Some((best.origin, op))
    }

    /// Keys `origin` lost, with the holder named by `holder_of`.
    pub fn report(
        &self,
        origin: &SourceId,
        holder_of: impl Fn(&ResourceKey) -> Option<SourceId>,
    ) -> Option<ConflictReport> {
        let rank = self.rank(origin)?;
        let lost: Vec<&ResourceKey> =
            self.aside.iter().filter(|(_, v)| v.contains_key(&rank)).map(|(k, _)| k).collect();
        if lost.is_empty() {
            return None;
        }
        let sample = lost
            .iter()
            .take(10)
            .map(|k| match holder_of(k) {
                Some(holder) => format!("{k}: held by {holder}, listed before {origin}"),
                None => format!("{k}"),
            })
            .collect();
        Some(ConflictReport { count: lost.len(), sample })
    }

    /// The configured sources, in precedence order.
    pub fn sources(&self) -> &[SourceId] {
        &self.order
    }
}
