//! [`P2pRouter`], the cloneable handle: commands go to the event loop over a channel, and what
//! the loop knows (peers, addresses) comes back as one `watch` snapshot it publishes.

use std::sync::Arc;

use async_trait::async_trait;
use libp2p::kad::RecordKey;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::event_loop::{EventLoop, LoopSettings};
use super::{P2pConfig, P2pError, socket_multiaddr, swarm};
use crate::content::Key;
use crate::metrics::Metrics;
use crate::routing::{PeerStatus, Provider, Router, RouterError, RouterStatus, record_key};

const COMMAND_QUEUE: usize = 1024;

pub(super) enum Command {
    Lookup {
        key: RecordKey,
        tx: mpsc::Sender<Provider>,
    },
    Provide {
        keys: Vec<RecordKey>,
        /// The keys the local store refused (empty: all stored).
        reply: oneshot::Sender<Vec<Refused>>,
    },
    Withdraw {
        keys: Vec<RecordKey>,
    },
}

/// A key the local provider store would not take, and why (the store's error).
#[derive(Debug)]
pub(super) struct Refused {
    pub key: RecordKey,
    pub reason: String,
}

/// What the event loop knows, published on every change that matters to readers.
#[derive(Clone, Debug)]
pub(super) struct Snapshot {
    pub local_id: PeerId,
    /// The connected peers, as the loop holds them: turned into strings only when read (the
    /// loop republishes on every identify, ~N per minute, and N base58 encodings each time
    /// were a tenth of a 200-node cluster's CPU).
    pub peers: Vec<PeerEntry>,
    /// Addresses the transport listens on, with `/p2p/<PeerId>` appended.
    pub listen: Vec<Multiaddr>,
    /// The external address registered for provider records, if any.
    pub external: Vec<Multiaddr>,
    /// Set when DNS bootstrap resolved to this node alone (and there are no static peers).
    pub alone: bool,
}

#[derive(Clone, Debug)]
pub(super) struct PeerEntry {
    pub id: PeerId,
    pub registry: Option<std::net::SocketAddr>,
    pub addrs: Vec<Multiaddr>,
    pub last_seen: std::time::SystemTime,
}

impl PeerEntry {
    fn status(&self) -> PeerStatus {
        PeerStatus {
            peer: self.id.to_string().into(),
            registry: self.registry,
            addrs: self.addrs.iter().map(|a| a.to_string()).collect(),
            last_seen: self.last_seen,
        }
    }
}

/// Handle to the libp2p router. Cheap to clone.
#[derive(Clone)]
pub struct P2pRouter {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<Snapshot>,
}

impl P2pRouter {
    /// Build the swarm, start listening, and spawn the event loop.
    pub fn start(
        config: P2pConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), P2pError> {
        let local_id = config.keypair.public().to_peer_id();
        let mut swarm = swarm::build_swarm(&config)?;
        let listen = socket_multiaddr(config.listen);
        swarm.listen_on(listen).map_err(|e| P2pError::Listen {
            addr: config.listen,
            // The transport error's Display can be empty; its Debug names the cause.
            reason: format!("{e:?}"),
        })?;
        // Provider records carry only external addresses: register the reachable one.
        let external = match config.advertise {
            Some(adv) => Some(socket_multiaddr(adv)),
            None if !config.listen.ip().is_unspecified() => Some(socket_multiaddr(config.listen)),
            None => None,
        };
        if let Some(a) = &external {
            swarm.add_external_address(a.clone());
        }
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (state_tx, state) = watch::channel(Snapshot {
            local_id,
            peers: Vec::new(),
            listen: Vec::new(),
            external: external.into_iter().collect(),
            alone: false,
        });
        let event_loop = EventLoop::new(
            swarm,
            rx,
            state_tx,
            metrics,
            LoopSettings {
                bootstrap: config.bootstrap,
                republish_interval: config.republish_interval,
                replication: config.replication,
                announce_again_after: config.announce_again_after,
            },
        );
        let handle = tokio::spawn(event_loop.run(shutdown));
        Ok((
            P2pRouter {
                commands: tx,
                state,
            },
            handle,
        ))
    }

    pub fn peer_id(&self) -> String {
        self.state.borrow().local_id.to_string()
    }

    /// Addresses the transport is listening on, with `/p2p/<PeerId>` appended.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.state.borrow().listen.clone()
    }
}

#[async_trait]
impl Router for P2pRouter {
    fn lookup(&self, key: &Key) -> mpsc::Receiver<Provider> {
        let (tx, rx) = mpsc::channel(32);
        let cmd = Command::Lookup {
            key: RecordKey::new(&record_key(key)),
            tx,
        };
        // A full queue means the node is overloaded: treat as "nobody found", i.e. a fast 404.
        if self.commands.try_send(cmd).is_err() {
            tracing::warn!("router command queue full; lookup dropped");
        }
        rx
    }

    async fn advertise(&self, keys: Vec<Key>) -> Result<(), RouterError> {
        let (reply, rx) = oneshot::channel();
        let keys = keys
            .iter()
            .map(|k| RecordKey::new(&record_key(k)))
            .collect();
        self.commands
            .send(Command::Provide { keys, reply })
            .await
            .map_err(|_| RouterError::Stopped)?;
        let refused = rx.await.map_err(|_| RouterError::Stopped)?;
        match refused.first() {
            None => Ok(()),
            Some(first) => Err(RouterError::Advertise {
                key: String::from_utf8_lossy(first.key.as_ref()).into_owned(),
                reason: first.reason.clone(),
                refused: refused.len(),
            }),
        }
    }

    async fn withdraw(&self, keys: Vec<Key>) -> Result<(), RouterError> {
        let keys = keys
            .iter()
            .map(|k| RecordKey::new(&record_key(k)))
            .collect();
        self.commands
            .send(Command::Withdraw { keys })
            .await
            .map_err(|_| RouterError::Stopped)
    }

    fn status(&self) -> RouterStatus {
        let s = self.state.borrow();
        RouterStatus {
            local_id: s.local_id.to_string(),
            peers: s.peers.iter().map(PeerEntry::status).collect(),
            listen_addrs: s.listen.iter().map(|a| a.to_string()).collect(),
            advertised_addrs: s.external.iter().map(|a| a.to_string()).collect(),
            expects_peers: !s.alone,
        }
    }
}
