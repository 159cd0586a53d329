//! Change detection for files that are reloaded without a restart.

use std::path::PathBuf;
use std::time::SystemTime;

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
