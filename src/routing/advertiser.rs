//! Keeps the router's provider records in step with the content index: one full pass once the
//! index is loaded, then incremental from index changes; a full pass again if changes were lost.

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
        self.full_pass().await;
        self.done.send_replace(true);
        loop {
            let change = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = changes.recv() => c,
            };
            match change {
                Ok(IndexChange::Added(k)) if self.wanted(&k) => {
                    if let Err(e) = self.router.advertise(vec![k]).await {
                        tracing::warn!(error = %e, "advertise failed");
                    }
                }
                Ok(IndexChange::Removed(k)) if self.wanted(&k) => {
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
                    self.full_pass().await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
            self.metrics.advertised_keys.set(self.count());
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

    async fn full_pass(&self) {
        let keys: Vec<Key> = self
            .index
            .keys()
            .into_iter()
            .filter(|k| self.wanted(k))
            .collect();
        let total = keys.len();
        for batch in keys.chunks(BATCH) {
            // One failing key is logged by the router, never fatal.
            if let Err(e) = self.router.advertise(batch.to_vec()).await {
                tracing::warn!(error = %e, "advertise failed");
            }
        }
        self.metrics.advertised_keys.set(self.count());
        tracing::info!(keys = total, "advertised local content");
    }
}
