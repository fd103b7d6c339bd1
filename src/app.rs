//! Wiring: opens the data directory (store, index, start-up sweep), builds the
//! `Registry` and the router, and serves until a shutdown signal. It holds no
//! business logic and no global state; `main` calls [`run`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::index::Index;
use crate::registry::Registry;
use crate::store::{self, Store};

/// How long in-flight responses may finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Opens the data directory and builds the registry on it.
pub async fn open_registry(config: &Config) -> anyhow::Result<Registry> {
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let store = Store::open(data_dir)
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    let index = Index::open(&index_path(data_dir)).context("opening the index")?;
    let report = store::reconcile(&store, &index)
        .await
        .context("reconciling the index with the store")?;
    tracing::info!(?report, "store reconciled");
    Registry::new(config, store, index).context("building upstream clients")
}

fn index_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("index.db")
}

/// Serves the registry on `config.listen` until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let registry = Arc::new(open_registry(&config).await?);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let default = config.default_upstream();
    tracing::info!(%addr, upstream = %default.name, url = %default.url, data = %config.data_dir.display(), "listening");
    let app = crate::api::router(registry);
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal());
    // Graceful shutdown waits for open responses; a stalled 1 GiB download must
    // not keep the process alive forever.
    tokio::select! {
        result = server => result.context("serving")?,
        () = async { shutdown_signal().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("connections still open after the grace period; exiting");
        }
    }
    tracing::info!("stopped");
    Ok(())
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
