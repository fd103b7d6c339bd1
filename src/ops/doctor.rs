//! `regcache doctor`: walks, for each upstream, the path a pull takes and says
//! where it breaks: the name resolved (or left to the proxy), `/v2/` answered,
//! the token service, a probe image's manifest, and the first byte of one of
//! its blobs through every redirect. Each hop is printed with its status, time
//! and TLS issuer; then the egress allowlist (every `host:port` touched, and a
//! squid `acl` line) and, on failure, a diagnosis in plain words.
//!
//! It reads the configuration only (no data directory), reads at most one byte
//! of a blob, and never prints a query string, token or password.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;

use crate::config::{Config, ProxySource, UpstreamConfig};
use crate::oci::{Digest, Reference, RepoName};
use crate::upstream::{HopRecord, PROBE_TIMEOUT, Upstream};

/// What `doctor` should look at.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Only this upstream (a name or alias).
    pub upstream: Option<String>,
    /// `repository:tag` to probe instead of each upstream's `probe_image`.
    pub image: Option<String>,
    pub json: bool,
}

/// One upstream's findings.
#[derive(Debug, Serialize)]
pub struct UpstreamReport {
    pub name: String,
    pub url: String,
    pub proxy: String,
    pub steps: Vec<Step>,
    /// Every `host:port` the probes touched.
    pub hosts: Vec<String>,
    /// Why it fails, in plain words; None when every step passed.
    pub diagnosis: Option<String>,
}

/// One step and the hops it sent.
#[derive(Debug, Serialize)]
pub struct Step {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    pub millis: f64,
    pub hops: Vec<HopRecord>,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub upstreams: Vec<UpstreamReport>,
    /// `host:port` of every upstream, sorted, for a firewall.
    pub allowlist: Vec<String>,
    /// The same hosts as a squid ACL.
    pub squid_acl: String,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.upstreams.iter().any(|u| u.diagnosis.is_some())
    }
}

/// Probes the configured upstreams and prints the report to `out`.
pub async fn run(
    config: &Config,
    options: &Options,
    out: &mut dyn Write,
) -> anyhow::Result<Report> {
    let chosen: Vec<&UpstreamConfig> = config
        .upstreams
        .iter()
        .filter(|u| options.upstream.as_deref().is_none_or(|n| u.answers_to(n)))
        .collect();
    if chosen.is_empty() {
        anyhow::bail!("no upstream named {:?} is configured", options.upstream);
    }
    let mut upstreams = Vec::new();
    for upstream in chosen {
        upstreams.push(probe(upstream, options.image.as_deref()).await?);
    }
    let allowlist: BTreeSet<String> = upstreams.iter().flat_map(|u| u.hosts.clone()).collect();
    let hosts: BTreeSet<&str> = allowlist
        .iter()
        .map(|hp| hp.rsplit_once(':').map_or(hp.as_str(), |(h, _)| h))
        .collect();
    let squid_acl = format!(
        "acl regcache_egress dstdomain {}",
        hosts.into_iter().collect::<Vec<_>>().join(" ")
    );
    let report = Report {
        upstreams,
        allowlist: allowlist.into_iter().collect(),
        squid_acl,
    };
    if options.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        print_text(&report, out)?;
    }
    out.flush()?;
    Ok(report)
}

/// The steps for one upstream, stopping at the first that fails.
async fn probe(config: &UpstreamConfig, image: Option<&str>) -> anyhow::Result<UpstreamReport> {
    let upstream = Upstream::traced(config).with_context(|| format!("upstream {}", config.name))?;
    let proxy = describe_proxy(config);
    let mut steps = Vec::new();
    let mut diagnosis = None;
    let probe_image = image
        .map(str::to_owned)
        .or_else(|| config.probe_image.clone());
    let mut walk = Walk {
        upstream: &upstream,
        steps: &mut steps,
    };
    let outcome = async {
        walk.resolve(config).await?;
        let challenge = walk.ping().await?;
        if let Some(challenge) = challenge {
            walk.token(&challenge).await?;
        }
        if let Some(image) = &probe_image {
            let (repo, reference) = parse_image(image)?;
            let digest = walk.manifest(&repo, &reference).await?;
            walk.blob(&repo, &digest).await?;
        }
        Ok::<(), String>(())
    }
    .await;
    if let Err(why) = outcome {
        diagnosis = Some(why);
    } else if probe_image.is_none() {
        steps.push(Step {
            name: "image".into(),
            ok: true,
            detail: "skipped: no probe_image for this upstream (give --image REPO:TAG)".into(),
            millis: 0.0,
            hops: Vec::new(),
        });
    }
    let hosts: BTreeSet<String> = steps
        .iter()
        .flat_map(|s| s.hops.iter().map(|h| h.host_port.clone()))
        .collect();
    Ok(UpstreamReport {
        name: config.name.clone(),
        url: config.url.to_string(),
        proxy,
        steps,
        hosts: hosts.into_iter().collect(),
        diagnosis,
    })
}

/// The steps taken so far, each with the hops it sent.
struct Walk<'a> {
    upstream: &'a Upstream,
    steps: &'a mut Vec<Step>,
}

impl Walk<'_> {
    fn push(
        &mut self,
        name: &str,
        started: Instant,
        result: Result<String, String>,
    ) -> Result<(), String> {
        let hops = self.upstream.take_hops();
        let (ok, detail) = match &result {
            Ok(detail) => (true, detail.clone()),
            Err(why) => (false, why.clone()),
        };
        self.steps.push(Step {
            name: name.into(),
            ok,
            detail,
            millis: started.elapsed().as_secs_f64() * 1000.0,
            hops,
        });
        result.map(drop)
    }

    async fn resolve(&mut self, config: &UpstreamConfig) -> Result<(), String> {
        let started = Instant::now();
        let host = config.url.host_str().unwrap_or_default().to_owned();
        let port = config.url.port_or_known_default().unwrap_or(443);
        if config
            .egress
            .proxy
            .for_scheme(config.url.scheme())
            .is_some()
        {
            let detail = format!("{host}: left to the proxy");
            return self.push("resolve", started, Ok(detail));
        }
        let result = match timed(tokio::net::lookup_host((host.as_str(), port))).await {
            Ok(Ok(addrs)) => {
                let addrs: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                Ok(format!("{host}: {}", addrs.join(", ")))
            }
            Ok(Err(e)) => Err(format!("DNS lookup of {host} failed: {e}")),
            Err(e) => Err(e),
        };
        self.push("resolve", started, result)
    }

    /// `/v2/`; returns the challenge of a 401.
    async fn ping(&mut self) -> Result<Option<String>, String> {
        let started = Instant::now();
        let (status, challenge) = match timed(self.upstream.ping())
            .await
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            Ok(answer) => answer,
            Err(why) => return self.push("ping /v2/", started, Err(why)).map(|()| None),
        };
        let result = match status.as_u16() {
            200 => Ok("200: no authentication needed".to_owned()),
            401 => Ok(format!(
                "401 with challenge {}",
                challenge.as_deref().unwrap_or("(none)")
            )),
            other => Err(format!("/v2/ answered {other}: not a registry API root")),
        };
        self.push("ping /v2/", started, result)?;
        Ok(challenge.filter(|_| status == 401))
    }

    async fn token(&mut self, challenge: &str) -> Result<(), String> {
        let started = Instant::now();
        let result = match timed(async { self.upstream.probe_token(challenge).await }).await? {
            None => Ok("not a Bearer challenge: credentials go to the registry itself".to_owned()),
            Some(Ok(status)) if status.is_success() => {
                Ok(format!("{status}: anonymous token issued"))
            }
            Some(Ok(status)) => Err(format!("the token service answered {status}")),
            Some(Err(e)) => Err(e.to_string()),
        };
        self.push("token", started, result)
    }

    async fn manifest(&mut self, repo: &RepoName, reference: &Reference) -> Result<Digest, String> {
        let started = Instant::now();
        let outcome = timed(async {
            let mut response = self.upstream.probe_manifest(repo, reference).await?;
            let mut bytes = response.bytes_limited(4 << 20).await?;
            // An index: follow its first manifest to reach a blob.
            if let Some(child) = first_child(&bytes) {
                response = self
                    .upstream
                    .probe_manifest(repo, &Reference::Digest(child))
                    .await?;
                bytes = response.bytes_limited(4 << 20).await?;
            }
            Ok::<_, crate::upstream::Error>(bytes)
        })
        .await
        .and_then(|r| r.map_err(|e| e.to_string()));
        let digest = outcome.and_then(|bytes| {
            some_blob(&bytes).ok_or_else(|| "the manifest names no blob".to_owned())
        });
        let detail = digest
            .as_ref()
            .map(|d| format!("{repo}:{reference} resolved; probing blob {d}"))
            .map_err(Clone::clone);
        self.push("manifest", started, detail)?;
        digest
    }

    async fn blob(&mut self, repo: &RepoName, digest: &Digest) -> Result<(), String> {
        let started = Instant::now();
        let outcome = timed(async {
            let response = self.upstream.blob_first_byte(repo, digest).await?;
            let status = response.status();
            let first = response.bytes_limited(1).await;
            // More than one byte (a server ignoring Range) is still an answer.
            match first {
                Ok(_) | Err(crate::upstream::Error::TooLarge { .. }) => Ok(status),
                Err(e) => Err(e),
            }
        })
        .await
        .and_then(|r| r.map_err(|e| e.to_string()));
        let result = outcome.map(|status| format!("{status}: first byte read"));
        self.push("blob", started, result)
    }
}

async fn timed<T>(future: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(PROBE_TIMEOUT, future)
        .await
        .map_err(|_| format!("no answer within {}s", PROBE_TIMEOUT.as_secs()))
}

fn parse_image(image: &str) -> Result<(RepoName, Reference), String> {
    let (repo, tag) = image
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .unwrap_or((image, "latest"));
    let repo = repo
        .parse()
        .map_err(|e| format!("probe image {image}: {e}"))?;
    let reference = tag
        .parse()
        .map_err(|e| format!("probe image {image}: {e}"))?;
    Ok((repo, reference))
}

/// The first child of an image index.
fn first_child(manifest: &[u8]) -> Option<Digest> {
    let json: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    json["manifests"][0]["digest"].as_str()?.parse().ok()
}

/// A blob an image manifest names: its first layer, else its config.
fn some_blob(manifest: &[u8]) -> Option<Digest> {
    let json: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    let layer = json["layers"][0]["digest"].as_str();
    layer.or(json["config"]["digest"].as_str())?.parse().ok()
}

fn describe_proxy(config: &UpstreamConfig) -> String {
    let p = &config.egress.proxy;
    let https = p.https.as_ref().map(|p| p.url.to_string());
    match (p.source, https) {
        (ProxySource::Disabled, _) => "none (proxy = \"none\")".into(),
        (_, None) => "none (direct)".into(),
        (ProxySource::Config, Some(url)) => format!("{url} (from the configuration)"),
        (ProxySource::Environment, Some(url)) => format!("{url} (from HTTPS_PROXY/ALL_PROXY)"),
    }
}

fn print_text(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    for u in &report.upstreams {
        writeln!(out, "upstream {} ({})", u.name, u.url)?;
        writeln!(out, "  proxy: {}", u.proxy)?;
        for step in &u.steps {
            let mark = if step.ok { "ok  " } else { "FAIL" };
            writeln!(
                out,
                "  {mark} {:<10} {:>8.1} ms  {}",
                step.name, step.millis, step.detail
            )?;
            for hop in &step.hops {
                let status = hop.status.map_or("---".to_owned(), |s| s.to_string());
                write!(
                    out,
                    "         {status} {} {} {:.1} ms",
                    hop.method, hop.url, hop.millis
                )?;
                if let Some(issuer) = &hop.tls_issuer {
                    write!(out, "  TLS issuer: {issuer}")?;
                }
                writeln!(out)?;
            }
        }
        if let Some(diagnosis) = &u.diagnosis {
            writeln!(out, "  diagnosis: {diagnosis}")?;
        }
        writeln!(out)?;
    }
    writeln!(out, "egress allowlist (host:port touched):")?;
    for host in &report.allowlist {
        writeln!(out, "  {host}")?;
    }
    writeln!(out, "squid:")?;
    writeln!(out, "  {}", report.squid_acl)?;
    Ok(())
}
