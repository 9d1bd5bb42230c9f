//! Config sources: each watches one origin of config and submits what it
//! sees to the hub, which appends it to the log.
//!
//! A source lists everything it holds between `SyncStart` and `SyncDone`
//! (the hub deletes what a source held but no longer lists), then submits
//! changes as it sees them, and reports its health.
#![forbid(unsafe_code)]

pub mod api;
pub mod file;
pub mod kubernetes;

use std::future::Future;
use std::pin::Pin;

use keelson_hub::{HubHandle, SourceId};
use tokio::sync::watch;

/// A running source. `run` returns when `shutdown` turns true.
pub trait Source: Send + 'static {
    fn id(&self) -> &SourceId;
    fn run(
        self: Box<Self>,
        hub: HubHandle,
        shutdown: watch::Receiver<bool>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}
