//! Paced announcements of the keys this node provides.
//!
//! Each announcement is a Kademlia query (find the k closest nodes, then ADD_PROVIDER to each:
//! ~50 requests at 200 nodes). libp2p's own republish job starts every provided key's query at
//! once, every interval, on every node; a cluster started together then republishes together,
//! and on a loaded node the queries miss their deadline and are thrown away, to be retried only
//! a whole interval later. Here announcements run a bounded number at a time, new keys first,
//! each key republished one jittered interval after its own last announcement (so a cluster's
//! republishes spread out), and a failed one is retried with backoff.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::kad::{QueryId, RecordKey};
use rand::Rng;

const RETRY_FIRST: Duration = Duration::from_secs(5);

/// One scheduled announcement; ordered by time only.
struct Due {
    at: Instant,
    key: RecordKey,
    generation: u64,
    attempt: u32,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.cmp(&other.at)
    }
}

struct Flight {
    key: RecordKey,
    generation: u64,
    attempt: u32,
}

pub(super) struct Announcer {
    interval: Duration,
    max_in_flight: usize,
    /// Provided keys and their generation: a schedule entry of an older generation is stale
    /// (the key was withdrawn, or re-queued by `reannounce_all`).
    keys: HashMap<RecordKey, u64>,
    next_generation: u64,
    /// First announcements and re-announcements after the node lost every peer.
    urgent: VecDeque<(RecordKey, u64)>,
    /// Republishes and retries.
    due: BinaryHeap<Reverse<Due>>,
    in_flight: HashMap<QueryId, Flight>,
}

/// What one call of [`Announcer::finished`] concluded, for metrics and logs.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Announced,
    Retry {
        attempt: u32,
        after: Duration,
    },
    /// Not ours (a lookup), or the key was withdrawn meanwhile.
    Ignored,
}

impl Announcer {
    pub(super) fn new(interval: Duration, max_in_flight: usize) -> Self {
        Announcer {
            interval,
            max_in_flight: max_in_flight.max(1),
            keys: HashMap::new(),
            next_generation: 0,
            urgent: VecDeque::new(),
            due: BinaryHeap::new(),
            in_flight: HashMap::new(),
        }
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// A key to provide: announced ahead of any republish. Already provided: nothing to do.
    pub(super) fn provide(&mut self, key: RecordKey) {
        if self.keys.contains_key(&key) {
            return;
        }
        let g = self.generation();
        self.keys.insert(key.clone(), g);
        self.urgent.push_back((key, g));
    }

    pub(super) fn withdraw(&mut self, key: &RecordKey) {
        self.keys.remove(key);
    }

    /// Announce every key again as soon as possible (the node had lost all its peers, so
    /// records may have expired everywhere).
    pub(super) fn reannounce_all(&mut self) {
        self.urgent.clear();
        let keys: Vec<RecordKey> = self.keys.keys().cloned().collect();
        for key in keys {
            let g = self.generation();
            self.keys.insert(key.clone(), g);
            self.urgent.push_back((key, g));
        }
    }

    /// The keys this node provides.
    pub(super) fn keys(&self) -> impl Iterator<Item = &RecordKey> {
        self.keys.keys()
    }

    /// Announce `keys` again ahead of any republish (their holders went away), each once:
    /// an older queued or running announcement of the same key becomes stale.
    pub(super) fn reannounce(&mut self, keys: Vec<RecordKey>) {
        for key in keys {
            if !self.keys.contains_key(&key) {
                continue;
            }
            let g = self.generation();
            self.keys.insert(key.clone(), g);
            self.urgent.push_back((key, g));
        }
    }

    /// Start announcements while slots are free: `start` begins one query and returns its id.
    pub(super) fn pump(
        &mut self,
        now: Instant,
        mut start: impl FnMut(RecordKey) -> Option<QueryId>,
    ) {
        while self.in_flight.len() < self.max_in_flight {
            let next = if let Some((key, generation)) = self.urgent.pop_front() {
                (key, generation, 0)
            } else if self.due.peek().is_some_and(|Reverse(d)| d.at <= now) {
                match self.due.pop() {
                    Some(Reverse(d)) => (d.key, d.generation, d.attempt),
                    None => break,
                }
            } else {
                break;
            };
            let (key, generation, attempt) = next;
            if self.keys.get(&key) != Some(&generation) {
                continue;
            }
            match start(key.clone()) {
                Some(id) => {
                    self.in_flight.insert(
                        id,
                        Flight {
                            key,
                            generation,
                            attempt,
                        },
                    );
                }
                // Could not even start (the store refused it): try again later.
                None => self.due.push(Reverse(Due {
                    at: now + RETRY_FIRST,
                    key,
                    generation,
                    attempt: attempt.saturating_add(1),
                })),
            }
        }
    }

    /// An announcement query ended: schedule the key's next one.
    pub(super) fn finished(&mut self, id: QueryId, ok: bool, now: Instant) -> Outcome {
        let Some(f) = self.in_flight.remove(&id) else {
            return Outcome::Ignored;
        };
        if self.keys.get(&f.key) != Some(&f.generation) {
            return Outcome::Ignored;
        }
        let (after, attempt, outcome) = if ok {
            // 75–100 % of the interval: republishes of keys announced together drift apart.
            let after = self.interval.mul_f64(rand::rng().random_range(0.75..=1.0));
            (after, 0, Outcome::Announced)
        } else {
            let attempt = f.attempt.saturating_add(1);
            let after = RETRY_FIRST
                .saturating_mul(1 << attempt.min(8).saturating_sub(1))
                .min(self.interval);
            (after, attempt, Outcome::Retry { attempt, after })
        };
        self.due.push(Reverse(Due {
            at: now + after,
            key: f.key,
            generation: f.generation,
            attempt,
        }));
        outcome
    }

    /// Keys waiting for their first announcement, or for one that is due now.
    pub(super) fn backlog(&self, now: Instant) -> usize {
        self.urgent.len()
            + self
                .due
                .iter()
                .filter(|Reverse(d)| d.at <= now && self.keys.get(&d.key) == Some(&d.generation))
                .count()
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `QueryId` has no public constructor: take real ones from a kad behaviour's queries.
    fn ids(n: usize) -> Vec<QueryId> {
        use libp2p::kad;
        let id = libp2p::PeerId::random();
        let mut b = kad::Behaviour::new(id, kad::store::MemoryStore::new(id));
        (0..n)
            .map(|i| b.get_providers(RecordKey::new(&i.to_be_bytes())))
            .collect()
    }

    fn key(n: u8) -> RecordKey {
        RecordKey::new(&[n])
    }

    /// Starts announcements under real query ids, recording which keys were started.
    struct Starter {
        pool: Vec<QueryId>,
        used: usize,
        started: Vec<RecordKey>,
    }

    impl Starter {
        fn new(n: usize) -> Self {
            Starter {
                pool: ids(n),
                used: 0,
                started: Vec::new(),
            }
        }

        fn pump(&mut self, a: &mut Announcer, at: Instant) {
            a.pump(at, |k| {
                self.started.push(k);
                self.used += 1;
                self.pool.get(self.used - 1).copied()
            });
        }
    }

    #[test]
    fn at_most_max_in_flight_new_keys_first_then_due_republishes() {
        let mut s = Starter::new(16);
        let mut a = Announcer::new(Duration::from_secs(100), 2);
        for k in 1..=3 {
            a.provide(key(k));
        }
        a.provide(key(1)); // already provided: not queued twice
        let t0 = Instant::now();
        s.pump(&mut a, t0);
        assert_eq!(s.started, vec![key(1), key(2)]);
        assert_eq!((a.in_flight(), a.backlog(t0)), (2, 1));
        // One finishes: its slot goes to the third key, and its republish is 75-100 s away.
        assert_eq!(a.finished(s.pool[0], true, t0), Outcome::Announced);
        s.pump(&mut a, t0);
        assert_eq!(s.started.last(), Some(&key(3)));
        assert_eq!(a.finished(s.pool[1], true, t0), Outcome::Announced);
        assert_eq!(a.finished(s.pool[2], true, t0), Outcome::Announced);
        let n = s.started.len();
        s.pump(&mut a, t0 + Duration::from_secs(74));
        assert_eq!(
            s.started.len(),
            n,
            "nothing is due before 75 % of the interval"
        );
        s.pump(&mut a, t0 + Duration::from_secs(101));
        assert_eq!(s.started.len(), n + 2, "due republishes, two at a time");
    }

    #[test]
    fn failures_retry_with_backoff_and_withdrawn_keys_are_dropped() {
        let mut s = Starter::new(8);
        let mut a = Announcer::new(Duration::from_secs(180), 4);
        a.provide(key(1));
        a.provide(key(2));
        let t0 = Instant::now();
        s.pump(&mut a, t0);
        assert_eq!(
            a.finished(s.pool[0], false, t0),
            Outcome::Retry {
                attempt: 1,
                after: Duration::from_secs(5)
            }
        );
        a.withdraw(&key(2));
        assert_eq!(a.finished(s.pool[1], true, t0), Outcome::Ignored);
        s.pump(&mut a, t0 + Duration::from_secs(4));
        assert_eq!(s.started.len(), 2);
        s.pump(&mut a, t0 + Duration::from_secs(5));
        assert_eq!(s.started[2..], [key(1)]);
        // The second failure waits twice as long.
        assert_eq!(
            a.finished(s.pool[2], false, t0),
            Outcome::Retry {
                attempt: 2,
                after: Duration::from_secs(10)
            }
        );
        // An id that is not an announcement is ignored.
        assert_eq!(a.finished(s.pool[7], true, t0), Outcome::Ignored);
    }

    #[test]
    fn reannounced_keys_go_first_once_and_withdrawn_ones_not_at_all() {
        let mut s = Starter::new(8);
        let mut a = Announcer::new(Duration::from_secs(100), 1);
        for k in 1..=3 {
            a.provide(key(k));
        }
        let t0 = Instant::now();
        s.pump(&mut a, t0);
        a.withdraw(&key(2));
        a.reannounce(vec![key(3), key(2), key(3), key(9)]);
        for i in 0..4 {
            a.finished(s.pool[i], true, t0);
            s.pump(&mut a, t0);
        }
        // key 1 ran first; key 3 once (its older queued entry is stale), never 2 nor 9.
        assert_eq!(s.started, vec![key(1), key(3)]);
    }

    #[test]
    fn reannounce_all_queues_every_key_once_and_outdates_the_schedule() {
        let mut s = Starter::new(8);
        let mut a = Announcer::new(Duration::from_secs(100), 8);
        a.provide(key(1));
        a.provide(key(2));
        let t0 = Instant::now();
        s.pump(&mut a, t0);
        a.finished(s.pool[0], true, t0);
        a.finished(s.pool[1], true, t0);
        a.reannounce_all();
        s.pump(&mut a, t0);
        assert_eq!(s.started.len(), 4);
        // The republishes scheduled before are stale now: nothing more at t0 + interval.
        s.pump(&mut a, t0 + Duration::from_secs(101));
        assert_eq!(s.started.len(), 4);
    }
}
