//! Sinks: serve hub snapshots to the outside.
//!
//! * [`xds`]: the xDS gRPC server (ADS, SotW and Delta) with the ACK/NACK ledger.
//! * [`admin`]: the admin HTTP server (health, readiness, metrics, syncz,
//!   snapshot, history and log).
#![forbid(unsafe_code)]

pub mod admin;
pub mod xds;
