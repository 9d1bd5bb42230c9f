//! `State`: the config as of one point in the log, folded from events.

use std::collections::BTreeMap;

use crate::event::{Body, Event, Op, ResourceKey, SourceId};

/// One object as the state holds it, with its provenance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceEntry {
    /// Seq of the event that last changed this object: its version.
    pub version: u64,
    pub body: Body,
    pub origin: SourceId,
    pub source_version: String,
    pub location: String,
}

/// What applying one event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated,
    Deleted,
    /// An identical re-upsert, a delete of something absent, or a non-resource event.
    Unchanged,
}

/// The materialized config after applying the log up to `seq`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The last seq applied: the version of this state.
    pub seq: u64,
    pub resources: BTreeMap<ResourceKey, ResourceEntry>,
}

impl State {
    /// Applies one event, taking it by value so replay moves keys and bodies
    /// into the map instead of cloning them. Events must come in seq order.
    pub fn apply(&mut self, ev: Event) -> Applied {
        debug_assert!(ev.seq > self.seq, "event {} applied after {}", ev.seq, self.seq);
        self.seq = ev.seq;
        match ev.op {
            Op::Upsert { key, source_version, body, location } => {
                let entry = ResourceEntry { version: ev.seq, body, origin: ev.origin, source_version, location };
                match self.resources.get_mut(&key) {
                    // Same content: the version does not move, so a relist is free.
                    Some(old) if old.body.hash() == entry.body.hash() => Applied::Unchanged,
                    Some(old) => {
                        *old = entry;
                        Applied::Updated
                    }
                    None => {
                        self.resources.insert(key, entry);
                        Applied::Created
                    }
                }
            }
            Op::Delete { key, .. } => match self.resources.remove(&key) {
                Some(_) => Applied::Deleted,
                None => Applied::Unchanged,
            },
            Op::SyncStart | Op::SyncDone | Op::Nack { .. } => Applied::Unchanged,
        }
    }

    /// Notes that `seq` was passed without an event (a compacted or lost slot).
    pub fn skip_to(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SourceKind;
    use std::time::SystemTime;

    fn ev(seq: u64, op: Op) -> Event {
        Event { seq, at: SystemTime::UNIX_EPOCH, origin: SourceId::new(SourceKind::File, "f"), op }
    }

    fn upsert(name: &str, v: i64) -> Op {
        Op::Upsert {
            key: ResourceKey::new("", "Service", "default", name),
            source_version: String::new(),
            body: Body::from_value(&serde_json::json!({ "v": v })),
            location: String::new(),
        }
    }

    #[test]
    fn identical_reupsert_keeps_the_version() {
        let mut s = State::default();
        assert_eq!(s.apply(ev(1, upsert("a", 1))), Applied::Created);
        assert_eq!(s.apply(ev(2, upsert("a", 1))), Applied::Unchanged);
        let key = ResourceKey::new("", "Service", "default", "a");
        assert_eq!(s.resources[&key].version, 1);
        assert_eq!(s.apply(ev(3, upsert("a", 2))), Applied::Updated);
        assert_eq!(s.resources[&key].version, 3);
        assert_eq!(s.seq, 3);
        assert_eq!(s.apply(ev(4, Op::Delete { key: key.clone(), source_version: String::new() })), Applied::Deleted);
        assert_eq!(s.apply(ev(5, Op::Delete { key, source_version: String::new() })), Applied::Unchanged);
        assert!(s.resources.is_empty());
    }
}
