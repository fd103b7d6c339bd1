//! Conversions between our types and SQLite column values: digests as their
//! `algorithm:hex` text, times as unix seconds or milliseconds. A stored value that
//! does not convert back is reported as a conversion error (which `index::Error`
//! classifies as `Corrupt`); it must never panic or be silently replaced.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::oci::Digest;

impl ToSql for Digest {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_string()))
    }
}

impl FromSql for Digest {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// Seconds since the epoch; clocks before 1970 count as 0, far futures saturate.
pub(super) fn unix_seconds(time: SystemTime) -> i64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
}

/// Milliseconds since the epoch, clamped like [`unix_seconds`].
pub(super) fn unix_millis(time: SystemTime) -> i64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// Reads column `idx` as unix milliseconds; negative or unrepresentable is an error.
pub(super) fn time_from_millis(
    row: &rusqlite::Row<'_>,
    idx: usize,
) -> rusqlite::Result<SystemTime> {
    let millis: i64 = row.get(idx)?;
    u64::try_from(millis)
        .ok()
        .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        .ok_or(rusqlite::Error::IntegralValueOutOfRange(idx, millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_trip_at_millisecond_precision() {
        let time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let back = conn
            .query_row("SELECT ?1", [unix_millis(time)], |row| {
                time_from_millis(row, 0)
            })
            .unwrap();
        assert_eq!(back, time);
    }

    #[test]
    fn negative_millis_are_an_error_not_a_panic() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let err = conn
            .query_row("SELECT -5", [], |row| time_from_millis(row, 0))
            .unwrap_err();
        assert!(matches!(
            err,
            rusqlite::Error::IntegralValueOutOfRange(0, -5)
        ));
    }

    #[test]
    fn times_before_the_epoch_clamp_to_zero() {
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!((unix_seconds(before), unix_millis(before)), (0, 0));
    }
}
