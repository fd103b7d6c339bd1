//! The index's runtime pins (`pins` table, migration 0002): patterns added
//! while regcache runs (`regcache pin add`, `prefetch --pin`), stored in their
//! canonical spelling with who added them and when. It records and answers;
//! what a pattern means (its grammar, the content it protects) is
//! `crate::evict::pins`'s, and it never checks a pattern itself.

use std::time::SystemTime;

use rusqlite::params;

use super::columns::unix_seconds;
use super::{Error, Index};

/// One runtime pin as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinRow {
    /// The canonical pattern (`evict::Pin`'s `Display`).
    pub pattern: String,
    /// Who added it: `pin add`, `prefetch`.
    pub origin: String,
    /// Unix seconds.
    pub created_at: i64,
}

impl Index {
    /// Every runtime pin, by pattern.
    pub async fn pins(&self) -> Result<Vec<PinRow>, Error> {
        self.read("pins", |conn| {
            let sql = "SELECT pattern, origin, created_at FROM pins ORDER BY pattern";
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map([], |row| {
                Ok(PinRow {
                    pattern: row.get(0)?,
                    origin: row.get(1)?,
                    created_at: row.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Adds `patterns` in one transaction; one already there keeps its origin
    /// and time. Returns, for each pattern, whether it is new.
    pub async fn add_pins(&self, patterns: Vec<String>, origin: &str) -> Result<Vec<bool>, Error> {
        let origin = origin.to_owned();
        let now = unix_seconds(SystemTime::now());
        self.write("add_pins", move |conn| {
            let tx = conn.transaction()?;
            let mut added = Vec::with_capacity(patterns.len());
            {
                let sql = "INSERT INTO pins (pattern, origin, created_at) VALUES (?1, ?2, ?3) \
                           ON CONFLICT (pattern) DO NOTHING";
                let mut stmt = tx.prepare_cached(sql)?;
                for pattern in &patterns {
                    added.push(stmt.execute(params![pattern, origin, now])? == 1);
                }
            }
            tx.commit()?;
            Ok(added)
        })
        .await
    }

    /// Removes `patterns` in one transaction. Returns, for each, whether it was there.
    pub async fn remove_pins(&self, patterns: Vec<String>) -> Result<Vec<bool>, Error> {
        self.write("remove_pins", move |conn| {
            let tx = conn.transaction()?;
            let mut removed = Vec::with_capacity(patterns.len());
            {
                let mut stmt = tx.prepare_cached("DELETE FROM pins WHERE pattern = ?1")?;
                for pattern in &patterns {
                    removed.push(stmt.execute([pattern])? == 1);
                }
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pins_are_added_once_listed_by_pattern_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        let (pause, coredns) = ("registry.k8s.io/pause:3.9", "registry.k8s.io/coredns/*");
        let added = index
            .add_pins(vec![pause.into(), coredns.into()], "prefetch")
            .await
            .unwrap();
        assert_eq!(added, [true, true]);
        // Again, from elsewhere: nothing new, the first origin stays.
        let added = index.add_pins(vec![pause.into()], "pin add").await.unwrap();
        assert_eq!(added, [false]);
        let rows = index.pins().await.unwrap();
        let seen: Vec<_> = rows
            .iter()
            .map(|r| (r.pattern.as_str(), r.origin.as_str()))
            .collect();
        assert_eq!(seen, [(coredns, "prefetch"), (pause, "prefetch")]);
        assert!(rows.iter().all(|r| r.created_at > 0));

        let removed = index
            .remove_pins(vec![pause.into(), "registry.k8s.io/never".into()])
            .await
            .unwrap();
        assert_eq!(removed, [true, false]);
        assert_eq!(index.pins().await.unwrap().len(), 1);
    }
}
