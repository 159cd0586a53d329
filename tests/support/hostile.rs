//! A hostile peer: a real libp2p node speaking the project's protocols (Kademlia on
//! `/peermirror/kad/1.0.0`, identify on `/peermirror/id/1.0.0` with an agent string of our
//! choosing) that advertises chosen keys, paired with an HTTP server that lies in a chosen way,
//! and a "recorder" HTTP server that only records what reaches it.
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

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use libp2p::kad::store::{MemoryStore, RecordStore};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identify, identity, kad, noise, tcp, yamux};
use peermirror::content::Key;
use peermirror::oci::Digest;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const HOSTILE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
pub const RECORDER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const KAD_PROTOCOL: &str = "/peermirror/kad/1.0.0";
const IDENTIFY_PROTOCOL: &str = "/peermirror/id/1.0.0";
/// How much the `Inflated` lie adds.
pub const INFLATE_BY: usize = 1_000_000;
/// The `Drip` lie's pace.
pub const DRIP_EVERY: Duration = Duration::from_secs(5);

/// How the hostile HTTP server answers a blob or manifest it has. (Tags always resolve to what
/// [`Hostile::add_tag`] mapped them to: the tag lie is in the mapping, not the mode.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lie {
    /// No lie: the right headers and bytes.
    Honest,
    /// `200`, `Content-Length: 0`, the right `Docker-Content-Digest`, no body.
    EmptyBody,
    /// The right headers, half the body, then the connection is cut.
    HalfThenClose,
    /// `Content-Length` and body inflated by [`INFLATE_BY`] zeros after the real bytes.
    Inflated,
    /// The right length of wrong bytes (every byte flipped).
    WrongBytes,
    /// [`Lie::WrongBytes`] for blobs larger than this many bytes, honest below: the manifest
    /// and config check out, so the asker goes on to stream a large layer's wrong bytes.
    WrongBytesAbove(usize),
    /// The right headers, then one byte every [`DRIP_EVERY`].
    Drip,
}

/// One request that reached a server: method, path and query, `Authorization` header.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct HttpState {
    lie: Option<Lie>,
    /// digest -> (bytes, media type)
    blobs: HashMap<Digest, (Bytes, String)>,
    /// tag (the last path segment) -> digest
    tags: HashMap<String, Digest>,
    seen: Vec<Seen>,
}

/// A lying (or recording) HTTP server's shared state.
#[derive(Clone, Default)]
pub struct HttpServer {
    state: Arc<Mutex<HttpState>>,
}

impl HttpServer {
    fn st(&self) -> std::sync::MutexGuard<'_, HttpState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_lie(&self, lie: Lie) {
        self.st().lie = Some(lie);
    }

    pub fn lie(&self) -> Lie {
        self.st().lie.unwrap_or(Lie::Honest)
    }

    /// Every request that reached this server so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.st().seen.clone()
    }

    /// How many requests mentioned `needle` (a digest, a tag) in their path.
    pub fn hits(&self, needle: &str) -> usize {
        self.st()
            .seen
            .iter()
            .filter(|s| s.uri.contains(needle))
            .count()
    }

    pub fn add_blob(&self, data: impl Into<Bytes>, media_type: &str) -> Digest {
        let data = data.into();
        let d = Digest::of(&data);
        self.st().blobs.insert(d, (data, media_type.to_string()));
        d
    }

    pub fn add_tag(&self, tag: &str, digest: Digest) {
        self.st().tags.insert(tag.to_string(), digest);
    }

    async fn answer(&self, req: http::Request<hyper::body::Incoming>) -> http::Response<Body> {
        let seen = Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            authorization: req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        };
        let head = req.method() == http::Method::HEAD;
        let path = req.uri().path().to_string();
        let reference = path.rsplit('/').next().unwrap_or_default().to_string();
        let (found, lie) = {
            let mut st = self.st();
            st.seen.push(seen);
            let digest = reference
                .parse::<Digest>()
                .ok()
                .or_else(|| st.tags.get(&reference).copied());
            let found =
                digest.and_then(|d| st.blobs.get(&d).map(|(b, m)| (d, b.clone(), m.clone())));
            (found, st.lie.unwrap_or(Lie::Honest))
        };
        let Some((digest, data, media_type)) = found else {
            return response(404, None, 0, "application/json", empty());
        };
        let len = data.len();
        let lie = match lie {
            Lie::WrongBytesAbove(n) if len > n => Lie::WrongBytes,
            Lie::WrongBytesAbove(_) => Lie::Honest,
            other => other,
        };
        let (declared, body) = match lie {
            Lie::Honest | Lie::WrongBytesAbove(_) => (len, full(data)),
            Lie::EmptyBody => (0, empty()),
            Lie::HalfThenClose => {
                let half = data.slice(..len / 2);
                let s = futures_util::stream::iter(vec![
                    Ok(Frame::data(half)),
                    Err(std::io::Error::other("hostile: cut")),
                ]);
                (len, StreamBody::new(s).boxed_unsync())
            }
            Lie::Inflated => {
                let mut v = data.to_vec();
                v.resize(len + INFLATE_BY, 0);
                (len + INFLATE_BY, full(Bytes::from(v)))
            }
            Lie::WrongBytes => (
                len,
                full(data.iter().map(|b| !b).collect::<Vec<u8>>().into()),
            ),
            Lie::Drip => {
                let s = futures_util::stream::unfold(0usize, move |i| {
                    let data = data.clone();
                    async move {
                        if i >= data.len() {
                            return None;
                        }
                        if i > 0 {
                            tokio::time::sleep(DRIP_EVERY).await;
                        }
                        Some((Ok(Frame::data(data.slice(i..=i))), i + 1))
                    }
                });
                (len, StreamBody::new(s).boxed_unsync())
            }
        };
        let body = if head { empty() } else { body };
        response(200, Some(digest), declared, &media_type, body)
    }

    /// Serve on `listener` until `stop`, over TLS when `tls` is given.
    pub fn serve(
        &self,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        stop: CancellationToken,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                };
                let me = me.clone();
                let stop = stop.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => me.serve_connection(stream, stop).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                me.serve_connection(s, stop).await;
                            }
                        }
                    }
                });
            }
        });
    }

    async fn serve_connection<S>(self, stream: S, stop: CancellationToken)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let svc = hyper::service::service_fn(move |req| {
            let me = self.clone();
            async move { Ok::<_, Infallible>(me.answer(req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = conn => {}
        }
    }
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|n: Infallible| match n {})
        .boxed_unsync()
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|n| match n {}).boxed_unsync()
}

fn response(
    status: u16,
    digest: Option<Digest>,
    len: usize,
    media_type: &str,
    body: Body,
) -> http::Response<Body> {
    let mut r = http::Response::builder()
        .status(status)
        .header("content-length", len)
        .header("content-type", media_type);
    if let Some(d) = digest {
        r = r.header("docker-content-digest", d.to_string());
    }
    r.body(body).unwrap()
}

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
    pub http: HttpServer,
    /// The recorder on 127.0.0.2:PORT (the forged address points at it, if forged).
    pub recorder: HttpServer,
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
        let http = HttpServer::default();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        http.serve(l3, acceptor.clone(), stop.clone());
        http.serve(l1, acceptor, stop.clone());
        let recorder = HttpServer::default();
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
