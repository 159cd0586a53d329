//! How long a lookup may take before a miss is answered: adapted to what lookups take here.
//!
//! A fixed 20 ms answers 404 for every lookup slower than that, and on a busy node (or a large
//! cluster, where a lookup takes two or three rounds) several percent are: each such 404 sends
//! containerd to the upstream for a blob a peer holds. The wait follows the lookups instead:
//! twice the 99th percentile of the last [`WINDOW`] lookups' time to a first provider, never
//! below the floor (`--mirror-resolve-timeout`) nor above the ceiling
//! (`--mirror-resolve-timeout-max`). A lookup cut off by the wait counts as one that took twice
//! the wait, so when more than 1 % are cut off the wait doubles until they are not, and it
//! comes back down as fast lookups fill the window. A miss rarely pays for it: a lookup that
//! asked the closest nodes and found nobody ends at once, and the 404 does not wait.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::sync::MutexExt;

/// Lookups remembered: the 99th percentile is the third slowest of them.
const WINDOW: usize = 256;
/// The wait is recomputed every this many lookups (a sort of [`WINDOW`] durations).
const RECOMPUTE_EVERY: usize = 8;

pub(crate) struct ResolveWait {
    floor: Duration,
    ceiling: Duration,
    samples: Mutex<Samples>,
    /// The current wait, in nanoseconds: read on every miss without the lock.
    current_ns: AtomicU64,
}

#[derive(Default)]
struct Samples {
    ring: VecDeque<Duration>,
    since: usize,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ResolveWait {
    pub(crate) fn new(floor: Duration, ceiling: Duration) -> Self {
        ResolveWait {
            floor,
            ceiling: ceiling.max(floor),
            samples: Mutex::default(),
            current_ns: AtomicU64::new(nanos(floor)),
        }
    }

    /// How long the next lookup may take before its miss is answered.
    pub(crate) fn current(&self) -> Duration {
        Duration::from_nanos(self.current_ns.load(Ordering::Relaxed))
    }

    /// The longest the wait may be.
    pub(crate) fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// A lookup's first provider came after `took`.
    pub(crate) fn found(&self, took: Duration) {
        self.push(took);
    }

    /// A lookup found nobody within `waited` and was cut off: it would have taken longer.
    pub(crate) fn cut_off(&self, waited: Duration) {
        self.push(waited.saturating_mul(2));
    }

    fn push(&self, took: Duration) {
        let mut s = self.samples.locked();
        if s.ring.len() == WINDOW {
            s.ring.pop_front();
        }
        s.ring.push_back(took);
        s.since += 1;
        if s.since < RECOMPUTE_EVERY {
            return;
        }
        s.since = 0;
        let mut sorted: Vec<Duration> = s.ring.iter().copied().collect();
        drop(s);
        sorted.sort_unstable();
        // The 99th percentile: the sample with 1 % of the window above it.
        let i = (sorted.len() * 99).div_ceil(100).saturating_sub(1);
        let p99 = sorted.get(i).copied().unwrap_or(self.floor);
        let wait = p99.saturating_mul(2).clamp(self.floor, self.ceiling);
        self.current_ns.store(nanos(wait), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn follows_the_slow_percent_of_lookups_between_floor_and_ceiling() {
        let w = ResolveWait::new(20 * MS, 250 * MS);
        assert_eq!(w.current(), 20 * MS);
        // Fast lookups: the floor stands.
        for _ in 0..WINDOW {
            w.found(2 * MS);
        }
        assert_eq!(w.current(), 20 * MS);
        // 2 % of lookups take 60 ms: the wait covers them (twice the 99th percentile).
        for i in 0..WINDOW {
            w.found(if i % 50 == 0 { 60 * MS } else { 3 * MS });
        }
        assert_eq!(w.current(), 120 * MS);
        // Lookups cut off by the wait push it up, to the ceiling at most.
        for _ in 0..WINDOW / 10 {
            w.cut_off(w.current());
        }
        assert_eq!(w.current(), 250 * MS);
        // And it comes back down once lookups are fast again.
        for _ in 0..WINDOW {
            w.found(4 * MS);
        }
        assert_eq!(w.current(), 20 * MS);
    }
}
