//! Building the swarm: transport (TCP, optional pre-shared key, noise, yamux), the Kademlia and
//! identify behaviours, and the node's persistent identity key.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use libp2p::core::upgrade;
use libp2p::kad;
use libp2p::pnet::PnetConfig;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, Swarm, Transport, identify, identity, noise, ping, tcp, yamux};

use super::store::{ProviderStore, StoreLimits};
use super::{P2pConfig, P2pError};
use crate::fsutil::{Existing, write_atomic};

const KAD_PROTOCOL: &str = "/peermirror/kad/1.0.0";
const IDENTIFY_PROTOCOL: &str = "/peermirror/id/1.0.0";
/// Other nodes' keys a node stores: a node holds about keys-per-node × k of them, so this is
/// 25,000 keys per node at k = 20 (~200 MB at its limit, see docs/scale.md).
const STORE_LIMITS: StoreLimits = StoreLimits {
    max_keys: 500_000,
    max_per_provider: 100_000,
    max_providers_per_key: 20,
};
/// Announcements queue behind each other on a busy node and their work is lost at the
/// deadline, so it is generous; lookups end sooner on their own deadline (the event loop's).
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often each connection is pinged. A peer whose machine died (no RST) or whose process
/// froze keeps its TCP connections open; pings are what notice it (the event loop closes a
/// connection that has not answered one for `event_loop::SILENT_AFTER`). Every 3 s cost 11 ms
/// of CPU per node per second in bench/dht_sim.sh (60 nodes, each pinging 59 peers, against
/// 1.5 ms idle), so 5 s: ~7 ms/s at 60 peers, ~20 ms/s at 200.
pub(super) const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How long a dial (TCP, noise, yamux) and a DHT request may take. A cluster's handshakes
/// and answers take milliseconds; a frozen peer (its kernel still accepts TCP) makes a query
/// wait this long for each request to it, and re-announcements after a loss are such
/// queries (libp2p's default is 10 s for both).
const PEER_WAIT: Duration = Duration::from_secs(5);

/// Load the node's libp2p identity from `<dir>/identity.key`, creating it (mode 0600) on first
/// start, so a restart keeps the PeerId.
pub fn load_or_create_identity(dir: &Path) -> Result<identity::Keypair, P2pError> {
    let path = dir.join("identity.key");
    let io_err = |source| P2pError::Identity {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(&path) {
        Ok(bytes) => identity::Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            P2pError::IdentityCorrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            }
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io_err)?;
            let key = identity::Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| P2pError::IdentityCorrupt {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            write_atomic(&path, &bytes, 0o600, Existing::Replace).map_err(io_err)?;
            Ok(key)
        }
        Err(e) => Err(io_err(e)),
    }
}

/// A new identity kept only in memory (the data dir cannot hold one).
pub fn ephemeral_identity() -> identity::Keypair {
    identity::Keypair::generate_ed25519()
}

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub(super) kad: kad::Behaviour<ProviderStore>,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
}

/// identify's agent string carries the registry port: `peermirror/<ver> registry=[IP]:PORT`; the IP
/// is informational (peers use the connection's).
fn agent_version(config: &P2pConfig) -> String {
    let ip = config
        .advertise
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let ip = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip
    };
    format!(
        "peermirror/{} registry={ip}:{}",
        env!("CARGO_PKG_VERSION"),
        config.registry_port
    )
}

/// The registry endpoint of a peer: the IP of our connection to it plus the port it announced.
/// An IP in the agent string is never used: any DHT member could otherwise point every node,
/// and the bearer token it sends, at a host of its choice.
pub fn parse_registry(agent: &str, conn_ip: Option<IpAddr>) -> Option<SocketAddr> {
    let spec = agent
        .split_whitespace()
        .find_map(|w| w.strip_prefix("registry="))?;
    let conn_ip = conn_ip?;
    let (announced, port) = match spec.parse::<SocketAddr>() {
        Ok(sa) => (Some(sa.ip()), sa.port()),
        Err(_) => (None, spec.strip_prefix(':')?.parse().ok()?),
    };
    if let Some(ip) = announced.filter(|ip| *ip != conn_ip) {
        tracing::info!(announced = %ip, connection = %conn_ip, "a peer announced a registry IP other than its connection's; using the connection's");
    }
    Some(SocketAddr::new(conn_ip, port))
}

pub(super) fn build_swarm(config: &P2pConfig) -> Result<Swarm<Behaviour>, P2pError> {
    let tcp_config = tcp::Config::default().nodelay(true);
    let terr = |e: &dyn std::fmt::Display| P2pError::Transport(e.to_string());
    let make_behaviour = |key: &identity::Keypair| {
        let peer_id = key.public().to_peer_id();
        let mut kcfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        kcfg.set_query_timeout(QUERY_TIMEOUT);
        kcfg.set_substreams_timeout(PEER_WAIT);
        kcfg.set_provider_record_ttl(Some(config.provider_ttl));
        // Republishing is the event loop's (paced, jittered, retried: see announce.rs).
        kcfg.set_provider_publication_interval(None);
        kcfg.set_record_ttl(None);
        kcfg.set_publication_interval(None);
        if let Some(r) = NonZeroUsize::new(config.replication) {
            kcfg.set_replication_factor(r);
        }
        let store = ProviderStore::new(peer_id, STORE_LIMITS);
        let mut kad = kad::Behaviour::with_config(peer_id, store, kcfg);
        // Every node serves the DHT: a cluster has no NAT'd clients.
        kad.set_mode(Some(kad::Mode::Server));
        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                .with_agent_version(agent_version(config))
                // Sent on connect (and pushed on change); the periodic resend only refreshes,
                // and every node receives one per peer per interval.
                .with_interval(Duration::from_secs(300)),
        );
        // ping's own failure report comes only after two failed pings (up to ~30 s with its
        // substream timeout); the event loop judges silence by the last answer instead.
        let ping = ping::Behaviour::new(
            ping::Config::new()
                .with_interval(PING_INTERVAL)
                .with_timeout(3 * PING_INTERVAL),
        );
        Behaviour {
            kad,
            identify,
            ping,
        }
    };
    let builder = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone()).with_tokio();
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(3600));
    let swarm = match config.psk {
        None => builder
            .with_tcp(tcp_config, noise::Config::new, yamux::Config::default)
            .map_err(|e| terr(&e))?
            .with_behaviour(|k| make_behaviour(k))
            .map_err(|e| terr(&e))?
            .with_swarm_config(idle)
            .with_connection_timeout(PEER_WAIT)
            .build(),
        Some(psk) => builder
            .with_other_transport(|key| {
                let noise = noise::Config::new(key)?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    tcp::tokio::Transport::new(tcp_config)
                        .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                        .upgrade(upgrade::Version::V1)
                        .authenticate(noise)
                        // The builder's connection timeout (PEER_WAIT) wraps all of it.
                        .multiplex(yamux::Config::default()),
                )
            })
            .map_err(|e| terr(&e))?
            .with_behaviour(|k| make_behaviour(k))
            .map_err(|e| terr(&e))?
            .with_swarm_config(idle)
            .with_connection_timeout(PEER_WAIT)
            .build(),
    };
    Ok(swarm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_address_from_agent() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(
            parse_registry("peermirror/0.1.0 registry=:5000", Some(ip)),
            Some("10.0.0.7:5000".parse().unwrap())
        );
        // A forged address in the agent string is ignored: only its port is used.
        assert_eq!(
            parse_registry("peermirror/0.1.0 registry=10.1.1.1:5443", Some(ip)),
            Some("10.0.0.7:5443".parse().unwrap())
        );
        assert_eq!(
            parse_registry("peermirror/0.1.0 registry=[::1]:5443", Some(ip)),
            Some("10.0.0.7:5443".parse().unwrap())
        );
        assert_eq!(
            parse_registry("peermirror/0.1.0 registry=:5000", None),
            None
        );
        assert_eq!(parse_registry("peermirror/0.1.0", Some(ip)), None);
        assert_eq!(
            parse_registry("peermirror/0.1.0 registry=:x", Some(ip)),
            None
        );
    }

    #[test]
    fn identity_persists() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_identity(dir.path()).unwrap();
        let b = load_or_create_identity(dir.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("identity.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("identity.key"), b"garbage").unwrap();
        assert!(matches!(
            load_or_create_identity(dir.path()),
            Err(P2pError::IdentityCorrupt { .. })
        ));
    }
}
