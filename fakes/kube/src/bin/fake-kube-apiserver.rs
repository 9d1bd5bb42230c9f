//! Serves a fake Kubernetes API on 127.0.0.1:PORT (first argument, default 0 = any)
//! and prints its URL; control it over HTTP under `/_fake/`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use keelson_fake_kube::{FakeConfig, FakeKube};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    let config = FakeConfig { bind: SocketAddr::from(([127, 0, 0, 1], port)), ..FakeConfig::default() };
    let fake = FakeKube::start(config).await?;
    println!("{}", fake.url());
    tokio::signal::ctrl_c().await?;
    drop(fake);
    Ok(())
}
