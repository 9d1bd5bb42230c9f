//! A faithful fake Kubernetes API server for Keelson's tests: discovery, GET, paged
//! LIST and WATCH as the real apiserver answers them (see docs PROTOCOL §6), HTTPS with
//! bearer-token and client-certificate authentication, and a control API to inject the
//! faults a Kubernetes source must survive and to generate load-test clusters.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
mod control;
pub mod discovery;
pub mod generate;
pub mod kinds;
pub mod kubeconfig;
pub mod selector;
pub mod server;
pub mod status;
pub mod store;
pub mod tls;
pub mod watch;

pub use auth::Auth;
pub use generate::GenerateSpec;
pub use kinds::{ResourceKind, default_kinds};
pub use kubeconfig::{Credentials, InCluster, KubeconfigSpec};
pub use server::{FakeConfig, FakeKube};
pub use store::{DEFAULT_FIELD_MANAGER, KindFault, Store, StoreError};
pub use tls::{ClientCert, TlsConfig, TlsError};
