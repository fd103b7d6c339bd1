//! Start-up reconciliation of the index with the files under `blobs/`, after a
//! crash (`kill -9` mid-fill, mid-eviction, mid-migration), a disk problem or an
//! operator deleting files. It walks `blobs/` one shard directory at a time
//! and compares each with the index rows of its digest range, one blocking
//! task per shard (a `spawn_blocking` per file would cost more than the `stat`
//! itself), so that memory holds one shard's files and rows, never the whole
//! store's (both whole, a million of each put the server's peak RSS at
//! 491 MiB; one shard at a time, 33 MiB: `cargo bench --bench scale`):
//!
//! - a row whose file is missing: the row is dropped (an eviction that deleted
//!   the file but whose row deletion was lost, or an operator's `rm`);
//! - a row whose file has another size: row and file are dropped;
//! - a file without a row (a crash between the rename into `blobs/` and the index
//!   insert, or a row lost on power failure): the file is re-hashed; if it hashes
//!   to its name it is **adopted** (a row with its size, no media type, no
//!   repository link), otherwise deleted. Adopting is always worth it: the bytes
//!   were verified and fsynced before the rename, re-hashing costs one read, and a
//!   later pull then needs at most an upstream HEAD (blobs: to confirm the
//!   repository) or a manifest GET, instead of re-downloading a layer. Without a
//!   media type a manifest is not served as one until it is fetched again, which
//!   also restores its media type;
//! - anything under `blobs/` whose path is not `<alg>/<2 hex>/<hex of a digest>`
//!   is left alone and reported: regcache did not write it, so it does not delete it.
//!
//! Index rows go first, then files, so a crash half-way leaves at worst an
//! unindexed file, which the next start adopts. It must never delete a file that
//! has a matching row, and runs before serving starts (after `Store::open` swept
//! `tmp/`), so no reader or fill can be affected. Operator commands never call it.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::{Error, Store};
use crate::index::{ContentRow, Index};
use crate::oci::Digest;

/// What `reconcile` found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Index rows examined.
    pub rows_checked: usize,
    /// Files found under `blobs/` (with a digest name).
    pub files_checked: usize,
    /// Rows dropped because their file was missing.
    pub missing_files: Vec<Digest>,
    /// Rows dropped and files removed because the file size differed from the row.
    pub wrong_size: Vec<Digest>,
    /// Files without a row that hashed to their name and were indexed.
    pub adopted: Vec<Digest>,
    /// Files without a row that did not hash to their name, deleted.
    pub corrupt_orphans: Vec<Digest>,
    /// Paths under `blobs/` that are not content regcache writes; left alone.
    pub ignored: Vec<PathBuf>,
}

impl ReconcileReport {
    fn repairs(&self) -> usize {
        self.missing_files.len()
            + self.wrong_size.len()
            + self.adopted.len()
            + self.corrupt_orphans.len()
    }

    /// The report in words, one fact a line, for the start-up log (each
    /// repaired digest was logged on its own line as it was repaired). The last
    /// line starts with "store reconciled".
    pub fn facts(&self) -> Vec<String> {
        let mut facts = vec![
            format!(
                "index: {} checked against the files",
                counted(self.rows_checked, ("content row", "content rows"))
            ),
            format!(
                "store: {} under blobs/ checked",
                counted(self.files_checked, ("file", "files"))
            ),
        ];
        let repairs = [
            (
                &self.missing_files,
                "dropped",
                ("index row", "index rows"),
                "file missing",
            ),
            (
                &self.wrong_size,
                "removed",
                ("file and its index row", "files and their index rows"),
                "size differed from the index",
            ),
            (
                &self.adopted,
                "adopted",
                ("unindexed file", "unindexed files"),
                "bytes match the digest in the name",
            ),
            (
                &self.corrupt_orphans,
                "deleted",
                ("unindexed file", "unindexed files"),
                "bytes do not match the digest in the name",
            ),
        ];
        for (digests, verb, nouns, why) in repairs {
            if !digests.is_empty() {
                let what = counted(digests.len(), nouns);
                facts.push(format!("repaired: {verb} {what} ({why})"));
            }
        }
        if !self.ignored.is_empty() {
            facts.push(format!(
                "left alone {} under blobs/ that regcache does not write",
                counted(self.ignored.len(), ("path", "paths"))
            ));
        }
        facts.push(match self.repairs() {
            0 => "store reconciled: nothing to repair".to_owned(),
            n => format!("store reconciled: {}", counted(n, ("repair", "repairs"))),
        });
        facts
    }
}

/// `1 file`, `2 files`: `n` with the noun that agrees with it.
fn counted(n: usize, (one, many): (&str, &str)) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// What is wrong with an indexed row's file.
enum Problem {
    Missing,
    WrongSize,
}

/// Everything the walk found.
#[derive(Default)]
struct Findings {
    rows: usize,
    files: usize,
    problems: Vec<(ContentRow, Problem)>,
    adoptable: Vec<ContentRow>,
    corrupt_orphans: Vec<Digest>,
    ignored: Vec<PathBuf>,
}

/// One directory `blobs/<alg>/<2 hex>`, and the digests, as text, that belong in it.
struct Shard {
    dir: PathBuf,
    alg: String,
    name: String,
}

/// Whether a shard directory's name is one regcache writes (two lower-case
/// hex digits); the files of any other directory are all left alone.
fn is_shard_name(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Shard {
    /// `"<alg>:<2 hex>"`: every digest of this shard starts with it.
    fn from(&self) -> String {
        format!("{}:{}", self.alg, self.name)
    }

    /// The first digest text after this shard's (`"sha256:ff"` → `"sha256:fg"`).
    fn to(&self) -> String {
        let mut to = self.from();
        let last = to.pop().map_or('0', |c| char::from(c as u8 + 1));
        to.push(last);
        to
    }
}

/// Brings index and disk into agreement (see the module documentation).
pub async fn reconcile(store: &Store, index: &Index) -> Result<ReconcileReport, Error> {
    let findings = examine(store, index).await?;
    let mut report = ReconcileReport {
        rows_checked: findings.rows,
        files_checked: findings.files,
        ignored: findings.ignored,
        ..ReconcileReport::default()
    };
    for path in &report.ignored {
        tracing::warn!(path = %path.display(), "not content regcache writes; left alone");
    }
    for (row, problem) in findings.problems {
        index.remove_content(&row.digest).await?;
        match problem {
            Problem::Missing => {
                tracing::warn!(digest = %row.digest, "indexed content has no file; dropped its row");
                report.missing_files.push(row.digest);
            }
            Problem::WrongSize => {
                tracing::warn!(digest = %row.digest, size = row.size, "file size differs from the index; dropping both");
                store.remove(&row.digest).await?;
                report.wrong_size.push(row.digest);
            }
        }
    }
    if !findings.adoptable.is_empty() {
        report.adopted = findings
            .adoptable
            .iter()
            .map(|r| r.digest.clone())
            .collect();
        index.adopt(findings.adoptable).await?;
        tracing::info!(
            count = report.adopted.len(),
            "adopted unindexed files that hash to their names"
        );
    }
    for digest in findings.corrupt_orphans {
        tracing::warn!(%digest, "unindexed file does not hash to its name; deleted");
        store.remove(&digest).await?;
        report.corrupt_orphans.push(digest);
    }
    Ok(report)
}

/// Walks `blobs/` one shard at a time, each against the rows of its digest
/// range, so that memory holds one shard's files and rows, never the whole
/// store's; rows in the ranges between shards (a shard directory gone) are
/// read too, and have no file. Shards go in digest order, so every list in
/// the findings is sorted.
async fn examine(store: &Store, index: &Index) -> Result<Findings, Error> {
    let mut findings = Findings::default();
    let (shards, ignored) = {
        let blobs = store.blobs.clone();
        tokio::task::spawn_blocking(move || shards(&blobs)).await??
    };
    findings.ignored = ignored;
    let mut gap_from = String::new();
    for shard in shards {
        let rows = if is_shard_name(&shard.name) {
            let gap = index.content_between(gap_from, shard.from()).await?;
            missing(&mut findings, gap);
            gap_from = shard.to();
            index.content_between(shard.from(), shard.to()).await?
        } else {
            Vec::new()
        };
        let store = store.clone();
        let mut found =
            tokio::task::spawn_blocking(move || examine_shard(&store, &shard, rows)).await??;
        findings.rows += found.rows;
        findings.files += found.files;
        findings.problems.append(&mut found.problems);
        findings.adoptable.append(&mut found.adoptable);
        findings.corrupt_orphans.append(&mut found.corrupt_orphans);
        findings.ignored.append(&mut found.ignored);
    }
    // Past the last shard: every digest text sorts below "~".
    let tail = index.content_between(gap_from, "~".to_owned()).await?;
    missing(&mut findings, tail);
    findings.ignored.sort();
    Ok(findings)
}

/// Rows outside every shard directory: their files are missing.
fn missing(findings: &mut Findings, rows: Vec<ContentRow>) {
    findings.rows += rows.len();
    findings
        .problems
        .extend(rows.into_iter().map(|row| (row, Problem::Missing)));
}

/// Lists one shard, matches its files with `rows` (that shard's) and
/// re-hashes the orphans; blocking.
fn examine_shard(store: &Store, shard: &Shard, rows: Vec<ContentRow>) -> Result<Findings, Error> {
    let mut findings = Findings {
        rows: rows.len(),
        ..Findings::default()
    };
    let mut files = list_shard(shard, &mut findings.ignored)?;
    findings.files = files.len();
    for row in rows {
        match files.remove(&row.digest) {
            Some(size) if size == row.size => {}
            Some(_) => findings.problems.push((row, Problem::WrongSize)),
            None => findings.problems.push((row, Problem::Missing)),
        }
    }
    let mut orphans: Vec<(Digest, u64)> = files.into_iter().collect();
    orphans.sort();
    for (digest, size) in orphans {
        match store.rehash_blocking(&digest)? {
            Some(rehash) if rehash.actual == digest && rehash.size == size => {
                findings.adoptable.push(ContentRow {
                    digest,
                    size,
                    media_type: None,
                });
            }
            Some(_) => findings.corrupt_orphans.push(digest),
            // Gone since the walk: nothing to adopt or delete.
            None => {}
        }
    }
    Ok(findings)
}

/// The shard directories `<alg>/<2 lower-case hex>` under `blobs`, in digest
/// order; anything else at those two levels goes to the second list, except
/// directories with other names, whose files `list_shard` reports one by one.
fn shards(blobs: &Path) -> Result<(Vec<Shard>, Vec<PathBuf>), Error> {
    let mut ignored = Vec::new();
    let mut shards = Vec::new();
    for alg in list(blobs)? {
        let Some(alg_name) = dir_name(&alg, &mut ignored) else {
            continue;
        };
        for dir in list(&alg)? {
            let Some(name) = dir_name(&dir, &mut ignored) else {
                continue;
            };
            shards.push(Shard {
                dir,
                alg: alg_name.clone(),
                name,
            });
        }
    }
    shards.sort_by_key(Shard::from);
    Ok((shards, ignored))
}

/// Every regular file of the shard whose name makes a digest that belongs in
/// it, with its size; anything else goes to `ignored`.
fn list_shard(shard: &Shard, ignored: &mut Vec<PathBuf>) -> Result<HashMap<Digest, u64>, Error> {
    let mut files = HashMap::new();
    let valid_shard = is_shard_name(&shard.name);
    for entry in fs::read_dir(&shard.dir).map_err(Error::io("list", &shard.dir))? {
        let entry = entry.map_err(Error::io("list", &shard.dir))?;
        let path = entry.path();
        let meta = entry.metadata().map_err(Error::io("stat", &path))?;
        let digest = entry
            .file_name()
            .to_str()
            .and_then(|hex| format!("{}:{hex}", shard.alg).parse::<Digest>().ok())
            .filter(|d| valid_shard && d.hex().starts_with(&shard.name));
        match digest {
            Some(digest) if meta.is_file() => {
                files.insert(digest, meta.len());
            }
            _ => ignored.push(path),
        }
    }
    Ok(files)
}

/// The entries of a directory, sorted (for stable reports).
fn list(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(Error::io("list", dir))? {
        paths.push(entry.map_err(Error::io("list", dir))?.path());
    }
    paths.sort();
    Ok(paths)
}

/// The UTF-8 name of `path` if it is a directory (not following symlinks);
/// otherwise records it as ignored.
fn dir_name(path: &Path, ignored: &mut Vec<PathBuf>) -> Option<String> {
    let is_dir = fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    match path.file_name().and_then(|n| n.to_str()) {
        Some(name) if is_dir => Some(name.to_owned()),
        _ => {
            ignored.push(path.to_path_buf());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: &str = "registry.k8s.io";

    async fn put(store: &Store, index: &Index, content: &[u8]) -> Digest {
        let digest = Digest::sha256_of(content);
        store.put_small(&digest, content).await.unwrap();
        let row = ContentRow {
            digest: digest.clone(),
            size: content.len() as u64,
            media_type: None,
        };
        index
            .insert_content(&row, UP, &"app".parse().unwrap())
            .await
            .unwrap();
        digest
    }

    fn open(dir: &Path) -> (Store, Index) {
        let store = Store::open(dir).unwrap();
        let index = Index::open(&dir.join("index.db")).unwrap();
        (store, index)
    }

    #[tokio::test]
    async fn drops_rows_without_files_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (store, index) = open(dir.path());
        let kept = put(&store, &index, b"kept").await;
        let lost = put(&store, &index, b"lost").await;
        let truncated = put(&store, &index, b"truncated").await;
        std::fs::remove_file(store.blob_path(&lost)).unwrap();
        std::fs::write(store.blob_path(&truncated), b"trunc").unwrap();

        let report = reconcile(&store, &index).await.unwrap();

        let want = ReconcileReport {
            rows_checked: 3,
            files_checked: 2,
            missing_files: vec![lost],
            wrong_size: vec![truncated.clone()],
            ..ReconcileReport::default()
        };
        assert_eq!(report, want);
        assert_eq!(
            report.facts(),
            [
                "index: 3 content rows checked against the files",
                "store: 2 files under blobs/ checked",
                "repaired: dropped 1 index row (file missing)",
                "repaired: removed 1 file and its index row (size differed from the index)",
                "store reconciled: 2 repairs",
            ]
        );
        assert_eq!(
            index.all_digests().await.unwrap(),
            std::slice::from_ref(&kept)
        );
        assert!(store.blob_path(&kept).exists());
        assert!(!store.blob_path(&truncated).exists());
    }

    #[tokio::test]
    async fn rows_of_shards_whose_directory_is_gone_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (store, index) = open(dir.path());
        let mut digests = Vec::new();
        for n in 0..12u8 {
            digests.push(put(&store, &index, &[n; 3]).await);
        }
        digests.sort();
        // Keep one shard in the middle: rows sort before and after it.
        let kept = digests.remove(6);
        for digest in &digests {
            let shard = store.blob_path(digest).parent().unwrap().to_path_buf();
            if shard != store.blob_path(&kept).parent().unwrap() {
                let _ = std::fs::remove_dir_all(shard);
            }
        }
        let kept_shard: Vec<_> = digests
            .iter()
            .filter(|d| d.hex()[..2] == kept.hex()[..2])
            .cloned()
            .collect();
        assert!(kept_shard.is_empty(), "the digests share no shard");

        let report = reconcile(&store, &index).await.unwrap();

        assert_eq!((report.rows_checked, report.files_checked), (12, 1));
        assert_eq!(report.missing_files, digests);
        assert_eq!(index.all_digests().await.unwrap(), [kept]);
    }

    #[tokio::test]
    async fn orphans_are_adopted_if_they_hash_to_their_name_else_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (store, index) = open(dir.path());
        let indexed = put(&store, &index, b"indexed").await;
        let orphan = Digest::sha256_of(b"orphan");
        store.put_small(&orphan, b"orphan").await.unwrap();
        // A file whose bytes changed after it was committed, with no row.
        let damaged = Digest::sha256_of(b"damaged");
        store.put_small(&damaged, b"damaged").await.unwrap();
        std::fs::write(store.blob_path(&damaged), b"DAMAGED").unwrap();
        // Not content regcache writes: left alone.
        let stray = dir.path().join("blobs/sha256/README");
        std::fs::write(&stray, b"hi").unwrap();
        let wrong_shard = dir.path().join("blobs/sha256/00").join(orphan.hex());
        std::fs::create_dir_all(wrong_shard.parent().unwrap()).unwrap();
        std::fs::write(&wrong_shard, b"orphan").unwrap();

        let report = reconcile(&store, &index).await.unwrap();

        let want = ReconcileReport {
            rows_checked: 1,
            files_checked: 3,
            adopted: vec![orphan.clone()],
            corrupt_orphans: vec![damaged.clone()],
            ignored: vec![wrong_shard.clone(), stray.clone()],
            ..ReconcileReport::default()
        };
        assert_eq!(report, want);
        assert_eq!(
            report.facts(),
            [
                "index: 1 content row checked against the files",
                "store: 3 files under blobs/ checked",
                "repaired: adopted 1 unindexed file (bytes match the digest in the name)",
                "repaired: deleted 1 unindexed file (bytes do not match the digest in the name)",
                "left alone 2 paths under blobs/ that regcache does not write",
                "store reconciled: 2 repairs",
            ]
        );
        let row = index.content(&orphan).await.unwrap().unwrap();
        assert_eq!((row.size, row.media_type), (6, None));
        let mut want_digests = vec![indexed, orphan.clone()];
        want_digests.sort();
        assert_eq!(index.all_digests().await.unwrap(), want_digests);
        assert!(!store.blob_path(&damaged).exists());
        assert!(stray.exists() && wrong_shard.exists());
        // Adopted content is linked to no repository.
        let app = "app".parse().unwrap();
        assert!(!index.is_linked(UP, &app, &orphan).await.unwrap());

        // A second pass finds nothing left to do.
        let again = reconcile(&store, &index).await.unwrap();
        assert_eq!((again.adopted.len(), again.corrupt_orphans.len()), (0, 0));
        assert_eq!((again.rows_checked, again.files_checked), (2, 2));
        assert_eq!(
            again.facts().last().map(String::as_str),
            Some("store reconciled: nothing to repair")
        );
    }
}
