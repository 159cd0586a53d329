//! Response bodies: one boxed type for every response, and [`LoggedBody`], which counts what
//! is sent and reports the request (access log, status page) when the body is done.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};

use super::access::AccessRecord;
use crate::content::ByteStream;
use crate::limits::UploadSlot;

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
            self.record.sent_bytes.inc_by(n);
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
        self.record.finish(self.sent);
    }
}
