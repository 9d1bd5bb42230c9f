//! `keelson`: the hub process and the tools to inspect its log.
#![forbid(unsafe_code)]

mod admin_client;
mod config;
mod inspect;
mod kube_config;
mod serve;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// glibc malloc's arena lock showed up as the top contention point between
// appenders and sled's flusher threads; mimalloc raised durable append
// throughput ~50% (docs/benchmarks.md).
// The `system-alloc` feature turns it off, so heap profilers that hook the
// system allocator (valgrind massif, heaptrack) see every allocation.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "keelson", version, about = "Event-sourced configuration hub for service meshes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve {
        /// Config file (TOML); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the event log lives [default: ./keelson-data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// xDS/MCP gRPC address [default: 127.0.0.1:18000].
        #[arg(long)]
        grpc_listen: Option<SocketAddr>,
        /// Admin HTTP address [default: 127.0.0.1:18001].
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// file:PATH | k8s[:CONTEXT] | consul:URL | mcp:URL (repeatable).
        #[arg(long = "source", value_name = "SPEC")]
        sources: Vec<String>,
        /// Bearer token file enabling the push API (PUT/DELETE /v1/resources/...).
        #[arg(long)]
        api_token_file: Option<PathBuf>,
    },
    /// Print log records in seq order.
    Log {
        #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// First seq to print [default: the first held].
        #[arg(long)]
        from: Option<u64>,
        /// Print at most N records.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// One JSON object per line (schema in docs/cli.md).
        #[arg(long)]
        json: bool,
        /// Read through a running hub's admin API instead of the data dir.
        #[arg(long, value_name = "URL")]
        admin: Option<String>,
    },
    /// Every recorded change of one object, newest first.
    History {
        /// group/kind/namespace/name, or kind/namespace/name for known kinds.
        key: String,
        #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
        /// Show a unified diff from each version to the next.
        #[arg(long, conflicts_with = "json")]
        diff: bool,
        /// Read through a running hub's admin API instead of the data dir.
        #[arg(long, value_name = "URL")]
        admin: Option<String>,
    },
    /// The whole config as of a point in the log.
    State {
        #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// A seq, or an RFC 3339 time [default: now].
        #[arg(long, value_name = "SEQ|RFC3339")]
        at: Option<String>,
        #[arg(long)]
        json: bool,
        /// Read through a running hub's admin API instead of the data dir.
        #[arg(long, value_name = "URL")]
        admin: Option<String>,
        /// The hub's config file, for its `[translate]` settings.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check config files offline; prints file:line errors, exit 1 if any.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The hub's config file, for its `[translate]` settings.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Connected proxies and their sync state per type, from a running hub.
    Status {
        /// The hub's admin URL.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:18001")]
        admin: String,
        /// Print /debug/syncz as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Act on a source of a running hub.
    Source {
        #[command(subcommand)]
        action: SourceAction,
    },
    /// Check every record, index entry and checkpoint; exit 1 on damage.
    Verify {
        #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Write off damaged records as lost (bytes kept in quarantine), rebuild indexes.
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SourceAction {
    /// Apply the deletions the mass-deletion guard holds for a source now.
    Confirm {
        /// The source as /debug/sources names it, e.g. file/config.
        name: String,
        /// The hub's admin URL.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:18001")]
        admin: String,
        /// The push API's bearer token file (the hub's [api] token_file).
        #[arg(long, value_name = "FILE")]
        api_token_file: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KEELSON_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match Cli::parse().command {
        Command::Serve { config, data_dir, grpc_listen, admin_listen, sources, api_token_file } => {
            let flags = config::Overrides { data_dir, grpc_listen, admin_listen, sources, api_token_file };
            config::ServeConfig::load(config.as_deref(), flags).and_then(serve::run).map(|()| ExitCode::SUCCESS)
        }
        Command::Log { data_dir, from, limit, json, admin } => {
            inspect::log(&data_dir, from, limit, json, admin.as_deref())
        }
        Command::History { key, data_dir, json, diff, admin } => {
            inspect::history(&data_dir, &key, inspect::HistoryFormat::from_flags(json, diff), admin.as_deref())
        }
        Command::State { data_dir, at, json, admin, config } => config::load_translate(config.as_deref())
            .and_then(|t| inspect::state(&data_dir, at.as_deref(), json, admin.as_deref(), &t)),
        Command::Status { admin, json } => status::status(&admin, json),
        Command::Source { action: SourceAction::Confirm { name, admin, api_token_file } } => {
            status::confirm_deletions(&admin, &name, &api_token_file)
        }
        Command::Validate { paths, config } => {
            config::load_translate(config.as_deref()).and_then(|t| inspect::validate(&paths, &t))
        }
        Command::Verify { data_dir, repair, json } => inspect::verify(&data_dir, repair, json),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}
