//! Start-up of what serves blobs while they are still downloading: the spool (downloads from
//! peers, shared), containerd's ingest watcher (downloads from the upstream), and the
//! in-flight records that tell the other nodes about both.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::start::{Content, Routed};
use super::{DaemonError, SpoolSettings, Wiring};
use crate::containerd::ingest::{DEFAULT_POLL, IngestEvent, IngestWatcher};
use crate::content::{ContentSource, Index, IndexChange, Key};
use crate::metrics::FaultKind;
use crate::mirror::Mirror;
use crate::registry::Ingests;
use crate::routing::partial_records::{InFlight, Origin};
use crate::spool::Spool;

/// A verified spool copy nobody asked for in this long is dropped: containerd commits a
/// blob moments after its last byte, so an older one belongs to an abandoned pull.
const SPOOL_IDLE: std::time::Duration = std::time::Duration::from_secs(600);

/// Give the mirror its spool, start the in-flight records and, with a content dir, the
/// ingest watcher. Returns the mirror and what the registry needs to serve ingests.
pub(super) fn start_in_flight(
    w: &mut Wiring,
    mirror: Mirror,
    spool: Option<&SpoolSettings>,
    content_dir: Option<&PathBuf>,
    content: &Content,
    routed: &Routed,
) -> Result<(Arc<Mirror>, Option<Ingests>), DaemonError> {
    let (inflight, task) = InFlight::start(
        routed.router.clone(),
        content.index.clone(),
        w.metrics.clone(),
        w.shutdown.clone(),
    );
    w.tasks.spawn("in-flight records", async move {
        let _ = task.await;
    });
    let spool = spool.and_then(|settings| {
        let made = Spool::with_faults(
            settings.dir.clone(),
            settings.max_bytes.get(),
            w.metrics.faults.clone(),
        );
        // A feature, not a reason to stop serving local content and peers.
        made.map_err(|e| {
            tracing::warn!(error = %e, "the spool is off: blobs from peers stream unspooled, one download per request");
            w.metrics.faults.record(FaultKind::DataDir, e.to_string());
        })
        .ok()
    });
    let mirror = match spool {
        Some(spool) => {
            w.tasks.spawn(
                "spool: drop committed blobs",
                drop_committed(
                    content.index.clone(),
                    spool.clone(),
                    inflight.clone(),
                    w.metrics.clone(),
                    w.shutdown.clone(),
                ),
            );
            mirror.with_spool(spool, Some(inflight.clone()))
        }
        None => mirror,
    };
    let ingests = content_dir.map(|dir| {
        let watcher = Arc::new(IngestWatcher::new(dir.clone(), DEFAULT_POLL));
        let events = watcher.subscribe();
        w.tasks
            .spawn("ingest watcher", watcher.clone().run(w.shutdown.clone()));
        w.tasks.spawn(
            "ingest records",
            follow_ingests(
                events,
                watcher.clone(),
                inflight.clone(),
                Committed {
                    source: content.source.clone(),
                    index: content.index.clone(),
                },
                w.shutdown.clone(),
            ),
        );
        Ingests {
            watcher,
            content_dir: dir.clone(),
        }
    });
    Ok((Arc::new(mirror), ingests))
}

/// Once containerd holds a blob, the spool's copy (and its in-flight record) is not needed:
/// the index serves and advertises it as complete.
async fn drop_committed(
    index: Arc<Index>,
    spool: Arc<Spool>,
    inflight: InFlight,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut changes = index.subscribe();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            c = changes.recv() => match c {
                Ok(IndexChange::Added(Key::Digest(d))) => {
                    if spool.get(&d).is_some() {
                        spool.remove(&d);
                        inflight.remove(d, Origin::Spool);
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => sweep(&index, &spool, &inflight),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // Evicted and failed entries leave the spool on their own; their records go here.
            _ = tick.tick() => sweep(&index, &spool, &inflight),
        }
        let usage = spool.usage();
        metrics
            .spool
            .bytes
            .set(i64::try_from(usage.reserved).unwrap_or(i64::MAX));
    }
}

/// Drop spooled blobs the index holds now, whatever change was missed, and keep the
/// spool's records to what it still holds (evicted and failed entries leave on their own).
fn sweep(index: &Index, spool: &Spool, inflight: &InFlight) {
    spool.expire_idle(SPOOL_IDLE);
    let mut kept = Vec::new();
    for (d, _) in spool.digests() {
        if index.stat(&d).is_some() {
            spool.remove(&d);
        } else {
            kept.push(d);
        }
    }
    inflight.only(Origin::Spool, kept);
}

/// Where a blob whose ingest ended is looked for and indexed (see
/// [`crate::content::index_if_committed`]).
struct Committed {
    source: Arc<dyn ContentSource>,
    index: Arc<Index>,
}

/// How long the store gets to say whether an ended ingest was committed.
const COMMITTED_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Committed {
    /// Index `digest` if its ingest ended in a commit, without holding up the ingest events.
    fn check(&self, digest: crate::oci::Digest) {
        let (source, index) = (self.source.clone(), self.index.clone());
        tokio::spawn(async move {
            let found = tokio::time::timeout(
                COMMITTED_WAIT,
                crate::content::index_if_committed(source.as_ref(), &index, digest),
            )
            .await;
            match found {
                Ok(Ok(true)) => {
                    tracing::debug!(%digest, "committed blob indexed when its ingest ended")
                }
                Ok(Ok(false)) => {}
                // The image event indexes it later, as before.
                Ok(Err(e)) => {
                    tracing::debug!(%digest, error = %e, "cannot tell whether an ended ingest was committed")
                }
                Err(_) => {
                    tracing::debug!(%digest, "the store did not say in time whether an ended ingest was committed")
                }
            }
        });
    }
}

/// Advertise what containerd is downloading, for as long as it is, and index each blob whose
/// download was committed.
async fn follow_ingests(
    mut events: broadcast::Receiver<IngestEvent>,
    watcher: Arc<IngestWatcher>,
    inflight: InFlight,
    committed: Committed,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.recv() => e,
        };
        match event {
            // Without a size the blob cannot be served (the answer must state it).
            Ok(IngestEvent::Started {
                digest,
                total: Some(_),
            }) => inflight.add(digest, Origin::Ingest),
            Ok(IngestEvent::Started { .. }) => {}
            Ok(IngestEvent::Ended { digest }) => {
                inflight.remove(digest, Origin::Ingest);
                committed.check(digest);
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Re-add what is in flight now; records of ended ones expire with their TTL.
                for i in watcher.current() {
                    if i.total.is_some() {
                        inflight.add(i.digest, Origin::Ingest);
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
