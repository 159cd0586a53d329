//! Wiring: `run(config, listeners, shutdown)` starts the indexer, the router and advertiser,
//! the mirror, the registry endpoint, the operations endpoint and the admin API on
//! already-bound listeners, and returns after a graceful drain.
//!
//! - `start`: one `start_*` per subsystem, each returning the handles later ones need.
//! - `security`: refused settings combinations, TLS material and tokens (reloaded), warnings.
//! - `advice`: start-up warnings where containerd would quietly pull from the upstream.
//! - `downloads`: what serves blobs still downloading: the spool, containerd's ingest watcher,
//!   and the in-flight provider records about both.
//! - `tasks`: the set of long-running tasks, awaited on shutdown, panics logged.

mod advice;
mod downloads;
mod security;
mod start;
mod tasks;

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminState;
use crate::admin::activity::RecentRequests;
use crate::auth::{AuthError, FailureThrottle, Guard};
use crate::containerd::{ContainerdError, ContainerdSource};
use crate::content::ContentSource;
use crate::limits::UploadLimits;
use crate::metrics::Metrics;
use crate::mirror::MirrorConfig;
use crate::ops::Health;
use crate::registry::Registry;
use crate::routing::{Bootstrap, P2pError, Router};
use crate::server::{ServerLimits, TlsProvider};
use crate::tls::{self, TlsError};
pub use security::{Security, TokenSettings};
use tasks::Tasks;

/// Under `--data-dir`: which local blobs were found intact or damaged, per file stamp.
const VERIFIED_FILE: &str = "verified.txt";

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
    /// The libp2p DHT, started by the daemon (its identity key lives in [`Config::data_dir`]).
    P2p(P2pSettings),
    /// A router made by the caller (tests: in-memory, or a libp2p router they started).
    Custom {
        router: Arc<dyn Router>,
        /// The router was told of no peers (`--bootstrap none`): ready without one.
        bootstrap_none: bool,
    },
}

#[derive(Clone, Debug)]
pub struct P2pSettings {
    pub listen: SocketAddr,
    pub advertise: Option<SocketAddr>,
    pub bootstrap: Vec<Bootstrap>,
    pub psk_file: Option<PathBuf>,
    pub provider_ttl: Duration,
    pub republish_interval: Duration,
    /// Kademlia's k (`--dht-replication`).
    pub replication: usize,
}

/// Where blob downloads from peers are spooled (shared by every request for the blob, served
/// to peers while in flight), and its byte budget. There is none for a budget of 0: then each
/// request streams its own download.
#[derive(Clone, Debug)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub max_bytes: NonZeroU64,
}

impl SpoolSettings {
    /// The spool in `dir`, or `None` when `max_bytes` is 0 (`--spool-max-bytes 0`: off).
    pub fn new(dir: PathBuf, max_bytes: u64) -> Option<Self> {
        NonZeroU64::new(max_bytes).map(|max_bytes| SpoolSettings { dir, max_bytes })
    }
}

/// The daemon's settings, from flags (see [`crate::cli::RunArgs`]).
#[derive(Clone)]
pub struct Config {
    pub containerd_sock: PathBuf,
    pub containerd_namespace: String,
    pub content_dir: Option<PathBuf>,
    pub limits: ServerLimits,
    pub routing: Routing,
    pub mirror: MirrorConfig,
    pub security: Security,
    /// Signed tokens and the hosts.toml files whose token the daemon keeps current.
    pub token: TokenSettings,
    /// Concurrent uploads (0 = unlimited) and egress bytes per second (0 = unlimited).
    pub max_uploads: usize,
    pub max_egress_bps: u64,
    /// Peers streaming one blob from this node at once (0 = unlimited).
    pub max_followers: usize,
    /// Where the admin API listens; `None` turns it off.
    pub admin_sock: Option<PathBuf>,
    /// containerd's config file, checked at start for a `config_path` that bypasses the mirror.
    pub containerd_config: Option<PathBuf>,
    /// `--data-dir`: the libp2p identity key and `verified.txt` (which local blobs were
    /// checked). `None` keeps no state across restarts; [`Routing::P2p`] then refuses to start.
    pub data_dir: Option<PathBuf>,
    /// `None`: no spool, each request streams its own download.
    pub spool: Option<SpoolSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error(transparent)]
    P2p(#[from] P2pError),
    #[error("the libp2p router keeps its identity key under --data-dir: give one")]
    NoDataDir,
    #[error("cannot read --p2p-psk-file {path}: {reason}")]
    Psk { path: String, reason: String },
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    #[error("cannot build the peer HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("cannot read a listener's address: {0}")]
    Listener(#[source] std::io::Error),
    #[error(
        "--auth-mode none lets anyone pull through this node: pass --insecure-no-auth to allow it, or choose mtls, token or mtls+token"
    )]
    NoAuthNotAllowed,
    #[error("--auth-mode mtls needs --tls-cert, --tls-key and --tls-client-ca")]
    MtlsWithoutClientCa,
    #[error(
        "{given} was given without {missing}: TLS needs both (without them the endpoint would serve plain HTTP)"
    )]
    TlsHalf {
        given: &'static str,
        missing: &'static str,
    },
    #[error("--auth-mode token needs --token-file or --token-signing-key (or both)")]
    TokenWithoutFile,
    #[error("--token-ttl {0:?} is out of range: give one between 1m and 24h")]
    TokenTtl(Duration),
    #[error(transparent)]
    Token(#[from] crate::token::TokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
}

/// What every `start_*` needs: the metrics, the shutdown signal, and the task set to spawn into.
struct Wiring {
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tasks: Tasks,
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
    let source = Arc::new(ContainerdSource::new(
        &config.containerd_sock,
        &config.containerd_namespace,
        content_dir,
    )?);
    run_inner(config, source.clone(), Some(source), listeners, shutdown).await
}

/// Run against any content source (tests pass a [`crate::content::MemorySource`]).
pub async fn run_with_source(
    config: Config,
    source: Arc<dyn ContentSource>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    run_inner(config, source, None, listeners, shutdown).await
}

async fn run_inner(
    config: Config,
    source: Arc<dyn ContentSource>,
    containerd: Option<Arc<ContainerdSource>>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    config
        .security
        .validate_with(config.token.signing_key.is_some())?;
    config.token.validate()?;
    let mut w = Wiring {
        metrics: Arc::new(Metrics::new()),
        shutdown,
        tasks: Tasks::default(),
    };
    let content = start::start_index(&mut w, source.clone());
    let tls = security::start_tls(&mut w, &config.security)?;
    let registry_addr = start::local_addr(&listeners.registry)?;
    let own = security::OwnMirror::new(registry_addr, &config.routing);
    let tokens = security::start_tokens(&mut w, &config.security, &config.token, own.clone())?;
    security::warn_about_security(&mut w, &config.security);
    let (containerd_hosts, mut warnings) =
        start::containerd_config_warnings(config.containerd_config.as_deref());
    let hosts_dir = config.token.hosts_dir.clone().or(containerd_hosts);
    warnings.extend(advice::startup_warnings(&advice::Setup {
        security: &config.security,
        token: &config.token,
        own: &own,
        hosts_dir: hosts_dir.as_deref(),
    }));
    let routed = start::start_routing(
        &mut w,
        &config.routing,
        config.data_dir.as_deref(),
        registry_addr.port(),
    )?;

    let mut health = Health::new(w.metrics.clone());
    health.add_check(start::content_check(content.readiness.clone()));
    let mut ingests = None;
    let mirror = match &routed {
        None => None,
        Some(routed) => {
            start::start_advertiser(
                &mut w,
                &content,
                routed,
                config.mirror.resolve_tags,
                &mut health,
            );
            let peer_tokens = tokens
                .clone()
                .filter(|_| config.security.mode.needs_token());
            let mirror = start::start_mirror(
                &mut w,
                routed.router.clone(),
                tls.as_ref(),
                peer_tokens,
                &config.mirror,
            )?;
            let (mirror, found) = downloads::start_in_flight(
                &mut w,
                mirror,
                config.spool.as_ref(),
                config.content_dir.as_ref(),
                &content,
                routed,
            )?;
            ingests = found;
            Some(mirror)
        }
    };
    let health = Arc::new(health);

    let guard = Guard {
        mode: config.security.mode,
        tokens,
        throttle: FailureThrottle::new(
            config.limits.auth_failures_max,
            config.limits.auth_failure_window,
        ),
        revocation: tls.clone().map(tls::revocation_check),
    };
    // The status page's recent requests, reported by the registry; kept only for the admin API.
    let mut recent_requests = None;
    if let Some(path) = &config.admin_sock {
        let recent = Arc::new(RecentRequests::default());
        recent_requests = Some(recent.clone());
        let state = AdminState {
            index: content.index.clone(),
            readiness: content.readiness.clone(),
            health: health.clone(),
            router: routed.as_ref().map(|r| r.router.clone()),
            mirror: mirror.clone(),
            metrics: w.metrics.clone(),
            recent_requests: recent,
            auth_mode: config.security.mode,
            tls: tls.clone(),
            registry_addr,
            containerd,
            warnings,
        };
        start::start_admin(&mut w, path.clone(), state)?;
    }
    let limits = UploadLimits::new(config.max_uploads, config.max_egress_bps, w.metrics.clone())
        .with_max_followers(config.max_followers);
    let mut registry = Registry::new(
        content.index,
        source,
        w.metrics.clone(),
        mirror,
        guard,
        limits,
    );
    if let Some(dir) = &config.data_dir {
        registry = registry.with_verified_file(dir.join(VERIFIED_FILE));
    }
    if let Some(i) = ingests {
        registry = registry.with_ingests(i);
    }
    if let Some(sink) = recent_requests {
        registry = registry.with_access_sink(sink);
    }
    let registry = Arc::new(registry);
    let endpoint =
        tls.map(|m| Arc::new(tls::Endpoint::new(m, w.metrics.clone())) as Arc<dyn TlsProvider>);
    start::start_registry(
        &mut w,
        listeners.registry,
        registry.clone(),
        config.limits.clone(),
        endpoint,
        routed.map(|r| r.router),
    );
    start::start_ops(&mut w, listeners.ops, health);
    w.tasks.join_all().await;
    registry.flush_verdicts();
    Ok(())
}

/// Warn early about a content dir we cannot read. It is still used: on a fresh containerd
/// `blobs/sha256` appears only with the first blob, and each read falls back to gRPC anyway.
fn check_content_dir(dir: &std::path::Path) {
    if let Err(e) = std::fs::read_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "content dir not readable; blobs will be read over gRPC");
    }
}
