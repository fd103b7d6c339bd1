//! The access log: one line per request with method, path, status, bytes sent,
//! cache outcome and duration, written when the response body has been sent (or
//! abandoned), so streamed blobs are logged with their real size and time.
//! It only observes: it never changes a response. The same records feed the
//! [`Counters`] behind `/metrics`, the status page and `regcache stats`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::error::LoggedError;
use crate::counters::{Answered, Counters};
use crate::registry::Outcome;

/// Middleware: wraps the response body so the line is written when it ends.
pub async fn log_requests(
    State(counters): State<Arc<Counters>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_owned(),
        |pq| pq.as_str().to_owned(),
    );
    let response = next.run(request).await;
    let first_byte = started.elapsed();
    let record = Record {
        method: method.to_string(),
        path,
        status: response.status().as_u16(),
        outcome: response.extensions().get::<Outcome>().map(|o| o.as_str()),
        error: response
            .extensions()
            .get::<LoggedError>()
            .map(|e| e.0.clone()),
        started,
        first_byte,
        counters,
    };
    let (parts, body) = response.into_parts();
    let content_length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = Body::new(LoggedBody {
        inner: body,
        bytes: 0,
        content_length,
        record: Some(record),
    });
    Response::from_parts(parts, body)
}

struct Record {
    method: String,
    path: String,
    status: u16,
    outcome: Option<&'static str>,
    error: Option<String>,
    started: Instant,
    /// From the request's arrival to its response head.
    first_byte: Duration,
    counters: Arc<Counters>,
}

impl Record {
    fn write(self, bytes: u64, failure: Option<&Failure<'_>>) {
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let outcome = self.outcome.unwrap_or("-");
        let error = self
            .error
            .as_deref()
            .or(failure.map(|f| f.message))
            .unwrap_or("");
        self.counters.record(&Answered {
            path: &self.path,
            is_get: self.method == "GET",
            status: self.status,
            outcome: self.outcome,
            bytes,
            broken: failure.is_some_and(|f| f.broken),
            first_byte: self.first_byte,
        });
        tracing::info!(
            target: "regcache::access",
            method = %self.method,
            path = %self.path,
            status = self.status,
            bytes,
            outcome,
            duration_ms = format_args!("{duration_ms:.1}"),
            aborted = failure.is_some(),
            error,
            "request"
        );
    }
}

/// Why a body ended early: its own error (`broken`), or the client leaving.
struct Failure<'a> {
    message: &'a str,
    broken: bool,
}

/// A response body that counts what it sends and logs once at its end.
struct LoggedBody {
    inner: Body,
    bytes: u64,
    /// The response's `Content-Length`: hyper stops polling a body once that
    /// many bytes are sent, so reaching it is a complete response.
    content_length: Option<u64>,
    record: Option<Record>,
}

impl LoggedBody {
    fn finish(&mut self, failure: Option<&Failure<'_>>) {
        if let Some(record) = self.record.take() {
            record.write(self.bytes, failure);
        }
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let message = e.to_string();
                self.finish(Some(&Failure {
                    message: &message,
                    broken: true,
                }));
            }
            Poll::Ready(None) => self.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // Dropped before its end and short of its Content-Length: the client
        // went away. (A HEAD's empty body is at its end without being polled.)
        let complete =
            self.inner.is_end_stream() || self.content_length.is_some_and(|len| self.bytes >= len);
        let failure = (!complete).then_some(Failure {
            message: "client disconnected",
            broken: false,
        });
        self.finish(failure.as_ref());
    }
}
