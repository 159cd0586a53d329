//! The spool's metrics: downloads from peers by outcome, and the room they take.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{ReasonLabels, registered};

/// Registered under `peermirror_spool_*`.
pub struct SpoolMetrics {
    /// Downloads into the spool, by how they ended (verified, failed, no_room).
    pub downloads: Family<ReasonLabels, Counter>,
    /// Bytes reserved in the spool now.
    pub bytes: Gauge,
}

impl SpoolMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let r = r.sub_registry_with_prefix("spool");
        SpoolMetrics {
            downloads: registered(
                r,
                "downloads",
                "Blob downloads from peers into the spool, by outcome (verified, no_answer, no_room, failed)",
                Family::default(),
            ),
            bytes: registered(
                r,
                "bytes",
                "Bytes reserved in the spool (blobs fetched from peers, kept until containerd commits them)",
                Gauge::default(),
            ),
        }
    }
}
