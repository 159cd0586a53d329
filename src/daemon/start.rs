//! One `start_*` per subsystem: each builds its part, spawns its tasks into the daemon's task
//! set, and returns the handles the later parts need.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{DaemonError, Routing, Wiring};
use crate::admin::AdminState;
use crate::auth::Tokens;
use crate::content::{ContentSource, Index, Indexer, Readiness};
use crate::metrics::FaultKind;
use crate::mirror::{Mirror, MirrorConfig, PeerClient, Scheme};
use crate::ops::Health;
use crate::registry::Registry;
use crate::routing::advertiser::Advertiser;
use crate::routing::{
    Bootstrap, P2pConfig, P2pError, P2pRouter, Router, ephemeral_identity, load_or_create_identity,
};
use crate::server::{
    Admission, ConnCounters, ServerLimits, TlsProvider, cached_set, fit_to_fd_limit,
    raise_nofile_limit, serve, serve_with,
};
use crate::tls::{MaterialRx, TlsMaterial};

/// What this node can serve, and whether that is known yet.
pub(super) struct Content {
    pub index: Arc<Index>,
    pub readiness: watch::Receiver<Readiness>,
    pub source: Arc<dyn ContentSource>,
}

/// Starts indexing the content source, and keeps the content-ready gauge in step with it.
pub(super) fn start_index(w: &mut Wiring, source: Arc<dyn ContentSource>) -> Content {
    let index = Arc::new(Index::new());
    let indexer = Indexer::new(source.clone(), index.clone());
    let readiness = indexer.readiness();
    w.tasks.spawn("indexer", indexer.run(w.shutdown.clone()));
    w.tasks.spawn(
        "content-ready gauge",
        follow_readiness(
            readiness.clone(),
            w.metrics.registry.content_ready.clone(),
            w.shutdown.clone(),
        ),
    );
    Content {
        index,
        readiness,
        source,
    }
}

async fn follow_readiness(
    mut readiness: watch::Receiver<Readiness>,
    gauge: Gauge,
    shutdown: CancellationToken,
) {
    loop {
        gauge.set(i64::from(readiness.borrow_and_update().is_ready()));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = readiness.changed() => if changed.is_err() { return },
        }
    }
}

/// The readiness check for the content source.
pub(super) fn content_check(readiness: watch::Receiver<Readiness>) -> crate::ops::Check {
    Box::new(move || {
        let r = readiness.borrow();
        if r.is_ready() {
            None
        } else {
            Some(
                r.reason
                    .clone()
                    .unwrap_or_else(|| "content source not ready".into()),
            )
        }
    })
}

/// A router, and whether it was told to expect no peers (`--bootstrap none`).
pub(super) struct Routed {
    pub router: Arc<dyn Router>,
    pub bootstrap_none: bool,
}

/// The node's persistent identity; when the data dir cannot hold it, a new one for this run
/// (the node serves on, under a new PeerId after each restart), with a warning.
fn identity(w: &Wiring, data_dir: &Path) -> Result<libp2p::identity::Keypair, DaemonError> {
    match load_or_create_identity(data_dir) {
        Ok(k) => Ok(k),
        Err(P2pError::Identity { path, source }) => {
            tracing::warn!(%path, error = %source, "cannot keep the identity key: using a new one for this run (the PeerId changes on restart)");
            w.metrics.faults.record(
                FaultKind::Identity,
                format!("identity key {path} not kept ({source}): this run's PeerId is ephemeral"),
            );
            Ok(ephemeral_identity())
        }
        Err(e) => Err(e.into()),
    }
}

/// Starts the libp2p router, or takes the caller's; `None` for a standalone mirror.
pub(super) fn start_routing(
    w: &mut Wiring,
    routing: &Routing,
    data_dir: Option<&Path>,
    registry_port: u16,
) -> Result<Option<Routed>, DaemonError> {
    let p = match routing {
        Routing::Off => return Ok(None),
        Routing::Custom {
            router,
            bootstrap_none,
        } => {
            return Ok(Some(Routed {
                router: router.clone(),
                bootstrap_none: *bootstrap_none,
            }));
        }
        Routing::P2p(p) => p,
    };
    let data_dir = data_dir.ok_or(DaemonError::NoDataDir)?;
    if let Some(warning) = psk_warning(p) {
        tracing::warn!("{warning}");
    }
    let psk = p.psk_file.as_deref().map(read_psk).transpose()?;
    let p2p = P2pConfig {
        listen: p.listen,
        advertise: p.advertise,
        registry_port,
        bootstrap: p.bootstrap.clone(),
        keypair: identity(w, data_dir)?,
        psk,
        provider_ttl: p.provider_ttl,
        republish_interval: p.republish_interval,
        replication: p.replication,
        announce_again_after: Some(P2pConfig::ANNOUNCE_AGAIN_AFTER),
    };
    let (router, task) = P2pRouter::start(p2p, w.metrics.clone(), w.shutdown.clone())?;
    tracing::info!(peer_id = %router.peer_id(), "router started");
    w.tasks.spawn("p2p router", async move {
        if let Err(e) = task.await
            && e.is_panic()
        {
            tracing::error!(error = %e, "the p2p router task panicked");
        }
    });
    Ok(Some(Routed {
        router: Arc::new(router),
        bootstrap_none: p.bootstrap.iter().all(|b| *b == Bootstrap::None),
    }))
}

/// Said once at start: without a pre-shared key any host that reaches the router port can
/// join the DHT, announce keys and steer lookups.
fn psk_warning(p: &super::P2pSettings) -> Option<&'static str> {
    p.psk_file.is_none().then_some(
        "the DHT runs without --p2p-psk-file: any host that reaches the router port can join it and announce content",
    )
}

fn read_psk(path: &Path) -> Result<libp2p::pnet::PreSharedKey, DaemonError> {
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

/// Advertises the local content to the router, and adds the readiness check that waits for
/// the first advertisement (and for peers, when some are expected).
pub(super) fn start_advertiser(
    w: &mut Wiring,
    content: &Content,
    routed: &Routed,
    advertise_tags: bool,
    health: &mut Health,
) {
    let (done_tx, done_rx) = watch::channel(false);
    let advertiser = Advertiser {
        index: content.index.clone(),
        router: routed.router.clone(),
        metrics: w.metrics.clone(),
        advertise_tags,
        done: done_tx,
    };
    w.tasks.spawn(
        "advertiser",
        advertiser.run(content.readiness.clone(), w.shutdown.clone()),
    );
    let (router, bootstrap_none) = (routed.router.clone(), routed.bootstrap_none);
    health.add_check(Box::new(move || {
        if !*done_rx.borrow() {
            Some("first advertisement not done".into())
        } else if !bootstrap_none && router.status().waiting_for_peers() {
            Some("no peers connected".into())
        } else {
            None
        }
    }));
}

/// The mirror: fetches what this node lacks from peers, over TLS when it is on.
pub(super) fn start_mirror(
    w: &mut Wiring,
    router: Arc<dyn Router>,
    tls: Option<&MaterialRx>,
    tokens: Option<Arc<Tokens>>,
    config: &MirrorConfig,
) -> Result<Mirror, DaemonError> {
    let clients = match tls {
        None => {
            watch::channel(PeerClient {
                client: peer_client(None)?,
                scheme: Scheme::Http,
            })
            .1
        }
        Some(material) => {
            let mut material = material.clone();
            let first = peer_client(Some(&material.borrow_and_update()))?;
            let (tx, rx) = watch::channel(PeerClient {
                client: first,
                scheme: Scheme::Https,
            });
            w.tasks.spawn(
                "peer client",
                follow_material(material, tx, w.shutdown.clone()),
            );
            rx
        }
    };
    Ok(Mirror::new(
        router,
        clients,
        w.metrics.clone(),
        config.clone(),
        tokens,
    ))
}

/// Rebuilds the peer client, with this node's certificate, whenever the TLS material changes.
async fn follow_material(
    mut material: MaterialRx,
    clients: watch::Sender<PeerClient>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = material.changed() => if changed.is_err() { return },
        }
        let m = material.borrow_and_update().clone();
        match peer_client(Some(&m)) {
            Ok(client) => {
                clients.send_replace(PeerClient {
                    client,
                    scheme: Scheme::Https,
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot rebuild the peer client"),
        }
    }
}

/// The HTTP client for peer fetches, presenting this node's certificate when TLS is on.
fn peer_client(tls: Option<&TlsMaterial>) -> Result<reqwest::Client, DaemonError> {
    let mut b = Mirror::client_builder();
    if let Some(m) = tls {
        b = b.use_preconfigured_tls((*m.client).clone());
    }
    b.build().map_err(DaemonError::Client)
}

/// The admin API on its Unix socket. Binds now so a bad path fails start-up, not later.
pub(super) fn start_admin(
    w: &mut Wiring,
    path: PathBuf,
    state: AdminState,
) -> Result<(), DaemonError> {
    let server = crate::admin::bind(&path)?;
    let (state, shutdown) = (Arc::new(state), w.shutdown.clone());
    w.tasks.spawn("admin API", async move {
        if let Err(e) = crate::admin::serve(server, &path, state, shutdown).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    Ok(())
}

/// The registry endpoint containerd pulls from. Its reserve of connection slots is open to
/// this node's containerd and to the registry addresses of connected peers.
pub(super) fn start_registry(
    w: &mut Wiring,
    listener: TcpListener,
    registry: Arc<Registry>,
    limits: ServerLimits,
    tls: Option<Arc<dyn TlsProvider>>,
    router: Option<Arc<dyn Router>>,
) {
    let limits = fit_to_fd_limit(limits, raise_nofile_limit());
    let trusted = router.map(|router| {
        cached_set(Duration::from_secs(1), move || {
            router
                .status()
                .peers
                .iter()
                .filter_map(|p| p.registry)
                .map(|a| a.ip())
                .filter(|ip| !ip.is_unspecified())
                .collect()
        })
    });
    let counters = ConnCounters {
        refused: w.metrics.server.refused.clone(),
        evicted: w.metrics.server.evicted.clone(),
    };
    let admission = Admission::new(&limits, trusted, counters);
    w.tasks.spawn(
        "registry endpoint",
        serve_with(
            listener,
            move |req, conn| {
                let registry = registry.clone();
                async move { registry.handle(req, conn).await }
            },
            limits,
            tls,
            admission,
            w.shutdown.clone(),
        ),
    );
}

/// The operations endpoint: `/healthz`, `/readyz`, `/metrics`.
pub(super) fn start_ops(w: &mut Wiring, listener: TcpListener, health: Arc<Health>) {
    let limits = ServerLimits {
        max_connections: 64,
        reserved_connections: 8,
        drain_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    };
    w.tasks.spawn(
        "ops endpoint",
        serve(
            listener,
            move |req, _conn| {
                let health = health.clone();
                async move { health.handle(req).await }
            },
            limits,
            None,
            w.shutdown.clone(),
        ),
    );
}

/// The registry listener's address, for the admin API's status.
pub(super) fn local_addr(listener: &TcpListener) -> Result<SocketAddr, DaemonError> {
    listener.local_addr().map_err(DaemonError::Listener)
}

/// The hosts directory containerd's config (`--containerd-config`) names, and the warnings about
/// it, logged now and kept for
/// `peermirror status`. A file that cannot be read is one more warning, not a failed start:
/// the mirror works whatever this check finds.
pub(super) fn containerd_config_warnings(file: Option<&Path>) -> (Option<PathBuf>, Vec<String>) {
    let Some(file) = file else {
        return (None, Vec::new());
    };
    let (dir, warnings) = match crate::configure::inspect(file, None) {
        Ok(found) => found,
        Err(e) => (None, vec![format!("cannot check containerd's config: {e}")]),
    };
    for w in &warnings {
        tracing::warn!(file = %file.display(), "{w}");
    }
    (dir, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_when_the_dht_has_no_psk() {
        let mut p = super::super::P2pSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            bootstrap: vec![],
            psk_file: None,
            provider_ttl: Duration::from_secs(600),
            republish_interval: Duration::from_secs(180),
            replication: 20,
        };
        assert!(psk_warning(&p).is_some_and(|w| w.contains("--p2p-psk-file")));
        p.psk_file = Some("/etc/psk".into());
        assert_eq!(psk_warning(&p), None);
    }
}
