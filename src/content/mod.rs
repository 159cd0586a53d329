//! The local content seam: what this node's containerd holds.
//!
//! [`ContentSource`] is the narrow interface to containerd (list images, stat, read, events);
//! [`MemorySource`] implements it in memory for tests, `crate::containerd::ContainerdSource`
//! against the real daemon. [`Index`] is the in-memory view built from a source by the
//! [`Indexer`]: which digests this node can serve (with size and media type) and which tags
//! point at which manifest. The registry endpoint answers from the index and reads through the
//! source; the router advertises what the index holds.

mod index;
mod indexer;
mod memory;

use std::io;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::oci::Digest;

pub use index::{Index, IndexChange, Key};
/// For the fuzz targets (`fuzz/`): walks one image as the indexer does.
#[doc(hidden)]
pub use indexer::walk_image;
pub use indexer::{Indexer, Readiness, index_if_committed};
pub use memory::MemorySource;

/// A stream of blob bytes, produced on demand in large chunks (256 KiB from the content dir).
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A stream of changes reported by the content source.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<SourceEvent, SourceError>> + Send>>;

/// A blob's identity, size and media type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// An image record: its name (`registry/repo:tag`) and its target descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub target: Descriptor,
}

/// What changed in the source since the subscription began.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceEvent {
    /// An image was created or updated: re-walk it.
    ImageChanged(String),
    ImageDeleted(String),
    /// A blob was committed to the store (containerd 2.1+), possibly before its image exists.
    ContentCommitted {
        digest: Digest,
        size: u64,
    },
    ContentDeleted(Digest),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("content {0} not found")]
    NotFound(Digest),
    /// The source (containerd) cannot be reached or answered with an error; retry later.
    #[error("content source unavailable: {0}")]
    Unavailable(String),
    #[error("content {digest} is larger than the {limit}-byte limit for manifests")]
    TooLarge { digest: Digest, limit: u64 },
    #[error("I/O error reading content: {0}")]
    Io(#[from] io::Error),
}

impl SourceError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, SourceError::NotFound(_))
    }
}

/// The node's local content store, as containerd exposes it.
#[async_trait]
pub trait ContentSource: Send + Sync + 'static {
    async fn list_images(&self) -> Result<Vec<Image>, SourceError>;

    /// The image with this name, or `None` if it does not exist.
    async fn get_image(&self, name: &str) -> Result<Option<Image>, SourceError>;

    /// The size of a blob if the store holds it.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, SourceError>;

    /// Stream `len` bytes (to the end when `None`) of a blob from `offset`.
    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, SourceError>;

    /// Subscribe to image and content changes. Implementations subscribe before returning,
    /// so a listing made after this call misses nothing.
    async fn subscribe(&self) -> Result<EventStream, SourceError>;

    /// A cheap stamp of a blob's stored bytes (length and modification time) when the source
    /// can tell, so a verification result can be reused until the bytes change.
    async fn stamp(&self, _digest: &Digest) -> Option<(u64, std::time::SystemTime)> {
        None
    }
}

/// The largest manifest or index read into memory; the distribution spec's registries use 4 MiB.
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// Read a small blob (a manifest) whole, refusing anything over `limit` bytes.
pub async fn read_small(
    source: &dyn ContentSource,
    digest: &Digest,
    size: u64,
    limit: u64,
) -> Result<Vec<u8>, SourceError> {
    use futures_util::TryStreamExt;
    if size > limit {
        return Err(SourceError::TooLarge {
            digest: *digest,
            limit,
        });
    }
    let mut stream = source.read(digest, 0, None).await?;
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    while let Some(chunk) = stream.try_next().await? {
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(SourceError::TooLarge {
                digest: *digest,
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
