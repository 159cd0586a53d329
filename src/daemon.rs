//! Wiring: `run(config, listeners, shutdown)` starts the indexer, the router and advertiser,
//! the registry endpoint and the operations endpoint on already-bound listeners, and returns
//! after a graceful drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminState;
use crate::auth::{AuthError, AuthMode, FailureThrottle, Guard, Tokens};
use crate::cli::{RunArgs, SecurityArgs};
use crate::containerd::{ContainerdError, ContainerdSource};
use crate::content::{ContentSource, Index, Indexer};
use crate::limits::UploadLimits;
use crate::metrics::Metrics;
use crate::mirror::{Mirror, MirrorConfig, PeerClient};
use crate::ops::Health;
use crate::registry::Registry;
use crate::routing::advertiser::Advertiser;
use crate::routing::{Bootstrap, P2pConfig, P2pError, P2pRouter, Router, load_or_create_identity};
use crate::server::TlsProvider;
use crate::server::{ServerLimits, serve};
use crate::tls::{TlsError, TlsFiles, TlsReloader};

/// Already-bound listeners, so tests can use port 0 and read the address back.
pub struct Listeners {
    pub registry: TcpListener,
    pub ops: TcpListener,
}

/// How the node finds peers.
#[derive(Clone)]
pub enum Routing {
    /// A standalone mirror: local content only.
    Off,
    /// The libp2p DHT, started by the daemon.
    P2p(P2pSettings),
    /// A router made by the caller (tests: in-memory, or a libp2p router they started).
    Custom(Arc<dyn Router>, /* bootstrap is none */ bool),
}

#[derive(Clone, Debug)]
pub struct P2pSettings {
    pub listen: SocketAddr,
    pub advertise: Option<SocketAddr>,
    pub bootstrap: Vec<Bootstrap>,
    pub data_dir: PathBuf,
    pub psk_file: Option<PathBuf>,
    pub provider_ttl: Duration,
    pub republish_interval: Duration,
}

/// Authentication and TLS settings.
#[derive(Clone, Debug)]
pub struct Security {
    pub mode: AuthMode,
    pub insecure_no_auth: bool,
    pub tls: Option<TlsFiles>,
    pub token_file: Option<PathBuf>,
}

impl Security {
    /// No TLS, no auth: for tests and a loopback-only demo.
    pub fn insecure() -> Self {
        Security {
            mode: AuthMode::None,
            insecure_no_auth: true,
            tls: None,
            token_file: None,
        }
    }

    /// Refuse combinations that would silently be less safe than asked for.
    pub fn validate(&self) -> Result<(), DaemonError> {
        let bad = |m: &str| Err(DaemonError::Security(m.to_string()));
        match self.mode {
            AuthMode::None if !self.insecure_no_auth => {
                return bad(
                    "--auth-mode none lets anyone pull through this node: pass --insecure-no-auth to allow it, or choose mtls, token or mtls+token",
                );
            }
            m if m.needs_client_cert() => match &self.tls {
                Some(t) if t.client_ca.is_some() => {}
                _ => {
                    return bad("--auth-mode mtls needs --tls-cert, --tls-key and --tls-client-ca");
                }
            },
            _ => {}
        }
        if self.mode.needs_token() && self.token_file.is_none() {
            return bad("--auth-mode token needs --token-file");
        }
        Ok(())
    }
}

/// The daemon's settings, from flags (see [`RunArgs`]).
#[derive(Clone)]
pub struct Config {
    pub containerd_sock: PathBuf,
    pub containerd_namespace: String,
    pub content_dir: Option<PathBuf>,
    pub limits: ServerLimits,
    pub routing: Routing,
    pub mirror: MirrorConfig,
    pub security: Security,
    /// Concurrent uploads (0 = unlimited) and egress bytes per second (0 = unlimited).
    pub max_uploads: usize,
    pub max_egress_bps: u64,
    /// Where the admin API listens; `None` turns it off.
    pub admin_sock: Option<PathBuf>,
}

impl Config {
    pub fn from_args(args: &RunArgs) -> Self {
        let advertise = args
            .advertise_addr
            .map(|a| SocketAddr::new(a.ip, a.port.unwrap_or(args.router_addr.port())));
        Config {
            containerd_sock: args.containerd_sock.clone(),
            containerd_namespace: args.containerd_namespace.clone(),
            content_dir: args.containerd_content_dir.clone(),
            limits: ServerLimits {
                max_connections: args.max_connections,
                max_connections_per_ip: args.max_connections_per_ip,
                drain_timeout: args.drain_timeout,
                ..ServerLimits::default()
            },
            routing: Routing::P2p(P2pSettings {
                listen: args.router_addr,
                advertise,
                bootstrap: args.bootstrap.clone(),
                data_dir: args.data_dir.clone(),
                psk_file: args.p2p_psk_file.clone(),
                provider_ttl: args.provider_ttl,
                republish_interval: args.republish_interval,
            }),
            mirror: MirrorConfig {
                resolve_timeout: args.mirror_resolve_timeout,
                resolve_tags: args.resolve_tags,
                resolve_latest_tag: args.resolve_latest_tag,
                hedge_delay: args.mirror_hedge_delay,
                ..MirrorConfig::default()
            },
            security: Security::from_args(&args.security),
            max_uploads: args.max_concurrent_uploads,
            max_egress_bps: args.max_egress_bps,
            admin_sock: Some(
                args.admin_sock
                    .clone()
                    .unwrap_or_else(|| args.data_dir.join("admin.sock")),
            ),
        }
    }
}

impl Security {
    pub fn from_args(a: &SecurityArgs) -> Self {
        let tls = match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: a.tls_client_ca.clone(),
                peer_ca: a.tls_peer_ca.clone(),
                crls: a.tls_crl.clone(),
                crl_expired: a.crl_expired,
                peer_server_name: a.tls_peer_server_name.clone(),
            }),
            _ => None,
        };
        Security {
            mode: a.auth_mode,
            insecure_no_auth: a.insecure_no_auth,
            tls,
            token_file: a.token_file.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error(transparent)]
    P2p(#[from] P2pError),
    #[error("cannot read --p2p-psk-file {path}: {reason}")]
    Psk { path: String, reason: String },
    #[error("cannot build the peer HTTP client: {0}")]
    Client(String),
    #[error("cannot read a listener's address: {0}")]
    Listener(std::io::Error),
    #[error("{0}")]
    Security(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
}

/// Run against the containerd the config names.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    if let Some(dir) = &config.content_dir {
        check_content_dir(dir);
    }
    let content_dir = config.content_dir.clone();
    let source = ContainerdSource::new(
        &config.containerd_sock,
        &config.containerd_namespace,
        content_dir,
    )?;
    run_with_source(config, Arc::new(source), listeners, shutdown).await
}

fn read_psk(path: &std::path::Path) -> Result<libp2p::pnet::PreSharedKey, DaemonError> {
    let err = |reason: String| DaemonError::Psk {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    text.trim().parse().map_err(|e| {
        err(format!(
            "{e:?}; expected /key/swarm/psk/1.0.0/, /base16/ and 64 hex characters"
        ))
    })
}

/// Run against any content source (tests pass a [`crate::content::MemorySource`]).
pub async fn run_with_source(
    config: Config,
    source: Arc<dyn ContentSource>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    config.security.validate()?;
    let metrics = Arc::new(Metrics::new());
    let index = Arc::new(Index::new());
    let indexer = Indexer::new(source.clone(), index.clone());
    let readiness = indexer.readiness();
    let mut tasks = Vec::new();

    let tls = match &config.security.tls {
        Some(files) => {
            let r = TlsReloader::new(files.clone(), metrics.clone())?;
            tasks.push(tokio::spawn(r.clone().run(shutdown.clone())));
            Some(r)
        }
        None => None,
    };
    let tokens = match &config.security.token_file {
        Some(path) => {
            let t = Arc::new(Tokens::load(path)?);
            tasks.push(tokio::spawn(watch_tokens(
                t.clone(),
                metrics.clone(),
                shutdown.clone(),
            )));
            Some(t)
        }
        None => None,
    };
    warn_about_security(&config.security, &shutdown);

    let (router, bootstrap_none, router_task): (Option<Arc<dyn Router>>, bool, _) =
        match &config.routing {
            Routing::Off => (None, true, None),
            Routing::Custom(r, none) => (Some(r.clone()), *none, None),
            Routing::P2p(p) => {
                let registry_port = listeners
                    .registry
                    .local_addr()
                    .map_err(DaemonError::Listener)?
                    .port();
                let psk = p.psk_file.as_deref().map(read_psk).transpose()?;
                let p2p = P2pConfig {
                    listen: p.listen,
                    advertise: p.advertise,
                    registry_port,
                    bootstrap: p.bootstrap.clone(),
                    keypair: load_or_create_identity(&p.data_dir)?,
                    psk,
                    provider_ttl: p.provider_ttl,
                    republish_interval: p.republish_interval,
                };
                let none = p.bootstrap.iter().all(|b| *b == Bootstrap::None);
                let (router, task) = P2pRouter::start(p2p, metrics.clone(), shutdown.clone())?;
                tracing::info!(peer_id = %router.peer_id(), "router started");
                (Some(Arc::new(router) as Arc<dyn Router>), none, Some(task))
            }
        };
    tasks.extend(router_task);

    let mut health = Health::new(metrics.clone());
    {
        let readiness = readiness.clone();
        let gauge = metrics.content_ready.clone();
        health.add_check(Box::new(move || {
            let r = readiness.borrow();
            gauge.set(i64::from(r.is_ready()));
            if r.is_ready() {
                None
            } else {
                Some(
                    r.reason
                        .clone()
                        .unwrap_or_else(|| "content source not ready".into()),
                )
            }
        }));
    }

    let mirror = match &router {
        None => None,
        Some(router) => {
            let (done_tx, done_rx) = watch::channel(false);
            let advertiser = Advertiser {
                index: index.clone(),
                router: router.clone(),
                metrics: metrics.clone(),
                advertise_tags: config.mirror.resolve_tags,
                done: done_tx,
            };
            tasks.push(tokio::spawn(
                advertiser.run(readiness.clone(), shutdown.clone()),
            ));
            let r = router.clone();
            health.add_check(Box::new(move || {
                if !*done_rx.borrow() {
                    Some("first advertisement not done".into())
                } else if !bootstrap_none && r.peer_count() == 0 && r.expects_peers() {
                    Some("no peers connected".into())
                } else {
                    None
                }
            }));
            let initial = match &tls {
                Some(t) => PeerClient {
                    client: peer_client(Some(&t.current()))?,
                    scheme: "https",
                },
                None => PeerClient {
                    client: peer_client(None)?,
                    scheme: "http",
                },
            };
            let (client_tx, client_rx) = tokio::sync::watch::channel(initial);
            let peer_tokens = tokens
                .clone()
                .filter(|_| config.security.mode.needs_token());
            let mirror = Mirror::new(
                router.clone(),
                client_rx,
                metrics.clone(),
                config.mirror.clone(),
                peer_tokens,
            );
            if let Some(t) = &tls {
                t.on_reload(Box::new(move |material| {
                    match peer_client(Some(material)) {
                        Ok(client) => {
                            client_tx.send_replace(PeerClient {
                                client,
                                scheme: "https",
                            });
                        }
                        Err(e) => tracing::error!(error = %e, "cannot rebuild the peer client"),
                    }
                }));
            }
            Some(mirror)
        }
    };

    let health = Arc::new(health);
    let revocation = tls.clone().map(|t| {
        Arc::new(move |serial: &crate::pki::Serial| t.is_revoked(serial))
            as crate::auth::RevocationCheck
    });
    let guard = Guard {
        mode: config.security.mode,
        tokens,
        throttle: FailureThrottle::new(10, Duration::from_secs(60)),
        revocation,
    };
    let limits = UploadLimits::new(config.max_uploads, config.max_egress_bps, metrics.clone());
    let registry_addr = listeners
        .registry
        .local_addr()
        .map_err(DaemonError::Listener)?;
    if let Some(path) = &config.admin_sock {
        let state = Arc::new(AdminState {
            index: index.clone(),
            readiness: readiness.clone(),
            health: health.clone(),
            router: router.clone(),
            mirror: mirror.clone(),
            metrics: metrics.clone(),
            auth_mode: config.security.mode,
            tls: tls.clone(),
            registry_addr: registry_addr.to_string(),
        });
        let path = path.clone();
        let shutdown = shutdown.clone();
        // Bind now so a bad path fails start-up, not silently later.
        let server = crate::admin::bind(&path)?;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::admin::serve(server, &path, state, shutdown).await {
                tracing::error!(error = %e, "admin API stopped");
            }
        }));
    }
    let registry = Arc::new(Registry::new(index, source, metrics, mirror, guard, limits));
    let tls_provider = tls.map(|t| t as Arc<dyn TlsProvider>);

    tasks.push(tokio::spawn(indexer.run(shutdown.clone())));
    tasks.push(tokio::spawn(serve(
        listeners.registry,
        move |req, conn| {
            let registry = registry.clone();
            async move { registry.handle(req, conn).await }
        },
        config.limits.clone(),
        tls_provider,
        shutdown.clone(),
    )));
    let ops_limits = ServerLimits {
        max_connections: 64,
        drain_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    };
    tasks.push(tokio::spawn(serve(
        listeners.ops,
        move |req, _conn| {
            let health = health.clone();
            async move { health.handle(req).await }
        },
        ops_limits,
        None,
        shutdown.clone(),
    )));
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// The HTTP client for peer fetches, presenting this node's certificate when TLS is on.
fn peer_client(tls: Option<&crate::tls::TlsMaterial>) -> Result<reqwest::Client, DaemonError> {
    let mut b = Mirror::client_builder();
    if let Some(m) = tls {
        b = b.use_preconfigured_tls((*m.client).clone());
    }
    b.build().map_err(|e| DaemonError::Client(e.to_string()))
}

/// Re-read the token file whenever it changes; a broken file keeps the old tokens.
async fn watch_tokens(tokens: Arc<Tokens>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let paths = vec![tokens.path().to_path_buf()];
    let mut last = crate::reload::fingerprint(&paths);
    let mut tick = tokio::time::interval(crate::tls::POLL_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = crate::reload::fingerprint(&paths);
        if now == last {
            continue;
        }
        last = now;
        match tokens.reload() {
            Ok(n) => tracing::info!(tokens = n, "token file reloaded"),
            Err(e) => {
                metrics
                    .reload_failures
                    .get_or_create(&crate::metrics::WhatLabels { what: "token" })
                    .inc();
                tracing::error!(error = %e, "token file changed but does not load; keeping the previous tokens");
            }
        }
    }
}

/// Say loudly, and keep saying, when the endpoint is less protected than it should be.
fn warn_about_security(security: &Security, shutdown: &CancellationToken) {
    if security.mode == AuthMode::None {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut hourly = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = hourly.tick() => tracing::warn!("--auth-mode none: anyone who can reach the registry port can pull through this node"),
                }
            }
        });
    }
    if security.mode.needs_token() && security.tls.is_none() {
        tracing::warn!("token mode without TLS: peer fetches carry the token in clear text");
    }
}

/// Warn early about a content dir we cannot read. It is still used: on a fresh containerd
/// `blobs/sha256` appears only with the first blob, and each read falls back to gRPC anyway.
fn check_content_dir(dir: &std::path::Path) {
    if let Err(e) = std::fs::read_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "content dir not readable; blobs will be read over gRPC");
    }
}
