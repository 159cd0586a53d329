use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Provider, Router, RouterError};
use crate::content::Key;

/// A shared in-memory "DHT" that several [`MemoryRouter`]s join, for tests.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    providers: Arc<Mutex<HashMap<Key, HashSet<Provider>>>>,
}

impl MemoryNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, HashSet<Provider>>> {
        self.providers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add a provider record directly (to simulate a stale or hostile record).
    pub fn insert(&self, key: Key, provider: Provider) {
        self.lock().entry(key).or_default().insert(provider);
    }
}

/// One node's view of a [`MemoryNetwork`].
pub struct MemoryRouter {
    network: MemoryNetwork,
    me: Provider,
}

impl MemoryRouter {
    pub fn new(network: MemoryNetwork, peer: &str, addr: SocketAddr) -> Self {
        MemoryRouter {
            network,
            me: Provider {
                peer: peer.to_string(),
                addr,
            },
        }
    }
}

#[async_trait]
impl Router for MemoryRouter {
    fn lookup(&self, key: &Key) -> mpsc::Receiver<Provider> {
        let found: Vec<Provider> = self
            .network
            .lock()
            .get(key)
            .map(|s| {
                s.iter()
                    .filter(|p| p.peer != self.me.peer)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let (tx, rx) = mpsc::channel(found.len().max(1));
        let mut sorted = found;
        // Deterministic order, so tests can reason about which provider is asked first.
        sorted.sort_by(|a, b| a.peer.cmp(&b.peer));
        for p in sorted {
            let _ = tx.try_send(p);
        }
        rx
    }

    async fn advertise(&self, keys: Vec<Key>) -> Result<(), RouterError> {
        let mut map = self.network.lock();
        for k in keys {
            map.entry(k).or_default().insert(self.me.clone());
        }
        Ok(())
    }

    async fn withdraw(&self, keys: Vec<Key>) -> Result<(), RouterError> {
        let mut map = self.network.lock();
        for k in keys {
            if let Some(s) = map.get_mut(&k) {
                s.remove(&self.me);
            }
        }
        Ok(())
    }

    fn peer_count(&self) -> usize {
        let map = self.network.lock();
        let peers: HashSet<&String> = map.values().flatten().map(|p| &p.peer).collect();
        peers.iter().filter(|p| ***p != self.me.peer).count()
    }
}
