//! The mirror's metrics: fetches from peers and the ways they fail.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{ReasonLabels, registered};
use crate::sync::MutexExt;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's authenticated identity: `serial:<hex>` under mTLS, else `ip:<addr>`.
    pub peer: String,
}

/// Distinct `peer` label values kept for `peermirror_peer_mismatches_total`; later liars share
/// [`OTHER_PEERS`], so a node regenerating identities cannot grow the series without bound.
const PEER_LABELS_MAX: usize = 64;
const OTHER_PEERS: &str = "other";

pub struct MirrorMetrics {
    pub digest_mismatches: Counter,
    /// Wrong bytes (or lengths) by the peer that sent them; see [`MirrorMetrics::peer_mismatch`].
    pub peer_mismatches: Family<PeerLabels, Counter>,
    peer_labels: Mutex<HashSet<String>>,
    /// Tags whose providers named different digests (answered 404).
    pub tag_disagreements: Counter,
    /// Tags answered 404 because one unauthenticated provider's answer was not confirmed.
    pub tag_unconfirmed: Counter,
    pub provider_failures: Counter,
    /// Local misses the peers could not serve either, by why (see `mirror::Miss`).
    pub misses: Family<ReasonLabels, Counter>,
    /// Body bytes fetched from peers (every attempt, verified or not).
    pub peer_fetch_bytes: Counter,
    /// Misses held because another node claimed the blob, and those whose wait ran out.
    pub claim_waits: Counter,
    pub claim_timeouts: Counter,
    /// Rollout askers not let into a chain: not a connected peer at the address they asked from.
    pub rollout_strangers: Counter,
}

impl MirrorMetrics {
    pub fn register(r: &mut Registry) -> Self {
        MirrorMetrics {
            digest_mismatches: registered(
                r,
                "digest_mismatches",
                "Peer transfers aborted because the digest did not match",
                Counter::default(),
            ),
            peer_mismatches: registered(
                r,
                "peer_mismatches",
                "Peer answers with wrong bytes or a wrong size, by the peer's identity (certificate serial or IP)",
                Family::default(),
            ),
            peer_labels: Mutex::default(),
            tag_disagreements: registered(
                r,
                "tag_disagreements",
                "Tags answered 404 because the providers asked named different digests",
                Counter::default(),
            ),
            tag_unconfirmed: registered(
                r,
                "tag_unconfirmed",
                "Tags answered 404 because a single provider answered and peers are not authenticated (no other confirmed it within the tag deadline)",
                Counter::default(),
            ),
            provider_failures: registered(
                r,
                "provider_failures",
                "Peer fetches that failed (connect, status, stream)",
                Counter::default(),
            ),
            misses: registered(
                r,
                "mirror_misses",
                "Local misses the peers could not serve either, by reason (tag_not_resolved, no_provider, providers_failed, tag_disagreement, tag_unconfirmed)",
                Family::default(),
            ),
            peer_fetch_bytes: registered(
                r,
                "peer_fetch_bytes",
                "Body bytes fetched from peers, verified or not",
                Counter::default(),
            ),
            claim_waits: registered(
                r,
                "claim_waits",
                "Misses held for the in-flight copy of the node the blob's rollout coordinator placed them behind",
                Counter::default(),
            ),
            claim_timeouts: registered(
                r,
                "claim_timeouts",
                "Held misses answered 404 because the copy to follow did not appear in time",
                Counter::default(),
            ),
            rollout_strangers: registered(
                r,
                "rollout_strangers",
                "Rollout askers not let into the chain: not a connected peer at the address they asked from",
                Counter::default(),
            ),
        }
    }

    /// Count one mismatch from `peer`. The first [`PEER_LABELS_MAX`] peers get their own
    /// series; the rest are counted under `other`.
    pub fn peer_mismatch(&self, peer: &str) {
        let label = {
            let mut seen = self.peer_labels.locked();
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
}
