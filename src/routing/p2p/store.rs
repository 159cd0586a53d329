//! The DHT's record store: provider records only, kept compact and swept.
//!
//! libp2p's `MemoryStore` keeps each key's providers in a `SmallVec` of 20 records inline
//! (~3.2 kB per key, whatever the number of providers) and drops an expired record only when
//! that key is asked for again. A node holds about `keys per node × k` other nodes' keys, most
//! with one provider: 2,000 keys at k = 20 would be ~128 MB of inline space. Here a key costs
//! what it holds (~0.4 kB with one provider), expired records are swept, one provider cannot
//! take more than its share, and value records (`PUT_VALUE`, which peermirror never uses) are
//! refused, so no peer can park 64 KiB values on every node.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, hash_map, hash_set};
use std::iter;
use std::time::Instant;

use libp2p::PeerId;
use libp2p::kad::store::{Error, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};

#[derive(Clone, Copy, Debug)]
pub(super) struct StoreLimits {
    /// Distinct keys with at least one provider record (our own included).
    pub max_keys: usize,
    /// Records one provider may hold here; an honest node's share is about keys × k / nodes.
    pub max_per_provider: usize,
    /// Providers kept per key; a lookup needs one that answers, k are plenty.
    pub max_providers_per_key: usize,
}

pub(super) struct ProviderStore {
    local: PeerId,
    limits: StoreLimits,
    providers: HashMap<RecordKey, Vec<ProviderRecord>>,
    provided: HashSet<ProviderRecord>,
    per_provider: HashMap<PeerId, usize>,
}

impl ProviderStore {
    pub(super) fn new(local: PeerId, limits: StoreLimits) -> Self {
        ProviderStore {
            local,
            limits,
            providers: HashMap::new(),
            provided: HashSet::new(),
            per_provider: HashMap::new(),
        }
    }

    /// Distinct keys and provider records held.
    pub(super) fn len(&self) -> (usize, usize) {
        (
            self.providers.len(),
            self.providers.values().map(Vec::len).sum(),
        )
    }

    /// Drop other nodes' records that have expired. Ours stay until withdrawn: the announcer
    /// refreshes them, late if it is behind. Returns how many were dropped.
    pub(super) fn sweep(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        let (local, per_provider) = (self.local, &mut self.per_provider);
        self.providers.retain(|_, records| {
            records.retain(|r| {
                let keep = r.provider == local || !r.is_expired(now);
                if !keep {
                    dropped += 1;
                    release(per_provider, &r.provider);
                }
                keep
            });
            records.shrink_to_fit();
            !records.is_empty()
        });
        dropped
    }
}

fn release(per_provider: &mut HashMap<PeerId, usize>, provider: &PeerId) {
    if let hash_map::Entry::Occupied(mut e) = per_provider.entry(*provider) {
        *e.get_mut() = e.get().saturating_sub(1);
        if *e.get() == 0 {
            e.remove();
        }
    }
}

impl RecordStore for ProviderStore {
    type RecordsIter<'a> = iter::Empty<Cow<'a, Record>>;
    type ProvidedIter<'a> = iter::Map<
        hash_set::Iter<'a, ProviderRecord>,
        fn(&'a ProviderRecord) -> Cow<'a, ProviderRecord>,
    >;

    fn get(&self, _: &RecordKey) -> Option<Cow<'_, Record>> {
        None
    }

    fn put(&mut self, _: Record) -> Result<()> {
        Err(Error::MaxRecords)
    }

    fn remove(&mut self, _: &RecordKey) {}

    fn records(&self) -> Self::RecordsIter<'_> {
        iter::empty()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        let local = record.provider == self.local;
        let held = self
            .per_provider
            .get(&record.provider)
            .copied()
            .unwrap_or(0);
        let num_keys = self.providers.len();
        let records = match self.providers.entry(record.key.clone()) {
            hash_map::Entry::Occupied(e) => e.into_mut(),
            hash_map::Entry::Vacant(e) => {
                // Our own keys are always kept: refusing them would silently stop advertising.
                if num_keys >= self.limits.max_keys && !local {
                    return Err(Error::MaxProvidedKeys);
                }
                e.insert(Vec::with_capacity(1))
            }
        };
        if let Some(existing) = records.iter_mut().find(|p| p.provider == record.provider) {
            // A refresh (republish) of a record we hold: new expiry and addresses.
            if local {
                self.provided.replace(record.clone());
            }
            *existing = record;
            return Ok(());
        }
        if !local
            && (records.len() >= self.limits.max_providers_per_key
                || held >= self.limits.max_per_provider)
        {
            if records.is_empty() {
                self.providers.remove(&record.key);
            }
            return Ok(());
        }
        if local {
            self.provided.insert(record.clone());
        }
        *self.per_provider.entry(record.provider).or_insert(0) += 1;
        records.push(record);
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.providers.get(key).cloned().unwrap_or_default()
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.provided.iter().map(Cow::Borrowed)
    }

    fn remove_provider(&mut self, key: &RecordKey, provider: &PeerId) {
        let hash_map::Entry::Occupied(mut e) = self.providers.entry(key.clone()) else {
            return;
        };
        let records = e.get_mut();
        if let Some(i) = records.iter().position(|p| &p.provider == provider) {
            let removed = records.swap_remove(i);
            if removed.provider == self.local {
                self.provided.remove(&removed);
            }
            release(&mut self.per_provider, provider);
        }
        if records.is_empty() {
            e.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LIMITS: StoreLimits = StoreLimits {
        max_keys: 4,
        max_per_provider: 2,
        max_providers_per_key: 2,
    };

    fn key(n: u8) -> RecordKey {
        RecordKey::new(&[n; 8])
    }

    fn rec(k: u8, p: PeerId, expires: Option<Instant>) -> ProviderRecord {
        ProviderRecord {
            key: key(k),
            provider: p,
            expires,
            addresses: Vec::new(),
        }
    }

    #[test]
    fn own_records_are_provided_and_refreshed_in_place() {
        let me = PeerId::random();
        let mut s = ProviderStore::new(me, LIMITS);
        s.add_provider(rec(1, me, None)).unwrap();
        let later = Some(Instant::now() + Duration::from_secs(60));
        s.add_provider(rec(1, me, later)).unwrap();
        assert_eq!(s.providers(&key(1)).len(), 1);
        let provided: Vec<_> = s.provided().collect();
        assert_eq!(provided.len(), 1);
        assert_eq!(provided[0].expires, later);
        s.remove_provider(&key(1), &me);
        assert_eq!(s.provided().count(), 0);
        assert_eq!(s.len(), (0, 0));
    }

    #[test]
    fn one_provider_cannot_take_more_than_its_share() {
        let (me, greedy, other) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut s = ProviderStore::new(me, LIMITS);
        for k in 1..=3 {
            s.add_provider(rec(k, greedy, None)).unwrap();
        }
        // The third is silently not kept (as a full key is): nothing to tell the sender.
        assert!(s.providers(&key(3)).is_empty());
        assert_eq!(s.len(), (2, 2));
        // Others are unaffected, and the quota frees up when a record goes.
        s.add_provider(rec(3, other, None)).unwrap();
        s.remove_provider(&key(1), &greedy);
        s.add_provider(rec(4, greedy, None)).unwrap();
        assert_eq!(s.providers(&key(4)).len(), 1);
    }

    #[test]
    fn key_and_per_key_limits_spare_our_own_keys() {
        let me = PeerId::random();
        let mut s = ProviderStore::new(
            me,
            StoreLimits {
                max_per_provider: 100,
                ..LIMITS
            },
        );
        let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        for (k, p) in (1..=4).zip(&peers) {
            s.add_provider(rec(k, *p, None)).unwrap();
        }
        assert!(matches!(
            s.add_provider(rec(5, peers[4], None)),
            Err(Error::MaxProvidedKeys)
        ));
        s.add_provider(rec(5, me, None)).unwrap();
        assert_eq!(s.provided().count(), 1);
        // Two providers per key at most for others' records.
        s.add_provider(rec(1, peers[5], None)).unwrap();
        s.add_provider(rec(1, peers[4], None)).unwrap();
        assert_eq!(s.providers(&key(1)).len(), 2);
    }

    #[test]
    fn sweep_drops_expired_records_and_their_quota() {
        let (me, p) = (PeerId::random(), PeerId::random());
        let mut s = ProviderStore::new(me, LIMITS);
        let now = Instant::now();
        s.add_provider(rec(1, p, Some(now))).unwrap();
        s.add_provider(rec(2, p, Some(now + Duration::from_secs(600))))
            .unwrap();
        s.add_provider(rec(3, me, Some(now))).unwrap();
        assert_eq!(s.sweep(now + Duration::from_secs(1)), 1);
        assert_eq!(s.len(), (2, 2));
        // The quota of 2 has one free slot again.
        s.add_provider(rec(4, p, None)).unwrap();
        assert_eq!(s.providers(&key(4)).len(), 1);
    }

    #[test]
    fn value_records_are_refused() {
        let mut s = ProviderStore::new(PeerId::random(), LIMITS);
        let r = Record::new(key(1), vec![0; 10]);
        assert!(s.put(r).is_err());
        assert!(s.get(&key(1)).is_none());
        assert_eq!(s.records().count(), 0);
    }
}
