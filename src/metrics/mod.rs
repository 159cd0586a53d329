//! Prometheus metrics. One [`Metrics`] is made at start-up and passed to whoever records;
//! nothing here is global, so tests get fresh counters.
//!
//! Each subsystem's counters are a small struct that registers itself (into a sub-registry
//! where its exported names share a prefix); [`Metrics`] only gathers them. This module is a
//! leaf: it names no higher module's types. Labels that come from a domain type (a response's
//! source, a refusal's reason) are `&'static str`s the owner of that type derives.

mod faults;
mod mirror;
mod registry;
mod routing;
mod security;
mod server;
mod spool;
mod uploads;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::{Metric, Registry};

pub use faults::{FaultKind, FaultRecord, KindLabels, LocalFaults};
pub use mirror::{MirrorMetrics, PeerLabels};
pub use registry::{RegistryMetrics, RequestLabels, SourceLabels};
pub use routing::{DhtMetrics, RoutingMetrics};
pub use security::{LocalRefusal, SecurityMetrics};
pub use server::ServerMetrics;
pub use spool::SpoolMetrics;
pub use uploads::UploadMetrics;

/// Every exported metric name starts with this.
const PREFIX: &str = "peermirror";

/// Register `metric` as `name` and hand it back, so a subsystem creates each metric where it
/// registers it (a clone shares the same values).
fn registered<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

/// A counter family split by why something happened (`reason="..."`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// A counter family split by what it counts (`what="..."`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhatLabels {
    pub what: &'static str,
}

/// All of a node's metrics, by subsystem.
pub struct Metrics {
    exposition: Registry,
    /// The accept loop's admission: connections refused or evicted.
    pub server: ServerMetrics,
    /// Upload slots and egress pacing (`limits`).
    pub uploads: UploadMetrics,
    /// The OCI endpoint: requests, bytes sent, local content.
    pub registry: RegistryMetrics,
    /// Fetches from peers and what went wrong with them.
    pub mirror: MirrorMetrics,
    /// Downloads into the spool.
    pub spool: SpoolMetrics,
    /// Faults of this node's own disk and content (shared with the spool, which records them).
    pub faults: std::sync::Arc<LocalFaults>,
    /// Provider lookups and announcements, the DHT among them.
    pub routing: RoutingMetrics,
    /// Authentication and the TLS material's reloads and expiry.
    pub security: SecurityMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut exposition = Registry::with_prefix(PREFIX);
        let r = &mut exposition;
        Metrics {
            registry: RegistryMetrics::register(r),
            routing: RoutingMetrics::register(r),
            mirror: MirrorMetrics::register(r),
            uploads: UploadMetrics::register(r),
            security: SecurityMetrics::register(r),
            server: ServerMetrics::register(r),
            spool: SpoolMetrics::register(r),
            faults: std::sync::Arc::new(LocalFaults::register(r)),
            exposition,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.exposition).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every exported name, help text and label exactly as dashboards, the chart's alerts and
    /// the docs know them (sorted lines, since sub-registries change only the order).
    const EXPOSITION: &str = include_str!("exposition.txt");

    #[test]
    fn names_help_and_labels_are_those_scraped_today() {
        let m = Metrics::new();
        let r = &m.registry;
        r.requests
            .get_or_create(&RequestLabels {
                route: "blob",
                method: "GET",
                status: 200,
                source: "local",
            })
            .inc();
        r.response_bytes
            .get_or_create(&SourceLabels {
                source: "in_flight",
            })
            .inc();
        m.mirror.peer_mismatch("serial:ab");
        let what = |what| WhatLabels { what };
        let reason = |reason| ReasonLabels { reason };
        m.routing
            .dht
            .requests
            .get_or_create(&what("find_node"))
            .inc();
        m.routing
            .dht
            .announcements
            .get_or_create(&what("announced"))
            .inc();
        m.mirror.misses.get_or_create(&reason("no_provider")).inc();
        m.security
            .auth_failures
            .get_or_create(&reason("no_client_cert"))
            .inc();
        m.security.reload_failures.get_or_create(&what("crl")).inc();
        m.server.refused.get_or_create(&reason("pool_full")).inc();
        m.spool.downloads.get_or_create(&reason("verified")).inc();
        m.faults.record(FaultKind::SpoolWrite, "test");
        let text = m.encode();
        let mut got: Vec<&str> = text.lines().collect();
        got.sort_unstable();
        let want: Vec<&str> = EXPOSITION.lines().collect();
        assert_eq!(got, want);
    }
}
