//! The `regcache` binary: the command line (clap), logging set-up (tracing) and
//! the process lifetime. It is the only place that prints errors for the user
//! and chooses the exit code; all work happens in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use regcache::config::{self, Overrides, ProcessSecrets};
use tracing_subscriber::EnvFilter;
use url::Url;

/// A pull-through caching proxy for OCI container registries.
///
/// Point containerd, CRI-O, podman or skopeo at regcache as a mirror of
/// registry.k8s.io (or another upstream); the first pull fills the cache while
/// streaming, later pulls are served from disk, also when the upstream is down.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the registry API (read-only OCI Distribution pull API).
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML). Without it, the embedded default applies:
    /// listen on 0.0.0.0:5000, mirror https://registry.k8s.io, data in
    /// ./regcache-data.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, overriding `server.listen` (e.g. 127.0.0.1:5000;
    /// port 0 picks a free port, logged at start-up).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Data directory for blobs, manifests and the index, overriding
    /// `storage.data_dir`.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// URL of the default upstream registry, replacing its configured `url`
    /// (e.g. http://127.0.0.1:5001 for a local registry).
    #[arg(long, value_name = "URL")]
    upstream: Option<Url>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match load_config(&args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("regcache: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("regcache: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(regcache::app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("regcache: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(args: &ServeArgs) -> Result<config::Config, String> {
    let (text, source) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            (text, path.display().to_string())
        }
        None => (
            config::DEFAULT_TOML.to_owned(),
            "the embedded default configuration".to_owned(),
        ),
    };
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data.clone(),
        upstream_url: args.upstream.clone(),
    };
    config::load(&text, &source, &overrides, &ProcessSecrets).map_err(|e| e.to_string())
}

/// Logs go to stderr; `RUST_LOG` filters them (default `info`).
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::env::var_os("NO_COLOR").is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
