//! Slow clients cannot fill every connection slot: half-open requests (plain port) and silent
//! sockets (TLS port) from several loopback addresses fill the general pool, and still this
//! node's containerd (127.0.0.1) and a connected peer are served at once from the reserve, a
//! new stranger is served at once by evicting the oldest unfinished connection, the tracked
//! connections never exceed pool + reserve, and every socket is closed afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use peermirror::server::{
    Admission, ClientCert, ConnCounters, ServerLimits, TlsProvider, Trusted, serve_with,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// Tests here count the process's sockets: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const POOL: usize = 16;
const RESERVE: usize = 4;
/// Ten stranger addresses, three connections each: 30, well over the pool.
const STRANGERS: std::ops::RangeInclusive<u8> = 2..=11;
const PER_STRANGER: usize = 3;
const CONTAINERD: &str = "127.0.0.1";
const PEER: &str = "127.0.0.50";
const NEWCOMER: &str = "127.0.0.60";

/// The daemon's limits (its timeouts, its per-address cap), with small pools.
fn limits() -> ServerLimits {
    ServerLimits {
        max_connections: POOL,
        reserved_connections: RESERVE,
        ..ServerLimits::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Open sockets of this process (other tests' runtimes open eventfds and epolls meanwhile).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count()
}

struct Server {
    addr: SocketAddr,
    admission: Arc<Admission>,
    counters: ConnCounters,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(tls: Option<Arc<dyn TlsProvider>>) -> Server {
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let addr = SocketAddr::new(ip("127.0.0.1"), listener.local_addr().unwrap().port());
        let peers: HashSet<IpAddr> = [ip(PEER)].into_iter().collect();
        let trusted: Trusted = Arc::new(move |a| peers.contains(&a));
        let counters = ConnCounters::default();
        let admission = Admission::new(&limits(), Some(trusted), counters.clone());
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_with(
            listener,
            |_req, _conn| async { http::Response::new(Full::new(Bytes::from_static(b"ok"))) },
            ServerLimits {
                drain_timeout: Duration::from_millis(200),
                ..limits()
            },
            tls,
            admission.clone(),
            stop.clone(),
        ));
        Server {
            addr,
            admission,
            counters,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }

    fn refused(&self, reason: &'static str) -> u64 {
        self.counters
            .refused
            .get_or_create(&peermirror::metrics::ReasonLabels { reason })
            .get()
    }
}

/// A TCP connection from `src` (a loopback address of our choosing).
async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(ip(src), 0)).unwrap();
    s.connect(to).await.unwrap()
}

/// One request on `io`; the response text, or what went wrong.
async fn get<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) -> String {
    if let Err(e) = io
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
    {
        return format!("write failed: {e}");
    }
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut out)).await {
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => "no answer in 10 s".into(),
    }
}

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Opens the flood: 30 connections from 127.0.0.2..=11, each sending `hello`.
async fn flood(addr: SocketAddr, hello: &[u8]) -> Vec<TcpStream> {
    let mut socks = Vec::new();
    for _ in 0..PER_STRANGER {
        for last in STRANGERS {
            let mut s = connect_from(&format!("127.0.0.{last}"), addr).await;
            s.write_all(hello).await.unwrap();
            socks.push(s);
        }
    }
    socks
}

/// The flood fills the pool; containerd, a peer and a newcomer are each served in well under
/// the header or handshake timeout (5 s); then everything is let go.
async fn pool_full_of_squatters(tls: Option<(Arc<dyn TlsProvider>, tokio_rustls::TlsConnector)>) {
    let _serial = SERIAL.lock().await;
    let fds_before = open_fds();
    let server = Server::start(tls.as_ref().map(|t| t.0.clone())).await;
    // Plain port: an unfinished request head. TLS port: not even a ClientHello.
    let hello: &[u8] = if tls.is_some() {
        b""
    } else {
        b"GET / HTTP/1.1\r\n"
    };
    let mut squatters = flood(server.addr, hello).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.admission.open(),
        POOL,
        "the pool is full of squatters"
    );

    let request = |src: &'static str| {
        let tls = tls.as_ref().map(|t| t.1.clone());
        let addr = server.addr;
        async move {
            let started = Instant::now();
            let tcp = connect_from(src, addr).await;
            let text = match tls {
                None => get(tcp).await,
                Some(connector) => {
                    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                    match connector.connect(name, tcp).await {
                        Ok(s) => get(s).await,
                        Err(e) => format!("handshake failed: {e}"),
                    }
                }
            };
            (text, started.elapsed())
        }
    };
    for (who, src) in [
        ("containerd", CONTAINERD),
        ("a connected peer", PEER),
        ("a new stranger", NEWCOMER),
    ] {
        let (text, took) = request(src).await;
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("ok"),
            "{who} ({src}) was not served: {text:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "{who} waited {took:?}, as long as a timeout"
        );
    }

    // The squatters that made room were closed, oldest first; the newest are still open.
    let evicted = server.counters.evicted.get() as usize;
    assert!(
        evicted > squatters.len() - POOL,
        "30 squatters in a pool of 16, then a newcomer: {evicted} evicted"
    );
    assert!(closed(&mut squatters[0], Duration::from_secs(1)).await);
    assert!(!closed(squatters.last_mut().unwrap(), Duration::from_millis(100)).await);
    assert_eq!(server.refused("pool_full"), 0);
    assert_eq!(server.refused("per_address"), 0);
    let peak = server.admission.peak();
    assert!(peak <= POOL + RESERVE, "peak {peak} connections tracked");
    // Server side: at most pool + reserve sockets (plus the listener); client side: ours.
    let fds_during = open_fds();
    assert!(
        fds_during <= fds_before + 1 + POOL + RESERVE + squatters.len() + 8,
        "{fds_before} descriptors before, {fds_during} during"
    );

    drop(squatters);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.admission.open() > 0 {
        assert!(Instant::now() < deadline, "connections still tracked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fds_after = open_fds();
    assert!(
        fds_after <= fds_before + 2,
        "{fds_before} descriptors before, {fds_after} after"
    );
}

#[tokio::test]
async fn half_open_requests_cannot_lock_out_containerd_peers_or_newcomers() {
    pool_full_of_squatters(None).await;
}

#[tokio::test]
async fn silent_tls_sockets_cannot_lock_out_containerd_peers_or_newcomers() {
    let pki = TestTls::new();
    pool_full_of_squatters(Some((pki.provider(), pki.connector()))).await;
}

/// A busy pool (every connection completed a request) is not evicted: a newcomer is refused
/// and counted, while containerd still gets in.
#[tokio::test]
async fn busy_connections_are_not_evicted() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(None).await;
    let mut busy = Vec::new();
    for i in 0..POOL {
        let mut s = connect_from(&format!("127.0.0.{}", 2 + i % 10), server.addr).await;
        // A complete request, kept alive: the connection has finished a request.
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        busy.push(s);
    }
    let mut newcomer = connect_from(NEWCOMER, server.addr).await;
    assert!(closed(&mut newcomer, Duration::from_secs(1)).await);
    assert_eq!(server.refused("pool_full"), 1);
    assert_eq!(server.counters.evicted.get(), 0);
    let text = get(connect_from(CONTAINERD, server.addr).await).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    drop(busy);
    server.stop().await;
}

/// Memory per silent connection, measured (printed) and bounded.
#[tokio::test]
async fn silent_connections_cost_a_few_kib_each() {
    let _serial = SERIAL.lock().await;
    peermirror::server::raise_nofile_limit();
    const N: usize = 1000;
    for tls in [true, false] {
        let pki = TestTls::new();
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let addr = SocketAddr::new(ip("127.0.0.1"), listener.local_addr().unwrap().port());
        let limits = ServerLimits {
            max_connections: N,
            drain_timeout: Duration::from_millis(200),
            ..ServerLimits::default()
        };
        let admission = Admission::new(&limits, None, ConnCounters::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_with(
            listener,
            |_req, _conn| async { http::Response::new(Full::new(Bytes::from_static(b"ok"))) },
            limits,
            tls.then(|| pki.provider()),
            admission.clone(),
            stop.clone(),
        ));
        let before = rss_kib();
        let mut socks = Vec::new();
        for i in 0..N {
            let mut s = connect_from(&format!("127.0.1.{}", 1 + i % 100), addr).await;
            if !tls {
                s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            }
            socks.push(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(admission.open(), N);
        let per_conn = (rss_kib().saturating_sub(before)) as f64 / N as f64;
        eprintln!(
            "[measured] {} silent {} connections: {per_conn:.1} KiB each (RSS, both ends)",
            N,
            if tls { "TLS" } else { "plain" }
        );
        assert!(per_conn < 64.0, "{per_conn} KiB per connection");
        drop(socks);
        stop.cancel();
        task.await.unwrap();
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A server certificate for localhost from a throwaway CA, and a client that trusts it.
struct TestTls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl TestTls {
    fn new() -> TestTls {
        let dir = tempfile::tempdir().unwrap();
        let ca = peermirror::certs::Ca::generate("slots test CA").unwrap();
        let (cert, key) = peermirror::certs::issue_for_test(&ca, "server", 1, true).unwrap();
        let path = |n: &str| dir.path().join(n);
        std::fs::write(path("ca.crt"), ca.cert_pem()).unwrap();
        std::fs::write(path("s.crt"), cert).unwrap();
        std::fs::write(path("s.key"), key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                peermirror::pki::load_certs(path("s.crt")).unwrap(),
                peermirror::pki::load_key(path("s.key")).unwrap(),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in peermirror::pki::load_certs(path("ca.crt")).unwrap() {
            roots.add(c).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TestTls {
            server: Arc::new(server),
            client: Arc::new(client),
        }
    }

    fn provider(&self) -> Arc<dyn TlsProvider> {
        Arc::new(Provider(self.server.clone()))
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.client.clone())
    }
}

struct Provider(Arc<rustls::ServerConfig>);

impl TlsProvider for Provider {
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.0.clone()
    }
    fn identify(&self, _cert: &rustls_pki_types::CertificateDer<'_>) -> ClientCert {
        ClientCert {
            subject: String::new(),
            serial: None,
        }
    }
    fn handshake_failed(&self, _remote: SocketAddr, _error: Option<&std::io::Error>) {}
}
