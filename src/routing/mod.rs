//! Finding which nodes hold a key, and telling the cluster what this node holds.
//!
//! [`Router`] is the seam: [`P2pRouter`] implements it over a libp2p Kademlia DHT,
//! [`MemoryRouter`] in memory for tests. The [`advertiser`] keeps the router's provider records
//! in step with the content index.

pub mod advertiser;
mod memory;
mod p2p;
pub mod partial_records;

use std::net::SocketAddr;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::content::Key;

pub use memory::{MemoryNetwork, MemoryRouter};
/// For the fuzz targets (`fuzz/`): the registry endpoint in a peer's identify agent string.
#[doc(hidden)]
pub use p2p::parse_registry as parse_agent_registry;
pub use p2p::{
    Bootstrap, P2pConfig, P2pError, P2pRouter, ephemeral_identity, load_or_create_identity,
};

/// A node's stable identity in the routing layer: a libp2p PeerId's text in the real router,
/// a name in the in-memory one. Compared and logged, never parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> Self {
        NodeId(s)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.to_string())
    }
}

/// A node that advertised a key, and where its registry endpoint answers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Provider {
    /// The provider's stable identity.
    pub peer: NodeId,
    /// Its registry endpoint.
    pub addr: SocketAddr,
}

/// What is known about a connected peer.
#[derive(Clone, Debug)]
pub struct PeerStatus {
    pub peer: NodeId,
    /// Its registry endpoint, once identify told us the port.
    pub registry: Option<SocketAddr>,
    pub addrs: Vec<String>,
    pub last_seen: SystemTime,
}

/// A snapshot of the router's state, for readiness and status reporting. The default is what a
/// node without a router reports: nobody, nowhere.
#[derive(Clone, Debug, Default)]
pub struct RouterStatus {
    /// This node's identity in the routing layer.
    pub local_id: String,
    /// The connected peers.
    pub peers: Vec<PeerStatus>,
    /// Where the router listens.
    pub listen_addrs: Vec<String>,
    /// The addresses it advertises to others.
    pub advertised_addrs: Vec<String>,
    /// Whether this node should wait for a peer before it is ready. False when bootstrap
    /// found nobody but this node (a one-node cluster).
    pub expects_peers: bool,
}

impl RouterStatus {
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// No peer yet, and there should be one (not a one-node cluster): not ready to serve.
    pub fn waiting_for_peers(&self) -> bool {
        self.peers.is_empty() && self.expects_peers
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("the router has stopped")]
    Stopped,
    /// The first key refused, and how many were (of one `advertise` call).
    #[error("cannot advertise {key}: {reason} ({refused} keys refused)")]
    Advertise {
        key: String,
        reason: String,
        refused: usize,
    },
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

    /// What the router knows right now: cheap, never waits (readiness checks call it).
    fn status(&self) -> RouterStatus;
}

/// Record keys are the key's text: `sha256:<hex>` or `registry/repo:tag`.
pub fn record_key(key: &Key) -> Vec<u8> {
    key.to_string().into_bytes()
}
