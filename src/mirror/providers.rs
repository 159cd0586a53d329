use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::book::ProviderBook;
use crate::content::Key;
use crate::routing::Provider;

/// The providers of one key, as the lookup finds them: those already found first, then more
/// from the still-running lookup. Shunned providers are skipped; each is offered once.
pub struct ProviderSet {
    rx: Option<mpsc::Receiver<Provider>>,
    /// A lookup not started yet: known providers come first, the DHT only if they fail.
    deferred: Option<Key>,
    /// Providers handed back unused (the losers of a hedge race), offered again first.
    returned: Vec<Provider>,
    found: Vec<Provider>,
    next: usize,
    book: Arc<ProviderBook>,
}

impl ProviderSet {
    pub(super) fn new(rx: mpsc::Receiver<Provider>, book: Arc<ProviderBook>) -> Self {
        ProviderSet {
            rx: Some(rx),
            deferred: None,
            returned: Vec::new(),
            found: Vec::new(),
            next: 0,
            book,
        }
    }

    /// Offer the providers found so far again (those not shunned meanwhile): the one that
    /// resolved a tag is the natural first choice for the manifest it named.
    pub(super) fn rewind(&mut self) {
        self.next = 0;
        self.returned.clear();
    }

    /// Wait up to `wait` for a first usable provider; true if there is one.
    pub(super) async fn first(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while self.found.len() <= self.next {
            if !self.receive(deadline).await {
                return false;
            }
        }
        true
    }

    /// Providers already known to have `key`; the DHT is asked only if they all fail.
    pub(super) fn known(key: Key, known: Vec<Provider>, book: Arc<ProviderBook>) -> Self {
        let mut set = ProviderSet {
            rx: None,
            deferred: Some(key),
            returned: Vec::new(),
            found: Vec::new(),
            next: 0,
            book,
        };
        set.seed(known);
        set
    }

    /// Start with providers already known to have the key (no need to wait for the DHT).
    pub(super) fn seed(&mut self, known: Vec<Provider>) {
        for p in known {
            if !self.found.contains(&p) {
                self.found.push(p);
            }
        }
    }

    /// Every provider offered so far (to remember who had what).
    pub(super) fn seen(&self) -> &[Provider] {
        &self.found
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
            while self.next < self.found.len() {
                let p = self.found[self.next].clone();
                self.next += 1;
                if !self.book.is_penalized(&p) {
                    return Some(p);
                }
            }
            if !self.receive(deadline).await {
                return None;
            }
        }
    }

    /// Receive one more provider before `deadline`; false when none will come in time.
    async fn receive(&mut self, deadline: tokio::time::Instant) -> bool {
        if self.rx.is_none()
            && let Some(key) = self.deferred.take()
        {
            self.rx = Some(self.book.lookup(&key));
        }
        let Some(rx) = self.rx.as_mut() else {
            return false;
        };
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(p)) => {
                if !self.found.contains(&p) && !self.book.is_penalized(&p) {
                    self.found.push(p);
                }
                true
            }
            Ok(None) => {
                self.rx = None;
                false
            }
            Err(_) => false,
        }
    }
}
