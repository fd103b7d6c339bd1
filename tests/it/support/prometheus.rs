//! `/metrics` read with a Prometheus text-format parser (the `prometheus-parse`
//! crate), never with string matching: a sample is found by its name and its
//! whole label set.

use std::collections::BTreeMap;

use prometheus_parse::{Scrape, Value};
use reqwest::StatusCode;

use super::http::get;

/// One scrape of `<base>/metrics`, parsed.
#[derive(Debug)]
pub struct Metrics {
    pub text: String,
    scrape: Scrape,
}

impl Metrics {
    /// Scrapes `<base>/metrics`; panics unless it is a 200 in the text format
    /// that parses.
    pub async fn scrape(base: &str) -> Metrics {
        let got = get(&format!("{base}/metrics")).await;
        assert_eq!(got.status, StatusCode::OK, "{got:?}");
        assert_eq!(
            got.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let text = String::from_utf8(got.ok_body().to_vec()).expect("UTF-8 exposition");
        Metrics::parse(text)
    }

    pub fn parse(text: String) -> Metrics {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = Scrape::parse(lines).expect("the exposition parses");
        Metrics { text, scrape }
    }

    /// The value of the counter, gauge or untyped sample `name` with exactly
    /// `labels`; panics if there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let found = self.scrape.samples.iter().find(|s| {
            let have: BTreeMap<&str, &str> = s
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            s.metric == name && have == want
        });
        match found.map(|s| &s.value) {
            Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
            other => panic!(
                "no sample {name}{labels:?} (found {other:?}) in\n{}",
                self.text
            ),
        }
    }

    /// Every sample of counter `name` by its label set, zeros left out.
    pub fn nonzero(&self, name: &str) -> BTreeMap<Vec<(String, String)>, f64> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) if v != 0.0 => {
                    let mut labels: Vec<(String, String)> = s
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    labels.sort();
                    Some((labels, v))
                }
                _ => None,
            })
            .collect()
    }

    /// Whether a metric family `name` is declared (with its `# HELP`).
    pub fn has_help(&self, name: &str) -> bool {
        self.scrape.docs.contains_key(name)
    }
}

/// A label set for [`Metrics::nonzero`]'s keys.
pub fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    labels
}
