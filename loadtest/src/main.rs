//! `keelson-loadtest`: see loadtest/README.md.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use keelson_loadtest::options::{Args, Options};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KEELSON_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let options = match Options::resolve(Args::parse()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(keelson_loadtest::run(&options)) {
        Ok((report, _)) => {
            print!("{}", report.table());
            // Exit 1 when any proxy failed to connect, sync or converge.
            if report.clean() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
