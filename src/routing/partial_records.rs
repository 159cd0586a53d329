//! In-flight provider records: while this node downloads a blob (its mirror's spool fetching
//! from peers, or containerd's ingest from the upstream), it advertises `Key::Partial(digest)`,
//! so nodes that start pulling the same image a moment later stream from it instead of the
//! upstream. Several origins can hold one digest at once (the spool feeding containerd's own
//! ingest); the record stays while any does. Commands go through one task, in order, so an
//! advertise never overtakes the withdraw before it.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Router;
use crate::content::{Index, Key};
use crate::metrics::Metrics;
use crate::oci::Digest;

/// Pending changes; more than a pull storm's worth of blobs at once.
const QUEUE: usize = 4096;

/// Where an in-flight copy lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The mirror's spool, fetching from peers.
    Spool,
    /// containerd's ingest directory, downloading from the upstream (or from our mirror).
    Ingest,
}

enum Change {
    Add(Digest, Origin),
    Remove(Digest, Origin),
    /// `origin` holds exactly these now (catches removals nobody reported, like evictions).
    Only(Origin, Vec<Digest>),
}

/// The handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct InFlight {
    tx: mpsc::Sender<Change>,
}

impl InFlight {
    /// Start the task that keeps the records; it stops with `shutdown`.
    pub fn start(
        router: Arc<dyn Router>,
        index: Arc<Index>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(rx, router, index, metrics, shutdown));
        (InFlight { tx }, task)
    }

    /// `origin` holds `digest` in flight from now on.
    pub fn add(&self, digest: Digest, origin: Origin) {
        self.send(Change::Add(digest, origin));
    }

    /// `origin` no longer holds `digest` in flight (committed, or given up).
    pub fn remove(&self, digest: Digest, origin: Origin) {
        self.send(Change::Remove(digest, origin));
    }

    /// `origin` holds exactly `digests` in flight now.
    pub fn only(&self, origin: Origin, digests: Vec<Digest>) {
        self.send(Change::Only(origin, digests));
    }

    fn send(&self, c: Change) {
        // A full queue loses one record change: the record then expires on its own TTL
        // (a withdraw) or is simply missing (an add); neither breaks a pull.
        if self.tx.try_send(c).is_err() {
            tracing::warn!("in-flight record queue full; a change was dropped");
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Change>,
    router: Arc<dyn Router>,
    index: Arc<Index>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut held: HashMap<Digest, Vec<Origin>> = HashMap::new();
    loop {
        let change = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = rx.recv() => match c { Some(c) => c, None => return },
        };
        match change {
            Change::Add(d, o) => {
                let origins = held.entry(d).or_default();
                let first = origins.is_empty();
                if !origins.contains(&o) {
                    origins.push(o);
                }
                // A blob the index holds complete is advertised as such already.
                if first && index.stat(&d).is_none() {
                    tracing::debug!(digest = %d, origin = ?o, "advertising in-flight blob");
                    if let Err(e) = router.advertise(vec![Key::Partial(d)]).await {
                        tracing::warn!(error = %e, "advertising an in-flight blob failed");
                    }
                }
            }
            Change::Remove(d, o) => withdraw(&mut held, &[d], o, router.as_ref()).await,
            Change::Only(o, keep) => {
                let gone: Vec<Digest> = held
                    .iter()
                    .filter(|(d, origins)| origins.contains(&o) && !keep.contains(d))
                    .map(|(d, _)| *d)
                    .collect();
                withdraw(&mut held, &gone, o, router.as_ref()).await;
            }
        }
        metrics
            .routing
            .in_flight_keys
            .set(i64::try_from(held.len()).unwrap_or(i64::MAX));
    }
}

/// `origin` no longer holds `digests`; withdraw the records nobody else holds.
async fn withdraw(
    held: &mut HashMap<Digest, Vec<Origin>>,
    digests: &[Digest],
    origin: Origin,
    router: &dyn Router,
) {
    let mut gone = Vec::new();
    for d in digests {
        let Some(origins) = held.get_mut(d) else {
            continue;
        };
        origins.retain(|x| *x != origin);
        if origins.is_empty() {
            held.remove(d);
            gone.push(Key::Partial(*d));
        }
    }
    if !gone.is_empty()
        && let Err(e) = router.withdraw(gone).await
    {
        tracing::warn!(error = %e, "withdrawing in-flight blobs failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{MemoryNetwork, MemoryRouter};

    async fn providers(r: &MemoryRouter, key: &Key) -> usize {
        let mut rx = r.lookup(key);
        let mut n = 0;
        while rx.recv().await.is_some() {
            n += 1;
        }
        n
    }

    #[tokio::test]
    async fn a_record_stays_while_any_origin_holds_it() {
        let net = MemoryNetwork::new();
        let me = Arc::new(MemoryRouter::new(
            net.clone(),
            "me",
            "127.0.0.1:1".parse().unwrap(),
        ));
        let other = MemoryRouter::new(net, "other", "127.0.0.1:2".parse().unwrap());
        let stop = CancellationToken::new();
        let (f, task) = InFlight::start(
            me,
            Arc::new(Index::new()),
            Arc::new(Metrics::new()),
            stop.clone(),
        );
        let d = Digest::of(b"layer");
        let key = Key::Partial(d);
        let settle = || tokio::time::sleep(std::time::Duration::from_millis(50));
        f.add(d, Origin::Ingest);
        f.add(d, Origin::Spool);
        settle().await;
        assert_eq!(providers(&other, &key).await, 1);
        assert_eq!(
            providers(&other, &Key::Digest(d)).await,
            0,
            "in flight is not complete"
        );
        f.remove(d, Origin::Ingest);
        settle().await;
        assert_eq!(providers(&other, &key).await, 1, "the spool still holds it");
        f.only(Origin::Spool, vec![]);
        settle().await;
        assert_eq!(providers(&other, &key).await, 0, "evicted unseen");
        stop.cancel();
        task.await.unwrap();
    }
}
