//! Finding which nodes hold a key, and telling the cluster what this node holds.
//!
//! [`Router`] is the seam: [`P2pRouter`] implements it over a libp2p Kademlia DHT,
//! [`MemoryRouter`] in memory for tests. The [`advertiser`] keeps the router's provider records
//! in step with the content index.

pub mod advertiser;
mod memory;
mod p2p;

use std::net::SocketAddr;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::content::Key;

pub use memory::{MemoryNetwork, MemoryRouter};
pub use p2p::{Bootstrap, P2pConfig, P2pError, P2pRouter, PeerStatus, load_or_create_identity};

/// A node that advertised a key, and where its registry endpoint answers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Provider {
    /// The provider's stable identity (a libp2p PeerId in the real router).
    pub peer: String,
    /// Its registry endpoint.
    pub addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("the router has stopped")]
    Stopped,
    #[error("cannot advertise {key}: {reason}")]
    Advertise { key: String, reason: String },
}

/// The peer-to-peer routing seam.
#[async_trait]
pub trait Router: Send + Sync + 'static {
    /// Providers of `key` other than this node, streamed as they are found. The channel closes
    /// when the search ends; the caller decides how long to wait.
    fn lookup(&self, key: &Key) -> mpsc::Receiver<Provider>;

    /// Announce that this node can serve `keys`.
    async fn advertise(&self, keys: Vec<Key>) -> Result<(), RouterError>;

    /// Stop announcing `keys`.
    async fn withdraw(&self, keys: Vec<Key>) -> Result<(), RouterError>;

    /// Number of peers currently connected.
    fn peer_count(&self) -> usize;

    /// The connected peers, for status reporting.
    async fn peers(&self) -> Vec<PeerStatus> {
        Vec::new()
    }

    /// Whether this node should wait for a peer before it is ready. False when bootstrap
    /// found nobody but this node (a one-node cluster).
    fn expects_peers(&self) -> bool {
        true
    }

    /// This node's identity in the routing layer.
    fn local_id(&self) -> String {
        String::new()
    }

    /// Where the router listens, and the addresses it advertises to others.
    fn addresses(&self) -> (Vec<String>, Vec<String>) {
        (Vec::new(), Vec::new())
    }
}

/// Record keys are the key's text: `sha256:<hex>` or `registry/repo:tag`.
pub fn record_key(key: &Key) -> Vec<u8> {
    key.to_string().into_bytes()
}
