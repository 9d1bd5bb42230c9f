//! Client configuration for a running fake: a kubeconfig file (as `kubectl config
//! view --raw` prints one) and the in-cluster service-account directory
//! (`/var/run/secrets/kubernetes.io/serviceaccount`: `token`, `ca.crt`, `namespace`).

use std::io;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use crate::server::FakeKube;
use crate::tls::ClientCert;

/// How the kubeconfig's user authenticates.
#[derive(Clone, Debug, Default)]
pub enum Credentials {
    /// No credentials (anonymous).
    #[default]
    None,
    /// `token:` inline.
    Token(String),
    /// `tokenFile:`; the token is written to `<kubeconfig>.token` next to the kubeconfig.
    TokenFile(String),
    /// `client-certificate-data` + `client-key-data`.
    ClientCert(ClientCert),
}

/// Names and credentials of the one context a kubeconfig gets.
#[derive(Clone, Debug)]
pub struct KubeconfigSpec {
    pub context: String,
    /// The cluster name; Istio's multi-cluster rule takes the cluster id from it.
    pub cluster: String,
    pub user: String,
    pub credentials: Credentials,
    /// The context's default namespace, if any.
    pub namespace: Option<String>,
}

impl KubeconfigSpec {
    /// Context, cluster and user all called `name`.
    pub fn new(name: &str, credentials: Credentials) -> Self {
        KubeconfigSpec {
            context: name.to_owned(),
            cluster: name.to_owned(),
            user: name.to_owned(),
            credentials,
            namespace: None,
        }
    }
}

/// The `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT` values and the
/// service-account directory an in-cluster client reads.
#[derive(Clone, Debug)]
pub struct InCluster {
    pub host: String,
    pub port: String,
    pub dir: PathBuf,
}

fn b64(s: &str) -> String {
    STANDARD.encode(s.as_bytes())
}

impl FakeKube {
    /// Credentials the fake accepts: its token if it has one, else a fresh client
    /// certificate for `admin` if it takes those, else none.
    pub fn default_credentials(&self) -> io::Result<Credentials> {
        if let Some(token) = &self.auth.token {
            return Ok(Credentials::Token(token.clone()));
        }
        if self.auth.client_certs {
            return Ok(Credentials::ClientCert(self.issue_client_cert("admin").map_err(io::Error::other)?));
        }
        Ok(Credentials::None)
    }

    /// Writes a kubeconfig with one cluster (this fake; `certificate-authority-data`
    /// when TLS is on), one user and one context, which is the current context.
    pub fn write_kubeconfig(&self, path: &Path, spec: &KubeconfigSpec) -> io::Result<()> {
        let mut cluster = json!({"server": self.url()});
        if let Some(ca) = self.ca_pem() {
            cluster["certificate-authority-data"] = json!(b64(ca));
        }
        let mut user = Map::new();
        match &spec.credentials {
            Credentials::None => {}
            Credentials::Token(t) => {
                user.insert("token".into(), json!(t));
            }
            Credentials::TokenFile(t) => {
                let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "kubeconfig".into());
                name.push(".token");
                let token_path = path.with_file_name(name);
                std::fs::write(&token_path, t)?;
                let absolute = std::path::absolute(&token_path)?;
                user.insert("tokenFile".into(), json!(absolute.to_string_lossy()));
            }
            Credentials::ClientCert(c) => {
                user.insert("client-certificate-data".into(), json!(b64(&c.cert_pem)));
                user.insert("client-key-data".into(), json!(b64(&c.key_pem)));
            }
        }
        let mut context = json!({"cluster": spec.cluster, "user": spec.user});
        if let Some(ns) = &spec.namespace {
            context["namespace"] = json!(ns);
        }
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": spec.cluster, "cluster": cluster}],
            "users": [{"name": spec.user, "user": Value::Object(user)}],
            "contexts": [{"name": spec.context, "context": context}],
            "current-context": spec.context,
        });
        let yaml = serde_yaml::to_string(&config).map_err(io::Error::other)?;
        std::fs::write(path, yaml)
    }

    /// Writes `token`, `ca.crt` (TLS only) and `namespace` into `dir`, as the kubelet
    /// mounts them for a pod, and returns the environment an in-cluster client needs.
    /// `token` defaults to the fake's own token.
    pub fn write_service_account(&self, dir: &Path, namespace: &str, token: Option<&str>) -> io::Result<InCluster> {
        std::fs::create_dir_all(dir)?;
        let token = token.or(self.auth.token.as_deref()).unwrap_or_default();
        std::fs::write(dir.join("token"), token)?;
        if let Some(ca) = self.ca_pem() {
            std::fs::write(dir.join("ca.crt"), ca)?;
        }
        std::fs::write(dir.join("namespace"), namespace)?;
        Ok(InCluster { host: self.addr().ip().to_string(), port: self.addr().port().to_string(), dir: dir.to_owned() })
    }
}
