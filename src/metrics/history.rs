//! [`History`]: the counters by outcome sampled every few seconds for an hour,
//! so the status page can say what happened in the last hour and how many
//! requests per second arrive now (a difference of two samples). Sampled by a
//! task of its own; a request never touches it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::counters::{Counters, OutcomeCount};

/// How often the counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How far back samples are kept.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// The counters by outcome at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    pub outcomes: BTreeMap<String, OutcomeCount>,
}

/// Samples of the last [`WINDOW`], oldest first.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Adds a sample taken now, dropping those older than the window.
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        while samples
            .front()
            .is_some_and(|s| sample.at.duration_since(s.at) > WINDOW)
        {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The oldest sample at most `ago` old (as of `now`), if any.
    pub fn since(&self, now: Instant, ago: Duration) -> Option<Sample> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples
            .iter()
            .find(|s| now.saturating_duration_since(s.at) <= ago)
            .cloned()
    }

    /// Samples `counters` every [`SAMPLE_EVERY`] until the task is dropped.
    pub async fn run(self: Arc<Self>, counters: Arc<Counters>) {
        let mut ticker = tokio::time::interval(SAMPLE_EVERY);
        loop {
            ticker.tick().await;
            self.push(Sample {
                at: Instant::now(),
                outcomes: counters.snapshot(),
            });
        }
    }
}

/// `now - then`, outcome by outcome.
pub fn difference(
    now: &BTreeMap<String, OutcomeCount>,
    then: &BTreeMap<String, OutcomeCount>,
) -> BTreeMap<String, OutcomeCount> {
    now.iter()
        .map(|(name, count)| {
            let before = then.get(name).copied().unwrap_or_default();
            let diff = OutcomeCount {
                requests: count.requests.saturating_sub(before.requests),
                bytes: count.bytes.saturating_sub(before.bytes),
            };
            (name.clone(), diff)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, requests: u64) -> Sample {
        let outcomes = [("hit".to_owned(), OutcomeCount { requests, bytes: 0 })].into();
        Sample { at, outcomes }
    }

    #[test]
    fn keeps_an_hour_and_finds_the_oldest_within_a_span() {
        let history = History::default();
        let t0 = Instant::now();
        for minute in 0..=70u64 {
            history.push(sample(t0 + Duration::from_secs(minute * 60), minute));
        }
        let now = t0 + Duration::from_secs(70 * 60);
        let hour_ago = history.since(now, WINDOW).unwrap();
        assert_eq!(hour_ago.outcomes["hit"].requests, 10);
        let minute_ago = history.since(now, Duration::from_secs(60)).unwrap();
        assert_eq!(minute_ago.outcomes["hit"].requests, 69);
        let diff = difference(&sample(now, 70).outcomes, &hour_ago.outcomes);
        assert_eq!(diff["hit"].requests, 60);
    }
}
