//! `regcache pin ls|add|rm`, and the pins `prefetch --pin` adds: runtime pins,
//! kept in the index beside the configured `storage.pins`. With a server
//! running on the data directory every change goes through its admin socket
//! ([`super::admin`]): it parses patterns with its own configuration and
//! writes its own index. Without one, the index is written directly and the
//! server reads the pins when it starts. Eviction reads them at every pass.
//!
//! Configured pins are listed as such and are never removed here (they come
//! back with the configuration); it never touches content, only pin rows.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use url::Url;

use super::admin::{self, Answer, Request};
use super::format::{Table, age, human_size};
use crate::config::Config;
use crate::evict::{Pin, Pins};
use crate::index::{Access, Index};
use crate::oci::ImageRef;
use crate::store::Store;

/// Where a pin comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinSource {
    /// `storage.pins`: removed only by editing the configuration.
    Config,
    /// The index: `regcache pin add`, `prefetch --pin`; `pin rm` removes it.
    Runtime,
}

/// One pin as `pin ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinEntry {
    /// Canonical: the upstream's configured name, Docker Hub's `library/`.
    pub pattern: String,
    pub source: PinSource,
    /// Who added a runtime pin (`pin add`, `prefetch`).
    pub origin: Option<String>,
    /// When a runtime pin was added (unix seconds).
    pub created_at: Option<i64>,
    /// Committed bytes it protects now.
    pub bytes: u64,
}

/// What `add` or `remove` did to one pattern.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinChange {
    /// The canonical pattern.
    pub pattern: String,
    /// `add`: it is new; `remove`: it was there and is gone.
    pub changed: bool,
}

/// The runtime pins of one data directory, on the server's side or the files'.
#[derive(Clone, Debug)]
pub struct Pinboard {
    config: Config,
    index: Index,
    store: Store,
}

impl Pinboard {
    /// The pins in `index` and `store`, with `config`'s upstreams and pins.
    pub fn new(config: Config, index: Index, store: Store) -> Self {
        Self {
            config,
            index,
            store,
        }
    }

    fn configured(&self) -> &Pins {
        &self.config.eviction.pins
    }

    /// Every configured pin, then every runtime pin, with the bytes each covers.
    pub async fn list(&self) -> anyhow::Result<Vec<PinEntry>> {
        let mut entries = Vec::new();
        for pin in self.configured().iter() {
            entries.push(PinEntry {
                pattern: pin.to_string(),
                source: PinSource::Config,
                origin: None,
                created_at: None,
                bytes: self.bytes_of(pin).await?,
            });
        }
        for row in self.index.pins().await? {
            let pin = Pin::parse(&row.pattern, |upstream| Some(upstream.to_owned()));
            let bytes = match &pin {
                Ok(pin) => self.bytes_of(pin).await?,
                Err(_) => 0,
            };
            entries.push(PinEntry {
                pattern: row.pattern,
                source: PinSource::Runtime,
                origin: Some(row.origin),
                created_at: Some(row.created_at),
                bytes,
            });
        }
        Ok(entries)
    }

    async fn bytes_of(&self, pin: &Pin) -> anyhow::Result<u64> {
        let one = Pins::new(vec![pin.clone()]);
        Ok(crate::evict::pinned_bytes(&self.index, &self.store, &one).await?)
    }

    /// Adds `patterns` (all of them, or none if one does not parse).
    pub async fn add(&self, patterns: &[String], origin: &str) -> anyhow::Result<Vec<PinChange>> {
        let canonical = self.parse_all(patterns)?;
        let added = self.index.add_pins(canonical.clone(), origin).await?;
        for (pattern, new) in canonical.iter().zip(&added) {
            if *new {
                tracing::info!(pattern, origin, "pin added");
            }
        }
        Ok(changes(canonical, added))
    }

    /// Removes `patterns` (all of them, or none if one is a configured pin or
    /// no pin at all).
    pub async fn remove(&self, patterns: &[String]) -> anyhow::Result<Vec<PinChange>> {
        let stored: Vec<String> = self
            .index
            .pins()
            .await?
            .into_iter()
            .map(|r| r.pattern)
            .collect();
        let mut canonical = Vec::new();
        let mut problems = Vec::new();
        for text in patterns {
            // A stored pattern whose upstream left the configuration still goes.
            let pattern = match self.config.parse_pin(text) {
                Ok(pin) => pin.to_string(),
                Err(_) if stored.contains(text) => text.clone(),
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            if self.configured().iter().any(|p| p.to_string() == pattern) {
                problems.push(format!(
                    "{pattern} is a configured pin (storage.pins): remove it from the configuration"
                ));
            } else if !stored.contains(&pattern) {
                problems.push(format!("{pattern} is not pinned (see `regcache pin ls`)"));
            } else {
                canonical.push(pattern);
            }
        }
        if !problems.is_empty() {
            bail!("nothing removed: {}", problems.join("; "));
        }
        let removed = self.index.remove_pins(canonical.clone()).await?;
        for pattern in &canonical {
            tracing::info!(pattern, "pin removed");
        }
        Ok(changes(canonical, removed))
    }

    fn parse_all(&self, patterns: &[String]) -> anyhow::Result<Vec<String>> {
        let (pins, errors): (Vec<_>, Vec<_>) = patterns
            .iter()
            .map(|text| self.config.parse_pin(text))
            .partition(Result::is_ok);
        if !errors.is_empty() {
            let errors: Vec<String> = errors.into_iter().filter_map(Result::err).collect();
            bail!("nothing pinned: {}", errors.join("; "));
        }
        Ok(pins
            .into_iter()
            .filter_map(Result::ok)
            .map(|p| p.to_string())
            .collect())
    }
}

fn changes(patterns: Vec<String>, changed: Vec<bool>) -> Vec<PinChange> {
    patterns
        .into_iter()
        .zip(changed)
        .map(|(pattern, changed)| PinChange { pattern, changed })
        .collect()
}

/// Where an operator command's pin changes go.
#[derive(Clone, Debug)]
pub enum Target {
    /// The server running on the data directory, through its admin socket.
    Server(std::path::PathBuf),
    /// No server runs there: the index itself.
    Files(Box<Pinboard>),
}

impl Target {
    /// The running server if one answers on `config.data_dir`'s admin
    /// socket, else the index there (which must exist).
    pub async fn open(config: &Config) -> anyhow::Result<Target> {
        let data_dir = &config.data_dir;
        if admin::ask(data_dir, &Request::PinList).await?.is_some() {
            return Ok(Target::Server(data_dir.clone()));
        }
        let index = super::open_index(data_dir, Access::ReadWrite)?;
        let store = super::attach_store(data_dir)?;
        Ok(Target::Files(Box::new(Pinboard::new(
            config.clone(),
            index,
            store,
        ))))
    }

    /// Where the answer came from, for the operator.
    fn whose(&self, pid: Option<u32>) -> String {
        match (self, pid) {
            (Target::Server(_), Some(pid)) => format!("the running server, pid {pid}"),
            _ => "the files (no server running; it reads them when it starts)".to_owned(),
        }
    }
}

/// Asks the server on `data_dir`; its refusal is an error.
async fn ask(data_dir: &std::path::Path, request: Request) -> anyhow::Result<Answer> {
    match admin::ask(data_dir, &request).await? {
        Some(Answer::Error(message)) => bail!("the running server: {message}"),
        Some(answer) => Ok(answer),
        None => bail!(
            "the server on {} stopped answering; try again",
            data_dir.display()
        ),
    }
}

impl Target {
    /// Every pin, and the pid of the server that answered.
    pub async fn list(&self) -> anyhow::Result<(Vec<PinEntry>, Option<u32>)> {
        match self {
            Target::Files(board) => Ok((board.list().await?, None)),
            Target::Server(data_dir) => match ask(data_dir, Request::PinList).await? {
                Answer::Pins { pid, pins } => Ok((pins, Some(pid))),
                other => bail!("unexpected answer {other:?}"),
            },
        }
    }

    /// Adds `patterns`; see [`Pinboard::add`].
    pub async fn add(
        &self,
        patterns: &[String],
        origin: &str,
    ) -> anyhow::Result<(Vec<PinChange>, Option<u32>)> {
        match self {
            Target::Files(board) => Ok((board.add(patterns, origin).await?, None)),
            Target::Server(data_dir) => {
                let request = Request::PinAdd {
                    patterns: patterns.to_vec(),
                    origin: origin.to_owned(),
                };
                changes_from(ask(data_dir, request).await?)
            }
        }
    }

    /// Removes `patterns`; see [`Pinboard::remove`].
    pub async fn remove(
        &self,
        patterns: &[String],
    ) -> anyhow::Result<(Vec<PinChange>, Option<u32>)> {
        match self {
            Target::Files(board) => Ok((board.remove(patterns).await?, None)),
            Target::Server(data_dir) => {
                let request = Request::PinRemove {
                    patterns: patterns.to_vec(),
                };
                changes_from(ask(data_dir, request).await?)
            }
        }
    }
}

fn changes_from(answer: Answer) -> anyhow::Result<(Vec<PinChange>, Option<u32>)> {
    match answer {
        Answer::PinChanges { pid, changes } => Ok((changes, Some(pid))),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// The server's side of the admin socket's pin requests.
pub(super) async fn answer(board: &Pinboard, request: Request) -> Answer {
    let pid = std::process::id();
    let result = match request {
        Request::PinList => board.list().await.map(|pins| Answer::Pins { pid, pins }),
        Request::PinAdd { patterns, origin } => board
            .add(&patterns, &origin)
            .await
            .map(|changes| Answer::PinChanges { pid, changes }),
        Request::PinRemove { patterns } => board
            .remove(&patterns)
            .await
            .map(|changes| Answer::PinChanges { pid, changes }),
        Request::Gc { .. } => Err(anyhow::anyhow!("not a pin request")),
    };
    result.unwrap_or_else(|e| Answer::Error(format!("{e:#}")))
}

/// `regcache pin ls`: every pin, configured and runtime, with the bytes it covers.
pub async fn ls(config: &Config, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let target = Target::open(config).await?;
    let (pins, pid) = target.list().await?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &pins)?;
        out.write_all(b"\n")?;
        return Ok(out.flush()?);
    }
    let now = SystemTime::now();
    let mut table = Table::new(&[
        ("PATTERN", false),
        ("SOURCE", false),
        ("ADDED BY", false),
        ("ADDED", false),
        ("PINNED", true),
    ]);
    for pin in &pins {
        let (source, by) = match pin.source {
            PinSource::Config => ("config", "storage.pins".to_owned()),
            PinSource::Runtime => ("runtime", pin.origin.clone().unwrap_or_default()),
        };
        let added = pin.created_at.map_or_else(
            || "-".to_owned(),
            |at| {
                age(
                    now,
                    UNIX_EPOCH + Duration::from_secs(u64::try_from(at).unwrap_or(0)),
                )
            },
        );
        table.push(vec![
            pin.pattern.clone(),
            source.to_owned(),
            by,
            added,
            human_size(pin.bytes),
        ]);
    }
    if table.is_empty() {
        writeln!(out, "no pins")?;
    } else {
        table.write(out)?;
    }
    writeln!(out, "from {}", target.whose(pid))?;
    Ok(out.flush()?)
}

/// `regcache pin add PATTERN...`.
pub async fn add(config: &Config, patterns: &[String], out: &mut dyn Write) -> anyhow::Result<()> {
    let target = Target::open(config).await?;
    let (changes, pid) = target.add(patterns, "pin add").await?;
    for change in &changes {
        let what = if change.changed {
            "pinned"
        } else {
            "already pinned"
        };
        writeln!(out, "{what} {}", change.pattern)?;
    }
    writeln!(out, "recorded by {}", target.whose(pid))?;
    Ok(out.flush()?)
}

/// `regcache pin rm PATTERN...`.
pub async fn rm(config: &Config, patterns: &[String], out: &mut dyn Write) -> anyhow::Result<()> {
    let target = Target::open(config).await?;
    let (changes, pid) = target.remove(patterns).await?;
    for change in &changes {
        writeln!(out, "unpinned {}", change.pattern)?;
    }
    writeln!(
        out,
        "recorded by {}; the content is evictable from the next eviction pass",
        target.whose(pid)
    )?;
    Ok(out.flush()?)
}

/// The exact pin of an image as `prefetch` names it: `<registry>/<repository>`
/// with `@<digest>` when it has one, else `:<tag>` (`:latest` without).
pub fn exact_pattern(image: &ImageRef) -> String {
    let base = format!("{}/{}", image.registry(), image.repository());
    match (&image.digest, &image.tag) {
        (Some(digest), _) => format!("{base}@{digest}"),
        (None, Some(tag)) => format!("{base}:{tag}"),
        (None, None) => format!("{base}:latest"),
    }
}

/// Where `prefetch --pin` records its pins, decided before anything is
/// pulled. `data_given`: whether `--data` was passed; without it the server
/// must be on this machine (its data directory is then the configuration's).
pub async fn for_prefetch(
    config: &Config,
    data_given: bool,
    server: &Url,
) -> anyhow::Result<Target> {
    if !data_given && !is_local(server) {
        bail!(
            "--pin records pins in the data directory of the regcache at {server}, which is \
             not on this machine: pass --data DIR (that server's data directory, on a machine \
             that has it), or prefetch without --pin and run `regcache pin add` where it runs"
        );
    }
    Target::open(config).await.with_context(|| {
        format!(
            "--pin: no pins can be recorded in {} (pass --data DIR, the data directory of the \
             regcache at {server})",
            config.data_dir.display()
        )
    })
}

/// Whether `url` names this machine (loopback address or `localhost`).
fn is_local(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_is_pinned_by_digest_else_by_tag() {
        let pattern = |text: &str| exact_pattern(&text.parse().unwrap());
        assert_eq!(pattern("k8s.gcr.io/pause:3.9"), "k8s.gcr.io/pause:3.9");
        assert_eq!(pattern("nginx"), "docker.io/library/nginx:latest");
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            pattern(&format!("registry.k8s.io/pause:3.9@{digest}")),
            format!("registry.k8s.io/pause@{digest}")
        );
    }

    #[test]
    fn only_loopback_servers_are_local() {
        for local in [
            "http://127.0.0.1:5000",
            "http://localhost:5000",
            "http://[::1]:5000",
        ] {
            assert!(is_local(&local.parse().unwrap()), "{local}");
        }
        for remote in ["http://192.0.2.1:5000", "https://mirror.example:5000"] {
            assert!(!is_local(&remote.parse().unwrap()), "{remote}");
        }
    }
}
