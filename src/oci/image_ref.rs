//! Image references as people write them in manifests, charts and Dockerfiles
//! (`k8s.gcr.io/pause:3.9`, `nginx`, `ghcr.io/a/b@sha256:…`), by Docker's
//! reference grammar: an optional registry host (a first component with a `.`
//! or a `:port`, or `localhost`), a repository name, an optional tag and an
//! optional digest. Without a host the registry is Docker Hub, whose
//! one-component names live under `library/`.
//!
//! Also home of the Docker Hub rules the route table applies to requests
//! (`looks_like_host`, `docker_hub_name`), so both read names the same way.
//! Pure: no I/O.

use std::fmt;
use std::str::FromStr;

use super::{Digest, RepoName, Tag};

/// The hosts Docker Hub answers to; the first is its canonical name.
pub const DOCKER_HUB_HOSTS: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// Docker's rule for the first component of an image reference: a registry
/// host has a `.` or a `:port` (which a repository name cannot hold) or is
/// `localhost`.
pub fn looks_like_host(component: &str) -> bool {
    component.contains(['.', ':']) || component == "localhost"
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("empty image reference")]
    Empty,
    #[error("invalid registry host {0:?}")]
    Host(String),
    #[error(transparent)]
    Name(#[from] super::NameError),
    #[error(transparent)]
    Tag(#[from] super::TagError),
    #[error(transparent)]
    Digest(#[from] super::DigestError),
}

/// A parsed image reference. `host` is as written when the text named one
/// (`host_written`), else `docker.io`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub host: String,
    pub repo: RepoName,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
    /// Whether the text began with `host` (so `text[..host.len()]` is the host).
    pub host_written: bool,
}

impl ImageRef {
    /// The registry under its canonical name (any Docker Hub host is `docker.io`).
    pub fn registry(&self) -> &str {
        if DOCKER_HUB_HOSTS.contains(&self.host.as_str()) {
            DOCKER_HUB_HOSTS[0]
        } else {
            &self.host
        }
    }

    /// The repository as the registry knows it (`library/` added on Docker Hub).
    pub fn repository(&self) -> RepoName {
        if self.registry() == DOCKER_HUB_HOSTS[0] {
            self.repo.clone().in_docker_hub()
        } else {
            self.repo.clone()
        }
    }

    /// `registry/repository` followed by `:tag` and/or `@digest`, `:latest`
    /// when the text had neither: one spelling per image.
    pub fn normalized(&self) -> String {
        let mut out = format!("{}/{}", self.registry(), self.repository());
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag.as_str());
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(&digest.to_string());
        }
        if self.tag.is_none() && self.digest.is_none() {
            out.push_str(":latest");
        }
        out
    }
}

impl FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(ImageRefError::Empty);
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest.parse::<Digest>()?)),
            None => (text, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].parse::<Tag>()?),
            ),
            None => (rest, None),
        };
        let (host, repo, host_written) = match name.split_once('/') {
            Some((first, repo)) if looks_like_host(first) => (first, repo, true),
            _ => (DOCKER_HUB_HOSTS[0], name, false),
        };
        if !valid_host(host) {
            return Err(ImageRefError::Host(host.to_owned()));
        }
        let image = Self {
            host: host.to_owned(),
            repo: repo.parse()?,
            tag,
            digest,
            host_written,
        };
        // Docker Hub's `library/` counts toward the name's 255 characters, as
        // in Docker's own grammar, so that the normalized form (`scan --list`
        // output, prefetch and pin input) parses again. Found by fuzzing.
        image.repository().as_str().parse::<RepoName>()?;
        Ok(image)
    }
}

/// `domain(:port)?` with letters, digits, `-` and `.`, or a bracketed IPv6 address.
fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') && !port.contains(']') => (name, Some(port)),
        _ => (host, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = if let Some(ip) = name.strip_prefix('[') {
        ip.strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    port_ok && name_ok
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.normalized())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(text: &str) -> String {
        text.parse::<ImageRef>()
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .normalized()
    }

    #[test]
    fn a_docker_hub_name_counts_library_toward_its_length() {
        let longest = "a".repeat(255 - "library/".len());
        assert_eq!(
            norm(&longest),
            format!("docker.io/library/{longest}:latest")
        );
        let too_long = format!("{longest}b");
        assert!(too_long.parse::<ImageRef>().is_err());
        assert!(format!("quay.io/{too_long}").parse::<ImageRef>().is_ok());
    }

    #[test]
    fn docker_hub_is_the_default_registry_with_library() {
        assert_eq!(norm("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(norm("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(norm("docker.io/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(
            norm("index.docker.io/library/nginx:1"),
            "docker.io/library/nginx:1"
        );
    }

    #[test]
    fn hosts_ports_tags_and_digests() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(norm("k8s.gcr.io/pause:3.9"), "k8s.gcr.io/pause:3.9");
        assert_eq!(
            norm("localhost:5000/a/b:1"),
            "localhost:5000/a/b:1",
            "a port is not a tag"
        );
        assert_eq!(norm("localhost/a"), "localhost/a:latest");
        assert_eq!(
            norm(&format!("registry.k8s.io/pause@{digest}")),
            format!("registry.k8s.io/pause@{digest}")
        );
        assert_eq!(
            norm(&format!("ghcr.io/a/b:v1@{digest}")),
            format!("ghcr.io/a/b:v1@{digest}")
        );
        assert_eq!(norm("[::1]:5000/x:1"), "[::1]:5000/x:1");
        let r: ImageRef = "k8s.gcr.io/ingress-nginx/controller:v1.1.0"
            .parse()
            .unwrap();
        assert!(r.host_written);
        assert_eq!(r.host, "k8s.gcr.io");
        assert!(!"pause:3.9".parse::<ImageRef>().unwrap().host_written);
    }

    #[test]
    fn rejects_what_no_client_would_pull() {
        for bad in [
            "",
            "Nginx",
            "a b",
            "k8s.gcr.io/",
            "k8s.gcr.io/pause:",
            "k8s.gcr.io/pause@sha256:12",
            "bad_host.io/x",
            "host:port/x",
            "{{ .Values.image }}",
            "$IMAGE",
        ] {
            assert!(
                bad.parse::<ImageRef>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn host_rule_is_dockers() {
        assert!(looks_like_host("k8s.gcr.io"));
        assert!(looks_like_host("localhost"));
        assert!(looks_like_host("myhost:5000"));
        assert!(!looks_like_host("library"));
        assert_eq!(crate::oci::docker_hub_name("alpine"), "library/alpine");
    }
}
