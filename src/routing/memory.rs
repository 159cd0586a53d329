//! [`MemoryRouter`]: an in-memory router for tests; several join one shared [`MemoryNetwork`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{NodeId, PeerStatus, Provider, Router, RouterError, RouterStatus};
use crate::content::Key;
use crate::sync::MutexExt;

/// A shared in-memory "DHT" that several [`MemoryRouter`]s join, for tests.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    providers: Arc<Mutex<HashMap<Key, HashSet<Provider>>>>,
}

impl MemoryNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a provider record directly (to simulate a stale or hostile record).
    pub fn insert(&self, key: Key, provider: Provider) {
        self.providers
            .locked()
            .entry(key)
            .or_default()
            .insert(provider);
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
                peer: peer.into(),
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
            .providers
            .locked()
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
        let mut map = self.network.providers.locked();
        for k in keys {
            map.entry(k).or_default().insert(self.me.clone());
        }
        Ok(())
    }

    async fn withdraw(&self, keys: Vec<Key>) -> Result<(), RouterError> {
        let mut map = self.network.providers.locked();
        for k in keys {
            if let Some(s) = map.get_mut(&k) {
                s.remove(&self.me);
            }
        }
        Ok(())
    }

    /// Every other node with a record in the network counts as a connected peer.
    fn status(&self) -> RouterStatus {
        // One entry per peer name (sorted), as a peer is one node whatever it advertised.
        let others: BTreeMap<NodeId, SocketAddr> = self
            .network
            .providers
            .locked()
            .values()
            .flatten()
            .filter(|p| p.peer != self.me.peer)
            .map(|p| (p.peer.clone(), p.addr))
            .collect();
        let peers = others
            .into_iter()
            .map(|(peer, addr)| PeerStatus {
                peer,
                registry: Some(addr),
                addrs: Vec::new(),
                last_seen: SystemTime::now(),
            })
            .collect();
        RouterStatus {
            local_id: self.me.peer.to_string(),
            peers,
            listen_addrs: Vec::new(),
            advertised_addrs: Vec::new(),
            expects_peers: true,
        }
    }
}
