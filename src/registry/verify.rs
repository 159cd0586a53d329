//! Checking local content before serving it to a peer.
//!
//! containerd does not re-verify its store on read, so a blob damaged on disk would be served
//! as is. The receiving node detects that at the end of the transfer, but by then containerd
//! holds the damaged prefix, resumes the rest from another host, and the pull fails. So a
//! node hashes a blob before its first upload to a peer, remembers the result until the stored
//! bytes change, and refuses (and stops advertising) a blob that does not match its digest.

use std::time::{Duration, Instant, SystemTime};

use futures_util::TryStreamExt;

use crate::content::{ContentSource, SourceError};
use crate::oci::{Digest, Sha256Verifier};
use crate::ttl::TtlMap;

/// Without a stamp from the source, a result is trusted this long.
const UNSTAMPED_TTL: Duration = Duration::from_secs(600);
const MAX_ENTRIES: usize = 100_000;
/// Results are judged by [`LocalVerifier::cached`], not by the map's expiry: they are kept
/// until the map is full, and a forgotten result just means hashing the blob again.
const KEEP: Duration = Duration::MAX;

#[derive(Clone, Copy, PartialEq, Eq)]
struct Entry {
    stamp: Option<(u64, SystemTime)>,
    at: Instant,
}

pub struct LocalVerifier {
    verified: TtlMap<Digest, Entry>,
}

impl Default for LocalVerifier {
    fn default() -> Self {
        LocalVerifier {
            verified: TtlMap::new(MAX_ENTRIES),
        }
    }
}

pub enum Verdict {
    Intact,
    /// The stored bytes do not hash to their name.
    Corrupt,
}

impl LocalVerifier {
    fn cached(&self, digest: &Digest, stamp: Option<(u64, SystemTime)>) -> bool {
        self.verified
            .get(digest)
            .is_some_and(|e| match (e.stamp, stamp) {
                (Some(a), Some(b)) => a == b,
                _ => e.at.elapsed() < UNSTAMPED_TTL,
            })
    }

    /// Hash the whole blob unless a still-valid result says it is intact.
    pub async fn check(
        &self,
        source: &dyn ContentSource,
        digest: &Digest,
    ) -> Result<Verdict, SourceError> {
        let stamp = source.stamp(digest).await;
        if self.cached(digest, stamp) {
            return Ok(Verdict::Intact);
        }
        let mut v = Sha256Verifier::new(*digest);
        let mut stream = source.read(digest, 0, None).await?;
        while let Some(chunk) = stream.try_next().await? {
            v.update(&chunk);
        }
        if !v.matches() {
            self.verified.remove(digest);
            return Ok(Verdict::Corrupt);
        }
        self.verified.insert(
            *digest,
            Entry {
                stamp,
                at: Instant::now(),
            },
            KEEP,
        );
        Ok(Verdict::Intact)
    }
}
