//! Test support shared by every integration test: the real `regcache` binary
//! started on a loopback port, and the fake upstreams it is pointed at. Nothing
//! here talks to anything but 127.0.0.1, and everything it starts is stopped when
//! its handle drops, on success and on failure.

/// Debian's headless Chromium: a page's DOM, its requests (NetLog), console lines, screenshots.
pub mod chromium;
/// skopeo, containerd (+ ctr) and podman pulling through a regcache mirror.
pub mod clients;
/// Operator commands (`gc`, `stats`, `verify`) run as a second process.
pub mod commands;
/// config.toml texts: one default upstream, or three.
pub mod config;
/// Where a digest's file is committed; what is left in tmp/.
pub mod data_dir;
/// Debian's docker-registry as a real upstream, seeded over its push API.
pub mod docker_registry;
/// Debian's Docker Engine as a private daemon with regcache as its Docker Hub mirror.
pub mod dockerd;
/// A failed test's server logs in files, their tails and the panic message last.
pub mod failure;
/// The in-process registry.k8s.io-like upstream (front 307 → AR 302 → storage) with faults.
pub mod fake;
/// A fault-injecting HTTP proxy in front of docker-registry: hang, HTML 200, 429 with Retry-After.
pub mod fault_proxy;
/// A client for regcache, responses read to their end, OCI error checks, raw requests.
pub mod http;
/// Real tar images for real clients: OCI 3 layers, Docker manifest list, 1 GiB layer.
pub mod images;
/// Debian's nginx in front of regcache replicas, on a generated nginx.conf.
pub mod nginx;
/// Child processes: a free port, output collected into a log, SIGTERM then SIGKILL.
pub mod process;
/// `/metrics` parsed by a Prometheus text-format parser; samples by name and labels.
pub mod prometheus;
/// A front on a chosen loopback address that 307s every request to one target.
pub mod redirector;
/// The real regcache binary on a loopback port.
pub mod regcache;
/// Images seeded into the fake as plain data, and the pull every test makes of them.
pub mod seed;
/// Raw TCP clients: idle connections, half-sent requests, keep-alive requests, closed-by-server checks.
pub mod sockets;
/// Debian's tinyproxy as a forward proxy with a default-deny CONNECT filter.
pub mod tinyproxy;
/// Test-time certificates (rcgen): a CA per test, 127.0.0.x leaves, rustls server configs.
pub mod tls;
/// A small tmpfs mounted for a test (root only; skipped otherwise), unmounted on drop.
pub mod tmpfs;
/// One upstream of either kind (docker-registry or the k8s-like fake): seed, count blob fetches, stop.
pub mod upstream;

// The helpers most tests use, at `support::` directly.
pub use config::{config_toml, config_toml_with, three_upstreams_toml};
pub use data_dir::{blob_file, tmp_files};
pub use http::{Got, WAIT, client, get, head, raw, send, wait_for};
pub use seed::{
    Image, OCI_MANIFEST, pull, pull_via, random_bytes, seed_image, seed_layers, sha256,
};
