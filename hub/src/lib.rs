//! The Keelson hub: the domain model of an event-sourced config hub.
//!
//! Sources append [`Event`]s to the log through an [`EventStore`]; the log's
//! sequence number is the config version; [`State`] is the log folded up to a
//! seq, and checkpoints of it make restarts replay only the tail.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod codec;
pub mod conflict;
pub mod event;
pub mod guard;
mod handle;
pub mod json;
pub mod kinds;
pub mod ledger;
pub mod lint;
pub mod mcp;
pub mod metrics;
pub mod names;
pub mod object;
pub mod point;
pub mod reduce;
pub mod runtime;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod transcode;
pub mod translate;

pub use event::{Body, Event, Op, ResourceKey, SourceId, SourceKind};
pub use ledger::{AckLedger, ProxyRecord, SyncStatus};
pub use runtime::{Hub, HubConfig, HubHandle, Outcome, SourceHealth};
pub use snapshot::{ChangeSet, Snapshot};
pub use state::{Applied, ResourceEntry, Serving, State};
pub use store::{EventStore, LogEntry, Rebuilt};

/// Errors of the hub library. The binary adds context with anyhow.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Storage(#[from] keelson_storage::StorageError),
    #[error(transparent)]
    Decode(#[from] codec::DecodeError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("history before seq {first} was removed by retention and no checkpoint covers seq {requested}")]
    Compacted { requested: u64, first: u64 },
    #[error("the hub has stopped")]
    Stopped,
    #[error("internal task failed: {0}")]
    Task(String),
}
