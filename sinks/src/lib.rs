//! Sinks: serve hub snapshots to proxies over xDS and MCP.
//!
//! Nothing lives here yet: the gRPC server arrives with the xDS sink.
#![forbid(unsafe_code)]
