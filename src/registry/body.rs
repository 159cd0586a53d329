use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};

use crate::content::ByteStream;
use crate::limits::UploadSlot;
use crate::metrics::{Metrics, Source, SourceLabels};

/// Every response body: boxed so streams, fixed bytes and empty bodies share one type.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn stream(s: ByteStream) -> Body {
    BodyExt::boxed_unsync(StreamBody::new(s.map_ok(Frame::data)))
}

/// What the access log needs about a request, filled in as it is handled.
pub struct AccessRecord {
    pub method: http::Method,
    pub path: String,
    pub remote: SocketAddr,
    /// Who the request was accepted as (certificate, token line), never a secret.
    pub identity: String,
    pub status: u16,
    pub source: Source,
    pub started: Instant,
    /// Bytes the body should carry; the log says whether it all went out.
    pub expected: u64,
    pub metrics: Arc<Metrics>,
}

/// Wraps a response body to count what is sent and write one access-log line when the body
/// is finished or dropped (a client that goes away mid-transfer still gets a line).
pub struct LoggedBody {
    inner: Body,
    sent: u64,
    record: AccessRecord,
    /// Released when the body is done: the upload slot it occupies.
    _slot: Option<UploadSlot>,
}

impl LoggedBody {
    pub fn new(inner: Body, record: AccessRecord, slot: Option<UploadSlot>) -> Self {
        LoggedBody {
            inner,
            sent: 0,
            record,
            _slot: slot,
        }
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            self.sent += n;
            // Counted as it goes, so a long transfer is visible while it runs.
            self.record
                .metrics
                .bytes
                .get_or_create(&SourceLabels {
                    source: self.record.source,
                })
                .inc_by(n);
        }
        poll
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
        let r = &self.record;
        let complete = r.method == http::Method::HEAD || self.sent >= r.expected;
        tracing::info!(
            target: "audit",
            method = %r.method,
            path = %r.path,
            remote = %r.remote,
            client = %r.identity,
            status = r.status,
            source = r.source.as_str(),
            bytes = self.sent,
            complete,
            duration_ms = r.started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
        r.metrics
            .recent_requests
            .push(crate::admin::activity::RequestEntry {
                at: std::time::SystemTime::now(),
                method: r.method.to_string(),
                path: r.path.clone(),
                remote: r.remote.to_string(),
                client: r.identity.clone(),
                status: r.status,
                source: r.source,
                bytes: self.sent,
                complete,
                duration: r.started.elapsed(),
            });
    }
}
