//! The libp2p router: TCP + noise + yamux (optionally behind a private-network pre-shared
//! key), Kademlia in server mode on `/peermirror/kad/1.0.0`, identify, which also carries
//! each node's registry port, and ping, which notices peers that went silent.
//!
//! Layout: [`config`] says how to start (bootstrap specs, [`P2pConfig`]); [`swarm`] builds the
//! transport and behaviours and keeps the identity key; [`event_loop`] owns the swarm in one
//! task and publishes a snapshot of what it knows on a `watch` channel; [`handle`] is the
//! cloneable [`P2pRouter`] that sends the loop commands and reads that snapshot.

mod announce;
mod config;
mod event_loop;
mod handle;
mod store;
mod swarm;

use std::net::{IpAddr, SocketAddr};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

pub use config::{Bootstrap, P2pConfig};
pub use handle::P2pRouter;
#[doc(hidden)]
pub use swarm::parse_registry;
pub use swarm::{ephemeral_identity, load_or_create_identity};

#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    #[error("cannot read or write the identity key {path}: {source}")]
    Identity {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("identity key {path} is corrupt: {reason}; delete it to make a new one")]
    IdentityCorrupt { path: String, reason: String },
    #[error("cannot set up the libp2p transport: {0}")]
    Transport(String),
    #[error("cannot listen on --router-addr {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
}

fn socket_multiaddr(addr: SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => Protocol::Ip4(v4),
        IpAddr::V6(v6) => Protocol::Ip6(v6),
    };
    Multiaddr::empty().with(ip).with(Protocol::Tcp(addr.port()))
}

fn multiaddr_ip(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}
