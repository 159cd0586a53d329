//! What the endpoint reports about each request it answered: where the bytes came from
//! ([`Source`]), the access-log line, and the [`AccessSink`] the daemon wires to the status
//! page, so the data plane knows nothing of who shows its records.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;

use crate::metrics::SourceLabels;

/// Where the bytes of a response came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Source {
    /// This node's containerd.
    Local,
    /// Another node, fetched and verified on the way.
    Peer,
    /// A download still in progress on this node (its spool, or containerd's ingest from the
    /// upstream), served to a peer as it grows; the asker verifies the whole digest.
    InFlight,
    /// Nobody had it: 404 so containerd falls back upstream.
    Miss,
    /// Not a content request (errors, `/v2/`).
    None,
}

impl Source {
    /// The name used in the access log, the metrics' `source` label and the status page.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Peer => "peer",
            Source::InFlight => "in_flight",
            Source::Miss => "miss",
            Source::None => "none",
        }
    }

    /// This source's series of `peermirror_response_bytes_total`.
    pub fn labels(self) -> SourceLabels {
        SourceLabels {
            source: self.as_str(),
        }
    }
}

/// One finished (or abandoned) response, as the access log has it.
#[derive(Clone, Debug)]
pub struct RequestEntry {
    pub at: SystemTime,
    pub method: String,
    pub path: String,
    pub remote: String,
    /// Who the request was accepted as; never a secret (see [`AccessRecord::identity`]).
    pub client: String,
    pub status: u16,
    pub source: Source,
    pub bytes: u64,
    pub complete: bool,
    pub duration: Duration,
}

/// Where finished requests go besides the access log (the status page's recent requests).
/// Called from a body's `Drop` on the data path: it must be quick and must not block.
pub trait AccessSink: Send + Sync {
    fn record(&self, entry: RequestEntry);
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
    /// This source's byte counter, looked up once rather than per frame.
    pub sent_bytes: Counter,
    pub sink: Option<Arc<dyn AccessSink>>,
}

impl AccessRecord {
    /// Write the access-log line and hand the entry to the sink, once the body is done.
    pub(super) fn finish(&self, sent: u64) {
        let complete = self.method == http::Method::HEAD || sent >= self.expected;
        let duration = self.started.elapsed();
        tracing::info!(
            target: "audit",
            method = %self.method,
            path = %self.path,
            remote = %self.remote,
            client = %self.identity,
            status = self.status,
            source = self.source.as_str(),
            bytes = sent,
            complete,
            duration_ms = duration.as_secs_f64() * 1000.0,
            "request"
        );
        if let Some(sink) = &self.sink {
            sink.record(RequestEntry {
                at: SystemTime::now(),
                method: self.method.to_string(),
                path: self.path.clone(),
                remote: self.remote.to_string(),
                client: self.identity.clone(),
                status: self.status,
                source: self.source,
                bytes: sent,
                complete,
                duration,
            });
        }
    }
}
