//! One upstream for a test, either kind: Debian's docker-registry or the
//! registry.k8s.io-like fake; seeded with test images, asked how often it sent
//! a blob, and stopped (made unreachable) mid-test.

use super::docker_registry::DockerRegistry;
use super::fake::FakeUpstream;
use super::images::Image;

/// The upstream regcache mirrors in one test.
pub enum Upstream {
    Docker(DockerRegistry),
    K8sLike(FakeUpstream),
}

impl Upstream {
    pub fn url(&self) -> String {
        match self {
            Upstream::Docker(r) => r.url(),
            Upstream::K8sLike(f) => f.url(),
        }
    }

    pub fn seed(&self, image: &Image) {
        match self {
            Upstream::Docker(r) => r.push(image),
            Upstream::K8sLike(f) => seed_k8s_like(f, image),
        }
    }

    /// How many times the upstream sent blob `digest` of `size` bytes to
    /// regcache (complete transfers).
    pub fn blob_fetches(&self, digest: &str, size: usize) -> f64 {
        match self {
            Upstream::Docker(r) => r.requests("GET", &format!("/blobs/{digest}")) as f64,
            Upstream::K8sLike(f) => f.sent(digest) as f64 / size as f64,
        }
    }

    /// Makes the upstream unreachable.
    pub fn stop(&mut self) {
        match self {
            Upstream::Docker(r) => r.stop(),
            Upstream::K8sLike(f) => f.set_down(true),
        }
    }
}

/// Puts `image` into the k8s-like fake: every blob by digest, every manifest,
/// the top one under its tag.
pub fn seed_k8s_like(fake: &FakeUpstream, image: &Image) {
    for blob in &image.blobs {
        fake.put_content_with_digest(
            &image.repo,
            &blob.digest,
            super::fake::Content::Bytes(blob.bytes.clone()),
        );
    }
    for m in &image.manifests {
        let tag = (m.digest == image.top).then_some(image.tag.as_str());
        let digest = fake.put_manifest(&image.repo, tag, &m.media_type, m.bytes.clone());
        assert_eq!(digest, m.digest);
    }
}
