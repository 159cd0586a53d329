//! Change detection for files that are reloaded without a restart.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// What identifies a file's content cheaply: modification time, length and inode. A missing
/// file is `None`, so its appearance counts as a change too.
pub type Fingerprint = Vec<Option<(SystemTime, u64, u64)>>;

pub fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .map(|p| {
            // metadata() follows symlinks: a swapped Secret symlink changes the target's stat.
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())))
        })
        .collect()
}

/// How often watched files are looked at. Kubernetes updates mounted Secrets by swapping a
/// symlink, which inotify-style watching misses; a cheap stat poll does not.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Polls `paths` every [`POLL_INTERVAL`] until `shutdown`, calling `on_change` each time any
/// of them changed (appeared, vanished, or got new content) since the last look.
pub async fn watch(paths: Vec<PathBuf>, shutdown: CancellationToken, mut on_change: impl FnMut()) {
    let mut last = fingerprint(&paths);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = fingerprint(&paths);
        if now != last {
            last = now;
            on_change();
        }
    }
}
