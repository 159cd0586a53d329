//! The mirror's miss path in paused time: how long a request for something no peer has waits
//! is a property of the code (the resolve timeout), proven here without a wall clock.

use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::*;
use crate::routing::{RouterError, RouterStatus};
use crate::sync::MutexExt;

/// A router whose searches never find anything and never end: the slowest DHT there is.
#[derive(Default)]
struct Silent {
    /// Kept so that no search channel ever closes.
    open: Mutex<Vec<mpsc::Sender<Provider>>>,
}

#[async_trait]
impl Router for Silent {
    fn lookup(&self, _key: &Key) -> mpsc::Receiver<Provider> {
        let (tx, rx) = mpsc::channel(1);
        self.open.locked().push(tx);
        rx
    }

    async fn advertise(&self, _keys: Vec<Key>) -> Result<(), RouterError> {
        Ok(())
    }

    async fn withdraw(&self, _keys: Vec<Key>) -> Result<(), RouterError> {
        Ok(())
    }

    fn status(&self) -> RouterStatus {
        RouterStatus::default()
    }
}

/// A mirror over `router`, with a plain HTTP peer client and no spool. (The client's sender
/// may go: the mirror only reads the current client.)
fn mirror_over(router: Arc<dyn Router>, config: MirrorConfig) -> Mirror {
    let (_tx, rx) = tokio::sync::watch::channel(PeerClient {
        client: reqwest::Client::new(),
        scheme: Scheme::Http,
    });
    Mirror::new(router, rx, Arc::new(Metrics::new()), config, None)
}

#[tokio::test(start_paused = true)]
async fn a_miss_is_answered_at_the_resolve_timeout_however_long_the_search_runs() {
    let config = MirrorConfig::default();
    let resolve = config.resolve_timeout;
    let mirror = mirror_over(Arc::new(Silent::default()), config);
    let name: Name = "test/app".parse().unwrap_or_else(|e| panic!("{e}"));
    let digest = Digest::of(b"nobody has this");

    let started = tokio::time::Instant::now();
    let r = mirror.fetch(&name, Target::Blob(digest), false, None).await;
    let waited = started.elapsed();
    assert!(
        matches!(r, Err(MirrorError::NotFound(Miss::NoProvider))),
        "{:?}",
        r.err()
    );
    // The timer wheel rounds up to the next millisecond; anything more is a wait the miss
    // should not have.
    assert!(
        waited >= resolve && waited <= resolve + Duration::from_millis(2),
        "a miss waited {waited:?} with a resolve timeout of {resolve:?}"
    );

    // Asked again at once, it is remembered: no second wait.
    let started = tokio::time::Instant::now();
    let r = mirror.fetch(&name, Target::Blob(digest), true, None).await;
    assert!(matches!(r, Err(MirrorError::NotFound(Miss::NoProvider))));
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "a repeated miss waited again"
    );
}

/// [`Silent`], with one peer connected: its lookups are slow, not lonely.
#[derive(Default)]
struct SilentWithPeer(Silent);

#[async_trait]
impl Router for SilentWithPeer {
    fn lookup(&self, key: &Key) -> mpsc::Receiver<Provider> {
        self.0.lookup(key)
    }

    async fn advertise(&self, _keys: Vec<Key>) -> Result<(), RouterError> {
        Ok(())
    }

    async fn withdraw(&self, _keys: Vec<Key>) -> Result<(), RouterError> {
        Ok(())
    }

    fn status(&self) -> RouterStatus {
        RouterStatus {
            peers: vec![crate::routing::PeerStatus {
                peer: "peer".into(),
                registry: None,
                addrs: Vec::new(),
                last_seen: std::time::SystemTime::now(),
            }],
            ..RouterStatus::default()
        }
    }
}

/// How long each of `n` misses of new digests waits, with the default (adaptive) wait.
async fn miss_waits(router: Arc<dyn Router>, n: usize) -> Vec<Duration> {
    let mirror = mirror_over(router, MirrorConfig::default());
    let name: Name = "test/app".parse().unwrap_or_else(|e| panic!("{e}"));
    let mut waits = Vec::new();
    for i in 0..n {
        let digest = Digest::of(format!("nobody has {i}").as_bytes());
        let started = tokio::time::Instant::now();
        let r = mirror.fetch(&name, Target::Blob(digest), false, None).await;
        assert!(matches!(r, Err(MirrorError::NotFound(Miss::NoProvider))));
        waits.push(started.elapsed());
    }
    waits
}

/// Lookups that are cut off by the wait raise it (up to the ceiling), so a cluster whose
/// lookups are slow still finds its providers; a node with no peer connected keeps the floor,
/// since its lookups wait for peers, not for the DHT (every miss would cost the ceiling).
#[tokio::test(start_paused = true)]
async fn slow_lookups_raise_the_wait_but_a_node_alone_keeps_the_floor() {
    let config = MirrorConfig::default();
    let slack = Duration::from_millis(2);
    let alone = miss_waits(Arc::new(Silent::default()), 64).await;
    assert!(
        alone.iter().all(|w| *w <= config.resolve_timeout + slack),
        "a node alone waited longer than the floor: {alone:?}"
    );
    let slow = miss_waits(Arc::new(SilentWithPeer::default()), 64).await;
    let last = slow.last().copied().unwrap_or_default();
    assert!(
        last >= config.resolve_timeout_max && last <= config.resolve_timeout_max + slack,
        "slow lookups did not raise the wait to the ceiling: {slow:?}"
    );
}

/// A blob that a manifest relayed from a peer named is expected to exist: on a node whose wait
/// is still the floor (few lookups seen yet), its lookup may take the ceiling, where a blob
/// nothing named is answered at the floor. (The providers of a relayed manifest are remembered
/// only when they say they hold its children; without that, this wait is what finds the
/// others.)
#[tokio::test(start_paused = true)]
async fn a_blob_a_relayed_manifest_named_is_waited_for_up_to_the_ceiling() {
    let config = MirrorConfig::default();
    let mirror = mirror_over(Arc::new(SilentWithPeer::default()), config.clone());
    let (config_blob, layer) = (Digest::of(b"config"), Digest::of(b"layer"));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::oci::media_types::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_blob.to_string(), "size": 6},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer.to_string(), "size": 5}],
    });
    let data = serde_json::to_vec(&manifest).unwrap_or_default();
    mirror
        .book
        .learn_manifest(crate::oci::media_types::OCI_MANIFEST, &data, &[]);
    let name: Name = "test/app".parse().unwrap_or_else(|e| panic!("{e}"));
    let slack = Duration::from_millis(2);
    for (digest, expect) in [
        (Digest::of(b"named by nothing"), config.resolve_timeout),
        (layer, config.resolve_timeout_max),
    ] {
        let started = tokio::time::Instant::now();
        let r = mirror.fetch(&name, Target::Blob(digest), false, None).await;
        let waited = started.elapsed();
        assert!(matches!(r, Err(MirrorError::NotFound(Miss::NoProvider))));
        assert!(
            waited >= expect && waited <= expect + slack,
            "{digest}: waited {waited:?}, expected {expect:?}"
        );
    }
}
