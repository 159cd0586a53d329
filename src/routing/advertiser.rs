//! Keeps the router's provider records in step with the content index: one full pass once the
//! index is loaded, then incremental from index changes; a full pass again if changes were lost.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::Router;
use crate::content::{Index, IndexChange, Key, Readiness};
use crate::metrics::Metrics;

/// Keys per advertise call, so one huge pass does not starve the router's command queue.
const BATCH: usize = 256;

pub struct Advertiser {
    pub index: Arc<Index>,
    pub router: Arc<dyn Router>,
    pub metrics: Arc<Metrics>,
    /// Tags are advertised only when tag resolution through peers is on.
    pub advertise_tags: bool,
    /// Set to true once the first full pass is done.
    pub done: watch::Sender<bool>,
}

impl Advertiser {
    pub async fn run(self, mut content: watch::Receiver<Readiness>, shutdown: CancellationToken) {
        let mut changes = self.index.subscribe();
        // Wait for the first loaded index; a pass over an empty index would announce nothing.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = content.wait_for(|r| r.loaded) => if r.is_err() { return },
        }
        // What this node has announced, so a full pass can withdraw what went away unseen.
        let mut advertised = HashSet::new();
        self.full_pass(&mut advertised).await;
        self.done.send_replace(true);
        loop {
            let change = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = changes.recv() => c,
            };
            match change {
                Ok(IndexChange::Added(k)) if self.wanted(&k) => {
                    advertised.insert(k.clone());
                    if let Err(e) = self.router.advertise(vec![k]).await {
                        tracing::warn!(error = %e, "advertise failed");
                    }
                }
                Ok(IndexChange::Removed(k)) if self.wanted(&k) => {
                    advertised.remove(&k);
                    if let Err(e) = self.router.withdraw(vec![k]).await {
                        tracing::warn!(error = %e, "withdraw failed");
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "index changes lagged; re-advertising everything"
                    );
                    self.full_pass(&mut advertised).await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
            self.metrics.routing.advertised_keys.set(self.count());
        }
    }

    fn wanted(&self, k: &Key) -> bool {
        self.advertise_tags || matches!(k, Key::Digest(_))
    }

    fn count(&self) -> i64 {
        let n = self.index.blob_count()
            + if self.advertise_tags {
                self.index.tag_count()
            } else {
                0
            };
        i64::try_from(n).unwrap_or(i64::MAX)
    }

    /// Announce every key in the index, and withdraw the announced keys it no longer holds
    /// (removals missed while the change stream lagged would otherwise stay announced).
    async fn full_pass(&self, advertised: &mut HashSet<Key>) {
        let keys: Vec<Key> = self
            .index
            .keys()
            .into_iter()
            .filter(|k| self.wanted(k))
            .collect();
        let current: HashSet<Key> = keys.iter().cloned().collect();
        let gone: Vec<Key> = advertised.difference(&current).cloned().collect();
        for batch in gone.chunks(BATCH) {
            if let Err(e) = self.router.withdraw(batch.to_vec()).await {
                tracing::warn!(error = %e, "withdraw failed");
            }
        }
        *advertised = current;
        let total = keys.len();
        for batch in keys.chunks(BATCH) {
            // One failing key is logged by the router, never fatal.
            if let Err(e) = self.router.advertise(batch.to_vec()).await {
                tracing::warn!(error = %e, "advertise failed");
            }
        }
        self.metrics.routing.advertised_keys.set(self.count());
        tracing::info!(keys = total, "advertised local content");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{Indexer, MemorySource};
    use crate::oci::Digest;
    use crate::routing::{MemoryNetwork, MemoryRouter};

    #[tokio::test]
    async fn a_full_pass_withdraws_keys_removed_unseen() {
        let net = MemoryNetwork::new();
        let index = Arc::new(Index::new());
        let src = MemorySource::new();
        src.add_image("127.0.0.1:5000/a:v1", &[b"kept"]);
        src.add_image("127.0.0.1:5000/b:v1", &[b"removed while lagging"]);
        let indexer = Indexer::new(Arc::new(src), index.clone());
        let mut ready = indexer.readiness();
        let stop = CancellationToken::new();
        let task = tokio::spawn(indexer.run(stop.clone()));
        ready.wait_for(|r| r.loaded).await.unwrap();
        stop.cancel();
        let _ = task.await;
        let (done, _) = watch::channel(false);
        let adv = Advertiser {
            index: index.clone(),
            router: Arc::new(MemoryRouter::new(
                net.clone(),
                "me",
                "127.0.0.1:1".parse().unwrap(),
            )),
            metrics: Arc::new(Metrics::new()),
            advertise_tags: false,
            done,
        };
        let mut advertised = HashSet::new();
        adv.full_pass(&mut advertised).await;
        let other = MemoryRouter::new(net, "other", "127.0.0.1:2".parse().unwrap());
        let gone = Key::Digest(Digest::of(b"removed while lagging"));
        assert!(other.lookup(&gone).recv().await.is_some());
        // Removed without the advertiser seeing the change (its stream lagged).
        index.remove_content(&Digest::of(b"removed while lagging"));
        adv.full_pass(&mut advertised).await;
        assert!(
            other.lookup(&gone).recv().await.is_none(),
            "still advertised"
        );
        let kept = Key::Digest(Digest::of(b"kept"));
        assert!(other.lookup(&kept).recv().await.is_some());
    }
}
