//! The providers of one key as the lookups find them: complete copies before in-flight ones,
//! shunned ones skipped, each offered once, the losers of a hedge race offered again first.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::book::ProviderBook;
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
}

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
        }
    }

    fn start(&mut self, key: &Key) {
        self.rx = Some(self.book.lookup(key));
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

    /// Providers already known to have `key`; the DHT is asked only if they all fail.
    pub(super) fn known(key: Key, known: Vec<Provider>, book: Arc<ProviderBook>) -> Self {
        let mut set = ProviderSet::empty(book);
        set.deferred = Some(key);
        for p in known {
            set.complete.add(p);
        }
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

    /// The next usable provider, waiting up to `wait` for the lookup to find one.
    pub(super) async fn next(&mut self, wait: Duration) -> Option<Provider> {
        let deadline = tokio::time::Instant::now() + wait;
        while let Some(p) = self.returned.pop() {
            if !self.book.is_penalized(&p) {
                return Some(p);
            }
        }
        loop {
            // Whatever both lookups have found by now counts: a complete copy found at the
            // same moment as an in-flight one goes first.
            self.drain_ready();
            for q in [&mut self.complete, &mut self.partial] {
                while q.pending() {
                    let p = q.found[q.next].clone();
                    q.next += 1;
                    if !self.book.is_penalized(&p) {
                        return Some(p);
                    }
                }
            }
            if !self.receive(deadline).await {
                return None;
            }
        }
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
