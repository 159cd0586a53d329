//! Upload limits, so even a trusted client cannot turn a node into a bulk-transfer proxy:
//! a cap on concurrent uploads and an optional egress rate shared by all of them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::content::ByteStream;
use crate::metrics::Metrics;
use crate::sync::MutexExt;

pub struct UploadLimits {
    slots: Option<Arc<Semaphore>>,
    egress: Option<Arc<TokenBucket>>,
    metrics: Arc<Metrics>,
}

/// Held by a response body for as long as it uploads.
pub struct UploadSlot {
    _permit: Option<OwnedSemaphorePermit>,
    metrics: Arc<Metrics>,
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
            metrics,
        }
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
}
