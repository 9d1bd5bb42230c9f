//! The resources sinks serve: the state's own, overlaid with the derived
//! ones. Kept as its own persistent map, updated by the keys that changed,
//! so a snapshot stays an O(1) clone.

use std::collections::{BTreeMap, BTreeSet};

use super::{TranslateConfig, Translator};
use crate::event::ResourceKey;
use crate::state::{ResourceMap, State};

pub struct Served {
    translator: Option<Translator>,
    resources: ResourceMap,
    derived_counts: BTreeMap<(String, String), usize>,
    started: bool,
    /// Raw objects hidden because a derived resource has their name.
    shadowed: BTreeSet<ResourceKey>,
}

impl Served {
    pub fn new(cfg: &TranslateConfig) -> Self {
        Served {
            translator: cfg.enabled.then(|| Translator::new(cfg.clone())),
            resources: ResourceMap::new(),
            derived_counts: BTreeMap::new(),
            started: false,
            shadowed: BTreeSet::new(),
        }
    }

    /// The served resources of `state`, translated from scratch.
    pub fn of(state: &State, cfg: &TranslateConfig) -> Self {
        let mut served = Served::new(cfg);
        served.update(state, &BTreeSet::new());
        served
    }

    pub fn translator(&self) -> Option<&Translator> {
        self.translator.as_ref()
    }

    /// What the proxies of each Sidecar-scoped namespace see (none when
    /// translation is off).
    pub fn visibilities(&self) -> super::Visibilities {
        self.translator.as_ref().map(|t| t.visibilities().clone()).unwrap_or_default()
    }

    pub fn resources(&self) -> &ResourceMap {
        &self.resources
    }

    /// Objects per kind, derived ones included.
    pub fn counts(&self, state: &State) -> BTreeMap<(String, String), usize> {
        let mut counts = state.counts.clone();
        for (kind, n) in &self.derived_counts {
            *counts.entry(kind.clone()).or_default() += n;
        }
        for k in &self.shadowed {
            if let Some(n) = counts.get_mut(&(k.group.clone(), k.kind.clone())) {
                *n = n.saturating_sub(1);
            }
        }
        counts
    }

    /// Brings the served map up to `state`, given the state's keys changed
    /// since the last call (ignored on the first, which takes everything).
    /// Returns the served keys that changed, derived ones included.
    pub fn update(&mut self, state: &State, changed: &BTreeSet<ResourceKey>) -> BTreeSet<ResourceKey> {
        let Some(translator) = self.translator.as_mut() else {
            self.resources = state.resources.clone();
            return changed.clone();
        };
        let first = !self.started;
        self.started = true;
        let derived = if first { translator.full(state) } else { translator.update(state, changed) };
        if first {
            self.resources = state.resources.clone();
        } else {
            for key in changed {
                match state.resources.get(key) {
                    Some(e) => self.resources.insert(key.clone(), e.clone()),
                    None => self.resources.remove(key),
                };
            }
        }
        for key in &derived {
            let kind = (key.group.clone(), key.kind.clone());
            match translator.get(key) {
                Some(e) => {
                    if self.resources.insert(key.clone(), e.clone()).is_none_or(|old| old.origin != super::origin()) {
                        *self.derived_counts.entry(kind).or_default() += 1;
                    }
                }
                None => {
                    if let Some(raw) = state.resources.get(key) {
                        self.resources.insert(key.clone(), raw.clone());
                    } else {
                        self.resources.remove(key);
                    }
                    if let Some(n) = self.derived_counts.get_mut(&kind) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
        }
        // A raw object whose name a derived resource has is not served:
        // checked for every key that changed on either side.
        let candidates: Vec<&ResourceKey> =
            if first { state.resources.keys().collect() } else { changed.iter().chain(&derived).collect() };
        for key in candidates {
            let clash = state.resources.contains_key(key) && translator.get(key).is_some();
            if clash && self.shadowed.insert(key.clone()) {
                let raw = &state.resources[key];
                tracing::error!(
                    object = %key,
                    source = %raw.origin,
                    "rejected: Keelson derives a {} of this name from the service registry; the raw object is not served (rename it, or disable [translate])",
                    key.kind
                );
                self.resources.insert(key.clone(), translator.get(key).expect("clash").clone());
            } else if !clash {
                self.shadowed.remove(key);
            }
        }
        let mut out = changed.clone();
        out.extend(derived);
        out
    }

    /// Raw objects not served because a derived resource has their name.
    pub fn shadowed(&self) -> &BTreeSet<ResourceKey> {
        &self.shadowed
    }
}
