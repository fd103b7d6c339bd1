//! `regcache gc [--to SIZE]`: evicts least-recently-used unpinned content now,
//! down to `SIZE` bytes or, without it, to the configured low watermark. The
//! eviction itself is the evictor's ([`crate::evict::collect`]): rows first in one
//! transaction, then files, so it is safe beside a running server, which notices
//! the freed space at its next interval. Prints what was deleted.

use std::io::Write;

use super::format::{Table, human_size};
use crate::config::Config;
use crate::evict::EvictReport;
use crate::index::Access;

/// Evicts down to `to` bytes (default: the low watermark) and prints a report.
pub async fn run(
    config: &Config,
    to: Option<u64>,
    out: &mut dyn Write,
) -> anyhow::Result<EvictReport> {
    let data_dir = &config.data_dir;
    let index = super::open_index(data_dir, Access::ReadWrite)?;
    let store = super::attach_store(data_dir)?;
    let target = to.unwrap_or_else(|| config.eviction.budget.low());
    let pins = &config.eviction.pins;
    let report = crate::evict::collect(&index, &store, pins, target).await?;
    write_report(&report, out)?;
    out.flush()?;
    Ok(report)
}

fn write_report(r: &EvictReport, out: &mut dyn Write) -> std::io::Result<()> {
    if !r.evicted.is_empty() {
        let mut table = Table::new(&[("EVICTED", false), ("SIZE", true)]);
        for (digest, size) in &r.evicted {
            table.push(vec![digest.to_string(), human_size(*size)]);
        }
        table.write(out)?;
    }
    writeln!(
        out,
        "usage {} -> {} (target {}): evicted {} ({}); pinned {}",
        human_size(r.usage_before),
        human_size(r.usage_after),
        human_size(r.target),
        r.evicted.len(),
        human_size(r.freed_bytes),
        human_size(r.pinned_bytes),
    )
}
