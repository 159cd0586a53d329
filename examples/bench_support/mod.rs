//! What the in-process benchmarks share: a node (the real libp2p router on 127.0.0.1 and the
//! real registry endpoint on loopback, content from a `MemorySource`), waiting, and figures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peermirror::content::MemorySource;
use peermirror::daemon::{Config, Listeners, Routing, Security, run_with_source};
use peermirror::metrics::Metrics;
use peermirror::mirror::MirrorConfig;
use peermirror::routing::{Bootstrap, P2pConfig, P2pRouter};
use peermirror::server::ServerLimits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub struct Node {
    pub base: String,
    pub ops: String,
    pub router: P2pRouter,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), peermirror::daemon::DaemonError>>,
}

impl Node {
    /// The node's Prometheus text.
    pub async fn metrics(&self, client: &reqwest::Client) -> String {
        client
            .get(format!("{}/metrics", self.ops))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stop the node and wait (bounded) for its tasks to end.
    pub async fn shut(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Start a node serving `source`, bootstrapping from `bootstrap` (none: the first node).
pub async fn start_node(source: MemorySource, bootstrap: Vec<Bootstrap>) -> Node {
    let registry = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = registry.local_addr().unwrap();
    let ops_addr = ops.local_addr().unwrap();
    let stop = CancellationToken::new();
    let none = bootstrap.is_empty();
    let (router, _task) = P2pRouter::start(
        P2pConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            registry_port: addr.port(),
            bootstrap,
            keypair: libp2p::identity::Keypair::generate_ed25519(),
            psk: None,
            provider_ttl: Duration::from_secs(600),
            republish_interval: Duration::from_secs(180),
            replication: 20,
            announce_again_after: Some(peermirror::routing::P2pConfig::ANNOUNCE_AGAIN_AFTER),
        },
        Arc::new(Metrics::new()),
        stop.clone(),
    )
    .expect("start router");
    let deadline = Instant::now() + Duration::from_secs(10);
    while router.listen_addrs().is_empty() {
        assert!(Instant::now() < deadline, "router never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let config = Config {
        containerd_sock: "/nonexistent".into(),
        containerd_namespace: "k8s.io".into(),
        content_dir: None,
        limits: ServerLimits::default(),
        routing: Routing::Custom {
            router: Arc::new(router.clone()),
            bootstrap_none: none,
        },
        mirror: MirrorConfig::default(),
        security: Security::insecure(),
        token: Default::default(),
        max_uploads: 0,
        max_egress_bps: 0,
        max_followers: peermirror::cli::DEFAULT_MAX_FOLLOWERS,
        admin_sock: None,
        containerd_config: None,
        data_dir: None,
        spool: None,
    };
    let task = tokio::spawn(run_with_source(
        config,
        Arc::new(source),
        Listeners { registry, ops },
        stop.clone(),
    ));
    Node {
        base: format!("http://{addr}"),
        ops: format!("http://{ops_addr}"),
        router,
        stop,
        task,
    }
}

pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until each node's `/readyz` answers 200 (indexed, first advertisement done, a peer).
pub async fn wait_ready(client: &reqwest::Client, nodes: &[&Node]) {
    for node in nodes {
        let url = format!("{}/readyz", node.ops);
        wait_until("readyz", Duration::from_secs(30), || {
            let (c, url) = (client.clone(), url.clone());
            async move {
                c.get(&url)
                    .send()
                    .await
                    .map(|r| r.status() == 200)
                    .unwrap_or(false)
            }
        })
        .await;
    }
}

/// A keep-alive HTTP/1.1 client that never goes through a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(4)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
