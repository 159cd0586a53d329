//! HEADs by digest whose size reaches containerd only once verified, and the small verified
//! bodies kept for the GET that follows.
//!
//! containerd resolves a reference by digest with a HEAD and then reads exactly the size the
//! HEAD gave: an inflated `Content-Length` from a lying provider makes the correct bytes of
//! the GET "unexpected EOF", with no fallback. So a manifest's HEAD fetches the manifest whole
//! and verifies it (manifests are small), and so does a blob's HEAD when no relayed manifest
//! vouches for its size and the size claimed is small enough to fetch whole. A larger blob's
//! claimed size is answered as is: containerd takes a blob HEAD's size only when it resolves
//! a root by digest, and a root is a manifest (read whole, far below that size).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt;

use super::{Found, Mirror, MirrorError, Miss, ProviderSet};
use crate::content::Descriptor;
use crate::oci::Digest;
use crate::ttl::TtlMap;

/// A verified body kept for the GET after its HEAD only up to this size (memory stays
/// bounded at [`KEEP`] times this).
const KEEP_MAX: u64 = 4 * 1024 * 1024;
/// Verified bodies kept at once.
pub(super) const KEEP: usize = 8;
/// containerd's GET follows its HEAD within moments.
const KEEP_FOR: Duration = Duration::from_secs(60);
/// The largest manifest a HEAD fetches whole to verify (OCI registries accept at least
/// 4 MiB; containerd reads manifests whole).
const MANIFEST_MAX: u64 = 16 * 1024 * 1024;

/// Verified small bodies by digest.
pub(super) type Kept = TtlMap<Digest, (Descriptor, Bytes)>;

impl Mirror {
    /// The descriptor a HEAD by digest answers with: the body fetched whole and verified for
    /// a manifest, and for a blob whose claimed size (`claimed`, its providers' HEAD) no
    /// trusted descriptor checked and that is at most `--verify-before-send`.
    pub(super) async fn head_verified(
        &self,
        providers: ProviderSet,
        path: String,
        digest: Digest,
        claimed: Option<Descriptor>,
    ) -> Result<Descriptor, MirrorError> {
        let limit = match &claimed {
            None => MANIFEST_MAX,
            Some(d) if self.book.trusted(&digest).is_some() => return Ok(d.clone()),
            Some(d) if d.size > self.config.verify_before_send => return Ok(d.clone()),
            Some(_) => self.config.verify_before_send,
        };
        let found = self.fetcher.get(providers, path, digest, None).await?;
        let refused = MirrorError::NotFound(Miss::ProvidersFailed);
        if found.descriptor.size > limit {
            return Err(refused);
        }
        let Some(body) = found.body else {
            return Err(refused);
        };
        // The stream ends cleanly only once the bytes matched the digest.
        let bytes = body
            .try_fold(BytesMut::new(), |mut acc, chunk| async move {
                acc.extend_from_slice(&chunk);
                Ok(acc)
            })
            .await
            .map_err(|_| MirrorError::NotFound(Miss::ProvidersFailed))?
            .freeze();
        let mut descriptor = found.descriptor;
        descriptor.size = bytes.len() as u64;
        if descriptor.size <= KEEP_MAX {
            self.kept
                .insert(digest, (descriptor.clone(), bytes), KEEP_FOR);
        }
        Ok(descriptor)
    }

    /// A GET answered from a body a HEAD verified a moment ago.
    pub(super) fn kept(
        &self,
        digest: &Digest,
        range: Option<&crate::oci::RangeSpec>,
    ) -> Option<Result<Found, MirrorError>> {
        let (descriptor, bytes) = self.kept.get(digest)?;
        let size = descriptor.size;
        let window = match crate::oci::RangeSpec::window(range, size) {
            Ok(w) => w,
            Err(_) => return Some(Err(MirrorError::RangeNotSatisfiable(size))),
        };
        let part = match window {
            Some(r) => {
                let start = usize::try_from(r.start).ok()?;
                let end = usize::try_from(r.end).ok()?.checked_add(1)?;
                if start > end || end > bytes.len() {
                    return None;
                }
                bytes.slice(start..end)
            }
            None => bytes,
        };
        let body = futures_util::stream::once(async move { Ok(part) });
        Some(Ok(Found {
            descriptor,
            window,
            body: Some(Box::pin(body)),
        }))
    }
}
