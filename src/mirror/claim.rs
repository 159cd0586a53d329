//! No start race: a node about to send its containerd to the upstream says so first.
//!
//! Nodes that miss a blob within the same moment would all find nobody in flight and all go
//! to the upstream. So before answering 404 a node looks for `fetching:` claims
//! ([`Key::Fetching`]) of other nodes. Finding none, it claims the blob itself, waits a
//! jittered moment for claims made at the same time to become visible, and then the claimant
//! with the smallest node id goes to the upstream while the others give way. A node that gives
//! way holds containerd's request for a bounded, jittered time (`--mirror-claim-wait`) while
//! it looks for the claimant's in-flight record (containerd's ingest, advertised as soon as
//! the upstream answers), and follows it; if none appears in time it answers 404 as before.
//! A claim is withdrawn a while later, by when the claimant's in-flight record speaks for it.
//! A claim is only a reason to wait a bounded time: a node that lies with claims delays
//! misses by at most the claim wait, and cannot change what is served.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::book::ProviderBook;
use super::{Mirror, ProviderSet};
use crate::content::Key;
use crate::oci::Digest;
use crate::routing::Provider;

/// How long to look for other claims; the lookup usually ends sooner.
const CLAIMS_LOOKUP: Duration = Duration::from_millis(30);
/// After claiming, how long claims made at the same moment get to become visible.
const SETTLE: Duration = Duration::from_millis(30);
/// How often a node that gave way looks for the claimant's in-flight record.
const POLL: Duration = Duration::from_millis(50);
/// A winning claim stands this long: the claimant's in-flight record takes over by then.
const CLAIM_TTL: Duration = Duration::from_secs(10);

impl Mirror {
    /// Nobody has `digest`: decide who fetches it from the upstream. `None`: this node does
    /// (answer 404 now); else the providers of the in-flight copy of the node that does.
    pub(super) async fn claim_or_follow(&self, digest: Digest) -> Option<ProviderSet> {
        let wait = self.config.claim_wait;
        if wait.is_zero() {
            return None;
        }
        let book = &self.book;
        let key = Key::Fetching(digest);
        let me = book.local_id();
        if claimants(book, &key).await.is_empty() {
            book.announce(vec![key.clone()]).await;
            tokio::time::sleep(SETTLE.mul_f64(jitter(0.5..=1.5))).await;
            let rivals = claimants(book, &key).await;
            if !rivals.iter().any(|p| p.peer.as_str() < me.as_str()) {
                tracing::debug!(%digest, rivals = rivals.len(), "claimed: containerd fetches it from the upstream");
                let book = self.book.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(CLAIM_TTL).await;
                    book.unannounce(vec![key]).await;
                });
                return None;
            }
            book.unannounce(vec![key]).await;
        }
        self.metrics.mirror.claim_waits.inc();
        let deadline = tokio::time::Instant::now() + wait.mul_f64(jitter(0.75..=1.0));
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut set = ProviderSet::lookup_uncounted(&Key::Digest(digest), book.clone());
            if set
                .first(left.min(self.config.resolve_timeout.max(POLL)))
                .await
            {
                tracing::debug!(%digest, "following the claimant's in-flight copy");
                return Some(set);
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::debug!(%digest, "the claimant's in-flight copy did not appear in time");
                self.metrics.mirror.claim_timeouts.inc();
                return None;
            }
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + POLL)).await;
        }
    }
}

/// Other nodes claiming `key` now.
async fn claimants(book: &Arc<ProviderBook>, key: &Key) -> Vec<Provider> {
    let mut rx = book.lookup_uncounted(key);
    let mut found = Vec::new();
    let _ = tokio::time::timeout(CLAIMS_LOOKUP, async {
        while let Some(p) = rx.recv().await {
            found.push(p);
        }
    })
    .await;
    found
}

fn jitter(range: std::ops::RangeInclusive<f64>) -> f64 {
    rand::rng().random_range(range)
}
