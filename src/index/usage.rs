//! Read-only questions for the status page and `/metrics`: how many content
//! rows there are, and which repositories hold the most bytes. Each is one
//! statement on a reader connection; it never writes.

use super::{Error, Index};

/// Bytes linked to one repository of one upstream (content shared by several
/// repositories counts in each).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RepoUsage {
    pub upstream: String,
    pub repository: String,
    pub bytes: u64,
    /// Pieces of content (blobs and manifests) linked to it.
    pub content: u64,
}

impl Index {
    /// Rows in the content table (= committed files).
    pub async fn content_rows(&self) -> Result<u64, Error> {
        self.read("content_rows", |conn| {
            let sql = "SELECT count(*) FROM content";
            let rows: i64 = conn.prepare_cached(sql)?.query_row([], |row| row.get(0))?;
            Ok(u64::try_from(rows).unwrap_or(0))
        })
        .await
    }

    /// The `limit` repositories with the most linked bytes, most first.
    pub async fn largest_repositories(&self, limit: usize) -> Result<Vec<RepoUsage>, Error> {
        self.read("largest_repositories", move |conn| {
            let sql = "SELECT rc.upstream, rc.repo, coalesce(sum(c.size), 0), count(*) \
                       FROM repo_content rc JOIN content c ON c.digest = rc.digest \
                       GROUP BY rc.upstream, rc.repo \
                       ORDER BY 3 DESC, rc.upstream, rc.repo LIMIT ?1";
            let mut stmt = conn.prepare_cached(sql)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map([limit], |row| {
                Ok(RepoUsage {
                    upstream: row.get(0)?,
                    repository: row.get(1)?,
                    bytes: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                    content: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
                })
            })?;
            rows.collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::index::{ContentRow, Index};
    use crate::oci::{Digest, RepoName};

    fn digest(n: u8) -> Digest {
        format!("sha256:{}", hex::encode([n; 32])).parse().unwrap()
    }

    fn row(n: u8, size: u64) -> ContentRow {
        ContentRow {
            digest: digest(n),
            size,
            media_type: None,
        }
    }

    #[tokio::test]
    async fn repositories_by_linked_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        assert_eq!(index.content_rows().await.unwrap(), 0);
        let small: RepoName = "small".parse().unwrap();
        let big: RepoName = "big/one".parse().unwrap();
        index
            .insert_content(&row(1, 10), "up", &small)
            .await
            .unwrap();
        index
            .insert_content(&row(2, 1000), "up", &big)
            .await
            .unwrap();
        index.link("up", &big, &digest(1)).await.unwrap();
        assert_eq!(index.content_rows().await.unwrap(), 2);
        let got = index.largest_repositories(10).await.unwrap();
        let names: Vec<(&str, u64, u64)> = got
            .iter()
            .map(|r| (r.repository.as_str(), r.bytes, r.content))
            .collect();
        assert_eq!(names, vec![("big/one", 1010, 2), ("small", 10, 1)]);
        assert_eq!(index.largest_repositories(1).await.unwrap().len(), 1);
    }
}
