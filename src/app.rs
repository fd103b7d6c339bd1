//! Wiring: opens the data directory (store, index, start-up sweep), builds the
//! `Registry` and the router, and serves (plain HTTP, or HTTPS through
//! `listener` when `[server.tls]` is set) until a shutdown signal. It holds no
//! business logic and no global state; `main` calls [`run`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::api::auth::Gate;
use crate::config::Config;
use crate::counters::Counters;
use crate::index::{self, Index};
use crate::listener::{Certificate, PlainListener, TlsListener};
use crate::metrics::{History, Observed};
use crate::ops::admin::AdminSocket;
use crate::ops::server_stats::StatsWriter;
use crate::registry::Registry;
use crate::store::{self, Store};
use crate::users::Users;

/// How long in-flight responses may finish after a shutdown signal by default
/// (`server.shutdown_timeout`). Public so the Kubernetes manifests'
/// termination grace period can be checked against it.
pub const SHUTDOWN_GRACE: Duration = crate::config::DEFAULT_SHUTDOWN_TIMEOUT;
/// How often the request counters are written for `regcache stats`.
const STATS_INTERVAL: Duration = Duration::from_secs(2);

/// Opens the data directory and builds the registry on it.
pub async fn open_registry(config: &Config) -> anyhow::Result<Registry> {
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let store = Store::open(data_dir)
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    let index = Index::open(&index::path_in(data_dir)).context("opening the index")?;
    let report = store::reconcile(&store, &index)
        .await
        .context("reconciling the index with the store")?;
    tracing::info!("data directory: {}", data_dir.display());
    for fact in report.facts() {
        tracing::info!("{fact}");
    }
    let registry = Registry::new(config, store, index).context("building upstream clients")?;
    registry
        .evictor()
        .load()
        .await
        .context("loading the cache's disk usage")?;
    Ok(registry)
}

/// Serves the registry on `config.listen` until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // First: a certificate that cannot be served stops regcache before it
    // touches the data directory.
    let certificate = config.tls.as_ref().map(Certificate::load).transpose()?;
    let users = match &config.auth {
        Some(auth) => Some((Users::load(&auth.htpasswd)?, auth)),
        None => None,
    };
    crate::connections::raise_open_file_limit(config.connections.max_connections);
    let registry = Arc::new(open_registry(&config).await?);
    let eviction = registry.evictor().spawn(config.eviction.interval);
    let scrub = registry.spawn_scrub(config.scrub);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let default = config.default_upstream();
    let counters = Arc::new(Counters::default());
    let (seen_by, health_of) = (Arc::clone(&registry), Arc::clone(&registry));
    let stats = StatsWriter::new(
        &config.data_dir,
        config.eviction.budget,
        Arc::clone(&counters),
    )
    .with_hosts(Arc::new(move || seen_by.upstream_hosts_seen()))
    .with_health(Arc::new(move || health_of.upstream_health()));
    let scrubbed_by = Arc::clone(&registry);
    let stats = stats.with_scrub(Arc::new(move || scrubbed_by.scrub_totals()));
    // Written once before "listening": the file is there when the server is.
    stats
        .write()
        .await
        .context("writing the server statistics file")?;
    let stats_task = tokio::spawn(stats.clone().run(STATS_INTERVAL));
    // Without the socket (a data directory path longer than a socket address
    // allows, a file system without sockets) operator commands work on the
    // files, as they always could: not a reason to refuse to serve.
    let admin = AdminSocket::bind(&config, Arc::clone(registry.evictor()))
        .inspect_err(|e| tracing::warn!(error = %format!("{e:#}"), "no admin socket; `regcache gc` will work on the files"))
        .ok();
    let scheme = if certificate.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(%addr, scheme, upstream = %default.name, url = %default.url, data = %config.data_dir.display(), "listening");
    let gate = users
        .as_ref()
        .map(|(users, auth)| Arc::new(Gate::new(Arc::clone(users), auth.required, &auth.realm)));
    let users_watch = users.map(|(users, _)| tokio::spawn(users.watch()));
    let history = Arc::new(History::default());
    let history_task = tokio::spawn(Arc::clone(&history).run(Arc::clone(&counters)));
    let observed = Observed::new(Arc::clone(&registry), Arc::clone(&counters), history);
    let (on_main, metrics_task) = match config.metrics_listen {
        Some(addr) => (None, Some(serve_metrics(addr, observed).await?)),
        None => (Some(observed), None),
    };
    let app = crate::api::router(registry, counters, gate, on_main);
    match certificate {
        None => serve(PlainListener::new(listener), app, config.connections).await,
        Some(certificate) => {
            let watcher = tokio::spawn(Arc::clone(&certificate).watch());
            let config_tls = certificate.server_config();
            let listener = TlsListener::new(listener, config_tls, &config.connections)?;
            serve(listener, app, config.connections).await;
            watcher.abort();
        }
    }
    stats_task.abort();
    history_task.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    if let Some(scrub) = scrub {
        scrub.abort();
    }
    if let Some(watch) = users_watch {
        watch.abort();
    }
    if let Some(admin) = admin {
        admin.close();
    }
    if let Err(e) = stats.write().await {
        tracing::warn!(error = %e, "cannot write the final server statistics");
    }
    // Access times recorded since the last flush survive the restart.
    eviction.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Binds `server.metrics_listen` and serves `/metrics` and the status page
/// there (plain HTTP) on a task of its own, until it is aborted.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    observed: Observed,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} (server.metrics_listen)"))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "metrics and status page listening");
    let app = crate::api::observability_router(observed);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    }))
}

/// Serves `app` on `listener` until SIGINT or SIGTERM, then lets open
/// responses finish for up to `server.shutdown_timeout`.
async fn serve<L>(listener: L, app: axum::Router, limits: crate::config::ConnectionLimits)
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    crate::connections::serve(listener, app, limits, shutdown_signal()).await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
