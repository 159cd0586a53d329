//! The libp2p router: TCP + noise + yamux (optionally behind a private-network pre-shared
//! key), Kademlia in server mode on `/peermirror/kad/1.0.0`, and identify, which also carries
//! each node's registry port. The swarm lives in an event loop task; [`P2pRouter`] is a
//! cloneable handle that sends it commands.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use libp2p::core::upgrade;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore};
use libp2p::kad::{self, GetProvidersOk, QueryId, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, Transport, identify, identity, noise, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Provider, Router, RouterError, record_key};
use crate::content::Key;
use crate::metrics::Metrics;

const KAD_PROTOCOL: &str = "/peermirror/kad/1.0.0";
const IDENTIFY_PROTOCOL: &str = "/peermirror/id/1.0.0";
/// How many keys of other nodes' provider records a node keeps; far above a cluster's layers.
const MAX_KEYS: usize = 500_000;
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Lookups that find nothing are retried while routing tables fill after start-up.
const LOOKUP_RETRIES: u32 = 3;
const LOOKUP_RETRY_DELAY: Duration = Duration::from_millis(200);
const BOOTSTRAP_BACKOFF_MAX: Duration = Duration::from_secs(30);
const DNS_REFRESH: Duration = Duration::from_secs(30);
const COMMAND_QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    #[error("cannot read or write the identity key {path}: {source}")]
    Identity {
        path: String,
        source: std::io::Error,
    },
    #[error("identity key {path} is corrupt: {reason}; delete it to make a new one")]
    IdentityCorrupt { path: String, reason: String },
    #[error("cannot set up the libp2p transport: {0}")]
    Transport(String),
    #[error("cannot listen on --router-addr {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
}

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
}

/// What is known about a connected peer.
#[derive(Clone, Debug)]
pub struct PeerStatus {
    pub peer: String,
    /// Its registry endpoint, once identify told us the port.
    pub registry: Option<SocketAddr>,
    pub addrs: Vec<String>,
    pub last_seen: std::time::SystemTime,
}

/// Load the node's libp2p identity from `<dir>/identity.key`, creating it (mode 0600) on first
/// start, so a restart keeps the PeerId.
pub fn load_or_create_identity(dir: &Path) -> Result<identity::Keypair, P2pError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
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
            let tmp = dir.join("identity.key.tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err)?;
            f.write_all(&bytes)
                .and_then(|_| f.sync_all())
                .map_err(io_err)?;
            std::fs::rename(&tmp, &path).map_err(io_err)?;
            Ok(key)
        }
        Err(e) => Err(io_err(e)),
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
}

enum Command {
    Lookup {
        key: RecordKey,
        tx: mpsc::Sender<Provider>,
    },
    Provide {
        keys: Vec<RecordKey>,
        reply: oneshot::Sender<Vec<String>>,
    },
    Withdraw {
        keys: Vec<RecordKey>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerStatus>>,
    },
}

/// Handle to the libp2p router. Cheap to clone.
#[derive(Clone)]
pub struct P2pRouter {
    commands: mpsc::Sender<Command>,
    peers: Arc<AtomicUsize>,
    peer_id: PeerId,
    listen_addrs: Arc<Mutex<Vec<Multiaddr>>>,
    /// The external address registered for provider records, if any.
    advertised: Vec<Multiaddr>,
    /// Set when DNS bootstrap resolved to this node alone (and there are no static peers).
    alone: Arc<std::sync::atomic::AtomicBool>,
}

impl P2pRouter {
    /// Build the swarm, start listening, and spawn the event loop.
    pub fn start(
        config: P2pConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), P2pError> {
        let peer_id = config.keypair.public().to_peer_id();
        let mut swarm = build_swarm(&config)?;
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
        let peers = Arc::new(AtomicUsize::new(0));
        let listen_addrs = Arc::new(Mutex::new(Vec::new()));
        let alone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let event_loop = EventLoop {
            alone: alone.clone(),
            swarm,
            commands: rx,
            metrics,
            peers: peers.clone(),
            listen_addrs: listen_addrs.clone(),
            bootstrap: config.bootstrap,
            lookups: HashMap::new(),
            retries: Vec::new(),
            awaiting: HashMap::new(),
            known: HashMap::new(),
            next_bootstrap: Instant::now(),
            bootstrap_backoff: Duration::from_secs(1),
            next_dns: Instant::now(),
            reprovide_pending: false,
        };
        let handle = tokio::spawn(event_loop.run(shutdown));
        Ok((
            P2pRouter {
                commands: tx,
                peers,
                peer_id,
                listen_addrs,
                advertised: external.into_iter().collect(),
                alone,
            },
            handle,
        ))
    }

    pub fn peer_id(&self) -> String {
        self.peer_id.to_string()
    }

    /// Addresses the transport is listening on, with `/p2p/<PeerId>` appended.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    pub async fn peers(&self) -> Vec<PeerStatus> {
        let (reply, rx) = oneshot::channel();
        if self.commands.send(Command::Peers { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
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
        let failed = rx.await.map_err(|_| RouterError::Stopped)?;
        match failed.into_iter().next() {
            None => Ok(()),
            Some(reason) => Err(RouterError::Advertise {
                key: "(batch)".into(),
                reason,
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

    fn peer_count(&self) -> usize {
        self.peers.load(Ordering::Relaxed)
    }

    async fn peers(&self) -> Vec<PeerStatus> {
        P2pRouter::peers(self).await
    }

    fn local_id(&self) -> String {
        self.peer_id()
    }

    fn expects_peers(&self) -> bool {
        !self.alone.load(Ordering::Relaxed)
    }

    fn addresses(&self) -> (Vec<String>, Vec<String>) {
        let listen = self.listen_addrs().iter().map(|a| a.to_string()).collect();
        (
            listen,
            self.advertised.iter().map(|a| a.to_string()).collect(),
        )
    }
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

/// identify's agent string carries the registry endpoint: `peermirror/<ver> registry=[IP]:PORT`.
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

/// The registry endpoint a peer announced; a missing IP means "the IP you reached me at".
fn parse_registry(agent: &str, conn_ip: Option<IpAddr>) -> Option<SocketAddr> {
    let spec = agent
        .split_whitespace()
        .find_map(|w| w.strip_prefix("registry="))?;
    if let Ok(sa) = spec.parse::<SocketAddr>() {
        return Some(sa);
    }
    let port: u16 = spec.strip_prefix(':')?.parse().ok()?;
    Some(SocketAddr::new(conn_ip?, port))
}

fn build_swarm(config: &P2pConfig) -> Result<Swarm<Behaviour>, P2pError> {
    let tcp_config = tcp::Config::default().nodelay(true);
    let terr = |e: &dyn std::fmt::Display| P2pError::Transport(e.to_string());
    let make_behaviour = |key: &identity::Keypair| {
        let peer_id = key.public().to_peer_id();
        let mut kcfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        kcfg.set_query_timeout(QUERY_TIMEOUT);
        kcfg.set_provider_record_ttl(Some(config.provider_ttl));
        kcfg.set_provider_publication_interval(Some(config.republish_interval));
        if let Some(r) = NonZeroUsize::new(20) {
            kcfg.set_replication_factor(r);
        }
        let store = MemoryStore::with_config(
            peer_id,
            MemoryStoreConfig {
                max_provided_keys: MAX_KEYS,
                max_records: 1024,
                ..MemoryStoreConfig::default()
            },
        );
        let mut kad = kad::Behaviour::with_config(peer_id, store, kcfg);
        // Every node serves the DHT: a cluster has no NAT'd clients.
        kad.set_mode(Some(kad::Mode::Server));
        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                .with_agent_version(agent_version(config))
                .with_interval(Duration::from_secs(60)),
        );
        Behaviour { kad, identify }
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
            .build(),
        Some(psk) => builder
            .with_other_transport(|key| {
                let noise = noise::Config::new(key)?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    tcp::tokio::Transport::new(tcp_config)
                        .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                        .upgrade(upgrade::Version::V1)
                        .authenticate(noise)
                        .multiplex(yamux::Config::default())
                        .timeout(Duration::from_secs(20)),
                )
            })
            .map_err(|e| terr(&e))?
            .with_behaviour(|k| make_behaviour(k))
            .map_err(|e| terr(&e))?
            .with_swarm_config(idle)
            .build(),
    };
    Ok(swarm)
}

struct LookupState {
    key: RecordKey,
    tx: mpsc::Sender<Provider>,
    sent: HashSet<PeerId>,
    attempt: u32,
}

struct KnownPeer {
    /// The IP of the first connection: where its registry answers unless it says otherwise.
    conn_ip: Option<IpAddr>,
    registry: Option<SocketAddr>,
    addrs: Vec<Multiaddr>,
    last_seen: std::time::SystemTime,
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    metrics: Arc<Metrics>,
    peers: Arc<AtomicUsize>,
    listen_addrs: Arc<Mutex<Vec<Multiaddr>>>,
    bootstrap: Vec<Bootstrap>,
    lookups: HashMap<QueryId, LookupState>,
    retries: Vec<(Instant, LookupState)>,
    /// Lookups waiting for a provider's registry address (we are dialling it).
    awaiting: HashMap<PeerId, Vec<mpsc::Sender<Provider>>>,
    known: HashMap<PeerId, KnownPeer>,
    next_bootstrap: Instant,
    bootstrap_backoff: Duration,
    next_dns: Instant,
    /// Set when the last peer went away: re-announce everything when one comes back.
    reprovide_pending: bool,
    alone: Arc<std::sync::atomic::AtomicBool>,
}

impl EventLoop {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (dns_tx, mut dns_rx) = mpsc::channel::<Vec<Multiaddr>>(8);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                cmd = self.commands.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    None => return,
                },
                event = self.swarm.select_next_some() => self.on_event(event),
                Some(addrs) = dns_rx.recv() => self.dial_unknown(addrs),
                _ = tick.tick() => self.on_tick(&dns_tx),
            }
        }
    }

    fn connected(&self) -> usize {
        self.swarm.connected_peers().count()
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Lookup { key, tx } => self.start_lookup(key, tx, 1),
            Command::Provide { keys, reply } => {
                let mut failed = Vec::new();
                for k in keys {
                    if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(k.clone()) {
                        let key = String::from_utf8_lossy(k.as_ref()).into_owned();
                        tracing::warn!(%key, error = ?e, "cannot advertise key");
                        failed.push(format!("{key}: {e:?}"));
                    }
                }
                let _ = reply.send(failed);
            }
            Command::Withdraw { keys } => {
                for k in keys {
                    self.swarm.behaviour_mut().kad.stop_providing(&k);
                }
            }
            Command::Peers { reply } => {
                let list = self
                    .swarm
                    .connected_peers()
                    .map(|p| {
                        let k = self.known.get(p);
                        PeerStatus {
                            peer: p.to_string(),
                            registry: k.and_then(|k| k.registry),
                            addrs: k
                                .map(|k| k.addrs.iter().map(|a| a.to_string()).collect())
                                .unwrap_or_default(),
                            last_seen: k.map_or(std::time::SystemTime::now(), |k| k.last_seen),
                        }
                    })
                    .collect();
                let _ = reply.send(list);
            }
        }
    }

    fn start_lookup(&mut self, key: RecordKey, tx: mpsc::Sender<Provider>, attempt: u32) {
        if tx.is_closed() {
            return;
        }
        let id = self.swarm.behaviour_mut().kad.get_providers(key.clone());
        self.lookups.insert(
            id,
            LookupState {
                key,
                tx,
                sent: HashSet::new(),
                attempt,
            },
        );
    }

    fn provider_of(&self, peer: &PeerId) -> Option<Provider> {
        let addr = self.known.get(peer)?.registry?;
        Some(Provider {
            peer: peer.to_string(),
            addr,
        })
    }

    fn on_providers(&mut self, id: QueryId, providers: HashSet<PeerId>) {
        let local = *self.swarm.local_peer_id();
        let mut to_dial = Vec::new();
        if let Some(state) = self.lookups.get_mut(&id) {
            for p in providers {
                if p == local || !state.sent.insert(p) {
                    continue;
                }
                match self.known.get(&p).and_then(|k| k.registry) {
                    Some(addr) => {
                        let _ = state.tx.try_send(Provider {
                            peer: p.to_string(),
                            addr,
                        });
                    }
                    None => to_dial.push((p, state.tx.clone())),
                }
            }
        }
        for (p, tx) in to_dial {
            self.awaiting.entry(p).or_default().push(tx);
            if let Err(e) = self.swarm.dial(p) {
                tracing::debug!(peer = %p, error = %e, "cannot dial provider");
                self.awaiting.remove(&p);
            }
        }
    }

    fn on_lookup_finished(&mut self, id: QueryId) {
        let Some(state) = self.lookups.remove(&id) else {
            return;
        };
        // With no peer connected yet the routing table is still filling: try again shortly.
        // With peers, the query really asked them, so nothing found is a miss: closing the
        // channel now lets the mirror answer 404 at once instead of at its timeout.
        if state.sent.is_empty()
            && state.attempt < LOOKUP_RETRIES
            && !state.tx.is_closed()
            && self.connected() == 0
        {
            self.retries
                .push((Instant::now() + LOOKUP_RETRY_DELAY, state));
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address.with(Protocol::P2p(*self.swarm.local_peer_id()));
                tracing::info!(address = %full, "router listening");
                if let Ok(mut v) = self.listen_addrs.lock() {
                    v.push(full);
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let remote = endpoint.get_remote_address().clone();
                if endpoint.is_dialer() {
                    // A dialled address is a listen address of the peer: routable.
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, remote.clone());
                }
                let entry = self.known.entry(peer_id).or_insert_with(|| KnownPeer {
                    conn_ip: multiaddr_ip(&remote),
                    registry: None,
                    addrs: Vec::new(),
                    last_seen: std::time::SystemTime::now(),
                });
                entry.last_seen = std::time::SystemTime::now();
                self.update_peer_count();
                if self.connected() > 0 {
                    self.bootstrap_backoff = Duration::from_secs(1);
                }
                tracing::debug!(peer = %peer_id, %remote, "peer connected");
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                if num_established == 0 {
                    self.known.remove(&peer_id);
                    tracing::debug!(peer = %peer_id, "peer disconnected");
                }
                self.update_peer_count();
                if self.connected() == 0 {
                    self.reprovide_pending = true;
                    self.next_bootstrap = Instant::now() + self.bootstrap_backoff;
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, error = %error, "dial failed");
                if let Some(p) = peer_id {
                    self.awaiting.remove(&p);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.on_identify(peer_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                ..
            })) => match result {
                QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders {
                    providers, ..
                })) => {
                    self.on_providers(id, providers);
                    if step.last {
                        self.on_lookup_finished(id);
                    }
                }
                QueryResult::GetProviders(_) => self.on_lookup_finished(id),
                QueryResult::StartProviding(Err(e)) => {
                    tracing::debug!(error = ?e, "provider announcement incomplete")
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn on_identify(&mut self, peer_id: PeerId, info: identify::Info) {
        if !info.agent_version.starts_with("peermirror/") {
            tracing::warn!(peer = %peer_id, agent = %info.agent_version, "not a peermirror node; ignoring");
            return;
        }
        let Some(entry) = self.known.get_mut(&peer_id) else {
            return;
        };
        let conn_ip = entry.conn_ip;
        entry.registry = parse_registry(&info.agent_version, conn_ip);
        entry.addrs = info.listen_addrs.clone();
        entry.last_seen = std::time::SystemTime::now();
        let loopback_peer = conn_ip.is_some_and(|ip| ip.is_loopback());
        for addr in info.listen_addrs {
            // Another node's loopback address is our own machine: never route to it, unless we
            // reached that peer over loopback in the first place (several nodes on one host).
            let is_loopback = multiaddr_ip(&addr).is_some_and(|ip| ip.is_loopback());
            if !is_loopback || loopback_peer {
                self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
            }
        }
        if let Some(provider) = self.provider_of(&peer_id)
            && let Some(waiting) = self.awaiting.remove(&peer_id)
        {
            for tx in waiting {
                let _ = tx.try_send(provider.clone());
            }
        }
        if self.reprovide_pending {
            self.reprovide_pending = false;
            let keys: Vec<RecordKey> = self
                .swarm
                .behaviour_mut()
                .kad
                .store_mut()
                .provided()
                .map(|r| r.key.clone())
                .collect();
            tracing::info!(keys = keys.len(), "peers back; re-announcing provided keys");
            for k in keys {
                let _ = self.swarm.behaviour_mut().kad.start_providing(k);
            }
        }
    }

    fn update_peer_count(&mut self) {
        let n = self.connected();
        self.peers.store(n, Ordering::Relaxed);
        self.metrics
            .connected_peers
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn on_tick(&mut self, dns_tx: &mpsc::Sender<Vec<Multiaddr>>) {
        let now = Instant::now();
        let due: Vec<LookupState> = {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retries)
                .into_iter()
                .partition(|(at, _)| *at <= now);
            self.retries = later;
            due.into_iter().map(|(_, s)| s).collect()
        };
        for s in due {
            self.start_lookup(s.key, s.tx, s.attempt + 1);
        }
        if self.connected() == 0 && now >= self.next_bootstrap {
            self.dial_bootstrap(dns_tx);
            self.next_bootstrap = now + self.bootstrap_backoff;
            self.bootstrap_backoff = (self.bootstrap_backoff * 2).min(BOOTSTRAP_BACKOFF_MAX);
        } else if now >= self.next_dns {
            // Re-resolve the headless Service now and then to meet nodes that joined later.
            self.resolve_dns(dns_tx);
        }
    }

    fn dial_bootstrap(&mut self, dns_tx: &mpsc::Sender<Vec<Multiaddr>>) {
        let statics: Vec<Multiaddr> = self
            .bootstrap
            .iter()
            .filter_map(|b| match b {
                Bootstrap::Static(a) => Some(a.clone()),
                _ => None,
            })
            .collect();
        for addr in statics {
            let opts = match addr.iter().last() {
                Some(Protocol::P2p(peer)) => DialOpts::peer_id(peer)
                    .addresses(vec![addr.clone()])
                    .build(),
                _ => DialOpts::unknown_peer_id().address(addr.clone()).build(),
            };
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%addr, error = %e, "bootstrap dial failed");
            }
        }
        self.resolve_dns(dns_tx);
        if self.connected() > 0 {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
    }

    fn resolve_dns(&mut self, dns_tx: &mpsc::Sender<Vec<Multiaddr>>) {
        self.next_dns = Instant::now() + DNS_REFRESH;
        for b in &self.bootstrap {
            if let Bootstrap::Dns { host, port } = b {
                let (host, port, tx) = (host.clone(), *port, dns_tx.clone());
                tokio::spawn(async move {
                    let lookup = tokio::time::timeout(
                        Duration::from_secs(5),
                        tokio::net::lookup_host((host.as_str(), port)),
                    )
                    .await;
                    match lookup {
                        Ok(Ok(addrs)) => {
                            let _ = tx.send(addrs.map(socket_multiaddr).collect()).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%host, error = %e, "bootstrap DNS lookup failed")
                        }
                        Err(_) => tracing::debug!(%host, "bootstrap DNS lookup timed out"),
                    }
                });
            }
        }
    }

    /// Dial addresses (from DNS) that no connected peer already uses.
    fn dial_unknown(&mut self, addrs: Vec<Multiaddr>) {
        let connected: HashSet<IpAddr> = self.known.values().filter_map(|k| k.conn_ip).collect();
        let own: HashSet<IpAddr> = self
            .swarm
            .listeners()
            .filter_map(multiaddr_ip)
            .chain(self.swarm.external_addresses().filter_map(multiaddr_ip))
            .collect();
        let has_static = self
            .bootstrap
            .iter()
            .any(|b| matches!(b, Bootstrap::Static(_)));
        let others = addrs
            .iter()
            .filter_map(multiaddr_ip)
            .any(|ip| !own.contains(&ip));
        self.alone.store(!others && !has_static, Ordering::Relaxed);
        for addr in addrs {
            let Some(ip) = multiaddr_ip(&addr) else {
                continue;
            };
            if connected.contains(&ip) || own.contains(&ip) {
                continue;
            }
            let _ = self
                .swarm
                .dial(DialOpts::unknown_peer_id().address(addr).build());
        }
    }
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

    #[test]
    fn registry_address_from_agent() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(
            parse_registry("peermirror/0.1.0 registry=:5000", Some(ip)),
            Some("10.0.0.7:5000".parse().unwrap())
        );
        assert_eq!(
            parse_registry("peermirror/0.1.0 registry=10.1.1.1:5443", Some(ip)),
            Some("10.1.1.1:5443".parse().unwrap())
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
