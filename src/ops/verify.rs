//! `regcache verify`: re-hashes every committed file against its digest and its
//! indexed size, streaming (constant memory), a page of 1 024 rows at a time. A corrupt
//! file loses its index row first, then the file (the order every removal
//! follows: a crash in between leaves an unindexed file, never a row without
//! one), so the next pull fetches it again. A row whose file is missing is
//! dropped too. Safe beside a running server: it only deletes content that
//! fails verification, through ordinary index transactions; a row that
//! disappears meanwhile (evicted) is skipped. Exit status 1 if anything was
//! corrupt or missing.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::format::{Table, human_size};
use crate::index::{Access, ContentRow};
use crate::oci::Digest;

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Files re-hashed and their total size.
    pub checked: u64,
    pub checked_bytes: u64,
    /// Each bad file and what was wrong; all were removed.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether verification found anything wrong.
    pub fn failed(&self) -> bool {
        !self.problems.is_empty()
    }
}

/// One bad piece of content.
#[derive(Debug, Clone)]
pub struct Problem {
    pub digest: Digest,
    /// Human-readable: "hashes to sha256:…", "size 10 instead of 12", "file missing".
    pub problem: String,
}

/// Rows re-hashed per blocking task: memory holds one page of rows, never
/// the whole index.
const PAGE: usize = 1024;

/// Verifies every file of `data_dir` and prints a table to `out`.
pub async fn run(data_dir: &Path, out: &mut dyn Write) -> anyhow::Result<VerifyReport> {
    let index = super::open_index(data_dir, Access::ReadWrite)?;
    let store = super::attach_store(data_dir)?;
    let total = index.content_rows().await?;
    let done = Arc::new(AtomicU64::new(0));
    let task = {
        let (index, store, done) = (index.clone(), store.clone(), Arc::clone(&done));
        tokio::spawn(async move { check_all(&index, &store, &done).await })
    };
    let suspects = with_progress(task, &done, total).await??;

    let mut report = VerifyReport {
        checked: suspects.checked,
        checked_bytes: suspects.bytes,
        problems: Vec::new(),
    };
    for (row, problem) in suspects.bad {
        // Evicted (or removed by another verify) since we listed it: not ours.
        if index.content(&row.digest).await?.is_none() {
            continue;
        }
        index.remove_content(&row.digest).await?;
        store.remove(&row.digest).await?;
        report.problems.push(Problem {
            digest: row.digest,
            problem,
        });
    }
    write_report(&report, out)?;
    out.flush()?;
    Ok(report)
}

#[derive(Default)]
struct Suspects {
    checked: u64,
    bytes: u64,
    bad: Vec<(ContentRow, String)>,
}

/// Re-hashes every row's file, a page of rows (in digest order) at a time.
async fn check_all(
    index: &crate::index::Index,
    store: &crate::store::Store,
    done: &Arc<AtomicU64>,
) -> anyhow::Result<Suspects> {
    let mut suspects = Suspects::default();
    let mut after = None;
    loop {
        let rows = index.content_page(after.take(), PAGE).await?;
        let Some(last) = rows.last() else {
            return Ok(suspects);
        };
        after = Some(last.digest.clone());
        let (store, done) = (store.clone(), Arc::clone(done));
        let page = tokio::task::spawn_blocking(move || check_page(&store, rows, &done)).await??;
        suspects.checked += page.checked;
        suspects.bytes += page.bytes;
        suspects.bad.extend(page.bad);
    }
}

/// Re-hashes the files of `rows`; blocking.
fn check_page(
    store: &crate::store::Store,
    rows: Vec<ContentRow>,
    done: &AtomicU64,
) -> Result<Suspects, crate::store::Error> {
    let mut suspects = Suspects::default();
    for row in rows {
        let problem = match store.rehash_blocking(&row.digest)? {
            None => Some("file missing".to_owned()),
            Some(r) if r.size != row.size => {
                Some(format!("size {} instead of {}", r.size, row.size))
            }
            Some(r) if r.actual != row.digest => Some(format!("hashes to {}", r.actual)),
            Some(r) => {
                suspects.bytes += r.size;
                None
            }
        };
        suspects.checked += 1;
        done.fetch_add(1, Ordering::Relaxed);
        if let Some(problem) = problem {
            suspects.bad.push((row, problem));
        }
    }
    Ok(suspects)
}

/// Awaits `task`, drawing a progress line on stderr if it is a terminal.
async fn with_progress<T>(
    mut task: tokio::task::JoinHandle<T>,
    done: &AtomicU64,
    total: u64,
) -> Result<T, tokio::task::JoinError> {
    let tty = std::io::stderr().is_terminal();
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            result = &mut task => {
                if tty {
                    eprint!("\r\x1b[K");
                }
                return result;
            }
            _ = ticker.tick() => {
                if tty {
                    eprint!("\rverifying {}/{total}", done.load(Ordering::Relaxed));
                }
            }
        }
    }
}

fn write_report(report: &VerifyReport, out: &mut dyn Write) -> std::io::Result<()> {
    if report.problems.is_empty() {
        return writeln!(
            out,
            "verified {} files ({}): all good",
            report.checked,
            human_size(report.checked_bytes)
        );
    }
    let mut table = Table::new(&[("DIGEST", false), ("PROBLEM", false), ("ACTION", false)]);
    for p in &report.problems {
        table.push(vec![
            p.digest.to_string(),
            p.problem.clone(),
            "removed".to_owned(),
        ]);
    }
    table.write(out)?;
    writeln!(
        out,
        "verified {} files: {} corrupt or missing, removed from the index and the disk",
        report.checked,
        report.problems.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;
    use crate::store::Store;

    #[tokio::test]
    async fn checks_every_page_of_rows_and_removes_what_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = Index::open(&crate::index::path_in(dir.path())).unwrap();
        let mut rows = Vec::new();
        for n in 0..PAGE as u32 + 5 {
            let bytes = n.to_le_bytes();
            let digest = Digest::sha256_of(&bytes);
            store.put_small(&digest, &bytes).await.unwrap();
            rows.push(ContentRow {
                digest,
                size: 4,
                media_type: None,
            });
        }
        rows.sort_by(|a, b| a.digest.cmp(&b.digest));
        let (damaged, lost) = (rows[PAGE + 2].digest.clone(), rows[3].digest.clone());
        index
            .insert_contents(rows, "up", &"app".parse().unwrap())
            .await
            .unwrap();
        std::fs::write(store.blob_path(&damaged), b"oops").unwrap();
        std::fs::remove_file(store.blob_path(&lost)).unwrap();

        let mut out = Vec::new();
        let report = run(dir.path(), &mut out).await.unwrap();

        assert_eq!(report.checked, PAGE as u64 + 5);
        assert_eq!(report.checked_bytes, (PAGE as u64 + 3) * 4);
        let bad: Vec<_> = report.problems.iter().map(|p| &p.digest).collect();
        assert_eq!(bad, [&lost, &damaged]);
        assert_eq!(index.content_rows().await.unwrap(), PAGE as u64 + 3);
        assert!(!store.blob_path(&damaged).exists());
    }
}
