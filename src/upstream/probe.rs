//! What `regcache doctor` asks of an upstream, hop by hop: a traced client
//! ([`Upstream::traced`]) records every hop it sends (URL without query,
//! status, time, the TLS certificate's issuer, or the cause of a failure), and
//! the probes below walk the path a pull takes: `/v2/`, the token service,
//! a manifest, and the first byte of a blob through every redirect.
//!
//! It never reads more than one byte of a blob, never records a query string
//! or a token, and sends credentials only as the token flow's rules allow.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use url::Url;

use super::cause::host_port;
use super::error::without_query;
use super::{Call, Error, Response, Upstream, challenge, tls};
use crate::oci::{Digest, Reference, RepoName};

/// One request as sent and answered.
#[derive(Debug, Clone, Serialize)]
pub struct HopRecord {
    pub method: String,
    /// `scheme://host[:port]/path`.
    pub url: String,
    /// `host:port`, as a firewall rule needs it.
    pub host_port: String,
    pub status: Option<u16>,
    pub millis: f64,
    /// The issuer of the server certificate (https only).
    pub tls_issuer: Option<String>,
    /// The cause, when no answer came.
    pub error: Option<String>,
}

/// The hops a traced upstream sent, in order.
#[derive(Debug, Default)]
pub(super) struct Trace {
    hops: Mutex<Vec<HopRecord>>,
    /// Filled by the TLS verifier (reqwest's own TLS info is missing on
    /// connections tunnelled through a proxy).
    pub(super) issuers: Arc<tls::Issuers>,
}

impl Trace {
    pub(super) fn record(
        &self,
        method: &Method,
        url: &Url,
        started: Instant,
        outcome: Result<&reqwest::Response, &Error>,
    ) {
        let (status, tls_issuer, error) = match outcome {
            Ok(response) => (Some(response.status().as_u16()), self.issuer(url), None),
            Err(e) => (None, None, Some(e.to_string())),
        };
        let hop = HopRecord {
            method: method.to_string(),
            url: without_query(url),
            host_port: host_port(url),
            status,
            millis: started.elapsed().as_secs_f64() * 1000.0,
            tls_issuer,
            error,
        };
        self.hops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hop);
    }

    fn take(&self) -> Vec<HopRecord> {
        std::mem::take(&mut *self.hops.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Trace {
    fn issuer(&self, url: &Url) -> Option<String> {
        if url.scheme() != "https" {
            return None;
        }
        let issuers = self.issuers.lock().unwrap_or_else(|e| e.into_inner());
        issuers.get(url.host_str()?).cloned()
    }
}

impl Upstream {
    /// The hops sent since the last call (empty unless built with [`Upstream::traced`]).
    pub fn take_hops(&self) -> Vec<HopRecord> {
        self.inner
            .trace
            .as_ref()
            .map(|t| t.take())
            .unwrap_or_default()
    }

    /// `GET /v2/`, one hop: its status and `WWW-Authenticate`, if any.
    pub async fn ping(&self) -> Result<(StatusCode, Option<String>), Error> {
        let url = self.endpoint("");
        let repo: RepoName = "doctor/ping"
            .parse()
            .map_err(|_| Error::Protocol("probe name".into()))?;
        let call = Call {
            method: Method::GET,
            url: url.clone(),
            headers: Default::default(),
            repo: &repo,
            deadline: None,
        };
        let response = self.send_hop(&call, &url, None).await?;
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((response.status(), challenge))
    }

    /// Asks the token service a `/v2/` challenge names for an anonymous
    /// token (the token flow's first step; scopes come with a repository).
    /// None when the challenge is not a Bearer one.
    pub async fn probe_token(&self, challenge: &str) -> Option<Result<StatusCode, Error>> {
        let parsed = challenge::parse_all([challenge]);
        let bearer = parsed
            .iter()
            .find(|c| c.scheme == challenge::Scheme::Bearer)?;
        let realm = bearer.param("realm")?;
        let mut url = Url::parse(realm).ok()?;
        if let Some(service) = bearer.param("service") {
            url.query_pairs_mut().append_pair("service", service);
        }
        let started = Instant::now();
        let result = self.inner.client.get(url.clone()).send().await;
        let result = match result {
            Ok(response) => Ok(response),
            Err(e) => Err(self.transport_error(e, &url).await),
        };
        if let Some(trace) = &self.inner.trace {
            trace.record(&Method::GET, &url, started, result.as_ref());
        }
        Some(result.map(|r| r.status()))
    }

    /// A blob's first byte (`Range: bytes=0-0`), through every redirect.
    pub async fn blob_first_byte(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Response, Error> {
        let repo = &*self.qualified(repo)?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(RANGE, HeaderValue::from_static("bytes=0-0"));
        let url = self.endpoint(&format!("{repo}/blobs/{digest}"));
        self.send(&Call {
            method: Method::GET,
            url,
            headers,
            repo,
            deadline: None,
        })
        .await
    }

    /// A manifest by reference (GET, every manifest media type).
    pub async fn probe_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Response, Error> {
        self.manifest(Method::GET, repo, reference).await
    }
}

/// How long a doctor probe may wait for one answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
