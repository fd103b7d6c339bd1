//! [`Outcome`]: how the cache answered a request, logged on every request line.

/// How a request was answered. Recorded in the access log (`outcome=`) and
/// attached to responses by `api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the cache without asking the upstream.
    Hit,
    /// Fetched from the upstream (and cached).
    Miss,
    /// Joined a fill already in progress for the same content.
    Follow,
    /// A tag past its TTL, served from cache at once while a background
    /// revalidation asks the upstream (or, with the upstream's circuit open,
    /// without asking).
    Stale,
    /// Cached content served to another repository after the upstream confirmed it.
    Confirmed,
    /// Passed through from the upstream without caching (tags, HEAD of a cold blob).
    Pass,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Follow => "follow",
            Self::Stale => "stale",
            Self::Confirmed => "confirmed",
            Self::Pass => "pass",
        }
    }
}
