//! [`Health`]: one upstream's circuit breaker. Consecutive failures that mean
//! "the upstream cannot answer" (a connection refused or timed out, a stalled
//! read, a 5xx, a 429) open the circuit after `circuit_failures` of them, or
//! at once on a 429 that says when to come back (`Retry-After`). While it is
//! open, requests are refused at once with the cause ([`Refusal`]) instead of
//! waiting for a timeout each; when the pause is over one request at a time
//! goes through as a probe: an answer closes the circuit, a failure opens it
//! again for twice as long (from `circuit_backoff_min`, with jitter, up to
//! `circuit_backoff_max`; [`CircuitSettings`]).
//!
//! Any other answer (a 2xx, a 404, a 401, a protocol error) shows the upstream
//! is there and resets the count. The state is read by `regcache stats` (and
//! later metrics) through [`Health::report`]. It never sends a request itself
//! and knows nothing of the cache.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::Error;

/// Consecutive failures that open the circuit, by default (`circuit_failures`).
pub const FAILURES_TO_OPEN: u32 = 3;
/// The first pause after the circuit opens, by default (`circuit_backoff_min`).
pub const FIRST_OPEN: Duration = Duration::from_secs(2);
/// The longest pause, by default (`circuit_backoff_max`); a `Retry-After` is
/// honoured up to this too.
pub const MAX_OPEN: Duration = Duration::from_secs(300);

/// When a circuit opens and for how long: an upstream's `circuit_*` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitSettings {
    /// Consecutive failures that open the circuit (at least 1).
    pub failures: u32,
    /// The first pause; each reopening doubles it (± 20 % jitter)...
    pub backoff_min: Duration,
    /// ...up to this (at least `backoff_min`).
    pub backoff_max: Duration,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        Self {
            failures: FAILURES_TO_OPEN,
            backoff_min: FIRST_OPEN,
            backoff_max: MAX_OPEN,
        }
    }
}

/// One upstream's circuit. Shared by every request to that upstream.
#[derive(Debug)]
pub struct Health {
    upstream: String,
    settings: CircuitSettings,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    circuit: Circuit,
    consecutive_failures: u32,
    /// How long the circuit stays open the next time it opens.
    next_pause: Duration,
    /// Times the circuit opened since start.
    opened: u64,
    last_failure: Option<String>,
    /// Whether the last failure was a 429 (a refusal then reads as one).
    rate_limited: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed,
    /// Refusing requests until `until` (wall clock kept for `stats`).
    Open {
        until: Instant,
        until_wall: SystemTime,
    },
    /// One request is finding out whether the upstream is back.
    Probing,
}

/// Why a request was not sent: the circuit is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The failure that (last) opened the circuit.
    pub cause: String,
    pub failures: u32,
    /// When a request will be let through again (zero: a probe is under way).
    pub retry_in: Duration,
    /// The upstream limited our rate (its 429 opened the circuit).
    pub rate_limited: bool,
}

/// Leave to send one request; report how it ended with [`Permit::record`].
/// Dropped unrecorded (the caller gave up), it counts neither way; a probe's
/// turn passes to the next request.
#[derive(Debug)]
pub struct Permit<'a> {
    health: &'a Health,
    probe: bool,
    recorded: bool,
}

/// The circuit as `regcache stats` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// `closed`, `open` or `probing`.
    pub circuit: String,
    pub consecutive_failures: u32,
    /// Times the circuit opened since the server started.
    pub opened: u64,
    /// Unix seconds until which requests are refused (while open).
    pub open_until: Option<u64>,
    pub last_failure: Option<String>,
    /// The pull quota ([`super::RateLimit`]), filled in by the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<super::RateLimitReport>,
}

impl Health {
    pub fn new(upstream: &str, settings: CircuitSettings) -> Self {
        Self {
            upstream: upstream.to_owned(),
            settings,
            state: Mutex::new(State {
                circuit: Circuit::Closed,
                consecutive_failures: 0,
                next_pause: settings.backoff_min,
                opened: 0,
                last_failure: None,
                rate_limited: false,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leave to send a request now, or why not.
    pub fn admit(&self) -> Result<Permit<'_>, Refusal> {
        let mut state = self.state();
        let probe = match state.circuit {
            Circuit::Closed => false,
            Circuit::Open { until, .. } if Instant::now() >= until => {
                state.circuit = Circuit::Probing;
                tracing::info!(upstream = %self.upstream, "upstream circuit half-open: one request probes");
                true
            }
            Circuit::Open { until, .. } => {
                return Err(state.refusal(until.saturating_duration_since(Instant::now())));
            }
            Circuit::Probing => return Err(state.refusal(Duration::ZERO)),
        };
        Ok(Permit {
            health: self,
            probe,
            recorded: false,
        })
    }

    /// The circuit now.
    pub fn report(&self) -> HealthReport {
        let state = self.state();
        let (circuit, open_until) = match state.circuit {
            Circuit::Closed => ("closed", None),
            Circuit::Open { until_wall, .. } => ("open", Some(unix_seconds(until_wall))),
            Circuit::Probing => ("probing", None),
        };
        HealthReport {
            circuit: circuit.to_owned(),
            consecutive_failures: state.consecutive_failures,
            opened: state.opened,
            open_until,
            last_failure: state.last_failure.clone(),
            rate_limit: None,
        }
    }

    fn succeeded(&self) {
        let mut state = self.state();
        if state.circuit != Circuit::Closed {
            tracing::info!(upstream = %self.upstream, "upstream circuit closed: the upstream answered");
        }
        state.circuit = Circuit::Closed;
        state.consecutive_failures = 0;
        state.next_pause = self.settings.backoff_min;
        state.rate_limited = false;
    }

    fn failed(&self, error: &Error, probe: bool) {
        let mut state = self.state();
        state.consecutive_failures += 1;
        state.last_failure = Some(error.to_string());
        let retry_after = match error {
            Error::TooManyRequests { retry_after } => {
                state.rate_limited = true;
                *retry_after
            }
            _ => {
                state.rate_limited = false;
                None
            }
        };
        let max_open = self.settings.backoff_max;
        if let Circuit::Open { until, .. } = state.circuit {
            // A request let through before the circuit opened: it is open
            // already (longer only if the upstream asked for longer).
            let asked = retry_after.map(|a| Instant::now() + a.min(max_open));
            if let Some(later) = asked.filter(|later| *later > until) {
                state.circuit = Circuit::Open {
                    until: later,
                    until_wall: SystemTime::now() + later.duration_since(Instant::now()),
                };
            }
            return;
        }
        let opens =
            probe || retry_after.is_some() || state.consecutive_failures >= self.settings.failures;
        if !opens {
            return;
        }
        let pause = match retry_after {
            Some(asked) => asked.min(max_open),
            None => with_jitter(state.next_pause).min(max_open),
        };
        state.next_pause = (state.next_pause * 2).min(max_open);
        state.opened += 1;
        state.circuit = Circuit::Open {
            until: Instant::now() + pause,
            until_wall: SystemTime::now() + pause,
        };
        tracing::warn!(
            upstream = %self.upstream,
            failures = state.consecutive_failures,
            retry_in_ms = pause.as_millis() as u64,
            cause = %error,
            "upstream circuit open: requests fail fast, cached content is served without asking"
        );
    }

    /// A probe's request ended without a result: the next request probes.
    fn probe_abandoned(&self) {
        let mut state = self.state();
        if state.circuit == Circuit::Probing {
            let now = Instant::now();
            state.circuit = Circuit::Open {
                until: now,
                until_wall: SystemTime::now(),
            };
        }
    }
}

impl State {
    fn refusal(&self, retry_in: Duration) -> Refusal {
        Refusal {
            cause: self
                .last_failure
                .clone()
                .unwrap_or_else(|| "earlier failures".to_owned()),
            failures: self.consecutive_failures,
            retry_in,
            rate_limited: self.rate_limited,
        }
    }
}

impl Permit<'_> {
    /// Counts how the request ended: a failure if the upstream could not
    /// answer ([`Error::is_unavailable`]), a success otherwise.
    pub fn record<T>(mut self, result: &Result<T, Error>) {
        self.recorded = true;
        match result {
            Err(e) if e.is_unavailable() => self.health.failed(e, self.probe),
            _ => self.health.succeeded(),
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            self.health.probe_abandoned();
        }
    }
}

/// `pause` ± 20 %, so that many regcaches behind one upstream do not come back
/// at the same instant.
fn with_jitter(pause: Duration) -> Duration {
    pause.mul_f64(rand::rng().random_range(0.8..1.2))
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(health: &Health, error: Error) {
        let permit = health.admit().expect("admitted");
        permit.record::<()>(&Err(error));
    }

    #[test]
    fn the_configured_threshold_and_backoff_bound_the_circuit() {
        let settings = CircuitSettings {
            failures: 1,
            backoff_min: Duration::from_secs(10),
            backoff_max: Duration::from_secs(11),
        };
        let health = Health::new("up", settings);
        fail(&health, Error::ServerError { status: 503 });
        let first = health.admit().expect_err("open after one failure").retry_in;
        assert!(first > Duration::from_secs(7) && first <= Duration::from_secs(11));
        // The pause doubles on a failed probe, but never past the maximum.
        health.state().circuit = Circuit::Open {
            until: Instant::now(),
            until_wall: SystemTime::now(),
        };
        fail(&health, Error::ServerError { status: 503 });
        let second = health.admit().expect_err("open again").retry_in;
        assert!(second <= Duration::from_secs(11), "{second:?}");
        let asked = Some(Duration::from_secs(3600));
        health.state().circuit = Circuit::Open {
            until: Instant::now(),
            until_wall: SystemTime::now(),
        };
        fail(&health, Error::TooManyRequests { retry_after: asked });
        let third = health.admit().expect_err("open on a 429").retry_in;
        assert!(third <= Duration::from_secs(11), "{third:?}");
    }

    #[test]
    fn consecutive_failures_open_the_circuit_and_an_answer_resets_the_count() {
        let health = Health::new("up", CircuitSettings::default());
        fail(&health, Error::ServerError { status: 503 });
        fail(&health, Error::ServerError { status: 503 });
        // A 404 is an answer: the upstream is there.
        health.admit().unwrap().record::<()>(&Err(Error::NotFound));
        assert_eq!(health.report().consecutive_failures, 0);
        for _ in 0..FAILURES_TO_OPEN {
            fail(&health, Error::ServerError { status: 502 });
        }
        let refusal = health.admit().expect_err("open");
        assert_eq!(refusal.failures, FAILURES_TO_OPEN);
        assert!(refusal.cause.contains("502"), "{refusal:?}");
        assert!(!refusal.rate_limited);
        let pause = refusal.retry_in;
        assert!(pause > FIRST_OPEN.mul_f64(0.7) && pause <= FIRST_OPEN.mul_f64(1.2));
        let report = health.report();
        assert_eq!((report.circuit.as_str(), report.opened), ("open", 1));
        assert!(report.open_until.is_some());
    }

    #[test]
    fn a_429_with_retry_after_opens_at_once_for_that_long() {
        let health = Health::new("up", CircuitSettings::default());
        let asked = Duration::from_secs(30);
        fail(
            &health,
            Error::TooManyRequests {
                retry_after: Some(asked),
            },
        );
        let refusal = health.admit().expect_err("open");
        assert!(refusal.rate_limited);
        assert!(refusal.retry_in > asked - Duration::from_secs(1) && refusal.retry_in <= asked);
        // A 429 without Retry-After counts like any failure.
        let other = Health::new("other", CircuitSettings::default());
        fail(&other, Error::TooManyRequests { retry_after: None });
        assert!(other.admit().is_ok());
    }

    /// Opens `health` with a pause that is already over.
    fn opened_and_elapsed(health: &Health) {
        let mut state = health.state();
        state.circuit = Circuit::Open {
            until: Instant::now(),
            until_wall: SystemTime::now(),
        };
        state.consecutive_failures = FAILURES_TO_OPEN;
        state.last_failure = Some("connection refused".into());
    }

    #[test]
    fn one_probe_at_a_time_closes_or_reopens_the_circuit() {
        let health = Health::new("up", CircuitSettings::default());
        opened_and_elapsed(&health);
        let probe = health.admit().expect("the probe");
        let waiting = health.admit().expect_err("a probe is under way");
        assert_eq!(waiting.retry_in, Duration::ZERO);
        assert_eq!(health.report().circuit, "probing");
        probe.record::<()>(&Ok(()));
        assert_eq!(health.report().circuit, "closed");
        assert!(health.admit().is_ok());

        // A failed probe opens it again, for longer the next time.
        opened_and_elapsed(&health);
        health.state().next_pause = Duration::from_secs(8);
        fail(&health, Error::ServerError { status: 500 });
        let refusal = health.admit().expect_err("reopened");
        assert!(refusal.retry_in > Duration::from_secs(6));
        assert_eq!(health.state().next_pause, Duration::from_secs(16));
    }

    #[test]
    fn an_abandoned_probe_hands_the_turn_to_the_next_request() {
        let health = Health::new("up", CircuitSettings::default());
        opened_and_elapsed(&health);
        drop(health.admit().expect("the probe"));
        assert!(health.admit().is_ok(), "the next request probes");
    }
}
