//! Prometheus metrics. One [`Metrics`] is made at start-up and passed to whoever records;
//! nothing here is global, so tests get fresh counters.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Peer => "peer",
            Source::InFlight => "in_flight",
            Source::Miss => "miss",
            Source::None => "none",
        }
    }
}

impl EncodeLabelValue for Source {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
    pub source: Source,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: Source,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub bytes: Family<SourceLabels, Counter>,
    /// Seconds to find providers for a key in the DHT.
    pub resolve_latency: Histogram,
    pub connected_peers: Gauge,
    pub advertised_keys: Gauge,
    pub digest_mismatches: Counter,
    /// Wrong bytes (or lengths) by the peer that sent them; see [`Metrics::peer_mismatch`].
    pub peer_mismatches: Family<PeerLabels, Counter>,
    /// Tags whose providers named different digests (answered 404).
    pub tag_disagreements: Counter,
    peer_labels: std::sync::Mutex<std::collections::HashSet<String>>,
    pub provider_failures: Counter,
    pub local_corruptions: Counter,
    pub dht_lookups: Counter,
    /// Kademlia requests this node answered, by kind (find_node, get_providers, add_provider).
    pub dht_requests: Family<WhatLabels, Counter>,
    /// This node's provider announcements that ended, by result (announced, failed).
    pub dht_announcements: Family<WhatLabels, Counter>,
    /// Provided keys waiting for an announcement that is due (first ones, retries, republishes).
    pub dht_announce_backlog: Gauge,
    /// Other nodes' provider records this node stores for the DHT.
    pub dht_stored_records: Gauge,
    /// Local misses the peers could not serve either, by why (see `mirror::Miss`).
    pub mirror_misses: Family<ReasonLabels, Counter>,
    pub content_ready: Gauge,
    pub uploads_in_flight: Gauge,
    pub uploads_rejected: Counter,
    pub egress_throttled_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub reload_failures: Family<WhatLabels, Counter>,
    /// Seconds until the CRL's nextUpdate (negative once it has passed).
    pub crl_expiry_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Seconds until this node's TLS certificate expires.
    pub cert_expiry_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Registry connections closed at once, by reason (`server::Refusal`).
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// Registry connections closed to make room because they had completed no request.
    pub connections_evicted: Counter,
    /// Body bytes fetched from peers (every attempt, verified or not).
    pub peer_fetch_bytes: Counter,
    /// Downloads into the spool, by how they ended (verified, failed, no_room).
    pub spool_downloads: Family<ReasonLabels, Counter>,
    /// Bytes reserved in the spool now.
    pub spool_bytes: Gauge,
    /// Blobs this node advertises as in flight (spool or containerd's ingest).
    pub in_flight_keys: Gauge,
    /// The last requests served, for the status page (not exported to Prometheus).
    pub recent_requests: crate::admin::activity::RecentRequests,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's authenticated identity: `serial:<hex>` under mTLS, else `ip:<addr>`.
    pub peer: String,
}

/// Distinct `peer` label values kept for `peermirror_peer_mismatches_total`; later liars share
/// [`OTHER_PEERS`], so a node regenerating identities cannot grow the series without bound.
const PEER_LABELS_MAX: usize = 64;
const OTHER_PEERS: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhatLabels {
    pub what: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("peermirror");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Registry requests by route, status and source",
            requests.clone(),
        );
        let bytes = Family::<SourceLabels, Counter>::default();
        registry.register(
            "response_bytes",
            "Body bytes sent, by where they came from",
            bytes.clone(),
        );
        let resolve_latency =
            Histogram::new([0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0]);
        registry.register(
            "resolve_seconds",
            "Time to find providers for a key",
            resolve_latency.clone(),
        );
        let connected_peers = Gauge::default();
        registry.register(
            "connected_peers",
            "Peers currently connected",
            connected_peers.clone(),
        );
        let advertised_keys = Gauge::default();
        registry.register(
            "advertised_keys",
            "Keys this node advertises as provider",
            advertised_keys.clone(),
        );
        let digest_mismatches = Counter::default();
        registry.register(
            "digest_mismatches",
            "Peer transfers aborted because the digest did not match",
            digest_mismatches.clone(),
        );
        let peer_mismatches = Family::<PeerLabels, Counter>::default();
        registry.register(
            "peer_mismatches",
            "Peer answers with wrong bytes or a wrong size, by the peer's identity (certificate serial or IP)",
            peer_mismatches.clone(),
        );
        let tag_disagreements = Counter::default();
        registry.register(
            "tag_disagreements",
            "Tags answered 404 because the providers asked named different digests",
            tag_disagreements.clone(),
        );
        let provider_failures = Counter::default();
        registry.register(
            "provider_failures",
            "Peer fetches that failed (connect, status, stream)",
            provider_failures.clone(),
        );
        let local_corruptions = Counter::default();
        registry.register(
            "local_corruptions",
            "Local blobs found damaged (not matching their digest) before serving a peer",
            local_corruptions.clone(),
        );
        let dht_lookups = Counter::default();
        registry.register(
            "dht_lookups",
            "Provider lookups sent to the DHT (the rest are answered from providers already known)",
            dht_lookups.clone(),
        );
        let dht_requests = Family::<WhatLabels, Counter>::default();
        registry.register(
            "dht_requests",
            "Kademlia requests from peers this node answered, by kind",
            dht_requests.clone(),
        );
        let dht_announcements = Family::<WhatLabels, Counter>::default();
        registry.register(
            "dht_announcements",
            "Provider announcements (Kademlia ADD_PROVIDER queries) of this node that ended, by result (announced, failed)",
            dht_announcements.clone(),
        );
        let dht_announce_backlog = Gauge::default();
        registry.register(
            "dht_announce_backlog",
            "Provided keys whose announcement is due but not started (paced; a persistent backlog means announcements cannot keep up)",
            dht_announce_backlog.clone(),
        );
        let dht_stored_records = Gauge::default();
        registry.register(
            "dht_stored_records",
            "Provider records this node stores for the DHT (its own included)",
            dht_stored_records.clone(),
        );
        let mirror_misses = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "mirror_misses",
            "Local misses the peers could not serve either, by reason (tag_not_resolved, no_provider, providers_failed)",
            mirror_misses.clone(),
        );
        let content_ready = Gauge::default();
        registry.register(
            "content_ready",
            "1 when containerd is reachable and the index is loaded",
            content_ready.clone(),
        );
        let uploads_in_flight = Gauge::default();
        registry.register(
            "uploads_in_flight",
            "Responses with a body being sent now",
            uploads_in_flight.clone(),
        );
        let uploads_rejected = Counter::default();
        registry.register(
            "uploads_rejected",
            "Requests refused with 503 at --max-concurrent-uploads",
            uploads_rejected.clone(),
        );
        let egress_throttled_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "egress_throttled_seconds",
            "Time uploads waited for the egress cap",
            egress_throttled_seconds.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Refused handshakes and requests, by reason",
            auth_failures.clone(),
        );
        let reload_failures = Family::<WhatLabels, Counter>::default();
        registry.register("reload_failures", "Certificate, key, CA, CRL or token files that failed to reload (the old material stays)", reload_failures.clone());
        let crl_expiry_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "crl_next_update_seconds",
            "Seconds until the CRL's nextUpdate; alert well before 0",
            crl_expiry_seconds.clone(),
        );
        let cert_expiry_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "cert_expiry_seconds",
            "Seconds until this node's TLS certificate expires; alert well before 0",
            cert_expiry_seconds.clone(),
        );
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Registry connections closed as soon as accepted, by reason (per_address, pool_full)",
            connections_refused.clone(),
        );
        let connections_evicted = Counter::default();
        registry.register(
            "connections_evicted",
            "Registry connections that had completed no request, closed to make room for a new one",
            connections_evicted.clone(),
        );
        let peer_fetch_bytes = Counter::default();
        registry.register(
            "peer_fetch_bytes",
            "Body bytes fetched from peers, verified or not",
            peer_fetch_bytes.clone(),
        );
        let spool_downloads = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "spool_downloads",
            "Blob downloads from peers into the spool, by outcome (verified, no_answer, no_room, failed)",
            spool_downloads.clone(),
        );
        let spool_bytes = Gauge::default();
        registry.register(
            "spool_bytes",
            "Bytes reserved in the spool (blobs fetched from peers, kept until containerd commits them)",
            spool_bytes.clone(),
        );
        let in_flight_keys = Gauge::default();
        registry.register(
            "in_flight_keys",
            "Blobs advertised as in flight (being downloaded into the spool or by containerd)",
            in_flight_keys.clone(),
        );
        Metrics {
            recent_requests: Default::default(),
            peer_fetch_bytes,
            spool_downloads,
            spool_bytes,
            in_flight_keys,
            connections_refused,
            connections_evicted,
            cert_expiry_seconds,
            uploads_in_flight,
            uploads_rejected,
            egress_throttled_seconds,
            auth_failures,
            reload_failures,
            crl_expiry_seconds,
            registry,
            requests,
            bytes,
            resolve_latency,
            connected_peers,
            advertised_keys,
            digest_mismatches,
            peer_mismatches,
            tag_disagreements,
            peer_labels: std::sync::Mutex::default(),
            provider_failures,
            local_corruptions,
            dht_lookups,
            dht_requests,
            dht_announcements,
            dht_announce_backlog,
            dht_stored_records,
            mirror_misses,
            content_ready,
        }
    }

    /// Count one mismatch from `peer`. The first [`PEER_LABELS_MAX`] peers get their own
    /// series; the rest are counted under `other`.
    pub fn peer_mismatch(&self, peer: &str) {
        let label = {
            let mut seen = self.peer_labels.lock().unwrap_or_else(|e| e.into_inner());
            if seen.contains(peer) || seen.len() < PEER_LABELS_MAX {
                seen.insert(peer.to_string());
                peer.to_string()
            } else {
                OTHER_PEERS.to_string()
            }
        };
        self.peer_mismatches
            .get_or_create(&PeerLabels { peer: label })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
