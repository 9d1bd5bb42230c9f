//! A faithful fake Kubernetes API server for Keelson's tests: discovery, GET, paged
//! LIST and WATCH as the real apiserver answers them (see docs PROTOCOL §6), and a
//! control API to inject the faults a Kubernetes source must survive.
#![forbid(unsafe_code)]

pub mod api;
pub mod discovery;
pub mod kinds;
pub mod selector;
pub mod server;
pub mod status;
pub mod store;
pub mod watch;

pub use kinds::{ResourceKind, default_kinds};
pub use server::{FakeConfig, FakeKube};
pub use store::{KindFault, Store, StoreError};
