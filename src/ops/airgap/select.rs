//! Which tagged images `export` takes: patterns in the pin syntax
//! (`<upstream>/<repo glob>[:<tag glob>]`, parsed by `evict::Pin::parse`),
//! none meaning every tag. Matching only.

use crate::config::Config;
use crate::evict::Pin;
use crate::index::TagLink;

/// Parses `patterns`, resolving upstream names and aliases as pins do.
pub(super) fn parse(patterns: &[String], config: &Config) -> anyhow::Result<Vec<Pin>> {
    let resolve = |host: &str| {
        config
            .upstreams
            .iter()
            .find(|u| u.answers_to(host))
            .map(|u| u.name.clone())
    };
    patterns
        .iter()
        .map(|p| {
            let pin = Pin::parse(p, resolve).map_err(|e| anyhow::anyhow!("pattern {e}"))?;
            // Export selects tags (it names images by them); a digest selects none.
            if pin.digest.is_some() {
                anyhow::bail!("pattern {p:?}: export selects tags, not digests");
            }
            Ok(pin)
        })
        .collect()
}

/// Whether `tag` is selected by `patterns` (all tags when there are none).
pub(super) fn selects(patterns: &[Pin], tag: &TagLink) -> bool {
    patterns.is_empty()
        || patterns
            .iter()
            .any(|p| p.selects_tag(&tag.upstream, &tag.repo, &tag.tag))
}
