//! Upload metrics (`limits`): responses sending a body, those refused, and egress pacing.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::registered;

pub struct UploadMetrics {
    pub in_flight: Gauge,
    pub rejected: Counter,
    pub followers_refused: Counter,
    pub egress_throttled_seconds: Counter<f64, AtomicU64>,
}

impl UploadMetrics {
    pub fn register(r: &mut Registry) -> Self {
        // Exported as `peermirror_egress_*`, outside the `uploads` prefix of the others.
        let egress_throttled_seconds = registered(
            r,
            "egress_throttled_seconds",
            "Time uploads waited for the egress cap",
            Counter::default(),
        );
        let r = r.sub_registry_with_prefix("uploads");
        UploadMetrics {
            in_flight: registered(
                r,
                "in_flight",
                "Responses with a body being sent now",
                Gauge::default(),
            ),
            rejected: registered(
                r,
                "rejected",
                "Requests refused with 503 at --max-concurrent-uploads",
                Counter::default(),
            ),
            followers_refused: registered(
                r,
                "followers_refused",
                "Peers told to stream a blob from another copy at --max-followers",
                Counter::default(),
            ),
            egress_throttled_seconds,
        }
    }
}
