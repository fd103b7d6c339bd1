//! `regcache ls`: what the cache holds, one line per repository and tag (or
//! untagged content): upstream, repository, tag (or `-`), digest, size and last
//! access. `--json` prints the same rows as one JSON array. Content that no
//! repository links to (adopted after a crash) is listed with `-` for upstream
//! and repository. Read-only: one read transaction on the index per pass (the
//! table takes two: one to measure its columns, one to write).

use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::ser::{SerializeSeq as _, Serializer as _};

use super::format::{Table, age, human_size};
use crate::index::{Access, Index, LISTING_CHUNKS_AHEAD, ListingRow};

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

/// Lists the index of `data_dir` to `out`, as a table or JSON, a chunk of
/// rows at a time (a repository's, or 4 096 unlinked ones): memory holds a
/// few chunks, never the index.
pub async fn run(data_dir: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let index = super::open_index(data_dir, Access::ReadOnly)?;
    if json {
        write_json(&index, out).await?;
    } else {
        write_table(&index, SystemTime::now(), out).await?;
    }
    out.flush()?;
    Ok(())
}

/// Calls `each` for every row of the listing, in its order. A failing
/// `each` (a closed pipe) stops the reading too.
async fn for_each_row(
    index: &Index,
    mut each: impl FnMut(&ListingRow) -> io::Result<()>,
) -> anyhow::Result<()> {
    let (send, mut chunks) = tokio::sync::mpsc::channel(LISTING_CHUNKS_AHEAD);
    let reading = index.listing_in_chunks(send);
    let writing = async move {
        while let Some(chunk) = chunks.recv().await {
            chunk.iter().try_for_each(&mut each)?;
        }
        io::Result::Ok(())
    };
    let (read, written) = tokio::join!(reading, writing);
    written?;
    read?;
    Ok(())
}

/// The rows as one pretty-printed JSON array, written element by element.
async fn write_json(index: &Index, out: &mut dyn Write) -> anyhow::Result<()> {
    {
        let mut json = serde_json::Serializer::pretty(&mut *out);
        let mut array = json.serialize_seq(None)?;
        for_each_row(index, |r| {
            array
                .serialize_element(&json_row(r))
                .map_err(io::Error::from)
        })
        .await?;
        array.end()?;
    }
    out.write_all(b"\n")?;
    Ok(())
}

fn json_row(r: &ListingRow) -> JsonRow<'_> {
    JsonRow {
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
    }
}

/// The rows as an aligned table: one pass to measure the columns, one to write.
async fn write_table(index: &Index, now: SystemTime, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut table = Table::new(&[
        ("UPSTREAM", false),
        ("REPOSITORY", false),
        ("TAG", false),
        ("DIGEST", false),
        ("SIZE", true),
        ("LAST ACCESS", false),
    ]);
    let mut rows = 0u64;
    for_each_row(index, |r| {
        table.measure(&cells(r, now));
        rows += 1;
        Ok(())
    })
    .await?;
    if rows == 0 {
        out.write_all(b"the cache is empty\n")?;
        return Ok(());
    }
    table.write_header(out)?;
    for_each_row(index, |r| table.write_row(&cells(r, now), out)).await
}

fn cells(r: &ListingRow, now: SystemTime) -> Vec<String> {
    let dash = || "-".to_owned();
    vec![
        r.upstream.clone().unwrap_or_else(dash),
        r.repo.clone().unwrap_or_else(dash),
        r.tag.clone().unwrap_or_else(dash),
        r.digest.to_string(),
        human_size(r.size),
        age(now, r.last_access),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ContentRow;
    use crate::oci::{Digest, RepoName};

    async fn ls(dir: &Path, json: bool) -> String {
        let mut out = Vec::new();
        run(dir, json, &mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn streamed_output_is_the_json_array_and_the_aligned_table_of_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&crate::index::path_in(dir.path())).unwrap();
        assert_eq!(ls(dir.path(), true).await, "[]\n");
        assert_eq!(ls(dir.path(), false).await, "the cache is empty\n");

        for (name, content) in [("library/app", &b"app layer"[..]), ("a", b"a")] {
            let repo: RepoName = name.parse().unwrap();
            let row = ContentRow {
                digest: Digest::sha256_of(content),
                size: content.len() as u64,
                media_type: None,
            };
            index.insert_contents(vec![row], "up", &repo).await.unwrap();
        }
        let rows = index.listing().await.unwrap();
        // Element by element, exactly what serializing the whole array gives.
        let whole: Vec<JsonRow<'_>> = rows.iter().map(json_row).collect();
        let want = serde_json::to_string_pretty(&whole).unwrap() + "\n";
        assert_eq!(ls(dir.path(), true).await, want);

        // Columns as wide as their widest cell, measured over every row first.
        let table = ls(dir.path(), false).await;
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(
            lines[0].starts_with("UPSTREAM  REPOSITORY   TAG  DIGEST"),
            "{table}"
        );
        assert!(
            lines[1].starts_with("up        a            -    sha256:"),
            "{table}"
        );
        assert!(
            lines[2].starts_with("up        library/app  -    sha256:"),
            "{table}"
        );
    }
}
