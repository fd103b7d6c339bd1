//! The walker's readers of typed values: a key taken out of its table (so
//! what is left over is unknown), checked and converted (strings, booleans,
//! lists, sizes like `50GiB`, fractions, durations like `5m`), every problem
//! recorded with its key instead of stopping at the first.

use super::*;

impl Walker {
    pub(super) fn table(&mut self, t: &mut Table, path: &str, key: &str) -> Table {
        match t.remove(key) {
            Some(Value::Table(inner)) => inner,
            Some(_) => {
                self.error(&Self::key(path, key), "must be a table");
                Table::new()
            }
            None => Table::new(),
        }
    }

    pub(super) fn reject_unknown(&mut self, t: &Table, path: &str) {
        for key in t.keys() {
            self.error(&Self::key(path, key), "unknown key");
        }
    }

    pub(super) fn optional_string(
        &mut self,
        t: &mut Table,
        path: &str,
        key: &str,
    ) -> Option<String> {
        match t.remove(key)? {
            Value::String(s) => Some(s),
            other => {
                self.error(
                    &Self::key(path, key),
                    format!("must be a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    pub(super) fn string(&mut self, t: &mut Table, path: &str, key: &str) -> Option<String> {
        let present = t.contains_key(key);
        let value = self.optional_string(t, path, key);
        if !present {
            self.error(&Self::key(path, key), "missing");
        }
        value
    }

    pub(super) fn parsed<T: std::str::FromStr>(
        &mut self,
        t: &mut Table,
        path: &str,
        key: &str,
        what: &str,
    ) -> Option<T>
    where
        T::Err: fmt::Display,
    {
        let raw = self.string(t, path, key)?;
        match raw.parse() {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(&Self::key(path, key), format!("{raw:?} is not {what}: {e}"));
                None
            }
        }
    }

    pub(super) fn optional_bool(&mut self, t: &mut Table, path: &str, key: &str) -> Option<bool> {
        match t.remove(key)? {
            Value::Boolean(b) => Some(b),
            other => {
                self.error(
                    &Self::key(path, key),
                    format!("must be true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    pub(super) fn optional_strings(&mut self, t: &mut Table, path: &str, key: &str) -> Vec<String> {
        let Some(value) = t.remove(key) else {
            return Vec::new();
        };
        let items = match value {
            Value::Array(items) => items,
            other => {
                self.error(
                    &Self::key(path, key),
                    format!("must be an array of strings, found {}", other.type_str()),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for item in items {
            match item {
                Value::String(s) => out.push(s),
                other => self.error(
                    &Self::key(path, key),
                    format!("items must be strings, found {}", other.type_str()),
                ),
            }
        }
        out
    }

    /// A size in bytes, human-readable ("50GiB", "500MB", "1048576"); `Some(default)`
    /// when absent, `None` when invalid.
    pub(super) fn size(
        &mut self,
        t: &mut Table,
        path: &str,
        key: &str,
        default: u64,
    ) -> Option<u64> {
        if !t.contains_key(key) {
            return Some(default);
        }
        let raw = self.optional_string(t, path, key)?;
        match raw.trim().parse::<bytesize::ByteSize>() {
            Ok(size) => Some(size.as_u64()),
            Err(e) => {
                self.error(
                    &Self::key(path, key),
                    format!("{raw:?} is not a size like \"50GiB\": {e}"),
                );
                None
            }
        }
    }

    /// A fraction in (0, 1]; `Some(default)` when absent, `None` when invalid.
    pub(super) fn fraction(
        &mut self,
        t: &mut Table,
        path: &str,
        key: &str,
        default: f64,
    ) -> Option<f64> {
        let value = match t.remove(key) {
            None => return Some(default),
            Some(Value::Float(f)) => f,
            Some(Value::Integer(i)) => i as f64,
            Some(other) => {
                self.error(
                    &Self::key(path, key),
                    format!("must be a number like 0.9, found {}", other.type_str()),
                );
                return None;
            }
        };
        if value > 0.0 && value <= 1.0 {
            Some(value)
        } else {
            self.error(
                &Self::key(path, key),
                format!("{value} is not a fraction in (0, 1]"),
            );
            None
        }
    }

    /// A whole number ≥ 0; `Some(default)` when absent, `None` when invalid.
    pub(super) fn count(
        &mut self,
        t: &mut Table,
        path: &str,
        key: &str,
        default: u64,
    ) -> Option<u64> {
        match t.remove(key) {
            None => Some(default),
            Some(Value::Integer(i)) if i >= 0 => Some(i as u64),
            Some(other) => {
                self.error(
                    &Self::key(path, key),
                    format!("must be a whole number ≥ 0, found {other}"),
                );
                None
            }
        }
    }

    /// A humantime duration ("90s", "5m"); `Some(default)` when absent, `None` when invalid.
    pub(super) fn duration(
        &mut self,
        t: &mut Table,
        path: &str,
        key: &str,
        default: Duration,
    ) -> Option<Duration> {
        if !t.contains_key(key) {
            return Some(default);
        }
        let raw = self.optional_string(t, path, key)?;
        match humantime::parse_duration(&raw) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    &Self::key(path, key),
                    format!("{raw:?} is not a duration like \"5m\": {e}"),
                );
                None
            }
        }
    }
}
