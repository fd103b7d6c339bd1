//! regcache: a pull-through caching proxy for OCI container registries.
//!
//! It serves the OCI Distribution pull API from a content-addressed disk store
//! indexed in SQLite, and fills misses from configured upstream registries while
//! streaming to the client. See `ARCHITECTURE.md` for the map of modules and the
//! life of a request. This crate root only declares modules; it holds no state.

pub mod api;
pub mod app;
pub mod cache;
pub mod config;
pub mod connections;
pub mod counters;
pub mod evict;
#[doc(hidden)]
pub mod fuzz;
pub mod index;
pub mod listener;
pub mod metrics;
pub mod oci;
pub mod ops;
pub mod registry;
pub mod scan;
pub mod store;
pub mod upstream;
pub mod users;
