//! Serves a fake Kubernetes API on 127.0.0.1 and prints its URL as the first line of
//! stdout; control it over HTTP under `/_fake/`. Runs until SIGTERM or SIGINT.
//!
//! ```text
//! fake-kube-apiserver [--port N] [--tls] [--token T] [--client-certs] [--kubeconfig PATH]
//!                     [--ca-file PATH] [--generate JSON] [--bookmark-interval SECS]
//! ```
//! `--ca-file` writes the CA certificate (PEM) there; `GET /_fake/ca` serves it too.
//! A bare number as the first argument is the port (the older form).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use keelson_fake_kube::{Auth, FakeConfig, FakeKube, GenerateSpec, KubeconfigSpec, TlsConfig};

const USAGE: &str = "usage: fake-kube-apiserver [--port N] [--tls] [--token T] [--client-certs] \
                     [--kubeconfig PATH] [--ca-file PATH] [--generate JSON] [--bookmark-interval SECS]";

struct Args {
    config: FakeConfig,
    kubeconfig: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    generate: Option<GenerateSpec>,
}

fn parse() -> Result<Args, String> {
    let mut config = FakeConfig::default();
    let (mut kubeconfig, mut ca_file, mut generate) = (None, None, None);
    let mut port = 0u16;
    let mut args = std::env::args().skip(1).peekable();
    if let Some(p) = args.peek().and_then(|a| a.parse().ok()) {
        port = p;
        args.next();
    }
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--tls" => config.tls = Some(TlsConfig::default()),
            "--token" => config.auth.token = Some(value()?),
            "--client-certs" => config.auth.client_certs = true,
            "--kubeconfig" => kubeconfig = Some(PathBuf::from(value()?)),
            "--ca-file" => ca_file = Some(PathBuf::from(value()?)),
            "--generate" => {
                generate = Some(serde_json::from_str(&value()?).map_err(|e| format!("--generate: {e}"))?);
            }
            "--bookmark-interval" => {
                let secs: f64 = value()?.parse().map_err(|e| format!("--bookmark-interval: {e}"))?;
                config.bookmark_interval = Duration::from_secs_f64(secs);
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if config.auth.client_certs && config.tls.is_none() {
        return Err("--client-certs needs --tls".to_owned());
    }
    config.bind = SocketAddr::from(([127, 0, 0, 1], port));
    if ca_file.is_some() && config.tls.is_none() {
        return Err("--ca-file needs --tls".to_owned());
    }
    Ok(Args { config, kubeconfig, ca_file, generate })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = match parse() {
        Ok(a) => a,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let open = args.config.auth == Auth::none();
    let fake = FakeKube::start(args.config).await?;
    if let Some(spec) = &args.generate {
        let report = keelson_fake_kube::generate::generate(fake.store(), spec).map_err(std::io::Error::other)?;
        eprintln!("generated: {report}");
    }
    if let Some(path) = &args.kubeconfig {
        let credentials = fake.default_credentials()?;
        fake.write_kubeconfig(path, &KubeconfigSpec::new("fake", credentials))?;
    }
    if let (Some(path), Some(ca)) = (&args.ca_file, fake.ca_pem()) {
        std::fs::write(path, ca)?;
    }
    println!("{}", fake.url());
    if !open {
        eprintln!("authentication required on the API; /_fake/* is open");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    drop(fake);
    Ok(())
}
