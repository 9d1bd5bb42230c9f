//! Config sources: each watches one origin of config and emits events for the hub to append.
//!
//! Nothing lives here yet: the `Source` trait and the file source arrive with the hub core.
#![forbid(unsafe_code)]
