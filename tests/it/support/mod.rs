//! Test support shared by every integration test: the real `regcache` binary
//! started on a loopback port, and the fake upstreams it is pointed at. Nothing
//! here talks to anything but 127.0.0.1, and everything it starts is stopped when
//! its handle drops, on success and on failure.

/// skopeo, containerd (+ ctr) and podman pulling through a regcache mirror.
pub mod clients;
/// Debian's docker-registry as a real upstream, seeded over its push API.
pub mod docker_registry;
/// The in-process registry.k8s.io-like upstream (front 307 → AR 302 → storage) with faults.
pub mod fake;
/// Test images as plain data: OCI 3 layers, Docker manifest list, 1 GiB layer.
pub mod images;
/// Debian's nginx in front of regcache replicas, on a generated nginx.conf.
pub mod nginx;
pub mod regcache;
/// One upstream of either kind (docker-registry or the k8s-like fake): seed, count blob fetches, stop.
pub mod upstream;
