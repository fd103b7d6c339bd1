//! The route table: which configured upstream a request goes to, and the
//! repository name to ask it for. In order: containerd's `ns` query parameter;
//! else a first path component that names a configured upstream or alias
//! (`/v2/docker.io/library/alpine/...`, the form CRI-O, podman and k3s mirrors
//! with a path send), which is stripped; else the default upstream. Docker Hub
//! gets `library/` before one-component names, as every Docker client assumes.
//!
//! The table is closed: it never yields an upstream that is not configured. An
//! unknown `ns`, or a first component that can only be a registry host (it has
//! a `.` or is `localhost`, as Docker's reference grammar decides) naming none
//! of ours, is an error, and no connection is attempted anywhere.

use std::time::Duration;

use super::Error;
use super::local::UpstreamKey;
use crate::config::UpstreamConfig;
use crate::oci::{Digest, RepoName, looks_like_host};
use crate::upstream::Upstream;

/// One configured upstream and its client. Cheap enough to clone for a fill.
#[derive(Debug, Clone)]
pub struct Route {
    /// How the local side names this upstream (its position in the
    /// configuration, stable for the life of the process, and its name).
    pub(super) key: UpstreamKey,
    pub(super) config: UpstreamConfig,
    pub(super) client: Upstream,
}

impl Route {
    /// The upstream's name (the registry host clients use).
    pub fn name(&self) -> &str {
        &self.key.name
    }

    pub(super) fn tag_ttl(&self) -> Duration {
        self.config.tag_ttl
    }

    /// How long a background revalidation of a tag may wait for the upstream.
    pub(super) fn revalidate_timeout(&self) -> Duration {
        self.config.revalidate_timeout
    }

    /// GET or HEAD of a blob from this upstream, its 404 as `BlobUnknown`.
    pub(super) async fn fetch_blob(
        &self,
        method: http::Method,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<crate::upstream::Response, Error> {
        self.client
            .blob(method, repo, digest, None)
            .await
            .map_err(|e| Error::from_upstream(self.name(), e, Error::BlobUnknown))
    }
}

/// A request's upstream and the repository name it has there.
#[derive(Debug)]
pub struct Routed<'a> {
    pub route: &'a Route,
    pub repo: RepoName,
}

/// Every configured upstream; exactly one is the default.
#[derive(Debug)]
pub(super) struct Routes(Vec<Route>);

impl Routes {
    pub(super) fn all(&self) -> &[Route] {
        &self.0
    }

    /// A route, with its client, for every configured upstream.
    pub(super) fn new(upstreams: &[UpstreamConfig]) -> Result<Self, crate::upstream::Error> {
        assert!(
            !upstreams.is_empty(),
            "configuration guarantees an upstream"
        );
        let routes = upstreams
            .iter()
            .enumerate()
            .map(|(id, config)| {
                Ok(Route {
                    key: UpstreamKey {
                        id,
                        name: config.name.clone(),
                    },
                    config: config.clone(),
                    client: Upstream::new(config)?,
                })
            })
            .collect::<Result<_, crate::upstream::Error>>()?;
        Ok(Self(routes))
    }

    /// Routes a request for `name`, sent with `ns` if the client gave one.
    pub(super) fn resolve(&self, ns: Option<&str>, name: &RepoName) -> Result<Routed<'_>, Error> {
        let by_ns = ns
            .map(|ns| {
                self.named(ns)
                    .ok_or_else(|| Error::UnknownNamespace(ns.to_owned()))
            })
            .transpose()?;
        let prefixed = split_prefix(name);
        let by_path = prefixed
            .as_ref()
            .and_then(|(first, rest)| Some((self.named(first)?, rest.clone())));
        let (route, repo) = match (by_ns, by_path) {
            // containerd with `override_path`: the path repeats the `ns` host.
            (Some(route), Some((named, rest))) if named.key == route.key => (route, rest),
            (Some(route), _) => (route, name.clone()),
            (None, Some((route, rest))) => (route, rest),
            (None, None) => match &prefixed {
                Some((first, _)) if looks_like_host(first) => {
                    return Err(Error::UnknownNamespace((*first).to_owned()));
                }
                _ => (self.default(), name.clone()),
            },
        };
        let repo = if route.config.is_docker_hub() {
            repo.in_docker_hub()
        } else {
            repo
        };
        Ok(Routed { route, repo })
    }

    /// The upstream whose name or alias is `host`.
    pub(super) fn named(&self, host: &str) -> Option<&Route> {
        self.0.iter().find(|r| r.config.answers_to(host))
    }

    pub(super) fn default(&self) -> &Route {
        self.0
            .iter()
            .find(|r| r.config.default)
            .unwrap_or(&self.0[0])
    }
}

/// `first/rest...` → `(first, rest)`; `None` for a one-component name.
fn split_prefix(name: &RepoName) -> Option<(&str, RepoName)> {
    let (first, rest) = name.as_str().split_once('/')?;
    // A suffix of a valid name is a valid name.
    Some((first, rest.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Overrides, load};

    const TOML: &str = r#"
        [server]
        listen = "127.0.0.1:0"
        [storage]
        data_dir = "unused"
        [[upstream]]
        name = "registry.k8s.io"
        url = "https://registry.k8s.io"
        aliases = ["k8s.gcr.io"]
        default = true
        [[upstream]]
        name = "docker.io"
        url = "https://registry-1.docker.io"
        [[upstream]]
        name = "ghcr.io"
        url = "https://ghcr.io"
    "#;

    fn routes() -> Routes {
        let config = load(
            TOML,
            "test",
            &Overrides::default(),
            &crate::config::ProcessSecrets,
        )
        .expect("valid configuration");
        Routes::new(&config.upstreams).expect("clients")
    }

    /// `(upstream name, repository)` for a request, or the error's text.
    fn resolve(routes: &Routes, ns: Option<&str>, name: &str) -> Result<(String, String), String> {
        routes
            .resolve(ns, &name.parse().unwrap())
            .map(|r| (r.route.name().to_owned(), r.repo.as_str().to_owned()))
            .map_err(|e| e.to_string())
    }

    fn ok(upstream: &str, repo: &str) -> Result<(String, String), String> {
        Ok((upstream.to_owned(), repo.to_owned()))
    }

    #[test]
    fn ns_routes_first_and_the_default_takes_the_rest() {
        let r = routes();
        assert_eq!(resolve(&r, Some("ghcr.io"), "a/b"), ok("ghcr.io", "a/b"));
        assert_eq!(
            resolve(&r, Some("k8s.gcr.io"), "pause"),
            ok("registry.k8s.io", "pause")
        );
        assert_eq!(resolve(&r, None, "pause"), ok("registry.k8s.io", "pause"));
        assert_eq!(
            resolve(&r, None, "coredns/coredns"),
            ok("registry.k8s.io", "coredns/coredns")
        );
    }

    #[test]
    fn a_path_prefix_naming_an_upstream_or_alias_is_stripped() {
        let r = routes();
        assert_eq!(resolve(&r, None, "ghcr.io/a/b"), ok("ghcr.io", "a/b"));
        assert_eq!(
            resolve(&r, None, "k8s.gcr.io/pause"),
            ok("registry.k8s.io", "pause")
        );
        // containerd's override_path: the prefix repeats the ns host.
        assert_eq!(
            resolve(&r, Some("ghcr.io"), "ghcr.io/a/b"),
            ok("ghcr.io", "a/b")
        );
        // A prefix naming another upstream than ns is part of the repository.
        assert_eq!(
            resolve(&r, Some("ghcr.io"), "docker.io/x"),
            ok("ghcr.io", "docker.io/x")
        );
        // A one-component name is a repository, never a prefix.
        assert_eq!(
            resolve(&r, None, "ghcr.io"),
            ok("registry.k8s.io", "ghcr.io")
        );
    }

    #[test]
    fn docker_hub_is_one_upstream_under_three_names_with_library() {
        let r = routes();
        for host in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(
                resolve(&r, Some(host), "alpine"),
                ok("docker.io", "library/alpine"),
                "ns={host}"
            );
            assert_eq!(
                resolve(&r, None, &format!("{host}/alpine")),
                ok("docker.io", "library/alpine"),
                "prefix {host}"
            );
        }
        assert_eq!(
            resolve(&r, None, "docker.io/library/alpine"),
            ok("docker.io", "library/alpine")
        );
        assert_eq!(
            resolve(&r, Some("docker.io"), "bitnami/redis"),
            ok("docker.io", "bitnami/redis")
        );
        // Other registries get no library/.
        assert_eq!(
            resolve(&r, Some("ghcr.io"), "alpine"),
            ok("ghcr.io", "alpine")
        );
    }

    #[test]
    fn the_table_is_closed() {
        let r = routes();
        let unknown = |result: Result<(String, String), String>, host: &str| {
            let message = result.unwrap_err();
            assert!(message.contains(host), "{message}");
        };
        unknown(resolve(&r, Some("quay.io"), "a/b"), "quay.io");
        unknown(resolve(&r, Some(""), "a/b"), "\"\"");
        unknown(resolve(&r, None, "quay.io/a/b"), "quay.io");
        unknown(resolve(&r, None, "localhost/a"), "localhost");
        // With ns, a dotted first component is just part of the name.
        assert_eq!(
            resolve(&r, Some("ghcr.io"), "quay.io/a"),
            ok("ghcr.io", "quay.io/a")
        );
    }
}
