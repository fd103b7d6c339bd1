//! [`RateLimit`]: one upstream's pull quota as its answers state it (Docker
//! Hub's `ratelimit-limit: 100;w=21600` / `ratelimit-remaining: 76;w=21600`,
//! the IETF draft's `RateLimit-Limit`/`-Remaining`/`-Reset` and `RateLimit:
//! limit=, remaining=, reset=`), the manifest GETs regcache spent (what Docker
//! Hub counts; HEADs and blob GETs are free there), and a pause: when the
//! remaining count reaches the configured reserve, or a 429 arrives, manifest
//! requests are refused at once ([`Error::QuotaReserve`]) until the window
//! (or the 429's `Retry-After`) has passed, so cached tags are served without
//! asking and misses fail fast with the reset time.
//!
//! It never sends a request and never reads a body; it only reads headers.
//! Read by `regcache stats` (and later metrics / the status page) through
//! [`RateLimit::report`].

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};

use super::Error;

/// Manifest GETs kept back by default (room for a person's `docker pull`).
pub const DEFAULT_RESERVE: u64 = 5;
/// How long a reserve pause lasts when the upstream named no window or reset.
const FALLBACK_PAUSE: Duration = Duration::from_secs(60);

/// What one answer said of the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    /// The window the limit applies to (`w=`), if given.
    pub window: Option<Duration>,
    /// Seconds until the quota resets (`RateLimit-Reset`), if given.
    pub reset: Option<Duration>,
}

impl Quota {
    /// How long until GETs may be sent again after this answer.
    fn pause(&self) -> Duration {
        self.reset.or(self.window).unwrap_or(FALLBACK_PAUSE)
    }
}

/// Reads the quota headers of one answer; `None` when it carries none.
pub fn parse(headers: &HeaderMap) -> Option<Quota> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let separate = || {
        let (limit, limit_window) = number_and_window(text("ratelimit-limit")?)?;
        let (remaining, remaining_window) = number_and_window(text("ratelimit-remaining")?)?;
        let reset = text("ratelimit-reset")
            .and_then(|r| r.trim().parse().ok())
            .map(Duration::from_secs);
        let policy_window = text("ratelimit-policy").and_then(|p| number_and_window(p)?.1);
        Some(Quota {
            limit,
            remaining,
            window: limit_window.or(remaining_window).or(policy_window),
            reset,
        })
    };
    separate().or_else(|| combined(text("ratelimit")?, text("ratelimit-policy")))
}

/// `100;w=21600` (Docker Hub) or `100` or `100, 100;w=60` (an older draft
/// listing policies): the first number, and the first `w=` if any.
fn number_and_window(value: &str) -> Option<(u64, Option<Duration>)> {
    let mut items = value.split([';', ',']).map(str::trim);
    let number = items.next()?.parse().ok()?;
    let window = items
        .filter_map(|item| item.strip_prefix("w="))
        .find_map(|w| w.trim().parse().ok())
        .map(Duration::from_secs);
    Some((number, window))
}

/// The draft's single field: `limit=100, remaining=50, reset=30`.
fn combined(value: &str, policy: Option<&str>) -> Option<Quota> {
    let field = |key: &str| {
        value
            .split([',', ';'])
            .filter_map(|item| item.trim().split_once('='))
            .find(|(k, _)| k.trim() == key)
            .and_then(|(_, v)| v.trim().parse::<u64>().ok())
    };
    Some(Quota {
        limit: field("limit")?,
        remaining: field("remaining")?,
        window: policy.and_then(|p| number_and_window(p)?.1),
        reset: field("reset").map(Duration::from_secs),
    })
}

/// One upstream's quota state. Shared by every request to that upstream.
#[derive(Debug)]
pub struct RateLimit {
    upstream: String,
    reserve: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Quota>,
    gets_spent: u64,
    pause: Option<Pause>,
    /// Times GETs were paused since start.
    paused: u64,
}

#[derive(Debug, Clone)]
struct Pause {
    until: Instant,
    until_wall: SystemTime,
    why: String,
}

/// The quota as `regcache stats` (and metrics, the status page) show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitReport {
    /// The last `limit` the upstream stated (none: it never sent one).
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub window_seconds: Option<u64>,
    pub reserve: u64,
    /// Manifest GETs regcache sent to this upstream since start.
    pub gets_spent: u64,
    /// Unix seconds until which manifest requests are not sent.
    pub paused_until: Option<u64>,
    pub paused_because: Option<String>,
    /// Times GETs were paused since start.
    pub pauses: u64,
}

impl RateLimit {
    pub fn new(upstream: &str, reserve: u64) -> Self {
        Self {
            upstream: upstream.to_owned(),
            reserve,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leave to send a manifest request now, or the error to answer instead.
    pub fn admit(&self) -> Result<(), Error> {
        let mut state = self.state();
        let Some(pause) = &state.pause else {
            return Ok(());
        };
        let now = Instant::now();
        if now < pause.until {
            return Err(Error::QuotaReserve {
                retry_in: pause.until - now,
                why: pause.why.clone(),
            });
        }
        state.pause = None;
        tracing::info!(
            upstream = %self.upstream,
            gets_spent = state.gets_spent,
            "upstream rate-limit pause over: manifest GETs resume"
        );
        Ok(())
    }

    /// Counts one manifest GET that was sent.
    pub fn spent_get(&self) {
        self.state().gets_spent += 1;
    }

    /// Reads what one answer (any hop, any status) says of the quota; pauses
    /// at the reserve or on a 429.
    pub fn observe(&self, status: StatusCode, headers: &HeaderMap) {
        let quota = parse(headers);
        let mut state = self.state();
        if let Some(quota) = quota {
            state.last = Some(quota);
        }
        let pause = if status == StatusCode::TOO_MANY_REQUESTS {
            // A bare 429 (no Retry-After, no quota stated) is left to the
            // circuit, which counts it as a failure.
            let asked = super::error::retry_after(headers);
            let pause = asked.or_else(|| quota.map(|q| q.pause()));
            pause.map(|pause| (pause, "the upstream answered 429".to_owned()))
        } else {
            quota.filter(|q| q.remaining <= self.reserve).map(|q| {
                (
                    q.pause(),
                    format!(
                        "{} of {} left, reserve {}",
                        q.remaining, q.limit, self.reserve
                    ),
                )
            })
        };
        if let Some((pause, why)) = pause {
            self.pause(&mut state, pause, why);
        }
    }

    fn pause(&self, state: &mut State, pause: Duration, why: String) {
        let until = Instant::now() + pause;
        if state.pause.as_ref().is_some_and(|p| p.until >= until) {
            return;
        }
        if state.pause.is_none() {
            state.paused += 1;
        }
        tracing::warn!(
            upstream = %self.upstream,
            gets_spent = state.gets_spent,
            resume_in_s = pause.as_secs(),
            why = %why,
            "upstream rate limit: manifest GETs paused; cached tags are served without asking, misses answer 429"
        );
        state.pause = Some(Pause {
            until,
            until_wall: SystemTime::now() + pause,
            why,
        });
    }

    /// The quota now.
    pub fn report(&self) -> RateLimitReport {
        let state = self.state();
        let live = state.pause.as_ref().filter(|p| p.until > Instant::now());
        RateLimitReport {
            limit: state.last.map(|q| q.limit),
            remaining: state.last.map(|q| q.remaining),
            window_seconds: state.last.and_then(|q| q.window).map(|w| w.as_secs()),
            reserve: self.reserve,
            gets_spent: state.gets_spent,
            paused_until: live.map(|p| unix_seconds(p.until_wall)),
            paused_because: live.map(|p| p.why.clone()),
            pauses: state.paused,
        }
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn docker_hubs_headers_give_limit_remaining_and_window() {
        let quota = parse(&headers(&[
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "76;w=21600"),
            ("docker-ratelimit-source", "192.0.2.1"),
        ]));
        assert_eq!(
            quota,
            Some(Quota {
                limit: 100,
                remaining: 76,
                window: Some(Duration::from_secs(21600)),
                reset: None,
            })
        );
    }

    #[test]
    fn the_drafts_spellings_are_read_too() {
        let separate = parse(&headers(&[
            ("RateLimit-Limit", "10, 10;w=60"),
            ("RateLimit-Remaining", "3"),
            ("RateLimit-Reset", "42"),
        ]))
        .unwrap();
        assert_eq!((separate.limit, separate.remaining), (10, 3));
        assert_eq!(separate.window, Some(Duration::from_secs(60)));
        assert_eq!(separate.pause(), Duration::from_secs(42), "reset wins");
        let combined = parse(&headers(&[
            ("RateLimit", "limit=50, remaining=0, reset=7"),
            ("RateLimit-Policy", "50;w=3600"),
        ]))
        .unwrap();
        assert_eq!(
            combined,
            Quota {
                limit: 50,
                remaining: 0,
                window: Some(Duration::from_secs(3600)),
                reset: Some(Duration::from_secs(7)),
            }
        );
    }

    #[test]
    fn absent_or_garbled_headers_are_no_quota() {
        assert_eq!(parse(&HeaderMap::new()), None);
        let garbled = headers(&[("ratelimit-limit", "lots"), ("ratelimit-remaining", "5")]);
        assert_eq!(parse(&garbled), None);
        assert_eq!(parse(&headers(&[("ratelimit-limit", "100")])), None);
    }

    #[test]
    fn the_reserve_or_a_429_pauses_and_the_report_says_so() {
        let limit = RateLimit::new("docker.io", 2);
        let quota = |left: &str| {
            headers(&[
                ("ratelimit-limit", "10;w=600"),
                ("ratelimit-remaining", &format!("{left};w=600")),
            ])
        };
        limit.observe(StatusCode::OK, &quota("3"));
        limit.spent_get();
        assert!(limit.admit().is_ok());
        limit.observe(StatusCode::OK, &quota("2"));
        let Err(Error::QuotaReserve { retry_in, why }) = limit.admit() else {
            panic!("paused at the reserve");
        };
        assert!(retry_in > Duration::from_secs(590) && retry_in <= Duration::from_secs(600));
        assert!(why.contains("2 of 10 left"), "{why}");
        let report = limit.report();
        assert_eq!(
            (report.limit, report.remaining, report.window_seconds),
            (Some(10), Some(2), Some(600))
        );
        assert_eq!((report.gets_spent, report.pauses), (1, 1));
        assert!(report.paused_until.is_some());

        let other = RateLimit::new("ghcr.io", 0);
        other.observe(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "30")]),
        );
        let Err(Error::QuotaReserve { retry_in, .. }) = other.admit() else {
            panic!("paused on a 429");
        };
        assert!(retry_in > Duration::from_secs(29) && retry_in <= Duration::from_secs(30));
    }

    #[test]
    fn a_bare_429_is_left_to_the_circuit() {
        let limit = RateLimit::new("docker.io", 0);
        limit.observe(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new());
        assert!(limit.admit().is_ok());
        assert_eq!(limit.report().pauses, 0);
    }

    #[test]
    fn a_pause_that_is_over_lets_requests_through() {
        let limit = RateLimit::new("docker.io", 0);
        limit.observe(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "0")]),
        );
        assert!(limit.admit().is_ok());
        assert_eq!(limit.report().paused_until, None);
        assert_eq!(limit.report().pauses, 1);
    }
}
