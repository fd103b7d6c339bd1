//! Start-up reconciliation of the index with the files under `blobs/`, after a
//! crash, a disk problem or an operator deleting files. It drops index rows whose
//! file is missing, and rows (and files) whose file has the wrong size. It must
//! never delete a file that has a matching row, and runs before serving starts, so
//! no reader or fill can be affected.
//!
//! Files without a row (a crash between rename and index insert) are left alone
//! for now: they cost disk space but are harmless, and will be collected by a later
//! orphan sweep (tracked as its own issue).

use std::io;

use super::{Error, Store};
use crate::index::{ContentRow, Index};
use crate::oci::Digest;

/// What `reconcile` found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Index rows examined.
    pub rows_checked: usize,
    /// Rows dropped because their file was missing.
    pub missing_files: Vec<Digest>,
    /// Rows dropped and files removed because the file size differed from the row.
    pub wrong_size: Vec<Digest>,
}

/// What is wrong with an indexed row's file.
enum Problem {
    Missing,
    WrongSize,
}

/// Drops index rows whose file is missing or has the wrong size (removing such a
/// file too: it cannot hold the content its name promises). Index rows go first,
/// then files, so a crash half-way leaves at worst an unindexed file.
pub async fn reconcile(store: &Store, index: &Index) -> Result<ReconcileReport, Error> {
    let rows = index.all_content().await?;
    let mut report = ReconcileReport {
        rows_checked: rows.len(),
        ..ReconcileReport::default()
    };
    for (row, problem) in find_problems(store, rows).await? {
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
    Ok(report)
}

/// Stats every row's file in one blocking task (one `spawn_blocking` per file would
/// cost more than the `stat` itself) and keeps only the rows with a problem.
async fn find_problems(
    store: &Store,
    rows: Vec<ContentRow>,
) -> Result<Vec<(ContentRow, Problem)>, Error> {
    let store = store.clone();
    let task = move || {
        let mut problems = Vec::new();
        for row in rows {
            if let Some(problem) = problem_of(&store, &row)? {
                problems.push((row, problem));
            }
        }
        Ok(problems)
    };
    tokio::task::spawn_blocking(task).await?
}

fn problem_of(store: &Store, row: &ContentRow) -> Result<Option<Problem>, Error> {
    let path = store.blob_path(&row.digest);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() && meta.len() == row.size => Ok(None),
        Ok(_) => Ok(Some(Problem::WrongSize)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(Problem::Missing)),
        // Anything else (permissions, I/O errors) says nothing about the content:
        // dropping rows on it could empty the index, so stop instead.
        Err(e) => Err(Error::io("stat", &path)(e)),
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

    #[tokio::test]
    async fn drops_rows_without_files_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        let kept = put(&store, &index, b"kept").await;
        let lost = put(&store, &index, b"lost").await;
        let truncated = put(&store, &index, b"truncated").await;
        std::fs::remove_file(store.blob_path(&lost)).unwrap();
        std::fs::write(store.blob_path(&truncated), b"trunc").unwrap();

        let report = reconcile(&store, &index).await.unwrap();

        let want = ReconcileReport {
            rows_checked: 3,
            missing_files: vec![lost],
            wrong_size: vec![truncated.clone()],
        };
        assert_eq!(report, want);
        assert_eq!(
            index.all_digests().await.unwrap(),
            std::slice::from_ref(&kept)
        );
        assert!(store.blob_path(&kept).exists());
        assert!(!store.blob_path(&truncated).exists());
    }

    #[tokio::test]
    async fn unindexed_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        let orphan = Digest::sha256_of(b"orphan");
        store.put_small(&orphan, b"orphan").await.unwrap();

        let report = reconcile(&store, &index).await.unwrap();

        assert_eq!(report, ReconcileReport::default());
        assert!(store.blob_path(&orphan).exists());
    }
}
