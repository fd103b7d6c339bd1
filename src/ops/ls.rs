//! `regcache ls`: what the cache holds, one line per repository and tag (or
//! untagged content): upstream, repository, tag (or `-`), digest, size and last
//! access. `--json` prints the same rows as one JSON array. Content that no
//! repository links to (adopted after a crash) is listed with `-` for upstream
//! and repository. Read-only: one read transaction on the index.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::format::{Table, age, human_size};
use crate::index::{Access, ListingRow};

/// One row of `ls --json`.
#[derive(Debug, Serialize)]
pub struct JsonRow<'a> {
    pub upstream: Option<&'a str>,
    pub repository: Option<&'a str>,
    pub tag: Option<&'a str>,
    pub digest: String,
    pub size: u64,
    /// `manifest` or `blob`.
    pub kind: &'static str,
    pub media_type: Option<&'a str>,
    /// Unix seconds.
    pub last_access: u64,
}

/// Lists the index of `data_dir` to `out`, as a table or JSON.
pub async fn run(data_dir: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let index = super::open_index(data_dir, Access::ReadOnly)?;
    let rows = index.listing().await?;
    if json {
        write_json(&rows, out)?;
    } else {
        write_table(&rows, SystemTime::now(), out)?;
    }
    out.flush()?;
    Ok(())
}

fn write_json(rows: &[ListingRow], out: &mut dyn Write) -> std::io::Result<()> {
    let rows: Vec<JsonRow<'_>> = rows
        .iter()
        .map(|r| JsonRow {
            upstream: r.upstream.as_deref(),
            repository: r.repo.as_deref(),
            tag: r.tag.as_deref(),
            digest: r.digest.to_string(),
            size: r.size,
            kind: if r.media_type.is_some() {
                "manifest"
            } else {
                "blob"
            },
            media_type: r.media_type.as_deref(),
            last_access: r
                .last_access
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
        })
        .collect();
    serde_json::to_writer_pretty(&mut *out, &rows)?;
    out.write_all(b"\n")
}

fn write_table(rows: &[ListingRow], now: SystemTime, out: &mut dyn Write) -> std::io::Result<()> {
    let mut table = Table::new(&[
        ("UPSTREAM", false),
        ("REPOSITORY", false),
        ("TAG", false),
        ("DIGEST", false),
        ("SIZE", true),
        ("LAST ACCESS", false),
    ]);
    let dash = || "-".to_owned();
    for r in rows {
        table.push(vec![
            r.upstream.clone().unwrap_or_else(dash),
            r.repo.clone().unwrap_or_else(dash),
            r.tag.clone().unwrap_or_else(dash),
            r.digest.to_string(),
            human_size(r.size),
            age(now, r.last_access),
        ]);
    }
    if table.is_empty() {
        return out.write_all(b"the cache is empty\n");
    }
    table.write(out)
}
