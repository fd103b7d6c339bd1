//! The registry service: decides, for every pull request, between a cache hit, a
//! confirmation, a fill from the upstream, or a stale answer (a tag past its
//! TTL, answered at once while a background revalidation asks the upstream). It
//! owns the routes (upstream clients), the local side ([`local::Local`]: store,
//! index, memory cache and budget, with their invariants) and the fills in
//! progress, and is the only module that combines them.
//!
//! It knows no HTTP status codes and no axum types: it returns domain values and
//! `registry::Error`, which `api` maps to responses.

mod activity;
mod blobs;
mod discovery;
mod error;
mod file_reader;
mod fill;
mod fill_job;
mod local;
mod manifests;
mod outcome;
mod passthrough;
mod referrers;
mod revalidate;
mod routes;
mod scrub;
mod tail;

use std::sync::Arc;

pub use crate::oci::Manifest;
pub use activity::{Activity, UpstreamActivity};
pub use blobs::{BlobBody, BlobReply};
pub use error::Error;
pub use fill::{FillProgress, FillStats};
pub use outcome::Outcome;
pub use referrers::Referrers;
pub use routes::{Route, Routed};
pub use scrub::ScrubTotals;

use crate::config::Config;
use crate::evict::Evictor;
use crate::index::Index;
use crate::oci::{Digest, RepoName};
use crate::store::Store;
use fill::Fills;
use local::Local;
use routes::Routes;

/// The pull-through registry.
#[derive(Debug)]
pub struct Registry {
    routes: Routes,
    local: Local,
    fills: Arc<Fills>,
    manifest_flights: manifests::Flights,
    revalidations: revalidate::Revalidations,
    referrers: referrers::Answers,
    scrub: scrub::ScrubCounters,
}

impl Registry {
    /// Builds the registry over an opened store and index.
    pub fn new(
        config: &Config,
        store: Store,
        index: Index,
    ) -> Result<Self, crate::upstream::Error> {
        let routes = Routes::new(&config.upstreams)?;
        let local = Local::new(
            store,
            index,
            config.eviction.budget,
            config.eviction.pins.clone(),
        );
        Ok(Self {
            routes,
            local,
            fills: Arc::default(),
            manifest_flights: manifests::Flights::default(),
            revalidations: revalidate::Revalidations::default(),
            referrers: referrers::Answers::default(),
            scrub: scrub::ScrubCounters::default(),
        })
    }

    /// Whether this registry can serve: its index answers and its store's
    /// directories are there. The upstreams play no part: a cache whose upstream
    /// is down still serves what it holds.
    pub async fn ready(&self) -> Result<(), Error> {
        self.local.ready().await
    }

    /// Each upstream's name and its circuit (see `upstream::Health`).
    pub fn upstream_health(
        &self,
    ) -> std::collections::BTreeMap<String, crate::upstream::HealthReport> {
        self.routes
            .all()
            .iter()
            .map(|r| (r.name().to_owned(), r.client.health()))
            .collect()
    }

    /// Each upstream's name and the `host:port`s its requests reached.
    pub fn upstream_hosts_seen(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        self.routes
            .all()
            .iter()
            .map(|r| (r.name().to_owned(), r.client.hosts_seen()))
            .collect()
    }

    /// The disk budget's enforcer (load it before serving, spawn its task).
    pub fn evictor(&self) -> &Arc<Evictor> {
        self.local.evictor()
    }

    /// The upstream a request for `name` goes to and the repository name it has
    /// there (see `routes`): by `ns` (containerd's `?ns=`), else by a path
    /// prefix naming an upstream, else the default. The table is closed: an
    /// unknown name is an error, never a host we dial.
    pub fn route(&self, ns: Option<&str>, name: &RepoName) -> Result<Routed<'_>, Error> {
        self.routes.resolve(ns, name)
    }

    /// Makes sure `repo` of `route` may be served `digest`: it may when the content
    /// was pulled for that repository (or confirmed before: `linked`, as the local
    /// side answered together with the content); otherwise the upstream
    /// must confirm the repository has it (`confirm` sends that HEAD). Cached bytes
    /// are never handed to a repository the upstream does not know them in.
    async fn ensure_linked<F, Fut>(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
        linked: bool,
        not_found: Error,
        confirm: F,
    ) -> Result<Outcome, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), crate::upstream::Error>>,
    {
        if linked {
            return Ok(Outcome::Hit);
        }
        confirm()
            .await
            .map_err(|e| Error::from_upstream(route.name(), e, not_found))?;
        self.link_confirmed(route, repo, digest).await;
        Ok(Outcome::Confirmed)
    }

    /// Records that the upstream of `route` just confirmed `repo` has
    /// committed `digest`. A link the index cannot write (a full disk) does
    /// not fail the request the upstream confirmed: it is logged, and the
    /// next request asks the upstream again.
    async fn link_confirmed(&self, route: &Route, repo: &RepoName, digest: &Digest) {
        if let Err(e) = self.local.link(&route.key, repo, digest).await {
            tracing::warn!(upstream = route.name(), %repo, %digest, error = %e, "cannot record a confirmed repository link; serving anyway");
        }
    }
}
