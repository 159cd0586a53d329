//! What the mirror remembers about providers between requests: who is shunned, which keys
//! nobody had a moment ago, who is known to have what, and the sizes trusted descriptors give.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::MirrorConfig;
use crate::content::{Descriptor, Key};
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::pki::Serial;
use crate::routing::{NodeId, Provider, Router};
use crate::sync::MutexExt;
use crate::ttl::TtlMap;

/// A key nobody had is answered 404 without a lookup this long.
const NEGATIVE_TTL: Duration = Duration::from_millis(250);
const NEGATIVE_MAX: usize = 4096;
const KNOWN_TTL: Duration = Duration::from_secs(300);
const KNOWN_MAX: usize = 65_536;
/// Far more peers than a cluster has, so a full map (which forgets every penalty) is not a
/// way out of one.
const PENALTIES_MAX: usize = 65_536;
/// Children of relayed manifests whose size is known; a pull's layers are asked for within
/// minutes of their manifest.
const SIZES_TTL: Duration = Duration::from_secs(1800);
const SIZES_MAX: usize = 65_536;
/// The certificate serial last seen at an IP, so a penalty on the serial applies before we
/// connect again.
const SERIALS_TTL: Duration = Duration::from_secs(3600);
/// Recent faults kept for the status page.
const EVENTS_MAX: usize = 100;

/// What a provider did wrong, as the status page shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerEventKind {
    /// Bytes (or a size) that do not match the digest.
    Mismatch,
    /// No bytes for `--mirror-stall-timeout`.
    Stall,
    /// Connect, status or stream failure.
    Failure,
    /// It answered a tag with a digest other providers contradicted (not shunned).
    TagDisagreement,
}

impl PeerEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerEventKind::Mismatch => "mismatch",
            PeerEventKind::Stall => "stall",
            PeerEventKind::Failure => "failure",
            PeerEventKind::TagDisagreement => "tag_disagreement",
        }
    }
}

/// One fault of a provider and the penalty it earned.
#[derive(Clone, Debug)]
pub struct PeerEvent {
    pub at: SystemTime,
    pub peer: NodeId,
    pub addr: SocketAddr,
    pub identity: String,
    pub kind: PeerEventKind,
    /// When the provider is asked again; `None` when a longer penalty already stood.
    pub shunned_until: Option<SystemTime>,
}

/// Who a provider is, as far as we can prove it: the serial of the server certificate it
/// presented (checked against the cluster CA) under mTLS, else the IP we connected to. Never
/// the PeerId, which a hostile node regenerates at will.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    Serial(Serial),
    Ip(IpAddr),
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerIdentity::Serial(s) => write!(f, "serial:{s}"),
            PeerIdentity::Ip(ip) => write!(f, "ip:{ip}"),
        }
    }
}

/// What a penalty is keyed by. Lies shun the identity (serial, else the whole IP: a liar
/// cannot come back under a new PeerId or port); plain failures (a crash, a stall) shun the
/// serial, else only the endpoint, so an honest node sharing the IP is not punished for them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum PenaltyKey {
    Identity(PeerIdentity),
    Endpoint(SocketAddr),
}

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
    /// Identities skipped until their entry expires.
    penalties: TtlMap<PenaltyKey, Fault>,
    /// The serial each endpoint last presented (mTLS only).
    serials: TtlMap<SocketAddr, Serial>,
    /// Size and media type of blobs named by a manifest this node relayed: a peer's
    /// `Content-Length` must match them.
    sizes: TtlMap<Digest, Descriptor>,
    /// Keys nobody had.
    negative: TtlMap<Key, ()>,
    /// Providers known to have a key without asking the DHT: those that just served it, the
    /// digest a tag resolved to, and the children of a manifest a provider served. A pull is
    /// one lookup for the tag and then mostly cache hits, so a busy DHT cannot make the later
    /// requests of the same pull miss the resolve timeout.
    known: TtlMap<Key, Vec<Provider>>,
    /// The last [`EVENTS_MAX`] faults, newest last.
    events: Mutex<VecDeque<PeerEvent>>,
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
            serials: TtlMap::new(PENALTIES_MAX),
            sizes: TtlMap::new(SIZES_MAX),
            negative: TtlMap::new(NEGATIVE_MAX),
            known: TtlMap::new(KNOWN_MAX),
            events: Mutex::default(),
        }
    }

    /// Whether `p` is shunned: its IP, its endpoint, or the serial last seen there.
    pub(crate) fn is_penalized(&self, p: &Provider) -> bool {
        self.penalties
            .contains(&PenaltyKey::Identity(PeerIdentity::Ip(p.addr.ip())))
            || self.penalties.contains(&PenaltyKey::Endpoint(p.addr))
            || self.serials.get(&p.addr).is_some_and(|s| {
                self.penalties
                    .contains(&PenaltyKey::Identity(PeerIdentity::Serial(s)))
            })
    }

    /// Whether an identity proven by a connection is shunned.
    pub(crate) fn is_shunned(&self, id: &PeerIdentity) -> bool {
        self.penalties.contains(&PenaltyKey::Identity(id.clone()))
    }

    /// The best identity known for `p` without connecting: the serial last seen there.
    pub(crate) fn identity(&self, p: &Provider) -> PeerIdentity {
        match self.serials.get(&p.addr) {
            Some(s) => PeerIdentity::Serial(s),
            None => PeerIdentity::Ip(p.addr.ip()),
        }
    }

    /// A connection to `p` proved `serial`.
    pub(crate) fn learn_serial(&self, p: &Provider, serial: Serial) {
        self.serials.insert(p.addr, serial, SERIALS_TTL);
    }

    pub(crate) fn penalize(&self, p: &Provider, id: &PeerIdentity, fault: Fault) {
        let kind = match fault {
            Fault::Mismatch => PeerEventKind::Mismatch,
            Fault::Failed => PeerEventKind::Failure,
        };
        self.penalize_as(p, id, fault, kind);
    }

    /// `p` sent nothing for the stall timeout: a failure, shown as a stall.
    pub(crate) fn stalled(&self, p: &Provider, id: &PeerIdentity) {
        self.penalize_as(p, id, Fault::Failed, PeerEventKind::Stall);
    }

    fn penalize_as(&self, p: &Provider, id: &PeerIdentity, fault: Fault, kind: PeerEventKind) {
        let (d, key) = match fault {
            Fault::Mismatch => {
                self.metrics.mirror.digest_mismatches.inc();
                self.metrics.mirror.peer_mismatch(&id.to_string());
                (self.mismatch_penalty, PenaltyKey::Identity(id.clone()))
            }
            Fault::Failed => {
                self.metrics.mirror.provider_failures.inc();
                let key = match id {
                    PeerIdentity::Serial(_) => PenaltyKey::Identity(id.clone()),
                    PeerIdentity::Ip(_) => PenaltyKey::Endpoint(p.addr),
                };
                (self.failure_penalty, key)
            }
        };
        // A shorter failure never shortens a standing mismatch penalty.
        let standing = fault == Fault::Failed && self.penalties.get(&key) == Some(Fault::Mismatch);
        let now = SystemTime::now();
        self.record(PeerEvent {
            at: now,
            peer: p.peer.clone(),
            addr: p.addr,
            identity: id.to_string(),
            kind,
            shunned_until: (!standing).then(|| now + d),
        });
        if standing {
            return;
        }
        let mismatch = fault == Fault::Mismatch;
        tracing::warn!(peer = %p.peer, addr = %p.addr, identity = %id, mismatch, penalty = ?d, "provider shunned");
        self.penalties.insert(key, fault, d);
    }

    fn record(&self, event: PeerEvent) {
        let mut events = self.events.locked();
        if events.len() == EVENTS_MAX {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// Recent faults, newest first.
    pub(crate) fn events(&self) -> Vec<PeerEvent> {
        let events = self.events.locked();
        events.iter().rev().cloned().collect()
    }

    /// A verified manifest this node relayed names its children: remember their sizes
    /// and media types, and that `providers` (who served the manifest and said they hold
    /// its children) have them.
    pub(crate) fn learn_manifest(&self, media_type: &str, data: &[u8], providers: &[Provider]) {
        let Ok(children) = crate::oci::children(media_type, data) else {
            return;
        };
        for c in children {
            let d = Descriptor {
                digest: c.digest,
                size: c.size,
                media_type: c.media_type,
            };
            self.sizes.insert(c.digest, d, SIZES_TTL);
            self.remember(Key::Digest(c.digest), providers);
        }
    }

    /// The trusted descriptor of `digest` (a relayed manifest named it), if one was seen.
    pub(crate) fn trusted(&self, digest: &Digest) -> Option<Descriptor> {
        self.sizes.get(digest)
    }

    /// Count a tag whose providers disagreed, and show who answered on the status page
    /// (one of them lied; which one, a tag cannot tell, so nobody is shunned).
    pub(crate) fn tag_disagreement(&self, asked: &[Provider]) {
        self.metrics.mirror.tag_disagreements.inc();
        let now = SystemTime::now();
        for p in asked {
            self.record(PeerEvent {
                at: now,
                peer: p.peer.clone(),
                addr: p.addr,
                identity: self.identity(p).to_string(),
                kind: PeerEventKind::TagDisagreement,
                shunned_until: None,
            });
        }
    }

    /// Count a tag answered 404 because only one unauthenticated provider vouched for it.
    pub(crate) fn tag_unconfirmed(&self) {
        self.metrics.mirror.tag_unconfirmed.inc();
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
        self.metrics.routing.dht.lookups.inc();
        self.router.lookup(key)
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Ask the DHT without counting it as a pull's lookup (a diagnostic probe, or the
    /// in-flight lookup that runs beside a counted one).
    pub(crate) fn lookup_uncounted(&self, key: &Key) -> mpsc::Receiver<Provider> {
        self.router.lookup(key)
    }

    /// This node's id in the routing layer.
    pub(crate) fn local_id(&self) -> String {
        self.router.status().local_id
    }

    /// Whether any peer is connected (a node alone has nobody to ask).
    pub(crate) fn has_peers(&self) -> bool {
        self.router.status().peer_count() > 0
    }

    /// The connected peers whose registry endpoint is known.
    pub(crate) fn peers(&self) -> Vec<Provider> {
        self.router
            .status()
            .peers
            .into_iter()
            .filter_map(|s| {
                Some(Provider {
                    addr: s.registry?,
                    peer: s.peer,
                })
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{MemoryNetwork, MemoryRouter};

    fn book() -> ProviderBook {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let router = Arc::new(MemoryRouter::new(MemoryNetwork::new(), "me", addr));
        ProviderBook::new(router, Arc::new(Metrics::new()), &MirrorConfig::default())
    }

    /// The status page lists mismatches, stalls and failures, newest first, with when each
    /// provider is asked again; a failure never shortens a standing mismatch penalty.
    #[test]
    fn faults_are_kept_for_the_status_page() {
        let b = book();
        let p = Provider {
            peer: "liar".into(),
            addr: "127.0.0.9:5000".parse().unwrap(),
        };
        let id = PeerIdentity::Ip(p.addr.ip());
        b.penalize(&p, &id, Fault::Mismatch);
        b.stalled(&p, &id);
        let q = Provider {
            peer: "slow".into(),
            addr: "127.0.0.10:5000".parse().unwrap(),
        };
        b.stalled(&q, &PeerIdentity::Ip(q.addr.ip()));
        b.penalize(&q, &PeerIdentity::Ip(q.addr.ip()), Fault::Failed);
        let e = b.events();
        let kinds: Vec<_> = e.iter().map(|e| (e.peer.as_str(), e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("slow", PeerEventKind::Failure),
                ("slow", PeerEventKind::Stall),
                ("liar", PeerEventKind::Stall),
                ("liar", PeerEventKind::Mismatch),
            ]
        );
        let mismatch_until = e[3].shunned_until.unwrap();
        assert!(mismatch_until > SystemTime::now() + Duration::from_secs(1800));
        // The liar's stall is keyed by its endpoint, not its IP: it did earn a penalty.
        assert!(e[2].shunned_until.is_some());
        assert_eq!(e[3].identity, "ip:127.0.0.9");
        for i in 0..2 * EVENTS_MAX {
            b.stalled(
                &Provider {
                    peer: format!("p{i}").into(),
                    addr: p.addr,
                },
                &id,
            );
        }
        // Under mTLS a failure after a mismatch hits the same serial: the longer penalty stands.
        let serial = PeerIdentity::Serial(crate::pki::Serial::from_be_bytes(&[7]));
        b.penalize(&q, &serial, Fault::Mismatch);
        b.penalize(&q, &serial, Fault::Failed);
        let e = b.events();
        assert_eq!(e[0].kind, PeerEventKind::Failure);
        assert_eq!(e[0].shunned_until, None);
        assert!(e[1].shunned_until.is_some());
        assert_eq!(e.len(), EVENTS_MAX);
        assert_eq!(e[2].peer.as_str(), format!("p{}", 2 * EVENTS_MAX - 1));
    }
}
