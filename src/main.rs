//! The `regcache` binary: the command line (clap), logging set-up (tracing) and
//! the process lifetime. It is the only place that prints errors for the user
//! and chooses the exit code; all work happens in the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use regcache::config::{self, Overrides, ProcessSecrets};
use regcache::ops;
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
    /// List cached content: upstream, repository, tag, digest, size, last access.
    Ls(LsArgs),
    /// Show disk usage against the budget, counts, pinned bytes and the running
    /// server's hit/miss counters.
    Stats(StatsArgs),
    /// Evict least recently used unpinned content now (to the low watermark, or
    /// to --to SIZE).
    Gc(GcArgs),
    /// Re-hash every cached file; report and remove corrupt ones (exit status 1
    /// if any were found).
    Verify(DataArgs),
    /// Pins: content eviction never deletes. Lists the configured ones
    /// (storage.pins) and adds or removes runtime ones, through the running
    /// server or, without one, in the index (read when the server starts).
    #[command(subcommand)]
    Pin(PinCommand),
    /// Show or check the configuration (embedded default, then the file, then
    /// REGCACHE_* environment variables, then flags).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Walk each upstream's pull path (DNS, /v2/, token, a probe image's
    /// manifest, one byte of a blob through every redirect), print each hop
    /// with its status, time and TLS issuer, then the egress allowlist; exit
    /// status 1 with a diagnosis when a step fails.
    Doctor(DoctorArgs),
    /// Find image references in manifests, Helm charts (also packaged),
    /// kustomizations, Dockerfiles, compose files and JSON; report those naming
    /// a frozen registry (k8s.gcr.io, more in `[scan]`) with their replacement.
    /// Exit status 1 when frozen references were found and not fixed.
    Scan(ScanArgs),
    /// Pull images through a running regcache (manifests, the selected
    /// platforms, every blob, each checked against its digest) so they are
    /// cached before nodes need them. Reads references one per line from FILE
    /// or stdin (`scan --list` output, or kubectl's `sort | uniq -c` output).
    /// Exit status 1 if any image failed.
    Prefetch(PrefetchArgs),
    /// Write cached images (default: every tagged image) as an OCI image
    /// layout, to a directory or, for a name ending in .tar, a tar file.
    Export(ExportArgs),
    /// Read an OCI image layout (directory or tar, e.g. from `export` or
    /// `skopeo copy ... oci:DIR:NAME`) into the cache, every digest checked;
    /// all or nothing per image. Exit status 1 if any image was refused.
    Import(ImportArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration as TOML, each value with where it came
    /// from; secrets are never printed.
    Show(ServeArgs),
    /// Validate FILE (with the embedded defaults under it and the REGCACHE_*
    /// environment over it) without starting anything; exit status 2 if invalid.
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PinCommand {
    /// List every pin: configured or runtime, who added it, the bytes it protects.
    Ls(LsArgs),
    /// Pin PATTERNs: <upstream>/<repository glob>[:<tag glob>] or
    /// <upstream>/<repository>@<digest> (e.g. registry.k8s.io/pause:3.9).
    Add(PinArgs),
    /// Remove runtime pins (configured ones stay until removed from the
    /// configuration); their content is evictable from the next pass.
    Rm(PinArgs),
}

#[derive(Debug, clap::Args)]
struct PinArgs {
    #[command(flatten)]
    data: DataArgs,
    #[arg(required = true, value_name = "PATTERN")]
    patterns: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct DoctorArgs {
    /// Configuration file (TOML), as for `serve`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Only this upstream (a name or alias).
    #[arg(long, value_name = "NAME")]
    upstream: Option<String>,
    /// Probe this REPOSITORY:TAG instead of the upstream's `probe_image`.
    #[arg(long, value_name = "REF")]
    image: Option<String>,
    /// Print a JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ExportArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Where to write: a directory, or a file ending in .tar.
    #[arg(long, value_name = "DIR|FILE.tar")]
    out: PathBuf,
    /// Images to export, in the pin syntax: <upstream>/<repository glob>[:<tag glob>]
    /// (e.g. registry.k8s.io/pause:*). Default: every tagged image.
    #[arg(value_name = "PATTERN")]
    patterns: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct ImportArgs {
    #[command(flatten)]
    data: DataArgs,
    /// The layout: a directory, or a tar file (gzip-compressed or not).
    #[arg(value_name = "DIR|FILE.tar")]
    source: PathBuf,
}

#[derive(Debug, clap::Args)]
struct PrefetchArgs {
    /// The running regcache to pull through.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:5000")]
    server: Url,
    /// Requests (and images) in flight at once.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Platforms to take from a multi-platform image (default: all), e.g.
    /// linux/amd64,linux/arm64.
    #[arg(long, value_name = "OS/ARCH[/VARIANT],...", value_delimiter = ',')]
    platform: Vec<regcache::oci::Platform>,
    /// File of references; `-` or none reads stdin.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    /// Pin each image (exactly its tag or digest) before its blobs are
    /// fetched; an image that fails is not left pinned. Through the server's
    /// admin socket, else in the index of --data (needed unless --server is
    /// on this machine).
    #[arg(long)]
    pin: bool,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Debug, clap::Args)]
struct ScanArgs {
    /// Files and directories to scan (directories recursively, hidden ones skipped).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Rewrite the frozen registry host in place (only those bytes); templates,
    /// unparseable files and packaged charts are reported, never touched.
    #[arg(long)]
    fix: bool,
    /// Print the unique normalized references, one per line (the input of
    /// `regcache prefetch`); frozen ones as their replacement.
    #[arg(long, conflicts_with = "json")]
    list: bool,
    /// Print a JSON object (findings, skipped files, frozen_left).
    #[arg(long)]
    json: bool,
    /// Configuration file whose `[scan] frozen` adds frozen registries.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Where the operator commands find the data directory. They are safe to run
/// while `regcache serve` uses it.
#[derive(Debug, clap::Args)]
struct DataArgs {
    /// Configuration file (TOML), as for `serve`; its `storage.data_dir`
    /// (and budget and pins) apply.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory, overriding `storage.data_dir`.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct LsArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct StatsArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Print a JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct GcArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Evict down to this many bytes of content (e.g. 10GiB) instead of the
    /// configured low watermark.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    to: Option<u64>,
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
    /// Disk budget for cached content, overriding `storage.max_size`
    /// (e.g. 50GiB, 500MB; least recently used content is evicted past it).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_size: Option<u64>,
}

/// A human size ("50GiB", "500MB", "1048576") in bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held until main returns: dropping it writes the lines still queued.
    let _log_writer = init_logging();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Ls(args) => done(operate(&args.data, |rt, config, out| {
            rt.block_on(ops::ls::run(&config.data_dir, args.json, out))
        })),
        Command::Stats(args) => done(operate(&args.data, |rt, config, out| {
            rt.block_on(ops::stats::run(config, args.json, out))
        })),
        Command::Gc(args) => done(operate(&args.data, |rt, config, out| {
            rt.block_on(ops::gc::run(config, args.to, out)).map(drop)
        })),
        Command::Config(ConfigCommand::Show(args)) => show_config(&args),
        Command::Config(ConfigCommand::Check { file }) => check_config(&file),
        Command::Doctor(args) => doctor(args),
        Command::Scan(args) => scan(&args),
        Command::Prefetch(args) => prefetch(args),
        Command::Export(args) => done(operate(&args.data, |rt, config, out| {
            let bars = std::io::IsTerminal::is_terminal(&std::io::stderr());
            rt.block_on(ops::airgap::export(
                config,
                &args.out,
                &args.patterns,
                bars,
                out,
            ))
            .map(drop)
        })),
        Command::Import(args) => match operate(&args.data, |rt, config, out| {
            let bars = std::io::IsTerminal::is_terminal(&std::io::stderr());
            rt.block_on(ops::airgap::import(config, &args.source, bars, out))
        }) {
            Ok(summary) if summary.failed.is_empty() && summary.cut.is_none() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(code) => code,
        },
        Command::Pin(command) => pin(command),
        Command::Verify(args) => match operate(&args, |rt, config, out| {
            rt.block_on(ops::verify::run(&config.data_dir, out))
        }) {
            Ok(report) if report.failed() => ExitCode::FAILURE,
            Ok(_) => ExitCode::SUCCESS,
            Err(code) => code,
        },
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
    // File I/O runs on the blocking pool. tokio's default of 512 threads lets
    // a herd of readers start one thread (and one allocator heap) each; 64 is
    // far more than the disk can use concurrently and bounds that memory.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(64)
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

fn doctor(args: DoctorArgs) -> ExitCode {
    let config = match load_with(args.config.as_deref(), &Overrides::default()) {
        Ok(loaded) => loaded.config,
        Err(message) => {
            eprintln!("regcache: {message}");
            return ExitCode::from(2);
        }
    };
    let options = ops::doctor::Options {
        upstream: args.upstream,
        image: args.image,
        json: args.json,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("regcache: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    match runtime.block_on(ops::doctor::run(&config, &options, &mut out)) {
        Ok(report) if report.failed() => ExitCode::FAILURE,
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("regcache: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `regcache scan`: 0 when no frozen reference is left, 1 when some are, 2
/// when the configuration or a path cannot be read.
fn scan(args: &ScanArgs) -> ExitCode {
    let config = match load_with(args.config.as_deref(), &Overrides::default()) {
        Ok(loaded) => loaded.config,
        Err(message) => {
            eprintln!("regcache: {message}");
            return ExitCode::from(2);
        }
    };
    let frozen = regcache::scan::Frozen::new(&config.scan.frozen);
    let result = match regcache::scan::scan(&args.paths, &frozen, args.fix) {
        Ok(result) => result,
        Err(e) => {
            eprintln!("regcache: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = if args.list {
        regcache::scan::write_list(&result, &mut out)
    } else if args.json {
        regcache::scan::write_json(&result, &mut out)
    } else {
        regcache::scan::write_text(&result, &mut out)
    };
    if let Err(e) = written.and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("regcache: {e}");
            return ExitCode::FAILURE;
        }
    }
    if result.frozen_left() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn pin(command: PinCommand) -> ExitCode {
    match command {
        PinCommand::Ls(args) => done(operate(&args.data, |rt, config, out| {
            rt.block_on(ops::pin::ls(config, args.json, out))
        })),
        PinCommand::Add(args) => done(operate(&args.data, |rt, config, out| {
            rt.block_on(ops::pin::add(config, &args.patterns, out))
        })),
        PinCommand::Rm(args) => done(operate(&args.data, |rt, config, out| {
            rt.block_on(ops::pin::rm(config, &args.patterns, out))
        })),
    }
}

/// `regcache prefetch`: 0 when every image was pulled, 1 when an image failed
/// or a line was not a reference, 2 when the input cannot be read.
fn prefetch(args: PrefetchArgs) -> ExitCode {
    use regcache::ops::prefetch;
    let text = match &args.file {
        Some(path) if path.as_os_str() != "-" => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display())),
        _ => std::io::read_to_string(std::io::stdin()).map_err(|e| format!("reading stdin: {e}")),
    };
    let text = match text {
        Ok(text) => text,
        Err(message) => {
            eprintln!("regcache: {message}");
            return ExitCode::from(2);
        }
    };
    let (images, bad) = prefetch::references(&text);
    for line in &bad {
        eprintln!(
            "regcache: line {}: {:?} is not an image reference: {}",
            line.line, line.text, line.reason
        );
    }
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
    // Where pins go is settled before anything is pulled.
    let pins = if args.pin {
        match prefetch_pins(&runtime, &args) {
            Ok(target) => Some(target),
            Err(message) => {
                eprintln!("regcache: {message}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let options = prefetch::Options {
        server: args.server,
        concurrency: usize::from(args.concurrency),
        platforms: args.platform,
        pins,
    };
    let bars = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = prefetch::Progress::new(images.len(), bars);
    match runtime.block_on(prefetch::run(images, &options, &progress)) {
        Ok(summary) => {
            println!("{}", summary.render());
            if summary.failed.is_empty() && bad.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("regcache: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `prefetch --pin`: the server's admin socket or the index of the data
/// directory (`--data`, else the configuration's when the server is local).
fn prefetch_pins(
    runtime: &tokio::runtime::Runtime,
    args: &PrefetchArgs,
) -> Result<ops::pin::Target, String> {
    let config = load_data_config(&args.data)?;
    let data_given = args.data.data.is_some();
    runtime
        .block_on(ops::pin::for_prefetch(&config, data_given, &args.server))
        .map_err(|e| format!("{e:#}"))
}

fn load_config(args: &ServeArgs) -> Result<config::Config, String> {
    load_layers(args).map(|loaded| loaded.config)
}

fn load_layers(args: &ServeArgs) -> Result<config::Loaded, String> {
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data.clone(),
        upstream_url: args.upstream.clone(),
        max_size: args.max_size,
    };
    load_with(args.config.as_deref(), &overrides)
}

/// `regcache config show`: the effective configuration on stdout.
fn show_config(args: &ServeArgs) -> ExitCode {
    match load_layers(args) {
        Ok(loaded) => {
            print!("{}", config::render(&loaded));
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("regcache: {message}");
            ExitCode::from(2)
        }
    }
}

/// `regcache config check FILE`: validates, starts nothing.
fn check_config(file: &Path) -> ExitCode {
    match load_with(Some(file), &Overrides::default()) {
        Ok(_) => {
            println!("{}: valid", file.display());
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("regcache: {message}");
            ExitCode::from(2)
        }
    }
}

/// Runs an operator command with a current-thread runtime and stdout as its
/// output. `Err` is the exit status: 2 for a bad configuration, 1 for a failure;
/// a closed stdout (`regcache ls | head`) is not a failure.
fn operate<T: Default>(
    args: &DataArgs,
    command: impl FnOnce(&tokio::runtime::Runtime, &config::Config, &mut dyn Write) -> anyhow::Result<T>,
) -> Result<T, ExitCode> {
    let config = load_data_config(args).map_err(|message| {
        eprintln!("regcache: {message}");
        ExitCode::from(2)
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("regcache: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match command(&runtime, &config, &mut out) {
        Ok(value) => Ok(value),
        Err(e) if is_broken_pipe(&e) => Ok(T::default()),
        Err(e) => {
            eprintln!("regcache: {e:#}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// The exit status of a command that reports nothing beyond success.
fn done(result: Result<(), ExitCode>) -> ExitCode {
    result.err().unwrap_or(ExitCode::SUCCESS)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The configuration for an operator command: `--config` (or the embedded
/// default) with `--data` applied, like `serve`.
fn load_data_config(args: &DataArgs) -> Result<config::Config, String> {
    let overrides = Overrides {
        data_dir: args.data.clone(),
        ..Overrides::default()
    };
    load_with(args.config.as_deref(), &overrides).map(|loaded| loaded.config)
}

/// Loads the layers: the embedded default, `--config FILE` over it, the
/// `REGCACHE_*` environment, then `overrides` (the flags).
fn load_with(file: Option<&Path>, overrides: &Overrides) -> Result<config::Loaded, String> {
    let file = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Some((text, path.display().to_string()))
        }
        None => None,
    };
    let file = file
        .as_ref()
        .map(|(text, name)| (text.as_str(), name.as_str()));
    config::load_layered(file, overrides, &ProcessSecrets).map_err(|e| e.to_string())
}

/// Logs go to stderr through a background writer thread; `RUST_LOG` filters
/// them (default `info`). The returned guard flushes the queue when dropped.
fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::env::var_os("NO_COLOR").is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Not lossy: when the queue is full a request waits rather than a line
    // being dropped (the access log is a record, not a sample).
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .init();
    guard
}
