//! Upload limits, so even a trusted client cannot turn a node into a bulk-transfer proxy:
//! a cap on concurrent uploads and an optional egress rate shared by all of them; and a cap
//! on the peers streaming one blob from this node at once, so a rollout spreads into a chain
//! of nodes each feeding one or two others instead of every node sharing one uplink.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::content::ByteStream;
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::sync::MutexExt;

pub struct UploadLimits {
    slots: Option<Arc<Semaphore>>,
    egress: Option<Arc<TokenBucket>>,
    followers: Option<Arc<Followers>>,
    metrics: Arc<Metrics>,
}

/// Peers streaming each blob from this node now (`--max-followers`). A peer asks for a blob
/// while it pulls it itself, and serves it on as it arrives: with one or two followers per
/// copy, every node uploads about what it downloads and the slowest pull stays near a lone
/// one, instead of one uplink split N ways.
struct Followers {
    cap: usize,
    per: Mutex<HashMap<Digest, usize>>,
}

/// Held by a response body for as long as one peer streams one blob from this node.
pub struct FollowGuard {
    followers: Arc<Followers>,
    digest: Digest,
}

impl Drop for FollowGuard {
    fn drop(&mut self) {
        let mut per = self.followers.per.locked();
        if let Some(n) = per.get_mut(&self.digest) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.digest);
            }
        }
    }
}

/// Held by a response body for as long as it uploads.
pub struct UploadSlot {
    _permit: Option<OwnedSemaphorePermit>,
    /// The place among the blob's followers, when a peer streams it.
    _follow: Option<FollowGuard>,
    metrics: Arc<Metrics>,
}

impl UploadSlot {
    /// Hold `follow` for as long as this body uploads.
    pub fn following(mut self, follow: Option<FollowGuard>) -> Self {
        self._follow = follow;
        self
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.metrics.uploads.in_flight.dec();
    }
}

impl UploadLimits {
    /// `max_uploads` 0 = unlimited; `egress_bps` 0 = unlimited.
    pub fn new(max_uploads: usize, egress_bps: u64, metrics: Arc<Metrics>) -> Self {
        UploadLimits {
            slots: (max_uploads > 0).then(|| Arc::new(Semaphore::new(max_uploads))),
            egress: (egress_bps > 0).then(|| Arc::new(TokenBucket::new(egress_bps))),
            followers: None,
            metrics,
        }
    }

    /// At most `cap` peers stream one blob at once (0 = unlimited).
    pub fn with_max_followers(mut self, cap: usize) -> Self {
        self.followers = (cap > 0).then(|| {
            Arc::new(Followers {
                cap,
                per: Mutex::default(),
            })
        });
        self
    }

    /// A place for one more peer streaming `digest`, or `Err(followers)` when it already
    /// has its cap of them (answer "busy": the peer asks another copy). `crowd`: the peer
    /// found no other copy with room, so it is let in beyond the cap rather than fail.
    pub fn follow(&self, digest: Digest, crowd: bool) -> Result<Option<FollowGuard>, usize> {
        let Some(f) = &self.followers else {
            return Ok(None);
        };
        let mut per = f.per.locked();
        let n = per.entry(digest).or_insert(0);
        if *n >= f.cap && !crowd {
            let busy = *n;
            drop(per);
            self.metrics.uploads.followers_refused.inc();
            return Err(busy);
        }
        *n += 1;
        Ok(Some(FollowGuard {
            followers: f.clone(),
            digest,
        }))
    }

    /// A slot for one upload, or `None` when all are taken (answer 503).
    pub fn try_start(&self) -> Option<UploadSlot> {
        let permit = match &self.slots {
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    self.metrics.uploads.rejected.inc();
                    return None;
                }
            },
            None => None,
        };
        self.metrics.uploads.in_flight.inc();
        Some(UploadSlot {
            _permit: permit,
            _follow: None,
            metrics: self.metrics.clone(),
        })
    }

    /// Pace a body through the shared egress budget.
    pub fn pace(&self, body: ByteStream) -> ByteStream {
        let Some(bucket) = self.egress.clone() else {
            return body;
        };
        let metrics = self.metrics.clone();
        Box::pin(body.then(move |item| {
            let bucket = bucket.clone();
            let metrics = metrics.clone();
            async move {
                if let Ok(chunk) = &item {
                    let wait = bucket.take(chunk.len() as u64);
                    if !wait.is_zero() {
                        metrics
                            .uploads
                            .egress_throttled_seconds
                            .inc_by(wait.as_secs_f64());
                        tokio::time::sleep(wait).await;
                    }
                }
                item
            }
        }))
    }
}

/// A token bucket that lends into the future: `take` returns how long the caller must wait
/// for its bytes to fit the rate, so concurrent uploads share it fairly in arrival order.
pub struct TokenBucket {
    rate: f64,
    /// When the bytes granted so far will have been "paid" for.
    next_free: Mutex<Instant>,
}

impl TokenBucket {
    pub fn new(bytes_per_second: u64) -> Self {
        // Start with a full second's burst available.
        let now = Instant::now();
        TokenBucket {
            rate: bytes_per_second as f64,
            next_free: Mutex::new(now.checked_sub(Duration::from_secs(1)).unwrap_or(now)),
        }
    }

    pub fn take(&self, bytes: u64) -> Duration {
        let now = Instant::now();
        let mut next = self.next_free.locked();
        // Allow a burst of one second's worth, no more.
        let earliest = now - Duration::from_secs(1);
        if *next < earliest {
            *next = earliest;
        }
        *next += Duration::from_secs_f64(bytes as f64 / self.rate);
        next.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_paces_to_rate() {
        let b = TokenBucket::new(1000);
        // One second of burst is free, then each 1000 bytes costs a second.
        assert_eq!(b.take(1000), Duration::ZERO);
        assert_eq!(b.take(1000), Duration::from_secs(1));
        assert_eq!(b.take(500), Duration::from_millis(1500));
    }

    #[test]
    fn slots_are_limited_and_released() {
        let m = Arc::new(Metrics::new());
        let l = UploadLimits::new(1, 0, m.clone());
        let a = l.try_start();
        assert!(a.is_some());
        assert!(l.try_start().is_none());
        drop(a);
        assert!(l.try_start().is_some());
        assert_eq!(m.uploads.rejected.get(), 1);
    }

    #[test]
    fn followers_are_capped_per_blob_and_released() {
        let m = Arc::new(Metrics::new());
        let l = UploadLimits::new(0, 0, m.clone()).with_max_followers(1);
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let first = l.follow(a, false).unwrap();
        assert_eq!(
            l.follow(a, false).err(),
            Some(1),
            "a second follower of a is refused"
        );
        assert!(l.follow(b, false).is_ok(), "another blob has its own cap");
        let crowded = l.follow(a, true).unwrap();
        assert_eq!(l.follow(a, false).err(), Some(2));
        drop(first);
        drop(crowded);
        assert!(l.follow(a, false).is_ok(), "released with the body");
        assert_eq!(m.uploads.followers_refused.get(), 2);
        let unlimited = UploadLimits::new(0, 0, m).with_max_followers(0);
        assert!(unlimited.follow(a, false).unwrap().is_none());
    }
}
