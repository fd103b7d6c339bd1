//! Blob requests: a hit streams the committed file; a miss starts or joins the
//! fill for that digest (a detached `fill_job::FillJob`) and streams the growing
//! temp file; a HEAD of a cold blob asks the upstream without fetching the bytes.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::future::Either;
use http::Method;

use super::file_reader::FileReader;
use super::fill::{Fill, FillOwner, Started};
use super::fill_job::FillJob;
use super::local::LocalBlob;
use super::passthrough::PassThrough;
use super::{Error, Outcome, Registry, Route};
use crate::oci::{Digest, RepoName};

/// The answer to a blob request, before any body byte is sent.
#[derive(Debug)]
pub struct BlobReply {
    pub digest: Digest,
    /// Total size; `None` only when an upstream sent no Content-Length.
    pub size: Option<u64>,
    pub outcome: Outcome,
    /// `None` for HEAD requests.
    pub body: Option<BlobBody>,
}

/// The bytes of a blob, read lazily from a committed file, a fill in progress,
/// or (not cached) the upstream body itself.
#[derive(Debug)]
pub struct BlobBody(Source);

#[derive(Debug)]
enum Source {
    /// A small committed blob kept in memory (see `cache::SMALL_BLOB_MAX`).
    Memory(Bytes),
    File(FileReader),
    Upstream(PassThrough),
}

impl BlobBody {
    /// Streams bytes `start..end` (end exclusive). A failure (a fill that fails
    /// verification, an I/O error) ends the stream with an error, never cleanly.
    pub fn stream(
        self,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        match self.0 {
            Source::Memory(bytes) => {
                let end = end.min(bytes.len() as u64) as usize;
                let chunk = bytes.slice((start as usize).min(end)..end);
                Either::Left(futures_util::stream::iter([Ok(chunk)]))
            }
            Source::File(reader) => {
                Either::Right(Either::Left(reader.range(start, end).into_stream()))
            }
            Source::Upstream(body) => Either::Right(Either::Right(body.range(start, end))),
        }
    }
}

impl Registry {
    /// Answers GET (`head == false`) or HEAD for a blob of `repo`.
    pub async fn blob(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
        head: bool,
    ) -> Result<BlobReply, Error> {
        if let Some(committed) = self.local.blob(&route.key, repo, digest, !head).await? {
            let outcome = self
                .ensure_blob_linked(route, repo, digest, committed.linked)
                .await?;
            self.local.touch(digest);
            let (size, source) = match committed.bytes {
                None => (committed.size, None),
                Some(LocalBlob::Memory(bytes)) => (bytes.len() as u64, Some(Source::Memory(bytes))),
                Some(LocalBlob::File(reader)) => (reader.size(), Some(Source::File(reader))),
            };
            return Ok(reply(digest, Some(size), outcome, source));
        }
        if head {
            return self.head_cold_blob(route, repo, digest).await;
        }
        self.blob_from_fill(route, repo, digest).await
    }

    async fn ensure_blob_linked(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
        linked: bool,
    ) -> Result<Outcome, Error> {
        self.ensure_linked(route, repo, digest, linked, Error::BlobUnknown, || async {
            route
                .client
                .blob(Method::HEAD, repo, digest, None)
                .await
                .map(drop)
        })
        .await
    }

    /// HEAD of a blob we don't have: the size a fill for this very repository
    /// has learnt from the upstream (the upstream is serving it the blob right
    /// now), else the upstream's answer, without fetching bytes.
    async fn head_cold_blob(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobReply, Error> {
        let owner = FillOwner {
            upstream: route.key.clone(),
            repo: repo.clone(),
        };
        if let Some(fill) = self.fills.get(digest).filter(|fill| fill.owner == owner) {
            if let Some(size) = fill.wait_size().await {
                return Ok(reply(digest, Some(size), Outcome::Follow, None));
            }
        }
        let response = route.fetch_blob(Method::HEAD, repo, digest).await?;
        Ok(reply(
            digest,
            response.content_length(),
            Outcome::Pass,
            None,
        ))
    }

    /// Starts or joins the fill for `digest` and answers once the upstream has.
    /// A fill started for another repository or upstream is joined only once
    /// this request's own upstream confirmed the blob in its own repository,
    /// and its failure is not this request's (that repository may lack the
    /// blob): this request then starts, or joins, another.
    async fn blob_from_fill(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobReply, Error> {
        let owner = FillOwner {
            upstream: route.key.clone(),
            repo: repo.clone(),
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (fill, started) = self.join_or_start_fill(route, repo, digest, &owner);
            let foreign = !started && fill.owner != owner;
            if foreign {
                self.confirm_joined_fill(route, repo, digest, &fill).await?;
            }
            let (size, source, outcome) = match fill.wait_started().await {
                Err(e) if foreign && attempts < FOREIGN_FILL_ATTEMPTS => {
                    tracing::debug!(%digest, %repo, error = %e, "a fill for another repository failed; fetching for this one");
                    continue;
                }
                Err(e) => return Err(e),
                Ok((size, Started::File(reader))) if started => {
                    (size, Source::File(reader), Outcome::Miss)
                }
                Ok((size, Started::File(reader))) => (size, Source::File(reader), Outcome::Follow),
                Ok((size, Started::PassThrough(body))) => {
                    (size, Source::Upstream(body), Outcome::Pass)
                }
                Ok((_, Started::Taken)) => return self.pass_through(route, repo, digest).await,
            };
            return Ok(reply(digest, size, outcome, Some(source)));
        }
    }

    fn join_or_start_fill(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
        owner: &FillOwner,
    ) -> (Arc<Fill>, bool) {
        self.fills
            .join_or_start(digest, owner.clone(), |guard, progress| {
                let job = FillJob {
                    route: route.clone(),
                    repo: repo.clone(),
                    digest: digest.clone(),
                    local: self.local.clone(),
                };
                tokio::spawn(job.run(guard, progress));
            })
    }

    /// A blob that is not cached, streamed from the upstream to this client only:
    /// for a request that joined a fill passing its body through to another.
    async fn pass_through(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobReply, Error> {
        let response = route.fetch_blob(Method::GET, repo, digest).await?;
        let size = response.content_length();
        let body = PassThrough::new(response.into_stream(), digest.clone(), size);
        Ok(reply(
            digest,
            size,
            Outcome::Pass,
            Some(Source::Upstream(body)),
        ))
    }

    /// `repo` joins a fill started for another repository or upstream: its own
    /// upstream must confirm `repo` has the blob first. The link, under this
    /// request's upstream, is recorded by the fill once its content is indexed
    /// (an index row may only name committed content).
    async fn confirm_joined_fill(
        &self,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
        fill: &Arc<Fill>,
    ) -> Result<(), Error> {
        if self.local.is_linked(&route.key, repo, digest).await? {
            return Ok(());
        }
        route.fetch_blob(Method::HEAD, repo, digest).await?;
        let confirmed = FillOwner {
            upstream: route.key.clone(),
            repo: repo.clone(),
        };
        if !fill.add_joined(confirmed) {
            // The fill has indexed its content already: link it here.
            self.link_confirmed(route, repo, digest).await;
        }
        Ok(())
    }
}

/// How many fills one request may go through when fills started for other
/// repositories fail under it (each failure is theirs, not this request's).
const FOREIGN_FILL_ATTEMPTS: usize = 3;

fn reply(
    digest: &Digest,
    size: Option<u64>,
    outcome: Outcome,
    source: Option<Source>,
) -> BlobReply {
    BlobReply {
        digest: digest.clone(),
        size,
        outcome,
        body: source.map(BlobBody),
    }
}
