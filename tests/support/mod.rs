//! In-process nodes for integration tests: in-memory content, any router, real HTTP on
//! loopback. (End-to-end tests with real containerd live in `tests/common` and `e2e_*`.)
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod fake_peer;
pub mod hostile;
pub mod mtls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peermirror::content::MemorySource;
use peermirror::daemon::{Config, Listeners, Routing, Security, SpoolSettings, run_with_source};
use peermirror::mirror::MirrorConfig;
use peermirror::server::ServerLimits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Node {
    pub base: String,
    pub ops: String,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), peermirror::daemon::DaemonError>>,
    /// The node's spool directory, removed when the node is dropped.
    pub spool_dir: Option<std::path::PathBuf>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(dir) = &self.spool_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Node {
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        (&mut self.task).await.unwrap().unwrap();
    }

    pub async fn metrics(&self) -> String {
        metrics_at(&self.ops).await
    }
}

/// The `/metrics` text of the ops listener at `ops` (`http://HOST:PORT`).
pub async fn metrics_at(ops: &str) -> String {
    reqwest::get(format!("{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Routing through `router`, a test's own, with no bootstrap (it knows its peers already).
pub fn routed(router: impl peermirror::routing::Router + 'static) -> Routing {
    Routing::Custom {
        router: std::sync::Arc::new(router),
        bootstrap_none: true,
    }
}

pub fn config(routing: Routing, mirror: MirrorConfig) -> Config {
    Config {
        containerd_sock: "/nonexistent".into(),
        containerd_namespace: "k8s.io".into(),
        content_dir: None,
        limits: ServerLimits {
            header_read_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(5),
            ..ServerLimits::default()
        },
        routing,
        mirror,
        security: Security::insecure(),
        token: Default::default(),
        max_uploads: 0,
        max_egress_bps: 0,
        max_followers: peermirror::cli::DEFAULT_MAX_FOLLOWERS,
        admin_sock: None,
        containerd_config: None,
        data_dir: None,
        spool: SpoolSettings::new(fresh_spool_dir(), 1 << 30),
    }
}

/// A spool directory of its own for each node (the daemon's default is to spool).
pub fn fresh_spool_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "peermirror-test-spool-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Start a node on already-bound listeners (so a router can learn the registry port first).
pub async fn start_on(registry: TcpListener, source: MemorySource, config: Config) -> Node {
    start_on_source(registry, Arc::new(source), config).await
}

/// [`start_on`] with any content source (e.g. a file-backed one for blobs too big for memory).
pub async fn start_on_source(
    registry: TcpListener,
    source: Arc<dyn peermirror::content::ContentSource>,
    config: Config,
) -> Node {
    init_logs();
    let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = registry.local_addr().unwrap();
    let ops_addr = ops.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let spool_dir = config.spool.as_ref().map(|s| s.dir.clone());
    let task = tokio::spawn(run_with_source(
        config,
        source,
        Listeners { registry, ops },
        shutdown.clone(),
    ));
    Node {
        base: format!("http://{addr}"),
        ops: format!("http://{ops_addr}"),
        addr,
        shutdown,
        task,
        spool_dir,
    }
}

/// Logs to the test's output when RUST_LOG is set (e.g. RUST_LOG=peermirror=debug).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub async fn start(source: MemorySource, config: Config) -> Node {
    let registry = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = start_on(registry, source, config).await;
    wait_ready(&node, true).await;
    node
}

pub async fn wait_ready(node: &Node, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, why) = match reqwest::get(format!("{}/readyz", node.ops)).await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        };
        if (status == 200) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never became {want}: {status} {why}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// A loopback address of its own (127.0.0.2, .3, ...): penalties are keyed by IP, so a fake
/// peer must not share 127.0.0.1 with the honest nodes.
pub fn next_loopback() -> std::net::IpAddr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(2);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::net::Ipv4Addr::from(0x7f00_0000 | (n & 0x00ff_ffff)).into()
}

/// A real libp2p router on 127.0.0.1 (port 0), waiting until it listens. `registry_port` is
/// what it tells peers through identify.
pub async fn p2p_router(
    registry_port: u16,
    psk: Option<libp2p::pnet::PreSharedKey>,
    bootstrap: Vec<peermirror::routing::Bootstrap>,
    stop: &CancellationToken,
) -> peermirror::routing::P2pRouter {
    let (router, _task) = peermirror::routing::P2pRouter::start(
        peermirror::routing::P2pConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            registry_port,
            bootstrap,
            keypair: libp2p::identity::Keypair::generate_ed25519(),
            psk,
            provider_ttl: Duration::from_secs(600),
            republish_interval: Duration::from_secs(180),
            replication: 20,
            announce_again_after: Some(peermirror::routing::P2pConfig::ANNOUNCE_AGAIN_AFTER),
        },
        Arc::new(peermirror::metrics::Metrics::new()),
        stop.clone(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while router.listen_addrs().is_empty() {
        assert!(Instant::now() < deadline, "router never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    router
}

/// A node with a real libp2p router on 127.0.0.1, bootstrapping to `bootstrap` (none: the first
/// node of a cluster). `config`'s routing is replaced by that router.
pub async fn libp2p_node(
    source: Arc<dyn peermirror::content::ContentSource>,
    bootstrap: Vec<peermirror::routing::Bootstrap>,
    mut config: Config,
) -> (Node, peermirror::routing::P2pRouter, CancellationToken) {
    let registry = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop = CancellationToken::new();
    let none = bootstrap.is_empty();
    let router = p2p_router(
        registry.local_addr().unwrap().port(),
        None,
        bootstrap,
        &stop,
    )
    .await;
    config.routing = Routing::Custom {
        router: Arc::new(router.clone()),
        bootstrap_none: none,
    };
    let node = start_on_source(registry, source, config).await;
    wait_ready(&node, true).await;
    (node, router, stop)
}
