//! The registry service: decides, for every pull request, between a cache hit, a
//! confirmation, a fill from the upstream, a revalidation or a stale answer. It
//! owns the upstream clients, the store, the index, the memory cache and the fills
//! in progress, and is the only module that combines them.
//!
//! It knows no HTTP status codes and no axum types: it returns domain values and
//! `registry::Error`, which `api` maps to responses.

mod blobs;
mod discovery;
mod error;
mod fill;
mod fill_job;
mod manifests;
mod outcome;
mod passthrough;
mod routes;

use std::sync::Arc;

pub use blobs::{BlobBody, BlobReply};
pub use discovery::Referrers;
pub use error::Error;
pub use manifests::Manifest;
pub use outcome::Outcome;
pub use routes::{Route, Routed};

use crate::cache::Cache;
use crate::config::Config;
use crate::evict::Evictor;
use crate::index::Index;
use crate::oci::{Digest, RepoName};
use crate::store::Store;
use crate::upstream::Upstream;
use fill::Fills;
use routes::Routes;

/// The pull-through registry.
#[derive(Debug)]
pub struct Registry {
    routes: Routes,
    store: Store,
    index: Index,
    cache: Cache,
    fills: Arc<Fills>,
    manifest_flights: manifests::Flights,
    evictor: Arc<Evictor>,
}

impl Registry {
    /// Builds the registry over an opened store and index.
    pub fn new(
        config: &Config,
        store: Store,
        index: Index,
    ) -> Result<Self, crate::upstream::Error> {
        let routes = config
            .upstreams
            .iter()
            .enumerate()
            .map(|(id, up)| {
                Ok(Route {
                    id,
                    config: up.clone(),
                    client: Upstream::new(up)?,
                })
            })
            .collect::<Result<_, crate::upstream::Error>>()
            .map(Routes::new)?;
        let cache = Cache::new();
        let evictor = Arc::new(Evictor::new(
            config.eviction.budget(),
            config.eviction.pins(),
            index.clone(),
            store.clone(),
            cache.clone(),
        ));
        Ok(Self {
            routes,
            store,
            index,
            cache,
            fills: Arc::default(),
            manifest_flights: manifests::Flights::default(),
            evictor,
        })
    }

    /// Whether this registry can serve: its index answers and its store's
    /// directories are there. The upstreams play no part: a cache whose upstream
    /// is down still serves what it holds.
    pub async fn ready(&self) -> Result<(), Error> {
        self.index.ping().await?;
        self.store.check().await?;
        Ok(())
    }

    /// The disk budget's enforcer (load it before serving, spawn its task).
    /// Each upstream's name and the `host:port`s its requests reached.
    pub fn upstream_hosts_seen(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        self.routes
            .all()
            .iter()
            .map(|r| (r.name().to_owned(), r.client.hosts_seen()))
            .collect()
    }

    pub fn evictor(&self) -> &Arc<Evictor> {
        &self.evictor
    }

    /// The upstream a request for `name` goes to and the repository name it has
    /// there (see `routes`): by `ns` (containerd's `?ns=`), else by a path
    /// prefix naming an upstream, else the default. The table is closed: an
    /// unknown name is an error, never a host we dial.
    pub fn route(&self, ns: Option<&str>, name: &RepoName) -> Result<Routed<'_>, Error> {
        self.routes.resolve(ns, name)
    }

    /// Whether `repo` of `route` is known to have `digest`: memory first, then
    /// the index (a link found there is remembered in memory; a hit found in
    /// memory writes nothing, not even to moka).
    async fn is_linked(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<bool, Error> {
        if self.cache.is_linked(route.id, repo, digest).await {
            return Ok(true);
        }
        let linked = self.index.is_linked(route.name(), repo, digest).await?;
        if linked {
            self.cache.set_linked(route.id, repo, digest).await;
        }
        Ok(linked)
    }

    /// Makes sure `repo` of `route` may be served `digest`: it may when the content
    /// was pulled for that repository (or confirmed before); otherwise the upstream
    /// must confirm the repository has it (`confirm` sends that HEAD). Cached bytes
    /// are never handed to a repository the upstream does not know them in.
    async fn ensure_linked<F, Fut>(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
        not_found: Error,
        confirm: F,
    ) -> Result<Outcome, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), crate::upstream::Error>>,
    {
        if self.is_linked(route, repo, digest).await? {
            return Ok(Outcome::Hit);
        }
        confirm()
            .await
            .map_err(|e| Error::from_upstream(route.name(), e, not_found))?;
        self.index.link(route.name(), repo, digest).await?;
        self.cache.set_linked(route.id, repo, digest).await;
        Ok(Outcome::Confirmed)
    }
}
