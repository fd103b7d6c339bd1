//! `regcache gc [--to SIZE]`: evicts least-recently-used unpinned content now,
//! down to `SIZE` bytes or, without it, to the low watermark. With a server
//! running on the data directory it asks that server (the admin socket,
//! [`super::admin`]), whose evictor respects its commit guards and memory;
//! otherwise the eviction is [`crate::evict::collect`] on the files: rows first
//! in small transactions, then files. Prints what was deleted, and by whom.

use std::io::Write;

use super::admin::{Answer, Request};
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
    let request = Request::Gc { to };
    match super::admin::ask(data_dir, &request).await? {
        Some(Answer::Gc(answer)) => {
            let pid = answer.pid;
            let report = answer.into_report()?;
            write_report(&report, out)?;
            writeln!(out, "evicted by the running server, pid {pid}")?;
            out.flush()?;
            return Ok(report);
        }
        Some(Answer::Error(message)) => anyhow::bail!("the running server: {message}"),
        Some(other) => anyhow::bail!("the running server answered {other:?} to gc"),
        None => {}
    }
    let index = super::open_index(data_dir, Access::ReadWrite)?;
    let store = super::attach_store(data_dir)?;
    let target = to.unwrap_or_else(|| config.eviction.budget.low());
    let pins = &config.eviction.pins;
    let report = crate::evict::collect(&index, &store, pins, target).await?;
    write_report(&report, out)?;
    writeln!(out, "evicted from the files (no server running)")?;
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
