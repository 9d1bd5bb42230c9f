//! The Kubernetes source (issue 11) against fake API servers that follow
//! the real list/watch protocol (PROTOCOL.md §6).

mod harness;
mod listing;
mod faults;
mod clusters;
mod credentials;
mod rbac;
