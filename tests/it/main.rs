//! regcache's integration tests: one binary that starts the real `regcache`
//! executable against in-process fake upstreams and real third-party software.
//! Add new test modules here, one line each with a comment.

/// Air gap: prefetch + export from A, import into an offline B, every client pulls; skopeo layouts; damaged tars.
mod airgap;
/// Bad input, read-only methods, _catalog, tags/list pagination.
mod api;
/// Operator commands beside a running server: `gc` in a loop never aborts a pull; a commit without its row still serves; `stats` shows the server's budget.
mod beside;
/// Client authentication: htpasswd (bcrypt) users, 401 before any upstream request, limits, reload, real clients with credentials.
mod client_auth;
/// Configuration layers through the binary: flags over a partial file, REGCACHE_* variables, `config show` and `config check`.
mod config_cli;
/// Connection hygiene with raw sockets: idle and busy connections past max_connections, half-sent requests, request limits, bounded shutdown, 414/431 bodies.
mod connections;
/// The Kubernetes manifests in deploy/kubernetes/ against the config loader, the Dockerfile and the running binary; `config show` of each ConfigMap.
mod deploy;
/// Disk reality on a small tmpfs (root only): max_size past the disk warned, blobs past the free space passed through, the rest cached.
mod disk;
/// Docker Engine (dockerd) pulling Docker Hub names through regcache as its registry mirror, from docker-registry and the k8s-like fake.
mod docker_engine;
/// `regcache doctor`: the TLS chain through tinyproxy, hops and allowlist; a blocked storage host named.
mod doctor;
/// Disk budget: LRU eviction past max_size, pins, reads during eviction, oversized blobs, batched access times.
mod evict;
/// Fail fast (issue 16): cached tags answer at once whatever the upstream does (hang, 429, HTML 200); circuits; only manifests cached as manifests; fills shared across repositories and upstreams.
mod failfast;
/// Upstream down/500, tag TTL, wrong bytes, cut bodies, crash mid-fill, peak RSS.
mod faults;
/// Single-flight fills and coalescing: herds on a blob or a tag, failed and resumed fills, slow and departed readers, ranges.
mod herd;
/// Blob hits from mapped windows of their file: exact bytes, ranges across windows, HTTP/2, many at once.
mod hit_path;
/// skopeo, containerd and podman pulling through regcache from docker-registry and the k8s-like fake.
mod interop;
/// `/metrics` parsed by a Prometheus parser after a miss, a hit, a herd, a stale answer and an eviction; `stats` agrees; `metrics_listen`.
mod metrics;
/// Operator commands (ls, stats, verify, gc) beside a server; SIGKILL mid-fill and restart.
mod ops;
/// The Dockerfile copies what the build reads; the image runs `serve` unprivileged.
mod packaging;
/// Runtime pins: `prefetch --pin` and `pin add|rm|ls` through the admin socket or the index; pinned images survive a full mirror and restarts.
mod pins;
/// `regcache prefetch` through regcache from the k8s-like fake and docker-registry: blobs fetched once, offline pulls, platforms, failures.
mod prefetch;
/// Pulls through the k8s-like fake: bytes, headers, hits, ranges, streaming, ns.
mod pull;
/// Docker Hub rate limits (issue 17): manifest GETs stop at the reserve or a 429, cached tags served, misses fail fast with Retry-After, resume after the window.
mod rate_limit;
/// Redirect policy: loopback to loopback allowed, redirect_hosts, userinfo in a Location refused.
mod redirects;
/// Referrers for every upstream: the fake's API (passed on, filtered, cached, stale), docker-registry's fallback tag or an empty index, cached manifests naming the subject.
mod referrers;
/// The restricted-sites table: skopeo, podman, containerd × (plain, TLS, TLS + auth) mirror, upstream the TLS chain through tinyproxy.
mod restricted_sites;
/// Fills resumed with a Range request after a cut upstream body; permanent cuts.
mod resume;
/// Several upstreams: ns, path-prefix and default routing, Docker Hub's library/, the closed table, per-upstream tags, health probes.
mod routing;
/// The docs/guides snippets, read from the guides, pulled by containerd, podman and skopeo through one regcache with three upstreams.
mod routing_interop;
/// Scale-out shapes: replicas behind nginx's consistent hash, edge and regional tiers.
mod scaleout;
/// `regcache scan` over the fixture tree: references with lines, --list, --json, exit status, --fix diffs.
mod scan;
/// The background scrub: a flipped byte in a cached blob is removed without an operator and fetched again.
mod scrub;
/// TLS on regcache's listener: h2/h1.1, a mismatched key refused, reloads without dropping connections, skopeo/podman/containerd over TLS.
mod serving_tls;
/// Every error answer against the distribution spec's error-code table (status, code, body; HEAD without a body).
mod spec_errors;
/// The status page in headless Chromium: no failed request, the JSON's numbers, a hostile name escaped, screenshots.
mod status_page;
mod support;
/// Tag TTL: fresh mappings stay local, stale ones are revalidated with a HEAD (same, moved, deleted).
mod tags;
/// Upstream TLS (HTTP/2 and HTTP/1.1, untrusted/wrong-name/expired certificates, mTLS) and a real forward proxy (tinyproxy).
mod tls;
