//! Samples, medians and the markdown tables the bench prints (pasted as-is
//! into BENCHMARKS.md).

use std::collections::BTreeMap;

/// Samples per (measure, peer), in the order measures were first recorded.
#[derive(Debug, Default)]
pub struct Samples {
    order: Vec<String>,
    values: BTreeMap<(String, String), Vec<f64>>,
}

impl Samples {
    pub fn add(&mut self, measure: &str, peer: &str, value: f64) {
        if !self.order.iter().any(|m| m == measure) {
            self.order.push(measure.to_owned());
        }
        self.values
            .entry((measure.to_owned(), peer.to_owned()))
            .or_default()
            .push(value);
    }

    pub fn median(&self, measure: &str, peer: &str) -> Option<f64> {
        let values = self.values.get(&(measure.to_owned(), peer.to_owned()))?;
        median(values)
    }

    fn range(&self, measure: &str, peer: &str) -> Option<(f64, f64)> {
        let values = self.values.get(&(measure.to_owned(), peer.to_owned()))?;
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some((min, max))
    }

    /// `regcache`'s median over `peer`'s.
    pub fn ratio(&self, measure: &str, peer: &str) -> Option<f64> {
        Some(self.median(measure, "regcache")? / self.median(measure, peer)?)
    }

    /// One markdown table of medians for `peers` (regcache included) with a
    /// regcache/peer ratio column per other peer, then one of min–max.
    pub fn print_table(&self, title: &str, measures: &[&str], peers: &[&str]) {
        let others: Vec<&str> = peers.iter().copied().filter(|p| *p != "regcache").collect();
        println!("\n### {title}\n");
        let mut header = vec!["measure".to_owned()];
        header.extend(peers.iter().map(|p| format!("{p} (median)")));
        header.extend(others.iter().map(|p| format!("regcache/{p}")));
        print_row(&header);
        print_row(&vec!["---".to_owned(); header.len()]);
        for measure in measures
            .iter()
            .filter(|m| self.order.iter().any(|o| o == *m))
        {
            let mut row = vec![measure.to_string()];
            row.extend(peers.iter().map(|p| fmt_opt(self.median(measure, p))));
            row.extend(others.iter().map(|p| fmt_ratio(self.ratio(measure, p))));
            print_row(&row);
        }
        println!("\nmin–max of the rounds:\n");
        let mut header = vec!["measure".to_owned()];
        header.extend(peers.iter().map(|p| p.to_string()));
        print_row(&header);
        print_row(&vec!["---".to_owned(); header.len()]);
        for measure in measures
            .iter()
            .filter(|m| self.order.iter().any(|o| o == *m))
        {
            let mut row = vec![measure.to_string()];
            row.extend(peers.iter().map(|p| {
                self.range(measure, p).map_or("–".to_owned(), |(lo, hi)| {
                    format!("{}–{}", fmt(lo), fmt(hi))
                })
            }));
            print_row(&row);
        }
    }
}

impl Samples {
    /// One markdown table setting each `(plain, twin)` pair side by side:
    /// both medians, twin/plain, and both min–max ranges.
    pub fn print_pairs(&self, title: &str, measures: &[&str], pairs: &[(&str, &str)]) {
        println!("\n### {title}\n");
        let mut header = vec!["measure".to_owned()];
        for (plain, twin) in pairs {
            header.push(format!("{plain} (median)"));
            header.push(format!("{twin} (median)"));
            header.push(format!("{twin}/{plain}"));
        }
        print_row(&header);
        print_row(&vec!["---".to_owned(); header.len()]);
        let range = |measure: &str, peer: &str| {
            self.range(measure, peer)
                .map_or("–".to_owned(), |(lo, hi)| {
                    format!("{}–{}", fmt(lo), fmt(hi))
                })
        };
        for measure in measures {
            let mut row = vec![measure.to_string()];
            for (plain, twin) in pairs {
                let (p, t) = (self.median(measure, plain), self.median(measure, twin));
                row.push(format!("{} ({})", fmt_opt(p), range(measure, plain)));
                row.push(format!("{} ({})", fmt_opt(t), range(measure, twin)));
                row.push(fmt_ratio(p.zip(t).map(|(p, t)| t / p)));
            }
            print_row(&row);
        }
    }
}

pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

pub fn print_row(cells: &[String]) {
    println!("| {} |", cells.join(" | "));
}

/// Three significant digits or so: 123456 → "123456", 12.345 → "12.3", 0.01234 → "0.0123".
pub fn fmt(value: f64) -> String {
    let abs = value.abs();
    if abs >= 100.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else if abs >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn fmt_opt(value: Option<f64>) -> String {
    value.map_or("–".to_owned(), fmt)
}

pub fn fmt_ratio(value: Option<f64>) -> String {
    value.map_or("–".to_owned(), |r| format!("{r:.2}×"))
}

/// One row of the targets table.
#[derive(Debug)]
pub struct Target {
    pub what: String,
    pub goal: String,
    pub measured: String,
    pub pass: Option<bool>,
}

pub fn print_targets(targets: &[Target]) {
    println!("\n### Targets\n");
    print_row(&[
        "target".into(),
        "goal".into(),
        "measured".into(),
        "result".into(),
    ]);
    print_row(&vec!["---".to_owned(); 4]);
    for t in targets {
        let result = match t.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a",
        };
        print_row(&[
            t.what.clone(),
            t.goal.clone(),
            t.measured.clone(),
            result.to_owned(),
        ]);
    }
}
