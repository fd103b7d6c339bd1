//! Plain-text rendering for the operator commands: aligned tables, sizes in
//! binary units and ages. Hand-written rather than
//! a table crate: `regcache ls` prints 100 000 rows in well under a second this
//! way, and column alignment is all it needs. Pure functions, no I/O but `Write`.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

/// A table with a header row; columns are padded to their widest cell. Rows
/// are either kept ([`Table::push`], then [`Table::write`]) or streamed: a
/// first pass [`Table::measure`]s every row, a second writes the header and
/// each row as it comes ([`Table::write_header`], [`Table::write_row`]), so
/// that a million rows are never all in memory.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    /// Right-aligned columns (numbers, sizes).
    right: Vec<bool>,
    /// The widest cell of each column so far, headers included.
    widths: Vec<usize>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `columns`: (header, right-aligned).
    pub fn new(columns: &[(&'static str, bool)]) -> Self {
        Self {
            headers: columns.iter().map(|c| c.0).collect(),
            right: columns.iter().map(|c| c.1).collect(),
            widths: columns.iter().map(|c| c.0.chars().count()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.measure(&row);
        self.rows.push(row);
    }

    /// Widens the columns to fit `row` without keeping it.
    pub fn measure(&mut self, row: &[String]) {
        debug_assert_eq!(row.len(), self.headers.len());
        for (w, cell) in self.widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes the header and every row kept, two spaces between columns, no
    /// trailing spaces.
    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        self.write_header(out)?;
        for row in &self.rows {
            self.write_row(row, out)?;
        }
        Ok(())
    }

    /// The header line, padded to the widths measured so far.
    pub fn write_header(&self, out: &mut dyn Write) -> io::Result<()> {
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        self.write_row(&headers, out)
    }

    /// One line, padded to the widths measured so far (a wider cell than
    /// those pushes the rest of its line to the right).
    pub fn write_row(&self, row: &[String], out: &mut dyn Write) -> io::Result<()> {
        let mut line = String::new();
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            let pad = self.widths[i].saturating_sub(cell.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            if self.right[i] {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if i != last {
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        line.truncate(line.trim_end().len());
        line.push('\n');
        out.write_all(line.as_bytes())
    }
}

/// `0 B`, `999 B`, `1.5 KiB`, `12.0 MiB`, `1.0 GiB` (binary units).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// How long before `now` `then` was, coarsely: `12s ago`, `5m ago`, `3h ago`,
/// `2d ago`; a time in the future (clock skew) is `just now`.
pub fn age(now: SystemTime, then: SystemTime) -> String {
    let secs = now.duration_since(then).unwrap_or(Duration::ZERO).as_secs();
    match secs {
        0 => "just now".to_owned(),
        1..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_left_and_right_without_trailing_spaces() {
        let mut table = Table::new(&[("NAME", false), ("SIZE", true), ("NOTE", false)]);
        table.push(vec!["a".into(), "1 B".into(), "-".into()]);
        table.push(vec!["longer".into(), "10.0 MiB".into(), "x".into()]);
        let mut out = Vec::new();
        table.write(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "NAME        SIZE  NOTE\na            1 B  -\nlonger  10.0 MiB  x\n"
        );
    }

    #[test]
    fn sizes_use_binary_units() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1536, "1.5 KiB"),
            (10 << 20, "10.0 MiB"),
            (1 << 30, "1.0 GiB"),
        ];
        for (bytes, want) in cases {
            assert_eq!(human_size(bytes), want);
        }
    }

    #[test]
    fn ages_are_coarse_and_never_negative() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |s| age(now, now - Duration::from_secs(s));
        assert_eq!(
            [ago(0), ago(5), ago(120), ago(7200), ago(3 * 86_400)],
            ["just now", "5s ago", "2m ago", "2h ago", "3d ago"]
        );
        assert_eq!(age(now, now + Duration::from_secs(60)), "just now");
    }
}
