//! Debian's Chromium, headless, loading a page from a test's server: the DOM
//! after its scripts ran (`--dump-dom`), every network request Chromium made
//! for it (from its NetLog), the page's console lines, and screenshots. Each
//! run gets a fresh profile and the flags a closed network needs; the process
//! is killed if it outlives the call.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// How long one Chromium run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// The flags every run gets: no sandbox (root in a container), no GPU, and no
/// background traffic of Chromium's own.
const FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
];

/// One request Chromium made to a loopback URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub url: String,
    /// The response's status line, if headers arrived.
    pub status_line: Option<String>,
    /// Chromium's net error code (0 = none).
    pub net_error: i64,
}

/// What one load of a page showed.
#[derive(Debug)]
pub struct Page {
    pub dom: String,
    /// Requests to `http://127.*` (the page's own; Chromium's background
    /// requests to other hosts are left out).
    pub requests: Vec<Request>,
    /// `CONSOLE` lines of Chromium's log (console messages and script errors).
    pub console: Vec<String>,
}

/// Loads `url` and returns its DOM, its requests and its console lines.
pub async fn load(url: &str) -> Page {
    let dir = tempfile::tempdir().expect("temp dir");
    let net_log = dir.path().join("net.json");
    let output = run(
        dir.path(),
        &[
            "--enable-logging=stderr",
            "--log-level=0",
            &format!("--log-net-log={}", net_log.display()),
            "--dump-dom",
            url,
        ],
    )
    .await;
    let log = std::fs::read(&net_log).expect("chromium wrote its net log");
    Page {
        dom: String::from_utf8(output.stdout).expect("UTF-8 DOM"),
        requests: loopback_requests(&log),
        console: String::from_utf8_lossy(&output.stderr)
            .lines()
            .filter(|l| l.contains(":CONSOLE"))
            .map(str::to_owned)
            .collect(),
    }
}

/// Writes a PNG of `url` at `width`×`height` CSS pixels to `png`.
pub async fn screenshot(url: &str, png: &Path, width: u32, height: u32) {
    let dir = tempfile::tempdir().expect("temp dir");
    let _ = std::fs::remove_file(png);
    run(
        dir.path(),
        &[
            &format!("--window-size={width},{height}"),
            &format!("--screenshot={}", png.display()),
            url,
        ],
    )
    .await;
    let bytes = std::fs::read(png).expect("chromium wrote the screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        png.display()
    );
}

async fn run(profile: &Path, args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new("chromium")
        .args(FLAGS)
        .arg(format!(
            "--user-data-dir={}",
            profile.join("profile").display()
        ))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run chromium (Debian package chromium; scripts/test installs it)");
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("chromium finished in time")
        .expect("chromium ran");
    assert!(
        output.status.success(),
        "chromium {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Every URL request to a loopback address in a NetLog, with its status line
/// and net error.
fn loopback_requests(log: &[u8]) -> Vec<Request> {
    let log: serde_json::Value = serde_json::from_slice(log).expect("NetLog JSON");
    let types = &log["constants"]["logEventTypes"];
    let type_id = |name: &str| types[name].as_i64().expect("known NetLog event type");
    let (start, headers) = (
        type_id("URL_REQUEST_START_JOB"),
        type_id("HTTP_TRANSACTION_READ_RESPONSE_HEADERS"),
    );
    let events = log["events"].as_array().expect("NetLog events");
    let mut requests: Vec<(i64, Request)> = Vec::new();
    for event in events {
        let url = event["params"]["url"].as_str().unwrap_or_default();
        if event["type"].as_i64() == Some(start) && url.starts_with("http://127.") {
            let request = Request {
                url: url.to_owned(),
                status_line: None,
                net_error: 0,
            };
            requests.push((event["source"]["id"].as_i64().unwrap_or(-1), request));
        }
    }
    for event in events {
        let source = event["source"]["id"].as_i64().unwrap_or(-2);
        let Some((_, request)) = requests.iter_mut().find(|(id, _)| *id == source) else {
            continue;
        };
        if let Some(error) = event["params"]["net_error"].as_i64() {
            request.net_error = request.net_error.min(error);
        }
        if event["type"].as_i64() == Some(headers) {
            let first = event["params"]["headers"][0].as_str().map(str::to_owned);
            request.status_line = first;
        }
    }
    requests.into_iter().map(|(_, r)| r).collect()
}
