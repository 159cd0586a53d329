//! The daemon's long-running tasks, in one set that is awaited on shutdown.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinSet};

/// Every task the daemon starts. A task that panics is logged with its name when it ends
/// instead of being lost; dropping the set (a start-up step failed) aborts them all.
#[derive(Default)]
pub(crate) struct Tasks {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl Tasks {
    pub(crate) fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits for every task to end (they all watch the shutdown token).
    pub(crate) async fn join_all(mut self) {
        while let Some(ended) = self.set.join_next_with_id().await {
            if let Err(e) = ended {
                let task = self.names.get(&e.id()).copied().unwrap_or("?");
                if e.is_panic() {
                    tracing::error!(task, error = %e, "a daemon task panicked");
                } else {
                    tracing::debug!(task, "a daemon task was cancelled");
                }
            }
        }
    }
}
