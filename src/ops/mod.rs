//! Operator commands: `regcache ls`, `stats`, `gc` and `verify`, and the counters file a running server writes for
//! `stats`; `doctor`, which reads the configuration only and probes the upstreams; `prefetch`, which only talks HTTP
//! to a running server (and, with `--pin`, records pins like `pin`); `pin`, the runtime pins; and `export`/`import` of OCI image layouts for sites without a registry. They are safe to
//! run while `regcache serve` runs on the same data
//! directory: they open the index with [`Index::open_existing`] (no creation, no
//! migration; read-only for `ls` and `stats`, ordinary WAL write transactions
//! with a busy timeout for `verify` and `gc`) and the store with [`Store::attach`] (which,
//! unlike `Store::open`, never sweeps `tmp/`: its files may be the server's fills).
//!
//! Each command renders into a `Write` and returns what `main` needs for the exit
//! code; `main` only parses arguments. Like `app`, this is a command layer, so
//! its errors are `anyhow` with context.

pub mod admin;
pub mod airgap;
pub mod doctor;
pub mod format;
pub mod gc;
pub mod ls;
pub mod pin;
pub mod prefetch;
pub mod progress;
pub mod server_stats;
pub mod stats;
pub mod verify;

use std::path::Path;

use anyhow::Context as _;

use crate::index::{Access, Index};
use crate::store::Store;

/// Opens the index of an existing data directory without migrating or creating it.
pub fn open_index(data_dir: &Path, access: Access) -> anyhow::Result<Index> {
    let path = crate::index::path_in(data_dir);
    if !path.is_file() {
        anyhow::bail!(
            "no index at {}: is this a regcache data directory (has `regcache serve` run on it)?",
            path.display()
        );
    }
    Index::open_existing(&path, access).with_context(|| format!("opening {}", path.display()))
}

/// Opens the store of an existing data directory without sweeping `tmp/`.
pub fn attach_store(data_dir: &Path) -> anyhow::Result<Store> {
    Store::attach(data_dir).with_context(|| format!("opening the store in {}", data_dir.display()))
}
