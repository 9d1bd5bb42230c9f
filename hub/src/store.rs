//! `EventStore`: the hub's typed view of the event log.

use std::path::Path;
use std::sync::Arc;

use keelson_storage::{EventLog, OpenOptions, RecordKind, SeqRange, SledEventLog};

use crate::HubError;
use crate::checkpoint;
use crate::codec;
use crate::event::{Event, Op, ResourceKey, SourceId};
use crate::state::State;

/// One slot of the log: an event, or a gap retention or repair left.
// Gaps are rare and events the common case: boxing the event would cost an
// allocation per record read to save bytes on a variant almost never built.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEntry {
    Event(Event),
    /// `kind` is `Compacted` or `Lost`.
    Gap {
        seq: u64,
        at_nanos: u64,
        kind: RecordKind,
    },
}

impl LogEntry {
    pub fn seq(&self) -> u64 {
        match self {
            LogEntry::Event(e) => e.seq,
            LogEntry::Gap { seq, .. } => *seq,
        }
    }
}

/// A rebuilt state and the gaps crossed to build it (seqs whose events are
/// gone, so the state may differ from what was served at the time).
#[derive(Debug)]
pub struct Rebuilt {
    pub state: State,
    pub gaps: Vec<u64>,
    /// Seq of the checkpoint it started from (0: replayed from the start).
    pub from_checkpoint: u64,
}

#[derive(Clone)]
pub struct EventStore {
    log: Arc<dyn EventLog>,
}

impl EventStore {
    pub fn open(dir: &Path, opts: OpenOptions) -> Result<Self, HubError> {
        Ok(Self::new(Arc::new(SledEventLog::open(dir, opts)?)))
    }

    pub fn new(log: Arc<dyn EventLog>) -> Self {
        EventStore { log }
    }

    pub fn log(&self) -> &dyn EventLog {
        &*self.log
    }

    /// Appends ops from one origin as one durable batch (one group commit).
    pub fn append(&self, origin: &SourceId, ops: &[Op]) -> Result<SeqRange, HubError> {
        let batch: Vec<_> = ops.iter().map(|op| codec::encode(origin, op)).collect();
        Ok(self.log.append(&batch)?)
    }

    /// Log slots from `from` on, in seq order.
    pub fn entries_from(&self, from: u64) -> impl Iterator<Item = Result<LogEntry, HubError>> + '_ {
        self.log.read_from(from).map(|rec| {
            let rec = rec?;
            Ok(match rec.kind {
                RecordKind::Event => LogEntry::Event(codec::decode(&rec)?),
                kind => LogEntry::Gap { seq: rec.seq, at_nanos: rec.at_nanos, kind },
            })
        })
    }

    /// Every recorded change of one object, newest first.
    pub fn history(&self, key: &ResourceKey) -> impl Iterator<Item = Result<Event, HubError>> + '_ {
        self.log.read_key(&key.index_key()).map(|rec| Ok(codec::decode(&rec?)?))
    }

    /// The state as of `seq` (clamped to the end of the log): the newest
    /// checkpoint at or before it, plus the events after.
    pub fn state_at(&self, seq: u64) -> Result<Rebuilt, HubError> {
        let seq = seq.min(self.log.last_seq());
        let (mut state, from_checkpoint) = match self.log.checkpoint_at_or_before(seq)? {
            Some(cp) => (checkpoint::decode(cp.format, &cp.blob)?, cp.seq),
            None if self.log.first_seq() > 1 => {
                return Err(HubError::Compacted { requested: seq, first: self.log.first_seq() });
            }
            None => (State::default(), 0),
        };
        let mut gaps = Vec::new();
        for entry in self.entries_from(state.seq + 1) {
            let entry = entry?;
            if entry.seq() > seq {
                break;
            }
            match entry {
                LogEntry::Event(ev) => {
                    state.apply(ev);
                }
                LogEntry::Gap { seq, .. } => {
                    gaps.push(seq);
                    state.skip_to(seq);
                }
            }
        }
        Ok(Rebuilt { state, gaps, from_checkpoint })
    }

    /// Stores `state` as a checkpoint so restarts replay only what follows.
    pub fn write_checkpoint(&self, state: &State) -> Result<(), HubError> {
        let mut parts = checkpoint::encode_parts(state);
        Ok(self.log.write_checkpoint_parts(state.seq, checkpoint::FORMAT_V5, &mut parts)?)
    }
}
