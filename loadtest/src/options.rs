//! The command line (kept stable: outside scripts use it) and scenario files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::istio::IstioVersion;
use crate::proxy::Mode;
use crate::scenario::{IstioObjects, ScenarioKind};

#[derive(Debug, Parser, Clone)]
#[command(
    name = "keelson-loadtest",
    version,
    about = "Simulated Envoys against an xDS server: convergence and cost",
    after_help = "Scenario files (loadtest/scenarios/*.toml) hold any of these options; flags beat the file."
)]
pub struct Args {
    /// xDS server, host:port (or http://host:port).
    #[arg(long)]
    pub target: String,
    /// Keelson admin URL (changes go through its push API).
    #[arg(long)]
    pub admin: Option<String>,
    /// File holding the push API's bearer token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Peer mode: a change is a POST to this URL (other xDS servers).
    #[arg(long)]
    pub trigger_url: Option<String>,
    #[arg(long)]
    pub proxies: Option<usize>,
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// A scenario name (eds-churn, cds-churn, rds-change, full-change, istio-churn) or a .toml file.
    #[arg(long)]
    pub scenario: String,
    /// How long to make changes for (the run always stops by itself).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Time between changes.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Services the scenario creates.
    #[arg(long)]
    pub services: Option<usize>,
    /// Endpoints per service.
    #[arg(long)]
    pub endpoints: Option<usize>,
    /// New connections per second while connecting.
    #[arg(long)]
    pub connect_rate: Option<u32>,
    /// Probability of NACKing a response.
    #[arg(long)]
    pub nack_rate: Option<f64>,
    /// NACK responses holding a resource whose name contains this.
    #[arg(long)]
    pub nack_pattern: Option<String>,
    /// node.cluster of every simulated proxy.
    #[arg(long)]
    pub node_cluster: Option<String>,
    /// The Kubernetes namespace the simulated proxies are in (node metadata
    /// `NAMESPACE`, as istio-agent sets it): a Sidecar there scopes them.
    #[arg(long)]
    pub node_namespace: Option<String>,
    /// The hub's PID, to sample its RSS and CPU from /proc.
    #[arg(long)]
    pub hub_pid: Option<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Plot convergence (distribution and timeline) to this .svg or .png.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Give up waiting for the initial sync after this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub sync_timeout: Option<Duration>,
    /// No progress bars (logs and CI).
    #[arg(long)]
    pub quiet: bool,
    /// `--mode mcp`: the Istio version the simulated istiods are (the type URLs they request).
    #[arg(long, value_enum)]
    pub istio_version: Option<IstioVersion>,
    /// `--mode mcp`: the ISTIO_REVISION node metadata of every simulated istiod.
    #[arg(long)]
    pub istio_revision: Option<String>,
    /// VirtualServices the istio-churn scenario creates.
    #[arg(long)]
    pub virtual_services: Option<usize>,
    /// DestinationRules the istio-churn scenario creates.
    #[arg(long)]
    pub destination_rules: Option<usize>,
    /// ServiceEntries the istio-churn scenario creates.
    #[arg(long)]
    pub service_entries: Option<usize>,
}

/// A scenario file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    scenario: Option<ScenarioKind>,
    proxies: Option<usize>,
    mode: Option<Mode>,
    duration: Option<String>,
    interval: Option<String>,
    services: Option<usize>,
    endpoints: Option<usize>,
    connect_rate: Option<u32>,
    nack_rate: Option<f64>,
    nack_pattern: Option<String>,
    istio_version: Option<IstioVersion>,
    istio_revision: Option<String>,
    virtual_services: Option<usize>,
    destination_rules: Option<usize>,
    service_entries: Option<usize>,
}

/// Everything a run needs, resolved.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: String,
    pub admin: Option<String>,
    pub token: Option<String>,
    pub trigger_url: Option<String>,
    pub proxies: usize,
    pub mode: Mode,
    pub scenario: ScenarioKind,
    pub duration: Duration,
    pub interval: Duration,
    pub services: usize,
    pub endpoints: usize,
    pub connect_rate: u32,
    pub nack_rate: f64,
    pub nack_pattern: Option<String>,
    pub node_cluster: String,
    pub node_namespace: Option<String>,
    pub hub_pid: Option<u32>,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    pub sync_timeout: Duration,
    pub quiet: bool,
    pub istio: IstioVersion,
    pub istio_revision: String,
    pub istio_objects: IstioObjects,
}

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{0}")]
    Invalid(String),
}

fn duration(field: &str, text: Option<&str>) -> Result<Option<Duration>, OptionsError> {
    text.map(|t| humantime::parse_duration(t).map_err(|e| OptionsError::Invalid(format!("{field} = {t:?}: {e}"))))
        .transpose()
}

impl Options {
    pub fn resolve(a: Args) -> Result<Options, OptionsError> {
        let (file, kind) = if a.scenario.ends_with(".toml") || Path::new(&a.scenario).is_file() {
            let path = PathBuf::from(&a.scenario);
            let text =
                std::fs::read_to_string(&path).map_err(|source| OptionsError::Read { path: path.clone(), source })?;
            let f: ScenarioFile = toml::from_str(&text).map_err(|source| OptionsError::Parse { path, source })?;
            let kind =
                f.scenario.ok_or_else(|| OptionsError::Invalid(format!("{}: `scenario` is required", a.scenario)))?;
            (f, kind)
        } else {
            let kind = <ScenarioKind as clap::ValueEnum>::from_str(&a.scenario, true).map_err(|_| {
                OptionsError::Invalid(format!(
                    "unknown scenario {:?}: expected eds-churn, cds-churn, rds-change, full-change, istio-churn or a .toml file",
                    a.scenario
                ))
            })?;
            (ScenarioFile::default(), kind)
        };
        let token = match &a.token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|source| OptionsError::Read { path: p.clone(), source })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        if a.trigger_url.is_none() && (a.admin.is_none() || token.is_none()) {
            return Err(OptionsError::Invalid(
                "changes need --admin URL and --token-file FILE (Keelson's push API), or --trigger-url URL (peer mode)"
                    .into(),
            ));
        }
        let target = if a.target.starts_with("http://") { a.target.clone() } else { format!("http://{}", a.target) };
        let o = Options {
            target,
            admin: a.admin,
            token,
            trigger_url: a.trigger_url,
            proxies: a.proxies.or(file.proxies).unwrap_or(100),
            mode: a.mode.or(file.mode).unwrap_or(Mode::Sotw),
            scenario: kind,
            duration: a.duration.or(duration("duration", file.duration.as_deref())?).unwrap_or(Duration::from_secs(60)),
            interval: a.interval.or(duration("interval", file.interval.as_deref())?).unwrap_or(Duration::from_secs(1)),
            services: a.services.or(file.services).unwrap_or(1),
            endpoints: a.endpoints.or(file.endpoints).unwrap_or(10),
            connect_rate: a.connect_rate.or(file.connect_rate).unwrap_or(500),
            nack_rate: a.nack_rate.or(file.nack_rate).unwrap_or(0.0),
            nack_pattern: a.nack_pattern.or(file.nack_pattern),
            node_cluster: a.node_cluster.unwrap_or_else(|| "loadtest".into()),
            node_namespace: a.node_namespace,
            hub_pid: a.hub_pid,
            json: a.json,
            plot: a.plot,
            sync_timeout: a.sync_timeout.unwrap_or(Duration::from_secs(300)),
            quiet: a.quiet,
            istio: a.istio_version.or(file.istio_version).unwrap_or(IstioVersion::V1_24),
            istio_revision: a.istio_revision.or(file.istio_revision).unwrap_or_default(),
            // The defaults are the benchmark's (docs/benchmarks.md).
            istio_objects: IstioObjects {
                virtual_services: a.virtual_services.or(file.virtual_services).unwrap_or(10_000),
                destination_rules: a.destination_rules.or(file.destination_rules).unwrap_or(10_000),
                service_entries: a.service_entries.or(file.service_entries).unwrap_or(1_000),
            },
        };
        let mcp = o.mode == Mode::Mcp;
        if mcp != (o.scenario == ScenarioKind::IstioChurn) {
            return Err(OptionsError::Invalid(
                "--mode mcp runs the istio-churn scenario, and istio-churn needs --mode mcp (simulated istiods)".into(),
            ));
        }
        if mcp && (o.nack_rate > 0.0 || o.nack_pattern.is_some()) {
            return Err(OptionsError::Invalid(
                "--nack-rate and --nack-pattern do not apply to --mode mcp: istiod never NACKs".into(),
            ));
        }
        if mcp && o.istio_objects.virtual_services == 0 {
            return Err(OptionsError::Invalid(
                "istio-churn edits VirtualServices: --virtual-services must be ≥ 1".into(),
            ));
        }
        if o.proxies == 0 || o.connect_rate == 0 || o.interval.is_zero() || !(0.0..=1.0).contains(&o.nack_rate) {
            return Err(OptionsError::Invalid(
                "--proxies and --connect-rate must be ≥ 1, --interval > 0, --nack-rate within 0..1".into(),
            ));
        }
        if let Some(p) = &o.plot
            && !matches!(p.extension().and_then(|e| e.to_str()), Some("svg" | "png"))
        {
            return Err(OptionsError::Invalid(format!("--plot {}: write a .svg or .png file", p.display())));
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(scenario: &str) -> Args {
        Args::parse_from([
            "keelson-loadtest",
            "--target",
            "127.0.0.1:18000",
            "--trigger-url",
            "http://127.0.0.1:1/x",
            "--scenario",
            scenario,
        ])
    }

    #[test]
    fn every_committed_scenario_file_resolves() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let o =
                Options::resolve(args(path.to_str().unwrap())).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(o.proxies >= 1 && !o.duration.is_zero(), "{}", path.display());
            seen += 1;
        }
        assert!(seen >= 4);
    }

    #[test]
    fn flags_beat_the_file_and_bad_input_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(&file, "scenario = \"rds-change\"\nproxies = 7\nduration = \"5s\"\n").unwrap();
        let mut a = args(file.to_str().unwrap());
        a.proxies = Some(9);
        let o = Options::resolve(a).unwrap();
        assert_eq!((o.proxies, o.scenario, o.duration), (9, ScenarioKind::RdsChange, Duration::from_secs(5)));
        std::fs::write(&file, "scenario = \"rds-change\"\nproxys = 7\n").unwrap();
        assert!(Options::resolve(args(file.to_str().unwrap())).unwrap_err().to_string().contains("proxys"));
        assert!(Options::resolve(args("nope")).unwrap_err().to_string().contains("unknown scenario"));
        let mut a = args("eds-churn");
        a.trigger_url = None;
        assert!(Options::resolve(a).unwrap_err().to_string().contains("--admin"));
    }

    #[test]
    fn mcp_mode_goes_with_istio_churn_and_defaults_to_the_benchmark() {
        let mut a = args("istio-churn");
        a.mode = Some(Mode::Mcp);
        let o = Options::resolve(a.clone()).unwrap();
        assert_eq!((o.istio, o.istio_revision.as_str()), (IstioVersion::V1_24, ""));
        let n = o.istio_objects;
        assert_eq!((n.virtual_services, n.destination_rules, n.service_entries), (10_000, 10_000, 1_000));
        let mut nacking = a.clone();
        nacking.nack_rate = Some(0.1);
        assert!(Options::resolve(nacking).unwrap_err().to_string().contains("never NACKs"));
        let mut sotw = a.clone();
        sotw.mode = Some(Mode::Sotw);
        assert!(Options::resolve(sotw).unwrap_err().to_string().contains("--mode mcp"));
        let mut envoy_scenario = a;
        envoy_scenario.scenario = "eds-churn".into();
        assert!(Options::resolve(envoy_scenario).unwrap_err().to_string().contains("--mode mcp"));
        let parsed = Args::parse_from([
            "keelson-loadtest",
            "--target",
            "127.0.0.1:1",
            "--trigger-url",
            "http://127.0.0.1:1/x",
            "--scenario",
            "istio-churn",
            "--mode",
            "mcp",
            "--istio-version",
            "1.23",
            "--istio-revision",
            "canary",
            "--virtual-services",
            "5",
        ]);
        let o = Options::resolve(parsed).unwrap();
        assert_eq!(
            (o.istio, o.istio_revision.as_str(), o.istio_objects.virtual_services),
            (IstioVersion::V1_23, "canary", 5)
        );
    }
}
