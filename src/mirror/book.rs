//! What the mirror remembers about providers between requests: who is shunned, which keys
//! nobody had a moment ago, and who is known to have what.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::MirrorConfig;
use crate::content::Key;
use crate::metrics::Metrics;
use crate::routing::{Provider, Router};
use crate::ttl::TtlMap;

/// A key nobody had is answered 404 without a lookup this long.
const NEGATIVE_TTL: Duration = Duration::from_millis(250);
const NEGATIVE_MAX: usize = 4096;
const KNOWN_TTL: Duration = Duration::from_secs(300);
const KNOWN_MAX: usize = 65_536;
/// Far more peers than a cluster has, so a full map (which forgets every penalty) is not a
/// way out of one.
const PENALTIES_MAX: usize = 65_536;

/// Why a provider is shunned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// It could not deliver (connect, status, stream, headers): skipped briefly.
    Failed,
    /// It sent bytes that do not match their digest: skipped for much longer.
    Mismatch,
}

pub(crate) struct ProviderBook {
    router: Arc<dyn Router>,
    metrics: Arc<Metrics>,
    failure_penalty: Duration,
    mismatch_penalty: Duration,
    /// Providers (by peer id) skipped until their entry expires.
    penalties: TtlMap<String, Fault>,
    /// Keys nobody had.
    negative: TtlMap<Key, ()>,
    /// Providers known to have a key without asking the DHT: those that just served it, the
    /// digest a tag resolved to, and the children of a manifest a provider served. A pull is
    /// one lookup for the tag and then mostly cache hits, so a busy DHT cannot make the later
    /// requests of the same pull miss the resolve timeout.
    known: TtlMap<Key, Vec<Provider>>,
}

impl ProviderBook {
    pub(crate) fn new(
        router: Arc<dyn Router>,
        metrics: Arc<Metrics>,
        config: &MirrorConfig,
    ) -> Self {
        ProviderBook {
            router,
            metrics,
            failure_penalty: config.failure_penalty,
            mismatch_penalty: config.mismatch_penalty,
            penalties: TtlMap::new(PENALTIES_MAX),
            negative: TtlMap::new(NEGATIVE_MAX),
            known: TtlMap::new(KNOWN_MAX),
        }
    }

    pub(crate) fn is_penalized(&self, p: &Provider) -> bool {
        self.penalties.contains(&p.peer)
    }

    pub(crate) fn penalize(&self, p: &Provider, fault: Fault) {
        let d = match fault {
            Fault::Mismatch => {
                self.metrics.digest_mismatches.inc();
                self.mismatch_penalty
            }
            Fault::Failed => {
                self.metrics.provider_failures.inc();
                self.failure_penalty
            }
        };
        let mismatch = fault == Fault::Mismatch;
        tracing::warn!(peer = %p.peer, addr = %p.addr, mismatch, penalty = ?d, "provider shunned");
        self.penalties.insert(p.peer.clone(), fault, d);
    }

    /// Nobody had `key` a moment ago.
    pub(crate) fn recently_missed(&self, key: &Key) -> bool {
        self.negative.contains(key)
    }

    pub(crate) fn remember_miss(&self, key: Key) {
        self.negative.insert(key, (), NEGATIVE_TTL);
    }

    /// Ask the DHT for providers of `key`, counting it.
    pub(crate) fn lookup(&self, key: &Key) -> mpsc::Receiver<Provider> {
        self.metrics.dht_lookups.inc();
        self.router.lookup(key)
    }

    /// Ask the DHT without counting it as a pull's lookup (a diagnostic probe).
    pub(crate) fn lookup_uncounted(&self, key: &Key) -> mpsc::Receiver<Provider> {
        self.router.lookup(key)
    }

    /// Remember that `providers` have `key`.
    pub(crate) fn remember(&self, key: Key, providers: &[Provider]) {
        if !providers.is_empty() {
            self.known.insert(key, providers.to_vec(), KNOWN_TTL);
        }
    }

    /// Providers known to have `key` (empty if none).
    pub(crate) fn known(&self, key: &Key) -> Vec<Provider> {
        self.known.get(key).unwrap_or_default()
    }
}
