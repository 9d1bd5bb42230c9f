//! A kube `Client` for one cluster, from a kubeconfig context or in-cluster.
//!
//! Both paths go through kube's kubeconfig loader, so every credential a
//! kubeconfig can hold works the same way: `certificate-authority(-data)`,
//! client certificates, bearer tokens, token files (re-read as they rotate),
//! exec plugins. TLS is rustls with the ring provider (the workspace enables
//! no other).

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};

use super::config::Connection;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(pub String);

pub async fn connect(connection: &Connection) -> Result<kube::Client, ClientError> {
    let config = match connection {
        Connection::Kubeconfig { path, context } => {
            let options = KubeConfigOptions { context: context.clone(), ..KubeConfigOptions::default() };
            let kubeconfig = match path {
                Some(p) => Kubeconfig::read_from(p),
                None => Kubeconfig::read(),
            }
            .map_err(|e| ClientError(format!("cannot read the kubeconfig: {e}")))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| ClientError(format!("kubeconfig context {context:?}: {e}")))?
        }
        Connection::InCluster { dir } => {
            let kubeconfig = in_cluster_kubeconfig(dir)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| ClientError(format!("in-cluster config: {e}")))?
        }
    };
    kube::Client::try_from(config).map_err(|e| ClientError(format!("cannot build a Kubernetes client: {e}")))
}

/// What client-go's `rest.InClusterConfig` reads, as a kubeconfig: the
/// API server from `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`, the
/// service account's `token` (a file, so a rotated projected token is
/// picked up) and `ca.crt` from `dir`.
fn in_cluster_kubeconfig(dir: &Path) -> Result<Kubeconfig, ClientError> {
    let var = |name: &str| {
        std::env::var(name).map_err(|_| ClientError(format!("in_cluster = true but {name} is not set (not in a pod?)")))
    };
    let (host, port) = (var("KUBERNETES_SERVICE_HOST")?, var("KUBERNETES_SERVICE_PORT")?);
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let (token, ca) = (dir.join("token"), dir.join("ca.crt"));
    for file in [&token, &ca] {
        std::fs::metadata(file)
            .map_err(|e| ClientError(format!("in-cluster credentials: cannot read {}: {e}", file.display())))?;
    }
    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "in-cluster", "cluster": {
            "server": format!("https://{host}:{port}"),
            "certificate-authority": ca.to_string_lossy(),
        } }],
        "users": [{ "name": "service-account", "user": { "tokenFile": token.to_string_lossy() } }],
        "contexts": [{ "name": "in-cluster", "context": { "cluster": "in-cluster", "user": "service-account" } }],
        "current-context": "in-cluster",
    });
    serde_json::from_value(value).map_err(|e| ClientError(format!("in-cluster config: {e}")))
}
