//! `[[kubernetes]]` sections and `--source k8s[:CONTEXT]`, resolved into
//! the Kubernetes source's configuration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use keelson_sources::kubernetes::config::{
    self as kube_config, Connection, KubernetesConfig, SERVICE_ACCOUNT_DIR, cluster_name_from_kubeconfig,
};
use serde::Deserialize;

/// The name an in-cluster source gets unless `name` says otherwise.
const IN_CLUSTER_NAME: &str = "in-cluster";

/// One `[[kubernetes]]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesFile {
    /// The cluster's name in Keelson (default: the context's cluster name, Istio's rule).
    name: Option<String>,
    /// Kubeconfig context (default: its current context).
    context: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    kubeconfig: Option<PathBuf>,
    /// Use the pod's service account instead of a kubeconfig.
    #[serde(default)]
    in_cluster: bool,
    /// Where the service-account token and CA are mounted.
    service_account_dir: Option<PathBuf>,
    #[serde(default)]
    namespaces: Vec<String>,
    label_selector: Option<String>,
    #[serde(default)]
    kinds: Vec<String>,
    /// How often a kind whose CRD is missing is looked for again (default "30s").
    crd_recheck: Option<String>,
}

/// Resolves a section; relative paths are relative to the config file.
pub fn from_section(section: &KubernetesFile, base: &Path) -> Result<KubernetesConfig> {
    if section.in_cluster && (section.context.is_some() || section.kubeconfig.is_some()) {
        bail!("[[kubernetes]]: in_cluster = true takes no context or kubeconfig");
    }
    let connection = if section.in_cluster {
        let dir = section.service_account_dir.as_ref().map_or_else(|| SERVICE_ACCOUNT_DIR.into(), |d| base.join(d));
        Connection::InCluster { dir }
    } else {
        Connection::Kubeconfig {
            path: section.kubeconfig.as_ref().map(|p| base.join(p)),
            context: section.context.clone(),
        }
    };
    let name = match &section.name {
        Some(name) => name.clone(),
        None => default_name(&connection)?,
    };
    let mut config = KubernetesConfig::new(&name, connection);
    config.namespaces = section.namespaces.clone();
    config.label_selector = section.label_selector.clone().filter(|s| !s.is_empty());
    if !section.kinds.is_empty() {
        config.kinds =
            kube_config::parse_kinds(&section.kinds).map_err(|e| anyhow::anyhow!("[[kubernetes]] {name}: {e}"))?;
    }
    if let Some(t) = &section.crd_recheck {
        config.crd_recheck = humantime::parse_duration(t)
            .with_context(|| format!("[[kubernetes]] {name}: crd_recheck = {t:?} is not a duration"))?
            .max(Duration::from_secs(1));
    }
    config.validate()?;
    Ok(config)
}

/// `--source k8s[:CONTEXT]`: a context of the default kubeconfig, or, with
/// no context and no kubeconfig but a pod's environment, in-cluster (the
/// order client-go's loader uses).
pub fn from_flag(context: Option<&str>) -> Result<KubernetesConfig> {
    let kubeconfig_exists = std::env::var_os("KUBECONFIG").is_some()
        || std::env::var_os("HOME").is_some_and(|h| Path::new(&h).join(".kube/config").exists());
    let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let section = KubernetesFile {
        context: context.map(str::to_string),
        in_cluster: context.is_none() && !kubeconfig_exists && in_pod,
        ..KubernetesFile::default()
    };
    from_section(&section, Path::new(""))
}

fn default_name(connection: &Connection) -> Result<String> {
    Ok(match connection {
        Connection::InCluster { .. } => IN_CLUSTER_NAME.to_string(),
        Connection::Kubeconfig { path, context } => cluster_name_from_kubeconfig(path.as_ref(), context.as_deref())?,
    })
}

/// Two sources of one name would share provenance and keys.
pub fn check_unique(configs: &[&KubernetesConfig]) -> Result<()> {
    for (i, a) in configs.iter().enumerate() {
        if configs[..i].iter().any(|b| b.name == a.name) {
            bail!("two Kubernetes sources are named {:?}: give each [[kubernetes]] its own name", a.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(dir: &Path, cluster: &str) -> PathBuf {
        let path = dir.join("config");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster: {{server: 'https://127.0.0.1:6443'}}\nusers:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: east-admin\n  context: {{cluster: {cluster}, user: u}}\ncurrent-context: east-admin\n"
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_section_is_named_after_its_contexts_cluster_unless_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = kubeconfig(dir.path(), "east");
        let section = KubernetesFile { kubeconfig: Some(path.clone()), ..KubernetesFile::default() };
        let config = from_section(&section, Path::new("")).unwrap();
        assert_eq!(config.name, "east");
        assert_eq!(config.connection, Connection::Kubeconfig { path: Some(path.clone()), context: None });
        let named = KubernetesFile {
            name: Some("prod-east".into()),
            kubeconfig: Some(path),
            kinds: vec!["VirtualService".into(), "Service".into()],
            ..KubernetesFile::default()
        };
        let config = from_section(&named, Path::new("")).unwrap();
        assert_eq!((config.name.as_str(), config.kinds.len()), ("prod-east", 2));
    }

    #[test]
    fn unusable_names_and_kinds_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = kubeconfig(dir.path(), "arn:aws:eks:eu-west-1:1:cluster/east");
        let section = KubernetesFile { kubeconfig: Some(path.clone()), ..KubernetesFile::default() };
        let err = format!("{:#}", from_section(&section, Path::new("")).unwrap_err());
        assert!(err.contains("[[kubernetes]] name"), "{err}");
        let kinds = KubernetesFile {
            name: Some("e".into()),
            kubeconfig: Some(path),
            kinds: vec!["Gizmo".into()],
            ..KubernetesFile::default()
        };
        assert!(format!("{:#}", from_section(&kinds, Path::new("")).unwrap_err()).contains("Gizmo"));
        let both = KubernetesFile { in_cluster: true, context: Some("x".into()), ..KubernetesFile::default() };
        assert!(from_section(&both, Path::new("")).is_err());
        let a = KubernetesConfig::new("east", Connection::InCluster { dir: "/x".into() });
        assert!(check_unique(&[&a, &a.clone()]).unwrap_err().to_string().contains("\"east\""));
    }
}
