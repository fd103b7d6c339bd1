//! The interval task of a serving process: access times flushed every few
//! seconds, usage re-read from the index and checked every `evict_interval`,
//! and a pass whenever a commit leaves usage past the high watermark. Stopping
//! it writes pending access times.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Evictor;

/// How often access times recorded in memory are written to the index.
const ACCESS_FLUSH: Duration = Duration::from_secs(5);

/// The interval task of a serving process; [`EvictionTask::stop`] ends it and
/// writes pending access times.
#[derive(Debug)]
pub struct EvictionTask {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Evictor {
    /// Writes pending access times to the index.
    pub async fn flush_access(&self) {
        if let Err(e) = self.access.flush(&self.index).await {
            tracing::warn!(error = %e, "cannot record access times; will retry");
        }
    }

    /// Starts the interval task: access times flushed every few seconds, usage
    /// re-read and checked every `interval`, and a pass whenever a commit leaves
    /// usage past the high watermark.
    pub fn spawn(self: &Arc<Self>, interval: Duration) -> EvictionTask {
        let (stop, mut stopped) = watch::channel(false);
        let me = Arc::clone(self);
        let handle = tokio::spawn(async move {
            let mut flush = tokio::time::interval(ACCESS_FLUSH);
            let mut check = tokio::time::interval(interval);
            for timer in [&mut flush, &mut check] {
                timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = flush.tick() => me.flush_access().await,
                    _ = check.tick() => {
                        me.refresh_usage().await;
                        me.evict_if_over().await;
                    }
                    () = me.wake.notified() => me.evict_if_over().await,
                }
            }
            me.flush_access().await;
        });
        EvictionTask { stop, handle }
    }
}

impl EvictionTask {
    /// Stops the task after its current step and flushes access times.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.handle.await {
            tracing::warn!(error = %e, "the eviction task failed");
        }
    }
}
