//! Load testing: simulated xDS clients and convergence measurement.
//!
//! Nothing lives here yet: the simulated proxies arrive with the loadtest.
#![forbid(unsafe_code)]
