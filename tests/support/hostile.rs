//! A hostile peer: a real libp2p node speaking the project's protocols (Kademlia on
//! `/peermirror/kad/1.0.0`, identify on `/peermirror/id/1.0.0` with an agent string of our
//! choosing) that advertises chosen keys, paired with a fake peer (`fake_peer.rs`) that lies in a
//! chosen way, and a second fake peer, the "recorder", that holds nothing and only records what
//! reaches it.
//!
//! The swarm is built here, not with `peermirror::routing::P2pRouter`, because the router
//! always tells the truth about its registry address; a liar must be able to say anything.
//!
//! Addresses: the hostile node lives on `127.0.0.3` (libp2p and HTTP), so a product that
//! penalizes by connection IP can tell it from honest in-process nodes on `127.0.0.1`. Its HTTP
//! server also answers on `127.0.0.1` at the same port, because a node that dials us from
//! 127.0.0.1 sees that as our connection IP. The recorder is on `127.0.0.2`, same port: a forged
//! `registry=127.0.0.2:PORT` points at it, while "connection IP + announced port" does not.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use libp2p::kad::store::{MemoryStore, RecordStore};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identify, identity, kad, noise, tcp, yamux};
use peermirror::content::Key;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const HOSTILE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
pub const RECORDER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const KAD_PROTOCOL: &str = "/peermirror/kad/1.0.0";
const IDENTIFY_PROTOCOL: &str = "/peermirror/id/1.0.0";

// `super`: the support module in-process, the test crate's root in `e2e_hostile`.
use super::fake_peer::FakePeer;
pub use super::fake_peer::Lie;
// ---------------------------------------------------------------------------
// The libp2p side
// ---------------------------------------------------------------------------

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
}

enum Command {
    Provide(Vec<Vec<u8>>),
    /// How many providers of a key this node's own store holds (its records and those
    /// other nodes put there).
    Providers(Vec<u8>, tokio::sync::oneshot::Sender<usize>),
}

struct Shared {
    connected: Vec<(PeerId, Multiaddr)>,
    listen: Vec<Multiaddr>,
}

/// The hostile node: its libp2p identity and HTTP servers.
pub struct Hostile {
    pub peer_id: PeerId,
    /// The lying HTTP server (on 127.0.0.3:PORT and 127.0.0.1:PORT).
    pub http: FakePeer,
    /// The recorder on 127.0.0.2:PORT (the forged address points at it, if forged).
    pub recorder: FakePeer,
    pub http_port: u16,
    /// The agent string identify sends.
    pub agent: String,
    commands: mpsc::Sender<Command>,
    shared: Arc<Mutex<Shared>>,
    stop: CancellationToken,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Bind the same free port on 127.0.0.3, 127.0.0.1 and 127.0.0.2.
async fn bind_triplet() -> (TcpListener, TcpListener, TcpListener, u16) {
    for _ in 0..50 {
        let a = TcpListener::bind((HOSTILE_IP, 0)).await.unwrap();
        let port = a.local_addr().unwrap().port();
        let Ok(b) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await else {
            continue;
        };
        let Ok(c) = TcpListener::bind((RECORDER_IP, port)).await else {
            continue;
        };
        return (a, b, c, port);
    }
    panic!("no port free on 127.0.0.1, .2 and .3 at once");
}

impl Hostile {
    /// Start a hostile node. With `forge`, identify announces `registry=127.0.0.2:PORT` (the
    /// recorder) instead of `registry=:PORT` (its own lying server at the connection's IP).
    /// It dials nobody: nodes that bootstrap to [`Hostile::multiaddr`] connect to it.
    pub async fn start(forge: bool) -> Hostile {
        Hostile::start_with(forge, None).await
    }

    /// Like [`Hostile::start`], its lying server speaking TLS with `tls` (a certificate of the
    /// cluster CA: a member whose valid certificate was stolen).
    pub async fn start_with(forge: bool, tls: Option<Arc<rustls::ServerConfig>>) -> Hostile {
        let (l3, l1, l2, port) = bind_triplet().await;
        let stop = CancellationToken::new();
        let http = FakePeer::default();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        http.serve(l3, acceptor.clone(), stop.clone());
        http.serve(l1, acceptor, stop.clone());
        let recorder = FakePeer::default();
        recorder.serve(l2, None, stop.clone());
        let agent = if forge {
            format!("peermirror/0.1.0 registry={RECORDER_IP}:{port}")
        } else {
            format!("peermirror/0.1.0 registry=:{port}")
        };
        let key = identity::Keypair::generate_ed25519();
        let peer_id = key.public().to_peer_id();
        let agent_for_swarm = agent.clone();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|k| {
                let id = k.public().to_peer_id();
                let mut cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
                cfg.set_query_timeout(Duration::from_secs(5));
                let mut kad = kad::Behaviour::with_config(id, MemoryStore::new(id), cfg);
                kad.set_mode(Some(kad::Mode::Server));
                let identify = identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.to_string(), k.public())
                        .with_agent_version(agent_for_swarm)
                        .with_interval(Duration::from_secs(60)),
                );
                Behaviour { kad, identify }
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
            .build();
        let listen: Multiaddr = format!("/ip4/{HOSTILE_IP}/tcp/0").parse().unwrap();
        swarm.listen_on(listen).unwrap();
        let shared = Arc::new(Mutex::new(Shared {
            connected: Vec::new(),
            listen: Vec::new(),
        }));
        let (tx, mut rx) = mpsc::channel::<Command>(64);
        let sh = shared.clone();
        let st = stop.clone();
        tokio::spawn(async move {
            let mut provided: Vec<Vec<u8>> = Vec::new();
            let provide = |swarm: &mut libp2p::Swarm<Behaviour>, keys: &[Vec<u8>]| {
                for k in keys {
                    let _ = swarm
                        .behaviour_mut()
                        .kad
                        .start_providing(kad::RecordKey::new(k));
                }
            };
            loop {
                tokio::select! {
                    _ = st.cancelled() => return,
                    cmd = rx.recv() => match cmd {
                        Some(Command::Provide(keys)) => {
                            provide(&mut swarm, &keys);
                            provided.extend(keys);
                        }
                        Some(Command::Providers(key, reply)) => {
                            let n = swarm
                                .behaviour_mut()
                                .kad
                                .store_mut()
                                .providers(&kad::RecordKey::new(&key))
                                .len();
                            let _ = reply.send(n);
                        }
                        None => return,
                    },
                    ev = swarm.select_next_some() => match ev {
                        SwarmEvent::NewListenAddr { address, .. } => {
                            let full = address.with(libp2p::multiaddr::Protocol::P2p(peer_id));
                            sh.lock().unwrap().listen.push(full);
                        }
                        SwarmEvent::ConnectionEstablished { peer_id: p, endpoint, .. } => {
                            let remote = endpoint.get_remote_address().clone();
                            sh.lock().unwrap().connected.push((p, remote));
                            // A newcomer should hear about everything we claim to have.
                            provide(&mut swarm, &provided);
                        }
                        SwarmEvent::ConnectionClosed { peer_id: p, num_established: 0, .. } => {
                            sh.lock().unwrap().connected.retain(|(q, _)| *q != p);
                        }
                        SwarmEvent::Behaviour(BehaviourEvent::Identify(
                            identify::Event::Received { peer_id: p, info, .. },
                        )) => {
                            // Route through the addresses peers listen on (they are on loopback).
                            for a in info.listen_addrs {
                                swarm.behaviour_mut().kad.add_address(&p, a);
                            }
                        }
                        _ => {}
                    },
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.lock().unwrap().listen.is_empty() {
            assert!(Instant::now() < deadline, "hostile node never listened");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Hostile {
            peer_id,
            http,
            recorder,
            http_port: port,
            agent,
            commands: tx,
            shared,
            stop,
        }
    }

    /// Where to bootstrap to it: `/ip4/127.0.0.3/tcp/PORT/p2p/ID`.
    pub fn multiaddr(&self) -> Multiaddr {
        self.shared.lock().unwrap().listen[0].clone()
    }

    /// `static:<multiaddr>`, as `--bootstrap` takes it.
    pub fn bootstrap_spec(&self) -> String {
        format!("static:{}", self.multiaddr())
    }

    /// The address of its lying HTTP server on 127.0.0.3.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(HOSTILE_IP), self.http_port)
    }

    /// The recorder's address (where a forged agent string points).
    pub fn recorder_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(RECORDER_IP), self.http_port)
    }

    pub fn connected(&self) -> usize {
        self.shared.lock().unwrap().connected.len()
    }

    /// Wait until at least `n` peers are connected.
    pub async fn wait_connected(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.connected() < n {
            assert!(
                Instant::now() < deadline,
                "hostile node: {} of {n} peers connected after {within:?}",
                self.connected()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Advertise `keys` in the DHT (again to every peer that connects later).
    pub async fn provide(&self, keys: &[Key]) {
        let keys = keys.iter().map(peermirror::routing::record_key).collect();
        self.commands.send(Command::Provide(keys)).await.unwrap();
    }

    /// Wait until this node's store holds `n` provider records of `key` (its own and those
    /// other nodes announced to it): the honest providers are then in the DHT.
    pub async fn wait_provider_records(&self, key: &Key, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let k = peermirror::routing::record_key(key);
            self.commands.send(Command::Providers(k, tx)).await.unwrap();
            let have = rx.await.unwrap();
            if have >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "hostile node: {have} of {n} provider records of {key} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn set_lie(&self, lie: Lie) {
        self.http.set_lie(lie);
    }
}

/// A TLS server configuration for the hostile node from a certificate and key in PEM files.
pub fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Arc<rustls::ServerConfig> {
    let certs = peermirror::pki::load_certs(cert).unwrap();
    let key = peermirror::pki::load_key(key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}
