//! `/metrics`: the counters and the registry's activity in the Prometheus text
//! format (0.0.4), written by `prometheus-client`'s encoder from a snapshot
//! taken for this scrape (a [`Collector`] over owned values: the live numbers
//! stay plain atomics owned by whoever counts them). Names follow Prometheus'
//! conventions: `regcache_` prefix, base units (seconds, bytes), `_total` on
//! counters.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry as PromRegistry, Unit};

use super::histogram::HistogramSnapshot;
use crate::counters::{self, Counters, OutcomeCount};
use crate::registry::Activity;
use std::collections::BTreeMap;

/// The `Content-Type` of the exposition.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Everything one scrape shows.
#[derive(Debug)]
struct Scrape {
    started_at: u64,
    requests: Vec<(&'static str, &'static str, u64)>,
    outcomes: BTreeMap<String, OutcomeCount>,
    first_byte: Vec<(&'static str, HistogramSnapshot)>,
    activity: Activity,
}

/// The exposition text of `counters` and `activity`.
pub fn render(counters: &Counters, activity: Activity, started_at: u64) -> String {
    let scrape = Scrape {
        started_at,
        requests: counters.requests(),
        outcomes: counters.snapshot(),
        first_byte: counters.first_byte(),
        activity,
    };
    let mut registry = PromRegistry::with_prefix("regcache");
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        self.encode_requests(&mut encoder)?;
        self.encode_upstreams(&mut encoder)?;
        self.encode_fills(&mut encoder)?;
        self.encode_disk(&mut encoder)
    }
}

impl Scrape {
    fn encode_requests(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        gauge(
            encoder,
            "start_time",
            "When this server started, in unix seconds.",
            Some(&Unit::Seconds),
            self.started_at,
        )?;
        counters_of(
            encoder,
            "requests",
            "Registry API requests answered, by endpoint kind and cache outcome (error: a 4xx/5xx status or a broken body).",
            None,
            self.requests.iter().map(|(endpoint, outcome, n)| {
                ([("endpoint", *endpoint), ("outcome", *outcome)], *n)
            }),
        )?;
        let mut by_source: BTreeMap<&str, u64> = BTreeMap::new();
        for (outcome, count) in &self.outcomes {
            *by_source.entry(counters::source_of(outcome)).or_default() += count.bytes;
        }
        counters_of(
            encoder,
            "served",
            "Response body bytes sent, by source: cache (hit, confirmed, stale), fill (miss, follow), pass (relayed uncached), none (errors, the version check).",
            Some(&Unit::Bytes),
            by_source
                .iter()
                .map(|(source, n)| ([("source", *source)], *n)),
        )?;
        let mut metric = encoder.encode_descriptor(
            "time_to_first_byte",
            "From a request's arrival to its response head, by cache outcome.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (outcome, histogram) in &self.first_byte {
            let labels = [("outcome", *outcome)];
            histogram_into(metric.encode_family(&labels)?, histogram)?;
        }
        Ok(())
    }

    fn encode_upstreams(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let upstreams = &self.activity.upstreams;
        counters_of(
            encoder,
            "upstream_requests",
            "Requests sent to each upstream (each redirect hop counts), by status class (error: no answer).",
            None,
            upstreams.iter().flat_map(|u| {
                u.traffic.requests.iter().map(move |(class, n)| {
                    (
                        [("upstream", u.name.as_str()), ("status_class", *class)],
                        *n,
                    )
                })
            }),
        )?;
        counters_of(
            encoder,
            "upstream_received",
            "Body bytes read from each upstream's successful answers.",
            Some(&Unit::Bytes),
            upstreams
                .iter()
                .map(|u| ([("upstream", u.name.as_str())], u.traffic.received_bytes)),
        )?;
        self.encode_upstream_health(encoder)
    }

    /// Each upstream's circuit and pull quota (`upstream::health`, `rate_limit`).
    fn encode_upstream_health(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let upstreams = &self.activity.upstreams;
        let each = |value: fn(&crate::upstream::HealthReport) -> Option<u64>| {
            upstreams
                .iter()
                .filter_map(move |u| Some(([("upstream", u.name.as_str())], value(&u.health)?)))
        };
        gauges_of(
            encoder,
            "upstream_up",
            "1 while the upstream's circuit is closed (requests go out), 0 while it is open or probing.",
            each(|h| Some(u64::from(h.circuit == "closed"))),
        )?;
        gauges_of(
            encoder,
            "upstream_consecutive_failures",
            "Upstream failures in a row (timeouts, refused, 5xx, 429); the circuit opens at a threshold.",
            each(|h| Some(u64::from(h.consecutive_failures))),
        )?;
        counters_of(
            encoder,
            "upstream_circuit_opened",
            "Times each upstream's circuit opened.",
            None,
            each(|h| Some(h.opened)),
        )?;
        gauges_of(
            encoder,
            "upstream_ratelimit_limit",
            "The pull quota the upstream last stated (ratelimit-limit); absent until it states one.",
            each(|h| h.rate_limit.as_ref()?.limit),
        )?;
        gauges_of(
            encoder,
            "upstream_ratelimit_remaining",
            "Pulls left in the upstream's window (ratelimit-remaining); absent until it states one.",
            each(|h| h.rate_limit.as_ref()?.remaining),
        )?;
        gauges_of(
            encoder,
            "upstream_ratelimit_paused",
            "1 while manifest requests to the upstream are paused (quota at the reserve, or a 429).",
            each(|h| Some(u64::from(h.rate_limit.as_ref()?.paused_until.is_some()))),
        )?;
        counters_of(
            encoder,
            "upstream_manifest_gets",
            "Manifest GETs sent to each upstream (what Docker Hub counts against its quota).",
            None,
            each(|h| Some(h.rate_limit.as_ref()?.gets_spent)),
        )
    }

    fn encode_fills(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let fills = &self.activity.fills;
        counter(
            encoder,
            "herd_joins",
            "Blob requests that joined a fill another request had started (one upstream fetch served them).",
            None,
            fills.herd_joins,
        )?;
        counter(
            encoder,
            "fills_passed_disk_full",
            "Blob fills that could not write their file (the disk was full) and passed the rest of their body to their readers uncached.",
            None,
            fills.passed_disk_full,
        )?;
        gauge(
            encoder,
            "fills_active",
            "Blob fills in progress.",
            None,
            fills.in_progress.len() as u64,
        )?;
        let metric = encoder.encode_descriptor(
            "fill_duration",
            "From the start of a blob fill to its commit, of fills that committed.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        histogram_into(metric, &fills.durations)
    }

    fn encode_disk(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let disk = &self.activity.disk;
        counter(
            encoder,
            "evictions",
            "Content evicted by the disk budget (passes and `regcache gc` through the server).",
            None,
            disk.evictions,
        )?;
        counter(
            encoder,
            "evicted",
            "Bytes of content evicted by the disk budget.",
            Some(&Unit::Bytes),
            disk.evicted_bytes,
        )?;
        let gauges = [
            (
                "cache",
                "Bytes of committed content on disk.",
                disk.committed_bytes,
            ),
            (
                "cache_reserved",
                "Bytes reserved by fills in flight.",
                disk.reserved_bytes,
            ),
            (
                "cache_budget",
                "The disk budget (storage.max_size).",
                disk.max_size,
            ),
            (
                "cache_pinned",
                "Bytes of committed content the pins cover.",
                disk.pinned_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            gauge(encoder, name, help, Some(&Unit::Bytes), value)?;
        }
        gauge(
            encoder,
            "index_rows",
            "Content rows in the index (= committed files).",
            None,
            disk.index_rows,
        )
    }
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

fn counters_of<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl Iterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(metric)
}

fn gauges_of<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
            .encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The encoder accumulates bucket counts itself: it is given each bucket's own.
fn histogram_into(
    mut metric: prometheus_client::encoding::MetricEncoder<'_>,
    histogram: &HistogramSnapshot,
) -> fmt::Result {
    let mut previous = 0;
    let buckets: Vec<(f64, u64)> = histogram
        .buckets
        .iter()
        .map(|(bound, cumulative)| {
            let own = cumulative - previous;
            previous = *cumulative;
            (*bound, own)
        })
        .collect();
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        histogram.sum_seconds,
        histogram.count,
        &buckets,
        None,
    )
}
