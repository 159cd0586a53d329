//! Routing's metrics: provider lookups and announcements, and the DHT's own traffic.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{WhatLabels, registered};

pub struct RoutingMetrics {
    /// Seconds to find providers for a key.
    pub resolve_latency: Histogram,
    /// The current wait for a first provider (adapted to the lookups' latency).
    pub resolve_wait: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub connected_peers: Gauge,
    pub advertised_keys: Gauge,
    /// Blobs this node advertises as in flight (spool or containerd's ingest).
    pub in_flight_keys: Gauge,
    pub dht: DhtMetrics,
}

/// The Kademlia DHT's metrics, registered under `peermirror_dht_*`.
pub struct DhtMetrics {
    /// Lookups that went to the DHT (not answered from providers already known).
    pub lookups: Counter,
    /// Kademlia requests this node answered, by kind (find_node, get_providers, add_provider).
    pub requests: Family<WhatLabels, Counter>,
    /// This node's provider announcements that ended, by result (announced, failed).
    pub announcements: Family<WhatLabels, Counter>,
    /// Provided keys waiting for an announcement that is due (first ones, retries, republishes).
    pub announce_backlog: Gauge,
    /// Other nodes' provider records this node stores for the DHT.
    pub stored_records: Gauge,
}

/// Upper bounds of `resolve_seconds`: a lookup answered from memory takes well under a
/// millisecond, one through the DHT tens of milliseconds.
const RESOLVE_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0];

impl RoutingMetrics {
    pub fn register(r: &mut Registry) -> Self {
        RoutingMetrics {
            resolve_latency: registered(
                r,
                "resolve_seconds",
                "Time to find providers for a key",
                Histogram::new(RESOLVE_BUCKETS),
            ),
            resolve_wait: registered(
                r,
                "resolve_wait_seconds",
                "How long a lookup may take before a miss is answered (follows the lookups' 99th percentile)",
                Gauge::default(),
            ),
            connected_peers: registered(
                r,
                "connected_peers",
                "Peers currently connected",
                Gauge::default(),
            ),
            advertised_keys: registered(
                r,
                "advertised_keys",
                "Keys this node advertises as provider",
                Gauge::default(),
            ),
            in_flight_keys: registered(
                r,
                "in_flight_keys",
                "Blobs advertised as in flight (being downloaded into the spool or by containerd)",
                Gauge::default(),
            ),
            dht: DhtMetrics::register(r.sub_registry_with_prefix("dht")),
        }
    }
}

impl DhtMetrics {
    fn register(r: &mut Registry) -> Self {
        DhtMetrics {
            lookups: registered(
                r,
                "lookups",
                "Provider lookups sent to the DHT (the rest are answered from providers already known)",
                Counter::default(),
            ),
            requests: registered(
                r,
                "requests",
                "Kademlia requests from peers this node answered, by kind",
                Family::default(),
            ),
            announcements: registered(
                r,
                "announcements",
                "Provider announcements (Kademlia ADD_PROVIDER queries) of this node that ended, by result (announced, failed)",
                Family::default(),
            ),
            announce_backlog: registered(
                r,
                "announce_backlog",
                "Provided keys whose announcement is due but not started (paced; a persistent backlog means announcements cannot keep up)",
                Gauge::default(),
            ),
            stored_records: registered(
                r,
                "stored_records",
                "Provider records this node stores for the DHT (its own included)",
                Gauge::default(),
            ),
        }
    }
}
