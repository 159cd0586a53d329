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

#[tokio::test(start_paused = true)]
async fn a_miss_is_answered_at_the_resolve_timeout_however_long_the_search_runs() {
    let config = MirrorConfig::default();
    let resolve = config.resolve_timeout;
    let (_tx, rx) = tokio::sync::watch::channel(PeerClient {
        client: reqwest::Client::new(),
        scheme: Scheme::Http,
    });
    let mirror = Mirror::new(
        Arc::new(Silent::default()),
        rx,
        Arc::new(Metrics::new()),
        config,
        None,
    );
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
