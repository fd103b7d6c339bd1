//! The HTTP side of `prefetch`: GETs manifests and blobs from a running
//! regcache exactly as a node would (`/v2/<repository>/...?ns=<registry>`, the
//! containerd form), so routing, single flight, pins and the budget apply.
//! Every body is hashed as it arrives and checked against its digest and
//! size, then dropped: nothing is written here.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use url::Url;

use crate::oci::{Descriptor, Digest, Hasher, ImageRef, MAX_MANIFEST_BYTES, media_type};

/// A regcache server to pull through.
#[derive(Debug, Clone)]
pub(super) struct Mirror {
    client: reqwest::Client,
    base: Url,
}

impl Mirror {
    pub(super) fn new(mut base: Url) -> anyhow::Result<Self> {
        // `join` replaces the last path segment unless the path ends in '/'.
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        // reqwest is built with `rustls-no-provider` (see upstream); a server
        // URL may be https, so the process needs a provider before building.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the HTTP client")?;
        Ok(Self { client, base })
    }

    /// GETs `image`'s manifest by `reference` (a tag or digest), asking for
    /// every manifest type; its bytes must hash to `expected` (if given) and
    /// to the server's `Docker-Content-Digest` (if sent). Returns the bytes.
    pub(super) async fn manifest(
        &self,
        image: &ImageRef,
        reference: &str,
        expected: Option<&Digest>,
    ) -> anyhow::Result<Bytes> {
        let url = self.url(image, "manifests", reference)?;
        let response = self
            .client
            .get(url)
            .header(http::header::ACCEPT, media_type::ALL_MANIFESTS.join(", "))
            .send()
            .await
            .with_context(|| format!("GET manifest {reference}"))?;
        let response = ok_or_error(response, "manifest", reference).await?;
        let header = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let bytes = response.bytes().await.context("reading a manifest")?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            bail!("manifest {reference} is larger than 4 MiB");
        }
        let algorithm = expected
            .or(header.as_ref())
            .map_or(crate::oci::Algorithm::Sha256, Digest::algorithm);
        let digest = Digest::of(algorithm, &bytes);
        for want in [expected, header.as_ref()].into_iter().flatten() {
            if *want != digest {
                bail!("manifest {reference}: bytes hash to {digest}, expected {want}");
            }
        }
        Ok(bytes)
    }

    /// GETs a blob to its end, hashing it; calls `on_chunk` with each chunk's
    /// length. Fails unless digest and size match the descriptor. Returns its
    /// size and where the server says the bytes came from.
    pub(super) async fn blob(
        &self,
        image: &ImageRef,
        blob: &Descriptor,
        mut on_chunk: impl FnMut(u64),
    ) -> anyhow::Result<(u64, Source)> {
        let reference = blob.digest.to_string();
        let url = self.url(image, "blobs", &reference)?;
        let response = self
            .client
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET blob {reference}"))?;
        let mut response = ok_or_error(response, "blob", &reference).await?;
        let source = Source::of(&response);
        let mut hasher = Hasher::new(blob.digest.algorithm());
        let mut size = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("blob {reference}: body cut after {size} bytes"))?
        {
            hasher.update(&chunk);
            size += chunk.len() as u64;
            on_chunk(chunk.len() as u64);
        }
        let digest = hasher.finish();
        if digest != blob.digest {
            bail!("blob {reference}: bytes hash to {digest}");
        }
        if blob.size.is_some_and(|want| want != size) {
            bail!(
                "blob {reference}: {size} bytes, the manifest says {}",
                blob.size.unwrap_or_default()
            );
        }
        Ok((size, source))
    }

    /// `<base>/v2/<repository>/<kind>/<reference>?ns=<registry>`.
    fn url(&self, image: &ImageRef, kind: &str, reference: &str) -> anyhow::Result<Url> {
        let path = format!("v2/{}/{kind}/{reference}", image.repository());
        let mut url = self
            .base
            .join(&path)
            .with_context(|| format!("{} + {path} is not a URL", self.base))?;
        url.query_pairs_mut().append_pair("ns", image.registry());
        Ok(url)
    }
}

/// Where a blob's bytes came from, by the server's RFC 9211 `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// `hit`: the cache had them.
    Cache,
    /// `fwd=...`: the server asked its upstream (or joined a fetch in flight).
    Upstream,
    /// No `Cache-Status` from this server.
    Unknown,
}

impl Source {
    fn of(response: &reqwest::Response) -> Self {
        let Some(status) = response
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
        else {
            return Self::Unknown;
        };
        let params: Vec<&str> = status.split(';').map(str::trim).collect();
        if params.contains(&"hit") {
            Self::Cache
        } else if params.iter().any(|p| p.starts_with("fwd=")) {
            Self::Upstream
        } else {
            Self::Unknown
        }
    }
}

/// The response if it is a 2xx, else an error with the status and the OCI
/// error code and message the server sent.
async fn ok_or_error(
    response: reqwest::Response,
    what: &str,
    reference: &str,
) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let error = v["errors"].get(0)?.clone();
            Some(format!(
                "{} {}",
                error["code"].as_str().unwrap_or_default(),
                error["message"].as_str().unwrap_or_default()
            ))
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    bail!("{what} {reference}: {status} {}", detail.trim())
}
