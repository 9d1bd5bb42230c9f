//! `keelson.toml` and the flags that override it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use keelson_storage::Retention;
use serde::Deserialize;

pub const DEFAULT_GRPC: &str = "127.0.0.1:18000";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:18001";
pub const DEFAULT_DATA_DIR: &str = "keelson-data";

/// The file as written. Every field is optional; unknown fields are errors so
/// a typo is caught instead of silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    grpc_listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    retention: RetentionFile,
    #[serde(default)]
    checkpoint: CheckpointFile,
    #[serde(default)]
    snapshot: SnapshotFile,
    #[serde(default)]
    api: ApiFile,
    #[serde(default)]
    file: FileFile,
    #[serde(default)]
    xds: XdsFile,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    reconcile: ReconcileFile,
    #[serde(default)]
    mcp: McpFile,
    /// Kubernetes clusters to watch, in precedence order (crate::kube_config).
    #[serde(default)]
    kubernetes: Vec<crate::kube_config::KubernetesFile>,
    #[serde(default)]
    translate: TranslateFile,
}

/// `[translate]`: registry + Istio routing → Envoy resources (docs/translation.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TranslateFile {
    enabled: Option<bool>,
    domain_suffix: Option<String>,
    outbound_address: Option<String>,
    mcp_registry: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct McpFile {
    /// YAML (or JSON) istio.mesh.v1alpha1.MeshConfig served to istiods as
    /// core/v1alpha1/MeshConfig; absent serves an empty one (all defaults).
    mesh_config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    /// Largest encoded object any source may submit (default 1 MiB).
    max_resource_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileFile {
    /// Hold a listing that deletes more than this fraction of a source's objects (default 0.5; 1 = off).
    max_delete_fraction: Option<f64>,
    /// ...until it has persisted this long (default "30s").
    confirm_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct XdsFile {
    /// Node field that names a proxy's group: node.cluster (default), node.id or node.metadata.<field>.
    group_key: Option<String>,
    /// New xDS streams accepted per second over all clients (default 2000; 0 = unlimited).
    new_streams_per_second: Option<u32>,
    /// Requests per second one stream may send (default 100; 0 = unlimited).
    requests_per_stream_per_second: Option<u32>,
    /// Largest xDS message in or out, bytes (default 64 MiB).
    max_message_bytes: Option<usize>,
    /// NACK records appended to the log per second, over all streams (default 50; 0 = unlimited).
    nacks_logged_per_second: Option<u32>,
    /// NACK records one stream may cause per second (default 1, burst 5; 0 = unlimited).
    nacks_logged_per_stream_per_second: Option<u32>,
    /// Open xDS connections at most (default: the open-file limit minus 1024).
    max_connections: Option<usize>,
    /// Close a connection that opens no stream within this (default "10s").
    handshake_timeout: Option<String>,
    /// HTTP/2 PING interval (default "30s").
    keepalive_interval: Option<String>,
    /// Drop a connection whose PING is not answered within this (default "10s").
    keepalive_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotFile {
    /// Publish after this long without new changes (default "100ms").
    quiet: Option<String>,
    /// ...or at most this long after the first pending change (default "1s").
    max_delay: Option<String>,
    /// Publish the first snapshot after this long even if a source has not synced (default "30s").
    sync_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiFile {
    /// File holding the bearer token of the push API; absent disables the API.
    token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFile {
    /// Rescan period of file sources (default "10s"); reads changed files only.
    rescan: Option<String>,
    /// How often a scan reads every file regardless of its stat (default "5m").
    full_check: Option<String>,
    /// Largest file a file source reads, bytes (default 16 MiB).
    max_file_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionFile {
    /// e.g. "30days"; absent keeps everything.
    max_age: Option<String>,
    max_versions_per_key: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointFile {
    /// Write a checkpoint once this many events were applied since the last (default 10000).
    every_events: Option<u64>,
    /// How often to consider writing a checkpoint and applying retention (default "1m").
    interval: Option<String>,
}

/// Where config comes from, each `--source` SPEC parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    File(PathBuf),
    Kubernetes(Box<keelson_sources::kubernetes::KubernetesConfig>),
    Consul(String),
    Mcp(String),
}

impl SourceSpec {
    pub fn parse(spec: &str, base: &Path) -> Result<Self> {
        let (kind, arg) = spec.split_once(':').unwrap_or((spec, ""));
        Ok(match (kind, arg) {
            ("file", path) if !path.is_empty() => SourceSpec::File(base.join(path)),
            ("k8s", ctx) => {
                let context = Some(ctx).filter(|c| !c.is_empty());
                SourceSpec::Kubernetes(Box::new(crate::kube_config::from_flag(context)?))
            }
            ("consul", url) if !url.is_empty() => SourceSpec::Consul(url.into()),
            ("mcp", url) if !url.is_empty() => SourceSpec::Mcp(url.into()),
            _ => bail!("{spec:?} is not a source: expected file:PATH, k8s[:CONTEXT], consul:URL or mcp:URL"),
        })
    }
}

/// The resolved configuration `serve` runs with.
#[derive(Debug)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub grpc_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub sources: Vec<SourceSpec>,
    pub retention: Retention,
    pub checkpoint_every_events: u64,
    pub maintenance_interval: Duration,
    pub quiet: Duration,
    pub max_delay: Duration,
    pub sync_timeout: Duration,
    pub file_rescan: Duration,
    pub file_full_check: Duration,
    pub file_max_file_bytes: u64,
    pub api_token_file: Option<PathBuf>,
    pub xds: keelson_sinks::xds::XdsConfig,
    pub limits: keelson_hub::object::Limits,
    pub deletion_guard: keelson_hub::guard::DeletionGuard,
    pub translate: keelson_hub::translate::TranslateConfig,
}

/// Flags given on the command line; each one beats the file.
#[derive(Debug, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub grpc_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub sources: Vec<String>,
    pub api_token_file: Option<PathBuf>,
}

fn duration_or(field: &str, text: Option<&str>, default: Duration) -> Result<Duration> {
    text.map(|t| duration(field, t)).transpose().map(|d| d.unwrap_or(default))
}

fn duration(field: &str, text: &str) -> Result<Duration> {
    humantime::parse_duration(text)
        .with_context(|| format!("{field} = {text:?} is not a duration (try \"30days\" or \"5m\")"))
}

fn translate_config(t: &TranslateFile) -> Result<keelson_hub::translate::TranslateConfig> {
    let mut cfg = keelson_hub::translate::TranslateConfig::default();
    if let Some(e) = t.enabled {
        cfg.enabled = e;
    }
    if let Some(m) = t.mcp_registry {
        cfg.mcp_registry = m;
    }
    if let Some(suffix) = &t.domain_suffix {
        let valid = keelson_hub::names::check_name(keelson_hub::names::NameRule::Dns1123Subdomain, suffix).is_ok();
        if !valid {
            bail!("translate.domain_suffix = {suffix:?} is not a DNS domain (like \"cluster.local\")");
        }
        cfg.domain_suffix = suffix.clone();
    }
    if let Some(addr) = &t.outbound_address {
        let ip: std::net::IpAddr =
            addr.parse().with_context(|| format!("translate.outbound_address = {addr:?} is not an IP address"))?;
        cfg.outbound_address = ip.to_string();
    }
    Ok(cfg)
}

/// Only the `[translate]` section of a config file (for `keelson state`
/// and `validate`, which translate as the hub would); defaults without one.
pub fn load_translate(file: Option<&Path>) -> Result<keelson_hub::translate::TranslateConfig> {
    let Some(path) = file else { return translate_config(&TranslateFile::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cf: ConfigFile = toml::from_str(&text).with_context(|| format!("{} is not valid config", path.display()))?;
    translate_config(&cf.translate)
}

impl ServeConfig {
    /// Relative paths in a config file are relative to the file's directory;
    /// on the command line, to the working directory.
    pub fn load(file: Option<&Path>, flags: Overrides) -> Result<Self> {
        let (cf, base) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                let cf: ConfigFile =
                    toml::from_str(&text).with_context(|| format!("{} is not valid config", path.display()))?;
                (cf, path.parent().map(Path::to_path_buf).unwrap_or_default())
            }
            None => (ConfigFile::default(), PathBuf::new()),
        };
        let mut sources = cf.sources.iter().map(|s| SourceSpec::parse(s, &base)).collect::<Result<Vec<_>>>()?;
        // Precedence (crate::conflict in the hub): `sources`, then the
        // `[[kubernetes]]` sections in file order, then `--source` flags.
        for section in &cf.kubernetes {
            sources.push(SourceSpec::Kubernetes(Box::new(crate::kube_config::from_section(section, &base)?)));
        }
        for s in &flags.sources {
            sources.push(SourceSpec::parse(s, Path::new(""))?);
        }
        let clusters: Vec<_> = sources
            .iter()
            .filter_map(|s| match s {
                SourceSpec::Kubernetes(k) => Some(&**k),
                _ => None,
            })
            .collect();
        crate::kube_config::check_unique(&clusters)?;
        let retention = Retention {
            max_age: cf.retention.max_age.as_deref().map(|t| duration("retention.max_age", t)).transpose()?,
            max_versions_per_key: cf.retention.max_versions_per_key,
        };
        if retention.max_versions_per_key == Some(0) {
            bail!("retention.max_versions_per_key must be at least 1");
        }
        let mut xds = keelson_sinks::xds::XdsConfig::default();
        if let Some(key) = &cf.xds.group_key {
            xds.group_key = key.parse().map_err(|e| anyhow::anyhow!("xds.group_key: {e}"))?;
        }
        if let Some(n) = cf.xds.new_streams_per_second {
            xds.new_streams_per_second = std::num::NonZeroU32::new(n);
        }
        if let Some(n) = cf.xds.requests_per_stream_per_second {
            xds.requests_per_stream_per_second = std::num::NonZeroU32::new(n);
        }
        if let Some(n) = cf.xds.max_message_bytes {
            if n < 1024 {
                bail!("xds.max_message_bytes = {n} is too small (at least 1024)");
            }
            xds.max_message_bytes = n;
        }
        let mut limits = keelson_hub::object::Limits::default();
        if let Some(n) = cf.limits.max_resource_bytes {
            if n < 1024 {
                bail!("limits.max_resource_bytes = {n} is too small (at least 1024)");
            }
            limits.max_resource_bytes = n;
        }
        let mut deletion_guard = keelson_hub::guard::DeletionGuard::default();
        if let Some(f) = cf.reconcile.max_delete_fraction {
            if !(f > 0.0 && f <= 1.0) {
                bail!("reconcile.max_delete_fraction = {f} must be above 0 and at most 1 (1 turns the guard off)");
            }
            deletion_guard.max_delete_fraction = f;
        }
        deletion_guard.confirm_after = duration_or(
            "reconcile.confirm_after",
            cf.reconcile.confirm_after.as_deref(),
            deletion_guard.confirm_after,
        )?;
        if cf.file.max_file_bytes == Some(0) {
            bail!("file.max_file_bytes must be at least 1");
        }
        if let Some(n) = cf.xds.nacks_logged_per_second {
            xds.nack_limits.global_per_second = std::num::NonZeroU32::new(n);
        }
        if let Some(n) = cf.xds.nacks_logged_per_stream_per_second {
            xds.nack_limits.per_stream_per_second = std::num::NonZeroU32::new(n);
        }
        if let Some(n) = cf.xds.max_connections {
            if n == 0 {
                bail!("xds.max_connections = 0 would refuse every proxy");
            }
            xds.max_connections = Some(n);
        }
        xds.handshake_timeout =
            duration_or("xds.handshake_timeout", cf.xds.handshake_timeout.as_deref(), xds.handshake_timeout)?;
        xds.keepalive_interval =
            duration_or("xds.keepalive_interval", cf.xds.keepalive_interval.as_deref(), xds.keepalive_interval)?;
        xds.keepalive_timeout =
            duration_or("xds.keepalive_timeout", cf.xds.keepalive_timeout.as_deref(), xds.keepalive_timeout)?;
        if xds.handshake_timeout.is_zero() || xds.keepalive_interval.is_zero() || xds.keepalive_timeout.is_zero() {
            bail!("xds.handshake_timeout, keepalive_interval and keepalive_timeout must be above zero");
        }
        if let Some(path) = &cf.mcp.mesh_config {
            let path = base.join(path);
            xds.mesh_config = keelson_sinks::xds::MeshConfigItem::new(&load_mesh_config(&path)?);
        }
        let translate = translate_config(&cf.translate)?;
        Ok(ServeConfig {
            translate,
            xds,
            limits,
            deletion_guard,
            data_dir: flags.data_dir.or(cf.data_dir.map(|d| base.join(d))).unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            grpc_listen: flags.grpc_listen.or(cf.grpc_listen).unwrap_or_else(|| DEFAULT_GRPC.parse().expect("valid")),
            admin_listen: flags
                .admin_listen
                .or(cf.admin_listen)
                .unwrap_or_else(|| DEFAULT_ADMIN.parse().expect("valid")),
            sources,
            retention,
            checkpoint_every_events: cf.checkpoint.every_events.unwrap_or(10_000).max(1),
            maintenance_interval: cf
                .checkpoint
                .interval
                .as_deref()
                .map(|t| duration("checkpoint.interval", t))
                .transpose()?
                .unwrap_or(Duration::from_secs(60)),
            quiet: duration_or("snapshot.quiet", cf.snapshot.quiet.as_deref(), Duration::from_millis(100))?,
            max_delay: duration_or("snapshot.max_delay", cf.snapshot.max_delay.as_deref(), Duration::from_secs(1))?,
            sync_timeout: duration_or(
                "snapshot.sync_timeout",
                cf.snapshot.sync_timeout.as_deref(),
                Duration::from_secs(30),
            )?,
            file_rescan: duration_or("file.rescan", cf.file.rescan.as_deref(), Duration::from_secs(10))?,
            file_full_check: duration_or("file.full_check", cf.file.full_check.as_deref(), Duration::from_secs(300))?,
            file_max_file_bytes: cf.file.max_file_bytes.unwrap_or(keelson_sources::file::scan::DEFAULT_MAX_FILE_BYTES),
            api_token_file: flags.api_token_file.or(cf.api.token_file.map(|p| base.join(p))),
        })
    }
}

/// Reads and validates a mesh config file: the fields of
/// `istio.mesh.v1alpha1.MeshConfig` as istio.io writes them (the `mesh` key
/// of istiod's ConfigMap), checked like any object's spec. Returns its
/// canonical protobuf encoding.
pub fn load_mesh_config(path: &Path) -> Result<Vec<u8>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("mcp.mesh_config: cannot read {}", path.display()))?;
    let value: serde_json::Value = serde_yaml::from_str(&text)
        .with_context(|| format!("mcp.mesh_config: {} is not valid YAML", path.display()))?;
    let value = if value.is_null() { serde_json::Value::Object(Default::default()) } else { value };
    keelson_hub::transcode::encode_istio_json(MESH_CONFIG_MESSAGE, &value)
        .map(|b| b.to_vec())
        .map_err(|e| anyhow::anyhow!("mcp.mesh_config: {}: {e}", path.display()))
}

const MESH_CONFIG_MESSAGE: &str = "istio.mesh.v1alpha1.MeshConfig";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_and_paths_resolve_against_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keelson.toml");
        std::fs::write(
            &path,
            "data_dir = \"data\"\nsources = [\"file:quickstart\"]\n[retention]\nmax_age = \"30days\"\n[checkpoint]\ninterval = \"5m\"\n",
        )
        .unwrap();
        let cfg = ServeConfig::load(Some(&path), Overrides::default()).unwrap();
        assert_eq!(cfg.data_dir, dir.path().join("data"));
        assert_eq!(cfg.sources, vec![SourceSpec::File(dir.path().join("quickstart"))]);
        assert_eq!(cfg.retention.max_age, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(cfg.maintenance_interval, Duration::from_secs(300));
        let flags = Overrides {
            data_dir: Some("elsewhere".into()),
            sources: vec!["consul:http://127.0.0.1:8500".into()],
            ..Default::default()
        };
        let cfg = ServeConfig::load(Some(&path), flags).unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("elsewhere"));
        assert_eq!(cfg.sources.len(), 2);
    }

    #[test]
    fn file_section_sets_limits_and_full_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keelson.toml");
        std::fs::write(&path, "[file]\nrescan = \"2s\"\nfull_check = \"1m\"\nmax_file_bytes = 4096\n").unwrap();
        let cfg = ServeConfig::load(Some(&path), Overrides::default()).unwrap();
        assert_eq!((cfg.file_rescan, cfg.file_full_check), (Duration::from_secs(2), Duration::from_secs(60)));
        assert_eq!(cfg.file_max_file_bytes, 4096);
        let cfg = ServeConfig::load(None, Overrides::default()).unwrap();
        assert_eq!(cfg.file_max_file_bytes, 16 * 1024 * 1024);
        std::fs::write(&path, "[file]\nmax_file_bytes = 0\n").unwrap();
        assert!(ServeConfig::load(Some(&path), Overrides::default()).is_err());
    }

    #[test]
    fn typos_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keelson.toml");
        std::fs::write(&path, "data_dri = \"x\"\n").unwrap();
        let err = format!("{:#}", ServeConfig::load(Some(&path), Overrides::default()).unwrap_err());
        assert!(err.contains("data_dri"), "{err}");
        std::fs::write(&path, "[retention]\nmax_age = \"forever\"\n").unwrap();
        let err = format!("{:#}", ServeConfig::load(Some(&path), Overrides::default()).unwrap_err());
        assert!(err.contains("retention.max_age"), "{err}");
        assert!(SourceSpec::parse("ftp:x", Path::new("")).is_err());
    }

    #[test]
    fn xds_connection_and_nack_limits_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keelson.toml");
        std::fs::write(
            &path,
            "[xds]\nmax_connections = 100\nhandshake_timeout = \"3s\"\nkeepalive_interval = \"20s\"\n\
             keepalive_timeout = \"5s\"\nnacks_logged_per_second = 0\nnacks_logged_per_stream_per_second = 2\n",
        )
        .unwrap();
        let xds = ServeConfig::load(Some(&path), Overrides::default()).unwrap().xds;
        assert_eq!(xds.max_connections, Some(100));
        assert_eq!((xds.handshake_timeout, xds.keepalive_interval), (Duration::from_secs(3), Duration::from_secs(20)));
        assert_eq!(xds.keepalive_timeout, Duration::from_secs(5));
        assert_eq!(xds.nack_limits.global_per_second, None, "0 = unlimited");
        assert_eq!(xds.nack_limits.per_stream_per_second.map(|n| n.get()), Some(2));
        std::fs::write(&path, "[xds]\nhandshake_timeout = \"0s\"\n").unwrap();
        assert!(ServeConfig::load(Some(&path), Overrides::default()).is_err());
    }
}
