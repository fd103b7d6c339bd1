//! The status page as HTML, for a person with a browser (a phone included):
//! one server-rendered page, inline CSS, a five-line refresh script, no
//! external asset (the site may have no internet). Rendered with `maud`, whose
//! templates escape every interpolated value, so a hostile repository name
//! shows as text and never as markup. Every number also sits in a
//! `data-value` attribute exactly as `?format=json` gives it.

use std::time::UNIX_EPOCH;

use bytesize::ByteSize;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::metrics::status::{Status, UpstreamStatus, Window};

const STYLE: &str = "
*{box-sizing:border-box}
body{font:15px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;padding:12px;background:#f4f5f7;color:#1d2430}
h1{font-size:1.3em;margin:0 0 4px}h2{font-size:1.05em;margin:0 0 8px}
.sub{color:#5b6475;font-size:.9em;margin-bottom:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:12px}
section{background:#fff;border-radius:8px;padding:12px;box-shadow:0 1px 2px rgba(0,0,0,.08);min-width:0}
.big{font-size:1.6em;font-weight:600}
.bar{background:#e3e6eb;border-radius:4px;height:10px;overflow:hidden;margin:6px 0}
.bar>div{background:#2f6fde;height:100%}
.bar.warn>div{background:#d9822b}
table{width:100%;border-collapse:collapse;font-size:.92em}
td,th{text-align:left;padding:3px 4px;border-bottom:1px solid #eceef1;vertical-align:top}
th{color:#5b6475;font-weight:500}
td.num,th.num{text-align:right;white-space:nowrap}
.name{word-break:break-all}
.empty{color:#8a92a3}
.scroll{overflow-x:auto}
";

/// Reloads the page every 10 s unless `?refresh=0` is in its address.
const REFRESH: &str =
    "if(!/[?&]refresh=0/.test(location.search)){setTimeout(function(){location.reload()},10000)}";

/// The whole page.
pub fn render(status: &Status) -> String {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "regcache status" }
                // No favicon request: the page asks for nothing but itself.
                link rel="icon" href="data:,";
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "regcache" }
                div.sub {
                    "up since " (unix_time(status.started_at))
                    " · page of " (unix_time(status.generated_at))
                    " · " a href="?format=json" { "JSON" }
                    " · " a href="/metrics" { "metrics" }
                }
                div.grid {
                    (disk(status))
                    (window("Last hour", "last-hour", &status.last_hour, Some(status.requests_per_second)))
                    (window("Since start", "since-start", &status.since_start, None))
                    (fills(status))
                    (largest(status))
                    (most_pulled(status))
                    (evictions(status))
                    (pins(status))
                    (upstreams(&status.upstreams))
                }
                script { (PreEscaped(REFRESH)) }
            }
        }
    };
    page.into_string()
}

fn disk(status: &Status) -> Markup {
    let d = &status.disk;
    let percent = ratio(d.committed_bytes, d.max_size) * 100.0;
    let warn = d.committed_bytes >= d.high_bytes;
    html! {
        section #disk {
            h2 { "Disk" }
            div.big { (bytes_el("disk-committed", d.committed_bytes)) }
            div { "of " (bytes_el("disk-budget", d.max_size)) " budget · " (format!("{percent:.1} %")) }
            div.bar.warn[warn] { div style=(format!("width:{:.1}%", percent.min(100.0))) {} }
            table {
                tr { th { "evicts above" } td.num { (bytes_el("disk-high", d.high_bytes)) } }
                tr { th { "down to" } td.num { (bytes_el("disk-low", d.low_bytes)) } }
                tr { th { "reserved by fills" } td.num { (bytes_el("disk-reserved", d.reserved_bytes)) } }
                tr { th { "pinned" } td.num { (bytes_el("disk-pinned", d.pinned_bytes)) } }
                tr { th { "files (index rows)" } td.num { (count_el("disk-rows", d.index_rows)) } }
            }
        }
    }
}

fn window(title: &str, id: &str, w: &Window, rate: Option<f64>) -> Markup {
    let ratio = w
        .hit_ratio
        .map_or("–".to_owned(), |r| format!("{:.1} %", r * 100.0));
    let ratio_value = w.hit_ratio.map_or(String::new(), |r| r.to_string());
    html! {
        section id=(id) {
            h2 { (title) " " span.sub { "(" (duration(w.seconds)) ")" } }
            div.big { span id=(format!("{id}-hit-ratio")) data-value=(ratio_value) { (ratio) } " hits" }
            table {
                tr { th { "requests" } td.num { (count_el(&format!("{id}-requests"), w.requests)) } }
                @if let Some(rate) = rate {
                    tr { th { "requests/s (last minute)" } td.num {
                        span #requests-per-second data-value=(rate) { (format!("{rate:.2}")) }
                    } }
                }
                tr { th { "bytes served" } td.num { (bytes_el(&format!("{id}-served"), w.bytes_served)) } }
                tr { th { "bytes saved upstream" } td.num { (bytes_el(&format!("{id}-saved"), w.bytes_saved)) } }
                @for (outcome, count) in &w.outcomes {
                    @if count.requests > 0 {
                        tr { th { "· " (outcome) } td.num { (count_el(&format!("{id}-{outcome}"), count.requests)) } }
                    }
                }
            }
        }
    }
}

fn fills(status: &Status) -> Markup {
    html! {
        section #fills {
            h2 { "Fills in progress" }
            @if status.fills_in_progress.is_empty() { div.empty { "none" } }
            @for f in &status.fills_in_progress {
                @let percent = f.size.map(|size| ratio(f.written, size) * 100.0);
                div.name { (f.upstream) "/" (f.repository) }
                div.sub { (short_digest(&f.digest)) " · " (bytes(f.written))
                    @if let Some(size) = f.size { " of " (bytes(size)) }
                    " · " (format!("{:.0} s", f.seconds)) }
                @if let Some(percent) = percent {
                    div.bar { div style=(format!("width:{percent:.1}%")) {} }
                }
            }
        }
    }
}

fn largest(status: &Status) -> Markup {
    html! {
        section #largest {
            h2 { "Largest repositories" }
            @if status.largest_repositories.is_empty() { div.empty { "nothing cached" } }
            @else {
                table {
                    @for r in &status.largest_repositories {
                        tr { td.name { (r.upstream) "/" (r.repository) } td.num { (bytes(r.bytes)) } }
                    }
                }
            }
        }
    }
}

fn most_pulled(status: &Status) -> Markup {
    html! {
        section #most-pulled {
            h2 { "Most pulled (manifest GETs)" }
            @if status.most_pulled.is_empty() { div.empty { "no pulls yet" } }
            @else {
                table {
                    @for p in &status.most_pulled {
                        tr { td.name { (p.repository) } td.num { (p.pulls) } }
                    }
                }
            }
        }
    }
}

fn evictions(status: &Status) -> Markup {
    let d = &status.disk;
    html! {
        section #evictions {
            h2 { "Evictions" }
            div { (count_el("evictions-count", d.evictions)) " evicted since start, " (bytes_el("evicted-bytes", d.evicted_bytes)) }
            @if !d.recent_evictions.is_empty() {
                div.scroll { table {
                    tr { th { "when" } th { "digest" } th.num { "size" } }
                    @for e in &d.recent_evictions {
                        tr { td { (unix_time(e.at)) } td.name { (short_digest(&e.digest)) } td.num { (bytes(e.size)) } }
                    }
                } }
            }
        }
    }
}

fn pins(status: &Status) -> Markup {
    let d = &status.disk;
    html! {
        section #pins {
            h2 { "Pinned" }
            div { (bytes(d.pinned_bytes)) " pinned (never evicted)" }
            @if d.pins.is_empty() { div.empty { "no pins configured" } }
            ul { @for pin in &d.pins { li.name { (pin) } } }
        }
    }
}

fn upstreams(upstreams: &[UpstreamStatus]) -> Markup {
    html! {
        @for u in upstreams {
            section.upstream {
                h2.name { "Upstream " (u.name) }
                table {
                    @for (class, n) in &u.traffic.requests {
                        @if *n > 0 { tr { th { "requests " (class) } td.num { (n) } } }
                    }
                    tr { th { "bytes received" } td.num { (bytes(u.traffic.received_bytes)) } }
                }
                div.sub { "egress hosts seen:" }
                @if u.hosts_seen.is_empty() { div.empty { "none yet" } }
                ul { @for host in &u.hosts_seen { li.name { (host) } } }
                (health(&u.health))
                @if let Some(quota) = &u.rate_limit { (rate_limit(quota)) }
            }
        }
    }
}

/// The circuit: closed, or open (until when, after what failure).
fn health(h: &crate::upstream::HealthReport) -> Markup {
    html! {
        div.sub.health {
            "circuit " span.circuit { (h.circuit) }
            ", " (h.consecutive_failures) " consecutive failures, opened "
            (h.opened) " times"
            @if let Some(until) = h.open_until { ", open until " (unix_time(until)) }
        }
        @if let Some(failure) = &h.last_failure { div.sub { "last failure: " (failure) } }
    }
}

/// The pull quota the upstream stated, the manifest GETs spent, any pause.
fn rate_limit(q: &crate::upstream::RateLimitReport) -> Markup {
    let stated = match (q.remaining, q.limit) {
        (Some(remaining), Some(limit)) => format!("{remaining} of {limit} left"),
        (Some(remaining), None) => format!("{remaining} left"),
        _ => "no quota stated".to_owned(),
    };
    html! {
        div.sub.rate-limit {
            "pull quota: " (stated) ", reserve " (q.reserve) ", manifest GETs sent "
            (q.gets_spent)
            @if let Some(until) = q.paused_until {
                ", paused until " (unix_time(until))
                @if let Some(why) = &q.paused_because { " (" (why) ")" }
            }
        }
    }
}

fn bytes_el(id: &str, n: u64) -> Markup {
    html! { span id=(id) data-value=(n) title=(format!("{n} bytes")) { (bytes(n)) } }
}

fn count_el(id: &str, n: u64) -> Markup {
    html! { span id=(id) data-value=(n) { (n) } }
}

fn bytes(n: u64) -> String {
    ByteSize(n).display().iec().to_string()
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn short_digest(digest: &str) -> String {
    digest.chars().take(19).collect()
}

fn duration(seconds: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
}

fn unix_time(seconds: u64) -> String {
    let time = UNIX_EPOCH + std::time::Duration::from_secs(seconds);
    humantime::format_rfc3339_seconds(time).to_string()
}
