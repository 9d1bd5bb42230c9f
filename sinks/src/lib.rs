//! Sinks: serve hub snapshots to the outside.
//!
//! * [`admin`]: the admin HTTP server (health, readiness, metrics, snapshot,
//!   history and log).
//!
//! The xDS and MCP gRPC servers arrive with the xDS sink.
#![forbid(unsafe_code)]

pub mod admin;
