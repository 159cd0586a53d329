//! The indexer: fills the [`Index`] from a content source's listing, then follows its events.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::index::WalkedImage;
use super::{ContentSource, Descriptor, Image, Index, MAX_MANIFEST_SIZE, SourceError, SourceEvent};
use crate::oci::{TagKey, children, is_manifest_media_type};

/// Whether the content source is reachable and the index reflects it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// The source answered the last call.
    pub source_up: bool,
    /// A full listing has been indexed since the source came (back) up.
    pub loaded: bool,
    /// Why it is not ready, for `/readyz` and `status`.
    pub reason: Option<String>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.source_up && self.loaded
    }
}

/// Keeps an [`Index`] in step with a [`ContentSource`]: subscribe, list, walk, then follow
/// events; on any source failure mark not-ready, back off, and start over.
pub struct Indexer {
    source: Arc<dyn ContentSource>,
    index: Arc<Index>,
    ready: watch::Sender<Readiness>,
}

/// Bounds on a walk, so a hostile or broken manifest graph cannot run away.
const MAX_BLOBS_PER_IMAGE: usize = 10_000;
const MAX_DEPTH: usize = 4;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A full re-listing now and then repairs anything an event stream may have missed.
const RESYNC_INTERVAL: Duration = Duration::from_secs(300);

impl Indexer {
    pub fn new(source: Arc<dyn ContentSource>, index: Arc<Index>) -> Self {
        Indexer {
            source,
            index,
            ready: watch::channel(Readiness {
                reason: Some("content index not loaded yet".into()),
                ..Readiness::default()
            })
            .0,
        }
    }

    pub fn readiness(&self) -> watch::Receiver<Readiness> {
        self.ready.subscribe()
    }

    /// Run until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_START;
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.sync_and_follow() => r,
            };
            let reason = match result {
                Ok(()) => "content source event stream ended".to_string(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(%reason, retry_in = ?backoff, "content source not ready");
            self.ready.send_replace(Readiness {
                source_up: false,
                loaded: false,
                reason: Some(reason),
            });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if self.ready.borrow().source_up {
                backoff = BACKOFF_START;
            }
        }
    }

    /// List every image, walk it, and replace the index with the result.
    async fn full_sync(&self) -> Result<(), SourceError> {
        let images = self.source.list_images().await?;
        let mut walked = Vec::with_capacity(images.len());
        for image in &images {
            walked.push(walk_image(self.source.as_ref(), image).await?);
        }
        // Blobs of a pull still in progress (content events) stay while the store has them.
        let mut loose = Vec::new();
        for desc in self.index.loose_blobs() {
            if self.source.stat(&desc.digest).await?.is_some() {
                loose.push(desc);
            }
        }
        self.index.replace_all(walked, loose);
        Ok(())
    }

    /// One connected period: returns when the source fails or the event stream ends.
    async fn sync_and_follow(&self) -> Result<(), SourceError> {
        // Subscribe first so nothing that happens during the listing is missed.
        let mut events = self.source.subscribe().await?;
        self.full_sync().await?;
        tracing::info!(
            images = self.index.image_count(),
            blobs = self.index.blob_count(),
            tags = self.index.tag_count(),
            "content index loaded"
        );
        self.ready.send_replace(Readiness {
            source_up: true,
            loaded: true,
            reason: None,
        });
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        resync.tick().await;
        loop {
            let event = tokio::select! {
                e = events.next() => match e {
                    Some(e) => e,
                    None => break,
                },
                _ = resync.tick() => {
                    self.full_sync().await?;
                    continue;
                }
            };
            match event? {
                SourceEvent::ImageChanged(name) => match self.source.get_image(&name).await? {
                    Some(image) => {
                        let w = walk_image(self.source.as_ref(), &image).await?;
                        tracing::debug!(image = %name, blobs = w.blobs.len(), "image indexed");
                        self.index.set_image(w);
                    }
                    None => self.index.remove_image(&name),
                },
                SourceEvent::ImageDeleted(name) => {
                    tracing::debug!(image = %name, "image removed from index");
                    self.index.remove_image(&name);
                }
                SourceEvent::ContentCommitted { digest, size } => {
                    if index_committed(self.source.as_ref(), &self.index, digest, size).await? {
                        tracing::debug!(%digest, size, "committed blob indexed before its image");
                    }
                }
                SourceEvent::ContentDeleted(d) => self.index.remove_content(&d),
            }
        }
        Ok(())
    }
}

/// Walk an image from its target: index -> manifests -> config + layers. Children the store
/// does not hold (other platforms, say) are skipped; a manifest that does not parse is kept as
/// a blob but not descended into.
pub async fn walk_image(
    source: &dyn ContentSource,
    image: &Image,
) -> Result<WalkedImage, SourceError> {
    let mut blobs: Vec<Descriptor> = Vec::new();
    let mut seen = HashSet::new();
    let mut frontier = vec![image.target.clone()];
    for _depth in 0..MAX_DEPTH {
        let mut next = Vec::new();
        for desc in frontier {
            if !seen.insert(desc.digest) || blobs.len() >= MAX_BLOBS_PER_IMAGE {
                continue;
            }
            let Some(size) = source.stat(&desc.digest).await? else {
                continue;
            };
            let media_type = desc.media_type.clone();
            if is_manifest_media_type(&media_type) || looks_like_manifest(&media_type) {
                match super::read_small(source, &desc.digest, size, MAX_MANIFEST_SIZE).await {
                    Ok(data) => match children(&media_type, &data) {
                        Ok(kids) => next.extend(kids.into_iter().map(|c| Descriptor {
                            digest: c.digest,
                            size: c.size,
                            media_type: c.media_type,
                        })),
                        Err(e) => {
                            tracing::warn!(digest = %desc.digest, error = %e, "manifest does not parse; not walking its children")
                        }
                    },
                    Err(e) if e.is_not_found() => continue,
                    Err(e @ SourceError::TooLarge { .. }) => {
                        tracing::warn!(error = %e, "skipping oversized manifest")
                    }
                    Err(e) => return Err(e),
                }
            }
            blobs.push(Descriptor {
                digest: desc.digest,
                size,
                media_type,
            });
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    Ok(WalkedImage {
        name: image.name.clone(),
        tag: TagKey::from_image_name(&image.name),
        target: image.target.digest,
        blobs,
    })
}

/// The descriptor to index for a blob committed before its image (content events carry only
/// digest and size). A manifest needs its media type to be served (containerd refuses a
/// manifest without one), so a small blob is looked at: a manifest that names its media type
/// gets it, one that does not is left to the image walk; anything else (configs, layers) is
/// served as a plain blob. `None` when the blob is already gone.
async fn committed_blob(
    source: &dyn ContentSource,
    digest: crate::oci::Digest,
    size: u64,
) -> Result<Option<Descriptor>, SourceError> {
    let mut media_type = String::new();
    if size <= MAX_MANIFEST_SIZE {
        let data = match super::read_small(source, &digest, size, MAX_MANIFEST_SIZE).await {
            Ok(data) => data,
            Err(e @ SourceError::Unavailable(_)) => return Err(e),
            Err(_) => return Ok(None),
        };
        if let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice(&data) {
            match doc.get("mediaType").and_then(|m| m.as_str()) {
                Some(mt) if is_manifest_media_type(mt) => media_type = mt.to_string(),
                _ if doc.contains_key("manifests") || doc.contains_key("layers") => {
                    return Ok(None);
                }
                _ => {}
            }
        }
    }
    Ok(Some(Descriptor {
        digest,
        size,
        media_type,
    }))
}

/// Index `digest` as a loose blob if the store holds it (an ingest that ended was committed,
/// not aborted). containerd 1.6 and 1.7 send no event per committed blob, only one per image
/// once the whole pull is done, so without this a blob whose short-lived ingest a follower
/// missed (a config blob ends in milliseconds) is served nowhere until the image is: the
/// follower waits for the whole pull. Whether it was added.
pub async fn index_if_committed(
    source: &dyn ContentSource,
    index: &Index,
    digest: crate::oci::Digest,
) -> Result<bool, SourceError> {
    let Some(size) = source.stat(&digest).await? else {
        return Ok(false);
    };
    index_committed(source, index, digest, size).await
}

/// Index the committed blob `digest` of `size` bytes as a loose blob unless it is indexed
/// already or is a manifest without a media type (it waits for its image). Whether it was added.
async fn index_committed(
    source: &dyn ContentSource,
    index: &Index,
    digest: crate::oci::Digest,
    size: u64,
) -> Result<bool, SourceError> {
    if index.stat(&digest).is_some() {
        return Ok(false);
    }
    match committed_blob(source, digest, size).await? {
        Some(desc) => {
            index.add_blob(desc);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Old Docker and some tools leave the descriptor media type empty; treat JSON-ish as a manifest.
fn looks_like_manifest(mt: &str) -> bool {
    mt.is_empty() || mt.ends_with("manifest.v1+json") || mt.ends_with("index.v1+json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::MemorySource;

    #[tokio::test]
    async fn a_full_listing_keeps_committed_blobs_the_store_still_has() {
        let source = Arc::new(MemorySource::new());
        let index = Arc::new(Index::new());
        let indexer = Indexer::new(source.clone(), index.clone());
        // Two layers of a pull in progress, indexed from content events.
        let kept = source.commit_blob(vec![1u8; 3000]);
        let gone = source.commit_blob(vec![2u8; 3000]);
        index.add_blob(kept.clone());
        index.add_blob(gone.clone());
        source.remove_blob(&gone.digest);
        indexer.full_sync().await.unwrap();
        assert!(index.stat(&kept.digest).is_some(), "dropped by the listing");
        assert!(index.stat(&gone.digest).is_none(), "kept after deletion");
    }

    #[tokio::test]
    async fn a_blob_whose_ingest_ended_is_indexed_only_if_the_store_holds_it() {
        let source = MemorySource::new();
        let index = Index::new();
        // add_blob_as: in the store without an event, as containerd 1.6 commits a blob.
        let data = vec![3u8; 4000];
        let digest = crate::oci::Digest::of(&data);
        source.add_blob_as(digest, data);
        let aborted = crate::oci::Digest::of(b"never committed");
        assert!(!index_if_committed(&source, &index, aborted).await.unwrap());
        assert!(index.stat(&aborted).is_none());
        assert!(index_if_committed(&source, &index, digest).await.unwrap());
        assert_eq!(index.stat(&digest).map(|d| d.size), Some(4000));
        // Once indexed, nothing more to do.
        assert!(!index_if_committed(&source, &index, digest).await.unwrap());
    }

    #[tokio::test]
    async fn committed_blobs_are_indexed_before_their_image() {
        let source = Arc::new(MemorySource::new());
        let index = Arc::new(Index::new());
        let indexer = Indexer::new(source.clone(), index.clone());
        let mut ready = indexer.readiness();
        let stop = CancellationToken::new();
        let task = tokio::spawn(indexer.run(stop.clone()));
        ready.wait_for(Readiness::is_ready).await.unwrap();

        let layer = source.commit_blob(vec![7u8; 5000]);
        let manifest = source.commit_blob(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#.to_vec(),
        );
        let bare = source.commit_blob(br#"{"schemaVersion":2,"layers":[]}"#.to_vec());
        let mut changes = index.subscribe();
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            while index.stat(&manifest.digest).is_none() {
                let _ = changes.recv().await;
            }
        })
        .await;
        assert!(seen.is_ok(), "committed blobs never indexed");
        let got = index.stat(&layer.digest).expect("layer indexed");
        assert_eq!((got.size, got.media_type.as_str()), (5000, ""));
        assert_eq!(
            index.stat(&manifest.digest).unwrap().media_type,
            crate::oci::media_types::OCI_MANIFEST
        );
        assert!(
            index.stat(&bare.digest).is_none(),
            "a manifest without a media type must wait for its image"
        );
        assert_eq!(index.image_count(), 0);
        stop.cancel();
        task.await.unwrap();
    }
}
