//! The Kubernetes source (issue 11) against fake API servers that follow
//! the real list/watch protocol (PROTOCOL.md §6).

mod clusters;
mod credentials;
mod faults;
mod harness;
mod listing;
mod rbac;
