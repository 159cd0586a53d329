//! The accept loop's metrics: registry connections closed by admission (`server::admission`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{ReasonLabels, registered};

/// Registered under `peermirror_connections_*`.
pub struct ServerMetrics {
    /// Registry connections closed at once, by reason (`server::Refusal`).
    pub refused: Family<ReasonLabels, Counter>,
    /// Registry connections closed to make room because they had completed no request.
    pub evicted: Counter,
}

impl ServerMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let r = r.sub_registry_with_prefix("connections");
        ServerMetrics {
            refused: registered(
                r,
                "refused",
                "Registry connections closed as soon as accepted, by reason (per_address, pool_full)",
                Family::default(),
            ),
            evicted: registered(
                r,
                "evicted",
                "Registry connections that had completed no request, closed to make room for a new one",
                Counter::default(),
            ),
        }
    }
}
