//! Wiring: `run(config, listeners, shutdown)` starts the indexer, the registry endpoint and the
//! operations endpoint on already-bound listeners, and returns after a graceful drain.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::RunArgs;
use crate::containerd::{ContainerdError, ContainerdSource};
use crate::content::{ContentSource, Index, Indexer};
use crate::metrics::Metrics;
use crate::ops::Health;
use crate::registry::Registry;
use crate::server::{ServerLimits, serve};

/// Already-bound listeners, so tests can use port 0 and read the address back.
pub struct Listeners {
    pub registry: TcpListener,
    pub ops: TcpListener,
}

/// The daemon's settings, from flags (see [`RunArgs`]).
#[derive(Clone, Debug)]
pub struct Config {
    pub containerd_sock: PathBuf,
    pub containerd_namespace: String,
    pub content_dir: Option<PathBuf>,
    pub limits: ServerLimits,
}

impl Config {
    pub fn from_args(args: &RunArgs) -> Self {
        Config {
            containerd_sock: args.containerd_sock.clone(),
            containerd_namespace: args.containerd_namespace.clone(),
            content_dir: args.containerd_content_dir.clone(),
            limits: ServerLimits {
                max_connections: args.max_connections,
                drain_timeout: args.drain_timeout,
                ..ServerLimits::default()
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
}

/// Run against the containerd the config names.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let content_dir = config.content_dir.clone().filter(|d| usable_content_dir(d));
    let source = ContainerdSource::new(
        &config.containerd_sock,
        &config.containerd_namespace,
        content_dir,
    )?;
    run_with_source(config, Arc::new(source), listeners, shutdown).await;
    Ok(())
}

/// Run against any content source (tests pass a [`crate::content::MemorySource`]).
pub async fn run_with_source(
    config: Config,
    source: Arc<dyn ContentSource>,
    listeners: Listeners,
    shutdown: CancellationToken,
) {
    let metrics = Arc::new(Metrics::new());
    let index = Arc::new(Index::new());
    let indexer = Indexer::new(source.clone(), index.clone());
    let readiness = indexer.readiness();

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
    let health = Arc::new(health);
    let registry = Arc::new(Registry::new(index, source, metrics));

    let indexer_task = tokio::spawn(indexer.run(shutdown.clone()));
    let registry_task = tokio::spawn(serve(
        listeners.registry,
        move |req, remote| {
            let registry = registry.clone();
            async move { registry.handle(req, remote).await }
        },
        config.limits.clone(),
        shutdown.clone(),
    ));
    let ops_limits = ServerLimits {
        max_connections: 64,
        drain_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    };
    let ops_task = tokio::spawn(serve(
        listeners.ops,
        move |req, remote| {
            let health = health.clone();
            async move { health.handle(req, remote).await }
        },
        ops_limits,
        shutdown.clone(),
    ));
    let _ = tokio::join!(indexer_task, registry_task, ops_task);
}

fn usable_content_dir(dir: &std::path::Path) -> bool {
    match std::fs::read_dir(dir.join("blobs/sha256")) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "content dir not readable; reading blobs over gRPC");
            false
        }
    }
}
