//! `AccessRecorder`: the last access of each digest, kept in memory on every hit
//! (a map insert under a short lock) and written to the index in one transaction
//! by [`AccessRecorder::flush`]: every few seconds, before each eviction pass and
//! on shutdown. It must never write to SQLite on the request path.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::index::{self, Index};
use crate::oci::Digest;

/// Access times not yet written to the index.
#[derive(Debug, Default)]
pub struct AccessRecorder {
    pending: Mutex<HashMap<Digest, i64>>,
}

impl AccessRecorder {
    /// Notes that `digest` was served now. Never blocks on I/O.
    pub fn record(&self, digest: &Digest) {
        let now = unix_seconds(SystemTime::now());
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.get_mut(digest) {
            Some(at) => *at = (*at).max(now),
            None => {
                pending.insert(digest.clone(), now);
            }
        }
    }

    /// How many digests wait to be written.
    pub fn pending(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Writes every pending access time in one transaction. On failure the times
    /// are kept for the next flush.
    pub async fn flush(&self, index: &Index) -> Result<usize, index::Error> {
        let batch: Vec<(Digest, i64)> = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.drain().collect()
        };
        let n = batch.len();
        if n == 0 {
            return Ok(0);
        }
        if let Err(e) = index.record_accesses(batch.clone()).await {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            for (digest, at) in batch {
                let slot = pending.entry(digest).or_insert(at);
                *slot = (*slot).max(at);
            }
            return Err(e);
        }
        Ok(n)
    }
}

fn unix_seconds(time: SystemTime) -> i64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ContentRow;

    #[tokio::test]
    async fn a_thousand_hits_are_one_write_at_flush() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        let digests: Vec<Digest> = (0..10u8).map(|i| Digest::sha256_of(&[i])).collect();
        for d in &digests {
            let row = ContentRow {
                digest: d.clone(),
                size: 1,
                media_type: None,
            };
            index
                .insert_content(&row, "up", &"a".parse().unwrap())
                .await
                .unwrap();
        }
        let recorder = AccessRecorder::default();
        let before = index.write_count();
        for i in 0..1000 {
            recorder.record(&digests[i % digests.len()]);
        }
        assert_eq!(index.write_count(), before, "recording wrote to SQLite");
        assert_eq!(recorder.pending(), 10);
        assert_eq!(recorder.flush(&index).await.unwrap(), 10);
        // One UPDATE per distinct digest, in one transaction.
        assert_eq!(index.write_count(), before + 10);
        assert_eq!(recorder.pending(), 0);
        assert_eq!(recorder.flush(&index).await.unwrap(), 0);
    }
}
