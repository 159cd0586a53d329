//! How a node is told to start: where to listen, how to find its first peers, its identity.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use libp2p::pnet::PreSharedKey;
use libp2p::{Multiaddr, identity};

/// How a node finds its first peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// A peer's multiaddr (with or without `/p2p/<PeerId>`).
    Static(Multiaddr),
    /// Every A/AAAA record of a name (a headless Service), dialled on `port`, re-resolved.
    Dns { host: String, port: u16 },
    /// No peers to start from (a single node, or it waits to be dialled).
    None,
}

impl FromStr for Bootstrap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(Bootstrap::None);
        }
        if let Some(addr) = s.strip_prefix("static:") {
            return addr.parse().map(Bootstrap::Static).map_err(|e| {
                format!(
                    "static bootstrap {addr:?} is not a multiaddr like /ip4/10.0.0.2/tcp/5001: {e}"
                )
            });
        }
        if let Some(rest) = s.strip_prefix("dns:") {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("dns bootstrap {rest:?} must be host:port"))?;
            let port = port
                .parse()
                .map_err(|_| format!("dns bootstrap port {port:?} is not a port number"))?;
            if host.is_empty() {
                return Err("dns bootstrap needs a host name".into());
            }
            return Ok(Bootstrap::Dns {
                host: host.to_string(),
                port,
            });
        }
        Err(format!(
            "bootstrap {s:?} must be static:<multiaddr>, dns:<host>:<port> or none"
        ))
    }
}

pub struct P2pConfig {
    /// Where the libp2p TCP transport listens (`--router-addr`).
    pub listen: SocketAddr,
    /// The address other nodes reach this one at (`--advertise-addr`), when not `listen`.
    pub advertise: Option<SocketAddr>,
    /// The registry endpoint's port, told to peers through identify.
    pub registry_port: u16,
    pub bootstrap: Vec<Bootstrap>,
    pub keypair: identity::Keypair,
    pub psk: Option<PreSharedKey>,
    /// How long provider records live, and how often they are re-published.
    pub provider_ttl: Duration,
    pub republish_interval: Duration,
    /// Kademlia's k: how many nodes store each provider record (and peers per FIND_NODE answer).
    pub replication: usize,
    /// Every key is announced once more this long after the first peers came, when the
    /// routing table has filled ([`P2pConfig::ANNOUNCE_AGAIN_AFTER`]), and also as soon as the
    /// table has doubled and settled. `None`: neither pass.
    pub announce_again_after: Option<Duration>,
}

impl P2pConfig {
    /// Announcements made while the routing table was still filling (a node's first minute, a
    /// cluster that starts together) reach the closest nodes known then, not the key's real k
    /// closest: bench/dht_sim.sh found 3 % of steady-state lookups (60 nodes) missing keys
    /// whose holders answered without the record, until the republish. So every key is
    /// announced once more this long after the first peers came.
    pub const ANNOUNCE_AGAIN_AFTER: Duration = Duration::from_secs(60);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_specs() {
        assert_eq!("none".parse::<Bootstrap>(), Ok(Bootstrap::None));
        assert!(matches!(
            "static:/ip4/127.0.0.1/tcp/5001".parse::<Bootstrap>(),
            Ok(Bootstrap::Static(_))
        ));
        assert_eq!(
            "dns:peermirror.kube-system.svc:5001".parse::<Bootstrap>(),
            Ok(Bootstrap::Dns {
                host: "peermirror.kube-system.svc".into(),
                port: 5001
            })
        );
        for bad in [
            "",
            "static:nope",
            "dns:host",
            "dns::1",
            "dns:h:x",
            "tcp:1.2.3.4",
        ] {
            assert!(bad.parse::<Bootstrap>().is_err(), "{bad}");
        }
    }
}
