//! Faults of the node's own disk and content (not a peer's): each costs a feature (the spool,
//! the verified-blobs file, a persistent identity), never a response, and is counted here,
//! in `peermirror_local_faults_total{kind}`, and shown by `peermirror status` and its page.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::registered;
use crate::sync::MutexExt;

/// What went wrong on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Writing a spool file failed mid-download (ENOSPC, EIO, EROFS, quota): that download
    /// went on from memory.
    SpoolWrite,
    /// Not enough free space on the spool's filesystem for a blob: it was streamed unspooled.
    SpoolSpace,
    /// The data dir (or the spool in it) could not be prepared at start: no spool.
    DataDir,
    /// The identity key could not be persisted: this run has an ephemeral PeerId.
    Identity,
    /// `verified.txt` could not be written: verdicts are kept in memory only.
    VerifiedFile,
    /// Content being served vanished (deleted, truncated, containerd restarted).
    ContentVanished,
}

impl FaultKind {
    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::SpoolWrite => "spool_write",
            FaultKind::SpoolSpace => "spool_space",
            FaultKind::DataDir => "data_dir",
            FaultKind::Identity => "identity",
            FaultKind::VerifiedFile => "verified_file",
            FaultKind::ContentVanished => "content_vanished",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// One kind's count since start and its latest occurrence, for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub count: u64,
    pub last_at: SystemTime,
    /// What happened last time, in words.
    pub last: String,
}

/// Registered as `peermirror_local_faults_total`. [`Default`] is an unregistered one (tests,
/// a spool made without metrics).
#[derive(Default)]
pub struct LocalFaults {
    total: Family<KindLabels, Counter>,
    seen: Mutex<BTreeMap<FaultKind, FaultRecord>>,
}

impl LocalFaults {
    pub fn register(r: &mut Registry) -> Self {
        LocalFaults {
            total: registered(
                r,
                "local_faults",
                "Faults of this node's own disk or content that cost a feature, never a response, by kind (spool_write, spool_space, data_dir, identity, verified_file, content_vanished)",
                Family::default(),
            ),
            seen: Mutex::default(),
        }
    }

    /// Counts one fault; `what` says what happened (shown by status).
    pub fn record(&self, kind: FaultKind, what: impl Into<String>) {
        self.total
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
        let last = what.into();
        let now = SystemTime::now();
        let mut seen = self.seen.locked();
        let r = seen.entry(kind).or_insert_with(|| FaultRecord {
            kind,
            count: 0,
            last_at: now,
            last: String::new(),
        });
        r.count += 1;
        r.last_at = now;
        r.last = last;
    }

    /// Every kind seen since start, in a stable order.
    pub fn snapshot(&self) -> Vec<FaultRecord> {
        self.seen.locked().values().cloned().collect()
    }

    /// How many of `kind` since start.
    pub fn count(&self, kind: FaultKind) -> u64 {
        self.seen.locked().get(&kind).map_or(0, |r| r.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_count_and_keep_the_latest_words() {
        let f = LocalFaults::default();
        f.record(FaultKind::SpoolWrite, "first");
        f.record(FaultKind::SpoolWrite, "second");
        f.record(FaultKind::DataDir, "ro");
        let s = f.snapshot();
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].kind, s[0].count, s[0].last.as_str()),
            (FaultKind::SpoolWrite, 2, "second")
        );
        assert_eq!((s[1].kind, s[1].count), (FaultKind::DataDir, 1));
        assert_eq!(f.count(FaultKind::SpoolSpace), 0);
    }
}
