//! Serving a peer a blob this node is still downloading: from the mirror's spool (fetched
//! from other peers), else from containerd's ingest (fetched from the upstream). What exists
//! goes out at once, then the body follows the growing file. The asker verifies the whole
//! digest, as with any peer; a spool reader also holds back its last bytes until this node
//! verified the blob, and an ingest reader ends with an error if containerd aborts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{Answer, Asked, Registry, Source};
use crate::containerd::ingest::{self, IngestWatcher};
use crate::content::{ByteStream, Descriptor};
use crate::oci::{Digest, ErrorCode, OciError, RangeSpec};
use crate::registry::RouteKind;

/// A peer waits this long for the spool's first provider to tell the size.
const SIZE_WAIT: Duration = Duration::from_secs(3);
/// A follower with no new bytes for this long ends with an error, so the asker moves to
/// another provider (its own stall timeout is usually shorter).
const FOLLOW_STALL: Duration = Duration::from_secs(30);

/// containerd's ingest dir, watched for blobs it is downloading.
pub struct Ingests {
    pub watcher: Arc<IngestWatcher>,
    pub content_dir: PathBuf,
}

impl Registry {
    /// A peer asks for a blob the index lacks: answer from a download in progress, if any.
    pub(super) async fn in_flight(&self, asked: &Asked, digest: &Digest) -> Option<Answer> {
        let (desc, open) = self.in_flight_source(digest).await?;
        let Ok(window) = RangeSpec::window(asked.range.as_ref(), desc.size) else {
            return Some(Answer::unsatisfiable(desc.size, RouteKind::Blob));
        };
        let mut a = self
            .respond(
                asked,
                &desc,
                window,
                RouteKind::Blob,
                |offset, len| async move {
                    if len == 0 {
                        return Ok(Box::pin(futures_util::stream::empty()) as ByteStream);
                    }
                    // The copy lost bytes this window needs: a miss, before any header.
                    open.open(offset, offset + len - 1).ok_or_else(|| {
                        Answer::error(
                            OciError::new(
                                ErrorCode::BlobUnknown,
                                "the in-flight copy is no longer available",
                            ),
                            RouteKind::Blob,
                        )
                    })
                },
            )
            .await;
        if a.response.status().is_success() {
            a.source = Source::InFlight;
        }
        Some(a)
    }

    /// The spool first (its copy is being verified here), else containerd's ingest (only
    /// when containerd knows the size: the answer must state it).
    async fn in_flight_source(&self, digest: &Digest) -> Option<(Descriptor, Opener)> {
        if let Some(entry) = self.mirror.as_ref().and_then(|m| m.spool()?.get(digest))
            && let Ok(desc) = entry.descriptor(SIZE_WAIT).await
        {
            return Some((desc, Opener::Spool(entry)));
        }
        let ingests = self.ingests.as_ref()?;
        let found = ingests.watcher.get(digest)?;
        let size = found.total?;
        let desc = Descriptor {
            digest: *digest,
            size,
            media_type: String::new(),
        };
        Some((desc, Opener::Ingest(found, ingests.content_dir.clone())))
    }
}

/// Where an in-flight body is read from.
enum Opener {
    Spool(Arc<crate::spool::Entry>),
    Ingest(ingest::Ingest, PathBuf),
}

impl Opener {
    /// Bytes `start..=end`, following the download; `None` when they are gone.
    fn open(self, start: u64, end: u64) -> Option<ByteStream> {
        match self {
            Opener::Spool(e) => e.reader(start, end, FOLLOW_STALL),
            Opener::Ingest(i, dir) => Some(ingest::follow(&i, &dir, start, end, FOLLOW_STALL)),
        }
    }
}
