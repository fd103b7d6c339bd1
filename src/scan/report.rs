//! How `scan` prints what it found: one line per reference (`file:line:`),
//! unique normalized references for `--list` (the input of `prefetch`), or
//! JSON for `--json`. Formatting only; the verdicts are made in `scan`.

use std::collections::BTreeSet;
use std::io::Write;

use serde_json::json;

use super::{Finding, Scan, Status};
use crate::oci::ImageRef;

/// One line per finding, then files read without a grammar, then a summary.
pub fn write_text(scan: &Scan, out: &mut dyn Write) -> std::io::Result<()> {
    for finding in &scan.findings {
        writeln!(out, "{}", text_line(finding))?;
    }
    for skipped in &scan.skipped {
        writeln!(out, "{}: warning: {}", skipped.file, skipped.reason)?;
    }
    writeln!(out, "{}", summary(scan))
}

fn text_line(f: &Finding) -> String {
    let place = format!("{}:{}:", f.file, f.line);
    let mut line = match &f.status {
        Status::Ok => format!("{place} {}", f.written),
        Status::Frozen | Status::Fixed => format!(
            "{place} {}  {} -> {}",
            f.written,
            f.status.as_str(),
            f.replacement.as_deref().unwrap_or_default()
        ),
        Status::Unresolved => format!("{place} unresolved {}", f.written),
        Status::Invalid(reason) => format!("{place} invalid {:?}: {reason}", f.written),
    };
    if let Some(note) = &f.note {
        line.push_str(&format!("  ({note})"));
    }
    line
}

/// `N files, M references: F frozen (X fixed, Y left), U unresolved`.
pub fn summary(scan: &Scan) -> String {
    let count = |status: &Status| scan.findings.iter().filter(|f| &f.status == status).count();
    let fixed = count(&Status::Fixed);
    let left = scan.frozen_left();
    format!(
        "{} files, {} references: {} frozen ({fixed} fixed, {left} left), {} unresolved",
        scan.files,
        scan.findings.len(),
        fixed + left,
        count(&Status::Unresolved),
    )
}

/// The unique normalized references, sorted, one per line; a frozen one as
/// its replacement (the image to fetch).
pub fn write_list(scan: &Scan, out: &mut dyn Write) -> std::io::Result<()> {
    let unique: BTreeSet<String> = scan.findings.iter().filter_map(listed).collect();
    for reference in unique {
        writeln!(out, "{reference}")?;
    }
    Ok(())
}

fn listed(finding: &Finding) -> Option<String> {
    match finding.status {
        Status::Ok => Some(finding.reference.as_ref()?.normalized()),
        Status::Frozen | Status::Fixed => {
            let replacement: ImageRef = finding.replacement.as_ref()?.parse().ok()?;
            Some(replacement.normalized())
        }
        Status::Unresolved | Status::Invalid(_) => None,
    }
}

/// `{"files": N, "findings": [...], "skipped": [...], "frozen_left": N}`.
pub fn write_json(scan: &Scan, out: &mut dyn Write) -> std::io::Result<()> {
    let findings: Vec<_> = scan
        .findings
        .iter()
        .map(|f| {
            json!({
                "file": f.file,
                "line": f.line,
                "written": f.written,
                "reference": f.reference.as_ref().map(ImageRef::normalized),
                "status": f.status.as_str(),
                "reason": match &f.status { Status::Invalid(r) => Some(r), _ => None },
                "replacement": f.replacement,
                "note": f.note,
            })
        })
        .collect();
    let skipped: Vec<_> = scan
        .skipped
        .iter()
        .map(|s| json!({"file": s.file, "reason": s.reason}))
        .collect();
    let document = json!({
        "files": scan.files,
        "findings": findings,
        "skipped": skipped,
        "frozen_left": scan.frozen_left(),
    });
    serde_json::to_writer_pretty(&mut *out, &document)?;
    writeln!(out)
}
