//! The providers of one key as the lookups find them: complete copies before in-flight ones,
//! shunned ones skipped, each offered once, the losers of a hedge race offered again first.
//! A provider that answered "busy" (it has its `--max-followers`) is set aside: the lookups
//! run again a few times, since the nodes that follow it advertise their in-flight copies a
//! moment later, and only when nobody new turns up is the least busy one asked to let us in
//! anyway ([`Offer::crowd`]).

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use tokio::sync::mpsc;

use super::book::ProviderBook;
use super::claim::{Reassign, Reassigned};
use crate::content::Key;
use crate::routing::Provider;

/// The providers of one key, as the lookup finds them: those already found first, then more
/// from the still-running lookup. For a digest, two lookups run side by side: complete copies
/// and copies still in flight (`Key::Partial`); a complete one is always offered before any
/// in-flight one not yet offered. Shunned providers are skipped; each is offered once.
pub struct ProviderSet {
    /// The running lookups: complete copies, and (for digests) in-flight ones.
    rx: Option<mpsc::Receiver<Provider>>,
    partial_rx: Option<mpsc::Receiver<Provider>>,
    /// A lookup not started yet: known providers come first, the DHT only if they fail.
    deferred: Option<Key>,
    /// Providers handed back unused (the losers of a hedge race), offered again first.
    returned: Vec<Provider>,
    complete: Queue,
    partial: Queue,
    book: Arc<ProviderBook>,
    /// The key looked up, to look again when every provider found is busy.
    key: Option<Key>,
    /// Providers that answered busy, with how many followers they said they had.
    busy: Vec<(Provider, usize)>,
    /// The copy a rollout's coordinator assigned: asked past its follower cap.
    assigned: Option<Provider>,
    /// Asks the coordinator for a new place when the assigned copy fails.
    reassign: Option<Reassign>,
    reassigns: usize,
    /// The coordinator made this node the first: no provider is offered any more.
    promoted: bool,
    /// Lookups run again because everyone found was busy.
    relooks: usize,
    /// Of those, how many in a row found nobody new.
    fruitless: usize,
}

/// A provider to ask, and whether to ask it to take us beyond its follower cap.
#[derive(Clone, Debug)]
pub(super) struct Offer {
    pub(super) provider: Provider,
    /// Every copy found was busy: this, the least busy, is asked to let us in anyway.
    pub(super) crowd: bool,
}

/// Most lookups run again while providers are busy, and how many in a row may find nobody
/// new before the least busy one is crowded: bounded, so a pull waits at most a few seconds
/// longer than it would have.
const RELOOKS: usize = 24;
/// Most new places a follower asks its coordinator for in one download.
const REASSIGNS: usize = 8;
/// Before following again a node that is alive but whose copy failed us.
const SAME_AGAIN: Duration = Duration::from_millis(250);
const FRUITLESS: usize = 2;
/// Before looking again: long enough for a new follower's in-flight record to appear.
const RELOOK_DELAY: Duration = Duration::from_millis(100);

/// Providers found, in the order found, and how many were offered.
#[derive(Default)]
struct Queue {
    found: Vec<Provider>,
    next: usize,
}

impl Queue {
    fn add(&mut self, p: Provider) {
        if !self.found.contains(&p) {
            self.found.push(p);
        }
    }

    fn pending(&self) -> bool {
        self.next < self.found.len()
    }
}

impl ProviderSet {
    /// Start the lookups for `key` (and, for a digest, for its in-flight copies).
    pub(super) fn lookup(key: &Key, book: Arc<ProviderBook>) -> Self {
        let mut set = ProviderSet::empty(book);
        set.start(key);
        set
    }

    fn empty(book: Arc<ProviderBook>) -> Self {
        ProviderSet {
            rx: None,
            partial_rx: None,
            deferred: None,
            returned: Vec::new(),
            complete: Queue::default(),
            partial: Queue::default(),
            book,
            key: None,
            busy: Vec::new(),
            assigned: None,
            reassign: None,
            reassigns: 0,
            promoted: false,
            relooks: 0,
            fruitless: 0,
        }
    }

    fn start(&mut self, key: &Key) {
        self.key = Some(key.clone());
        self.rx = Some(self.book.lookup(key));
        self.start_partial(key);
    }

    /// Look again, uncounted (the pull's lookup was counted once).
    fn relook(&mut self, key: &Key) {
        self.rx = Some(self.book.lookup_uncounted(key));
        self.start_partial(key);
    }

    fn start_partial(&mut self, key: &Key) {
        if let Key::Digest(d) = key {
            self.partial_rx = Some(self.book.lookup_uncounted(&Key::Partial(*d)));
        }
    }

    /// Offer the providers found so far again (those not shunned meanwhile): the one that
    /// resolved a tag is the natural first choice for the manifest it named.
    pub(super) fn rewind(&mut self) {
        self.complete.next = 0;
        self.partial.next = 0;
        self.returned.clear();
    }

    /// Wait up to `wait` for a first usable provider; true if there is one.
    pub(super) async fn first(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while !self.complete.pending() && !self.partial.pending() {
            if !self.receive(deadline).await {
                return false;
            }
        }
        true
    }

    /// Whether a complete copy has been found (not only copies still in flight).
    pub(super) fn has_complete(&self) -> bool {
        self.complete.pending()
    }

    /// Providers already known to have `key`; the DHT is asked only if they all fail.
    pub(super) fn known(key: Key, known: Vec<Provider>, book: Arc<ProviderBook>) -> Self {
        let mut set = ProviderSet::empty(book);
        set.key = Some(key.clone());
        set.deferred = Some(key);
        for p in known {
            set.complete.add(p);
        }
        set
    }

    /// The copy a rollout's coordinator assigned (see `claim`): asked first, and past its
    /// follower cap, as the coordinator spreads followers itself; the DHT if it fails.
    pub(super) fn assigned(
        key: Key,
        p: Provider,
        reassign: Reassign,
        book: Arc<ProviderBook>,
    ) -> Self {
        let mut set = ProviderSet::known(key, vec![p.clone()], book);
        set.assigned = Some(p);
        set.reassign = Some(reassign);
        set
    }

    /// Every provider offered so far (to remember who had what).
    pub(super) fn seen(&self) -> Vec<Provider> {
        self.complete
            .found
            .iter()
            .chain(&self.partial.found)
            .cloned()
            .collect()
    }

    /// Give back a provider that was asked but whose answer was not used.
    pub(super) fn give_back(&mut self, p: Provider) {
        self.returned.push(p);
    }

    /// `p` answered that it has its cap of followers (`followers` of them): ask others first.
    pub(super) fn busy(&mut self, p: Provider, followers: usize) {
        self.busy.retain(|(b, _)| b != &p);
        self.busy.push((p, followers));
    }

    /// The next usable provider, waiting up to `wait` for the lookup to find one.
    pub(super) async fn next(&mut self, wait: Duration) -> Option<Offer> {
        if self.promoted {
            return None;
        }
        // The assigned copy failed (stalled, broke, refused): the coordinator says whom to
        // follow instead, or that this node is now the rollout's first.
        if let (Some(r), Some(a)) = (&self.reassign, &self.assigned)
            && self.book.is_penalized(a)
            && self.reassigns < REASSIGNS
        {
            self.reassigns += 1;
            match r.ask(Some(&a.peer)).await {
                Reassigned::Follow(p) => {
                    // The same node again: alive, but its copy needs a moment (its containerd
                    // is resuming from the upstream, or its own predecessor is being replaced).
                    if p == *a {
                        tokio::time::sleep(SAME_AGAIN).await;
                    }
                    self.assigned = Some(p.clone());
                    return Some(Offer {
                        provider: p,
                        crowd: true,
                    });
                }
                Reassigned::Fetch => {
                    r.promote(&a.peer);
                    self.promoted = true;
                    return None;
                }
                Reassigned::NoAnswer => self.reassign = None,
            }
        }
        let mut deadline = tokio::time::Instant::now() + wait;
        while let Some(p) = self.returned.pop() {
            if !self.book.is_penalized(&p) {
                return Some(Offer {
                    provider: p,
                    crowd: false,
                });
            }
        }
        let mut relooked = false;
        loop {
            // Whatever both lookups have found by now counts: a complete copy found at the
            // same moment as an in-flight one goes first.
            self.drain_ready();
            for q in [&mut self.complete, &mut self.partial] {
                while q.pending() {
                    let p = q.found[q.next].clone();
                    q.next += 1;
                    if !self.book.is_penalized(&p) {
                        if relooked {
                            self.fruitless = 0;
                        }
                        let crowd = self.assigned.as_ref() == Some(&p);
                        return Some(Offer { provider: p, crowd });
                    }
                }
            }
            if self.receive(deadline).await {
                continue;
            }
            if self.busy.is_empty() {
                return None;
            }
            if relooked {
                self.fruitless += 1;
            }
            let Some(key) = self.key.clone() else {
                return self.crowd();
            };
            if self.relooks >= RELOOKS || self.fruitless >= FRUITLESS {
                return self.crowd();
            }
            // Busy providers' followers advertise their copies a moment after they start:
            // look again rather than crowd the first copy.
            self.relooks += 1;
            relooked = true;
            let jitter = rand::rng().random_range(0.5..=1.5);
            tokio::time::sleep(RELOOK_DELAY.mul_f64(jitter)).await;
            self.relook(&key);
            deadline = tokio::time::Instant::now() + wait.max(super::ask::NEXT_PROVIDER_WAIT);
        }
    }

    /// Every copy found is busy: ask the least busy to let us in anyway (each at most once).
    fn crowd(&mut self) -> Option<Offer> {
        self.busy.retain(|(p, _)| !self.book.is_penalized(p));
        let least = self
            .busy
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, n))| *n)
            .map(|(i, _)| i)?;
        let (provider, _) = self.busy.swap_remove(least);
        Some(Offer {
            provider,
            crowd: true,
        })
    }

    /// Take every provider the lookups have already delivered, without waiting.
    fn drain_ready(&mut self) {
        while let Some(Ok(p)) = self.rx.as_mut().map(|rx| rx.try_recv()) {
            if !self.book.is_penalized(&p) {
                self.complete.add(p);
            }
        }
        while let Some(Ok(p)) = self.partial_rx.as_mut().map(|rx| rx.try_recv()) {
            if !self.book.is_penalized(&p) && !self.complete.found.contains(&p) {
                self.partial.add(p);
            }
        }
    }

    /// Receive one more provider before `deadline`; false when none will come in time.
    async fn receive(&mut self, deadline: tokio::time::Instant) -> bool {
        if self.rx.is_none()
            && self.partial_rx.is_none()
            && let Some(key) = self.deferred.take()
        {
            self.start(&key);
        }
        if self.rx.is_none() && self.partial_rx.is_none() {
            return false;
        }
        let got = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                p = recv(&mut self.rx) => (p, true),
                p = recv(&mut self.partial_rx) => (p, false),
            }
        })
        .await;
        match got {
            Ok((Some(p), complete)) => {
                if !self.book.is_penalized(&p) {
                    // A copy found complete and in flight counts as complete.
                    if complete {
                        self.complete.add(p);
                    } else if !self.complete.found.contains(&p) {
                        self.partial.add(p);
                    }
                }
                true
            }
            // One lookup ended; the other may still find someone.
            Ok((None, true)) => {
                self.rx = None;
                self.rx.is_some() || self.partial_rx.is_some()
            }
            Ok((None, false)) => {
                self.partial_rx = None;
                self.rx.is_some() || self.partial_rx.is_some()
            }
            Err(_) => false,
        }
    }
}

/// Receive from a lookup that may have ended (then never ready, so `select!` waits on the
/// other).
async fn recv(rx: &mut Option<mpsc::Receiver<Provider>>) -> Option<Provider> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
