//! The OCI endpoint's metrics: requests by route, status and source, and the bytes sent.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::registered;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
    /// Where the response's bytes came from (`registry::Source`).
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// Where the bytes came from (`registry::Source`).
    pub source: &'static str,
}

pub struct RegistryMetrics {
    pub requests: Family<RequestLabels, Counter>,
    /// Body bytes sent, by source; the status page samples it for its traffic chart.
    pub response_bytes: Family<SourceLabels, Counter>,
    pub local_corruptions: Counter,
    pub content_ready: Gauge,
}

impl RegistryMetrics {
    pub fn register(r: &mut Registry) -> Self {
        RegistryMetrics {
            requests: registered(
                r,
                "requests",
                "Registry requests by route, status and source",
                Family::default(),
            ),
            response_bytes: registered(
                r,
                "response_bytes",
                "Body bytes sent, by where they came from",
                Family::default(),
            ),
            local_corruptions: registered(
                r,
                "local_corruptions",
                "Local blobs found damaged (not matching their digest) before serving a peer",
                Counter::default(),
            ),
            content_ready: registered(
                r,
                "content_ready",
                "1 when containerd is reachable and the index is loaded",
                Gauge::default(),
            ),
        }
    }
}
