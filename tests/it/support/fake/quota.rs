//! Docker Hub's pull quota on the fake's registry host
//! ([`FakeUpstream::set_pull_quota`]): every manifest GET counts (HEADs are
//! free), every manifest answer carries `ratelimit-limit: <n>;w=<secs>` and
//! `ratelimit-remaining: <left>;w=<secs>`, and a GET with nothing left is a 429
//! `TOOMANYREQUESTS` with `Retry-After` (the seconds to the window's end).
//! The window starts at the first counted GET and restarts the quota when over.

use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;

use super::hosts::oci_error;
use super::*;

#[derive(Debug)]
pub(super) struct PullQuota {
    limit: u64,
    window: Duration,
    used: u64,
    started: Option<Instant>,
}

/// What the quota does to one manifest request.
pub(super) enum Verdict {
    /// Answer it, adding these headers.
    Answer(Vec<(&'static str, HeaderValue)>),
    /// Refuse it with this 429.
    Refuse(Response),
}

impl FakeUpstream {
    /// Counts manifest GETs against `limit` per `window`, as Docker Hub does.
    pub fn set_pull_quota(&self, limit: u64, window: Duration) {
        self.shared.state().quota = Some(PullQuota {
            limit,
            window,
            used: 0,
            started: None,
        });
    }

    /// Spends `n` of the quota as another client behind the same address would.
    pub fn spend_quota(&self, n: u64) {
        if let Some(quota) = &mut self.shared.state().quota {
            quota.roll();
            quota.started.get_or_insert_with(Instant::now);
            quota.used = (quota.used + n).min(quota.limit);
        }
    }
}

impl PullQuota {
    /// A new window when the last one is over.
    fn roll(&mut self) {
        if self.started.is_some_and(|s| s.elapsed() >= self.window) {
            self.started = None;
            self.used = 0;
        }
    }

    pub(super) fn take(&mut self, get: bool) -> Verdict {
        self.roll();
        let left_in_window = |started: Option<Instant>, window: Duration| {
            started.map_or(window, |s| window.saturating_sub(s.elapsed()))
        };
        if get && self.used >= self.limit {
            let wait = left_in_window(self.started, self.window)
                .as_secs_f64()
                .ceil() as u64;
            let mut refused = oci_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                "You have reached your pull rate limit.",
            );
            let headers = refused.headers_mut();
            for (name, value) in self.headers() {
                headers.insert(name, value);
            }
            headers.insert("retry-after", HeaderValue::from(wait.max(1)));
            return Verdict::Refuse(refused);
        }
        if get {
            self.started.get_or_insert_with(Instant::now);
            self.used += 1;
        }
        Verdict::Answer(self.headers())
    }

    fn headers(&self) -> Vec<(&'static str, HeaderValue)> {
        let w = self.window.as_secs();
        let value = |n: u64| HeaderValue::try_from(format!("{n};w={w}")).expect("header value");
        vec![
            ("ratelimit-limit", value(self.limit)),
            ("ratelimit-remaining", value(self.limit - self.used)),
        ]
    }
}
