//! Recent activity for the status page (`peermirror status web`): the last requests served
//! and bytes by source over the last minutes. Both live in bounded rings in memory, so the
//! page costs a fixed few kilobytes however busy the node is, and nothing is written to disk.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::registry::{AccessSink, RequestEntry, Source};
use crate::sync::MutexExt;

/// Requests kept for the page: enough to follow one pull, few enough to render at once.
pub const RECENT_REQUESTS: usize = 100;
/// A request path longer than this is cut (paths are the client's, not ours to bound).
const MAX_PATH_CHARS: usize = 300;
/// How often the byte counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(15);
/// Fifteen minutes of samples, plus the one the first interval starts from.
pub const SAMPLES: usize = 61;

#[derive(Default)]
struct Requests {
    ring: VecDeque<RequestEntry>,
    /// Requests answered as a miss since start (the chart shows misses as counts: their
    /// bytes came from the upstream, which this node never sees).
    misses: u64,
}

/// The last [`RECENT_REQUESTS`] requests; the daemon makes it the registry's [`AccessSink`].
#[derive(Default)]
pub struct RecentRequests(Mutex<Requests>);

impl AccessSink for RecentRequests {
    fn record(&self, entry: RequestEntry) {
        self.push(entry);
    }
}

impl RecentRequests {
    pub fn push(&self, mut entry: RequestEntry) {
        if entry.path.chars().count() > MAX_PATH_CHARS {
            entry.path = entry.path.chars().take(MAX_PATH_CHARS).collect::<String>() + "…";
        }
        let mut r = self.0.locked();
        if entry.source == Source::Miss {
            r.misses += 1;
        }
        if r.ring.len() == RECENT_REQUESTS {
            r.ring.pop_front();
        }
        r.ring.push_back(entry);
    }

    /// Newest first.
    pub fn snapshot(&self) -> Vec<RequestEntry> {
        let r = self.0.locked();
        r.ring.iter().rev().cloned().collect()
    }

    pub fn misses(&self) -> u64 {
        self.0.locked().misses
    }
}

/// Cumulative totals at one moment; the page draws the differences between neighbours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrafficSample {
    pub at: SystemTime,
    pub local_bytes: u64,
    pub peer_bytes: u64,
    pub in_flight_bytes: u64,
    pub miss_requests: u64,
}

impl TrafficSample {
    pub fn now(metrics: &Metrics, requests: &RecentRequests) -> Self {
        let bytes = |source: Source| {
            metrics
                .registry
                .response_bytes
                .get_or_create(&source.labels())
                .get()
        };
        TrafficSample {
            at: SystemTime::now(),
            local_bytes: bytes(Source::Local),
            peer_bytes: bytes(Source::Peer),
            in_flight_bytes: bytes(Source::InFlight),
            miss_requests: requests.misses(),
        }
    }
}

/// The last [`SAMPLES`] samples of the byte counters.
#[derive(Default)]
pub struct Traffic(Mutex<VecDeque<TrafficSample>>);

impl Traffic {
    pub fn record(&self, sample: TrafficSample) {
        let mut ring = self.0.locked();
        if ring.len() == SAMPLES {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// Oldest first, ending with `now` so the newest interval shows before its sample is due.
    pub fn snapshot(&self, now: TrafficSample) -> Vec<TrafficSample> {
        let ring = self.0.locked();
        ring.iter().copied().chain(std::iter::once(now)).collect()
    }

    /// Sample `metrics` and `requests` every `every` until shutdown.
    pub async fn run(
        &self,
        metrics: &Metrics,
        requests: &RecentRequests,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.record(TrafficSample::now(metrics, requests)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize, source: Source) -> RequestEntry {
        RequestEntry {
            at: SystemTime::now(),
            method: "GET".into(),
            path: format!("/v2/r/blobs/{i}"),
            remote: "127.0.0.1:1".into(),
            client: "anonymous".into(),
            status: 200,
            source,
            bytes: i as u64,
            complete: true,
            duration: Duration::from_millis(1),
        }
    }

    #[test]
    fn the_request_ring_keeps_the_newest_hundred_newest_first() {
        let r = RecentRequests::default();
        for i in 0..250 {
            r.push(entry(
                i,
                if i % 10 == 0 {
                    Source::Miss
                } else {
                    Source::Local
                },
            ));
        }
        let s = r.snapshot();
        assert_eq!(s.len(), RECENT_REQUESTS);
        assert_eq!(s[0].bytes, 249);
        assert_eq!(s[RECENT_REQUESTS - 1].bytes, 150);
        // Misses are counted over all requests, not only those still in the ring.
        assert_eq!(r.misses(), 25);
    }

    #[test]
    fn a_long_path_is_cut() {
        let r = RecentRequests::default();
        let mut e = entry(0, Source::Local);
        e.path = "/v2/".to_string() + &"é".repeat(5000);
        r.push(e);
        assert_eq!(r.snapshot()[0].path.chars().count(), MAX_PATH_CHARS + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_is_sampled_into_a_bounded_ring_ending_now() {
        let metrics = std::sync::Arc::new(Metrics::new());
        let traffic = std::sync::Arc::new(Traffic::default());
        let shutdown = CancellationToken::new();
        let requests = std::sync::Arc::new(RecentRequests::default());
        let task = {
            let (t, m, r, s) = (
                traffic.clone(),
                metrics.clone(),
                requests.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move { t.run(&m, &r, SAMPLE_EVERY, s).await })
        };
        for _ in 0..100 {
            metrics
                .registry
                .response_bytes
                .get_or_create(&Source::Peer.labels())
                .inc_by(10);
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        metrics
            .registry
            .response_bytes
            .get_or_create(&Source::Peer.labels())
            .inc_by(7);
        let s = traffic.snapshot(TrafficSample::now(&metrics, &requests));
        assert_eq!(s.len(), SAMPLES + 1);
        assert_eq!(s[SAMPLES].peer_bytes, 1007, "the last point is now");
        // The last sample was taken at the same instant as the last increment, before or after.
        assert!((990..=1000).contains(&s[SAMPLES - 1].peer_bytes), "{s:?}");
        assert!(s.windows(2).all(|w| w[0].peer_bytes <= w[1].peer_bytes));
        assert_eq!(s[SAMPLES].local_bytes, 0);
        shutdown.cancel();
        task.await.unwrap();
    }
}
