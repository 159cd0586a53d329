//! Blob GETs through the spool: every request for one digest on this node (containerd's
//! ranged chunks, several local clients) reads the one download from peers as it arrives.
//!
//! The first request claims the entry, finds providers and starts the download; later ones
//! attach to it. Each response is a window of the spool file; the spool releases the last
//! bytes of every window only once the whole blob matched its digest, so no response made of
//! unverified bytes ever completes. Blobs up to `--verify-before-send` are answered only once
//! verified, so a lie costs a retry from the others, never a broken body.

use std::sync::Arc;
use std::time::Duration;

use super::{Found, Mirror, MirrorError, Miss, Target};
use crate::content::Key;
use crate::metrics::ReasonLabels;
use crate::oci::{Digest, Name, RangeSpec};
use crate::routing::partial_records::Origin;
use crate::spool::{Claim, Entry, Failure};

/// How long a request waits for the download's first provider to tell the size.
const DESCRIPTOR_WAIT: Duration = Duration::from_secs(15);
/// How long a small blob's request waits for its verification (the download has its own
/// stall timeouts; this only bounds a request that would otherwise wait forever).
const SETTLE_WAIT: Duration = Duration::from_secs(300);
/// A reader with no new bytes for this long gives up (the download stalls out sooner).
const READER_STALL: Duration = Duration::from_secs(60);
/// Fresh downloads after a mismatch, each from providers not yet shunned.
const ATTEMPTS: usize = 3;

/// What the spool made of a request.
pub(super) enum Spooled {
    Found(Found),
    Miss(MirrorError),
    /// The blob does not fit in the spool: serve it the unspooled way.
    Bypass,
}

impl Mirror {
    /// GET a blob through the spool.
    pub(super) async fn spooled(
        &self,
        name: &Name,
        digest: Digest,
        range: Option<&RangeSpec>,
    ) -> Spooled {
        let Some(spool) = &self.spool else {
            return Spooled::Bypass;
        };
        // This node's predecessor in the rollout died: its containerd resumes from the upstream.
        if self.promoted(&digest) {
            return Spooled::Miss(MirrorError::NotFound(Miss::ProvidersFailed));
        }
        for _ in 0..ATTEMPTS {
            let entry = match spool.claim(digest) {
                Claim::Existing(e) => e,
                Claim::New(e, writer) => {
                    // Complete copies are taken as found. Copies only in flight mean a
                    // rollout is on: its coordinator places this node in the chain rather than
                    // on whichever in-flight copy the lookup found first (which would then feed
                    // two); if it has no place for it, those copies are followed all the same.
                    let found = match self.providers(Key::Digest(digest)).await {
                        Some(p) if p.has_complete() => Some(p),
                        dht => self.claim_or_follow(name, digest).await.or(dht),
                    };
                    let Some(providers) = found else {
                        writer.fail(Failure::NotFound);
                        return Spooled::Miss(MirrorError::NotFound(Miss::NoProvider));
                    };
                    self.spawn_download(providers, name, digest, writer);
                    e
                }
            };
            match self.read_entry(&entry, range).await {
                Err(Failure::Mismatch) => continue,
                Err(Failure::NoRoom) => return Spooled::Bypass,
                Err(Failure::NotFound) => {
                    return Spooled::Miss(MirrorError::NotFound(Miss::NoProvider));
                }
                Err(_) => return Spooled::Miss(MirrorError::NotFound(Miss::ProvidersFailed)),
                Ok(found) => return found,
            }
        }
        Spooled::Miss(MirrorError::NotFound(Miss::ProvidersFailed))
    }

    fn spawn_download(
        &self,
        providers: super::ProviderSet,
        name: &Name,
        digest: Digest,
        writer: crate::spool::Writer,
    ) {
        let fetcher = self.fetcher.clone();
        let path = Target::Blob(digest).path(name);
        let metrics = self.metrics.clone();
        let inflight = self.inflight.clone();
        tokio::spawn(async move {
            // Advertised once a provider answered: a peer that follows this copy then never
            // waits on a node still looking for a source (or on one that follows it back).
            let started = || {
                if let Some(f) = &inflight {
                    f.add(digest, Origin::Spool);
                }
            };
            let end = fetcher
                .download(providers, path, digest, writer, started)
                .await;
            metrics
                .spool
                .downloads
                .get_or_create(&ReasonLabels {
                    reason: end.as_str(),
                })
                .inc();
            // A verified copy stays advertised (and served) until containerd commits it.
            if end != super::transfer::SpoolEnd::Verified
                && let Some(f) = &inflight
            {
                f.remove(digest, Origin::Spool);
            }
        });
    }

    /// The client's window of an entry, once its size is known (and, for a small blob,
    /// once it is verified).
    async fn read_entry(
        &self,
        entry: &Arc<Entry>,
        range: Option<&RangeSpec>,
    ) -> Result<Spooled, Failure> {
        let descriptor = entry.descriptor(DESCRIPTOR_WAIT).await?;
        let size = descriptor.size;
        let Ok(window) = RangeSpec::window(range, size) else {
            return Ok(Spooled::Miss(MirrorError::RangeNotSatisfiable(size)));
        };
        if size <= self.config.verify_before_send {
            entry.settled(SETTLE_WAIT).await?;
        }
        let (start, end) = window.map_or((0, size.saturating_sub(1)), |r| (r.start, r.end));
        let body = if size == 0 {
            Box::pin(futures_util::stream::empty()) as crate::content::ByteStream
        } else {
            // The spool file failed and this window's bytes are gone from memory too: stream
            // it unspooled (nothing has been sent yet).
            let Some(body) = entry.reader(start, end, READER_STALL) else {
                return Ok(Spooled::Bypass);
            };
            body
        };
        Ok(Spooled::Found(Found {
            descriptor,
            window,
            body: Some(body),
        }))
    }
}
