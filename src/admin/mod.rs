//! The node-local admin API (gRPC over a unix socket, mode 0600): status, peers, lookups and
//! content, so "why didn't that pull come from a peer?" is answered in a minute.
//! `peermirror status` is the client ([`crate::status`]); [`activity`] keeps what its web page
//! shows of the recent past.

pub mod activity;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::auth::AuthMode;
use crate::content::{Index, Key, Readiness};
use crate::metrics::{FaultKind, LocalRefusal, Metrics};
use crate::mirror::Mirror;
use crate::oci::{Digest, TagKey};
use crate::ops::Health;
use crate::routing::Router;
use crate::tls::MaterialRx;

pub mod proto {
    tonic::include_proto!("peermirror.v1");
}

use proto::admin_server::{Admin, AdminServer};
use proto::*;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot create the admin socket {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "cannot reach the admin socket {path}: {reason} (is `peermirror run` running, and are you root?)"
    )]
    Connect { path: String, reason: String },
    #[error("admin API call failed: {0}")]
    Call(#[from] Status),
    #[error("admin API server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// What the admin API reports on; all shared with the running daemon.
pub struct AdminState {
    pub index: Arc<Index>,
    pub readiness: watch::Receiver<Readiness>,
    pub health: Arc<Health>,
    pub router: Option<Arc<dyn Router>>,
    pub mirror: Option<Arc<Mirror>>,
    pub metrics: Arc<Metrics>,
    /// The last requests served, for the status page; the registry reports into it.
    pub recent_requests: Arc<activity::RecentRequests>,
    pub auth_mode: AuthMode,
    pub tls: Option<MaterialRx>,
    /// The registry endpoint's bound address (port 0 resolved).
    pub registry_addr: SocketAddr,
    /// The containerd served, for its version (`None` in tests with another content source).
    pub containerd: Option<Arc<crate::containerd::ContainerdSource>>,
    /// Why pulls might bypass the mirror (containerd's config), found at start.
    pub warnings: Vec<String>,
}

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

fn unix_secs(t: Option<SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .unwrap_or(0)
}

/// How recent a refusal of this node's containerd must be for `status` to show it.
const LOCAL_REFUSAL_SHOWN: Duration = Duration::from_secs(15 * 60);

/// The warnings found at start, and what is wrong now: this node's certificate revoked, or
/// its own containerd being refused (its pulls then go quietly to the upstream).
fn warnings(s: &AdminState, tls: Option<&crate::tls::TlsMaterial>) -> Vec<String> {
    let mut out = s.warnings.clone();
    out.extend(
        tls.filter(|t| t.own_cert_revoked())
            .map(|t| revoked_warning(t.cert_serial.as_ref())),
    );
    out.extend(
        s.metrics
            .security
            .local_refusal()
            .and_then(|r| refused_warning(&r, SystemTime::now())),
    );
    out
}

fn revoked_warning(serial: Option<&crate::pki::Serial>) -> String {
    format!(
        "this node's certificate (serial {}) is REVOKED by the CRL in force: peers refuse to serve it and to fetch from it. Fix: issue a new one (`peermirror certs issue --name NAME --force`) and put it in place (it is reloaded)",
        serial.map(|s| s.to_string()).unwrap_or_default()
    )
}

/// The refusals of this node's containerd, when the last is recent enough to matter.
fn refused_warning(r: &LocalRefusal, now: SystemTime) -> Option<String> {
    let ago = now.duration_since(r.last_at).unwrap_or_default();
    (ago < LOCAL_REFUSAL_SHOWN).then(|| {
        format!(
            "containerd's requests are being refused (401 / TLS): {} from this node since start, the last {} ago ({}); its pulls go to the upstream. Fix: the token or client certificate in its hosts.toml (`peermirror configure`, `run --hosts-dir`)",
            r.count,
            humantime::format_duration(Duration::from_secs(ago.as_secs())),
            r.reason,
        )
    })
}

/// "on: ..." with the spool's use, or "off: <why>".
fn spool_state(s: &AdminState) -> String {
    if let Some(spool) = s.mirror.as_ref().and_then(|m| m.spool()) {
        let u = spool.usage();
        return format!(
            "on: {} of {} bytes reserved, {} downloading, {} readers",
            u.reserved, u.max, u.downloading, u.readers
        );
    }
    let faults = s.metrics.faults.snapshot();
    match faults.iter().find(|f| f.kind == FaultKind::DataDir) {
        Some(f) => format!("off (unavailable): {}", f.last),
        None if s.mirror.is_some() => "off: --spool-max-bytes 0 or no --data-dir".into(),
        None => "off: no peers".into(),
    }
}

/// Parse what a user types: a digest, or an image reference with a tag.
pub fn parse_key(s: &str) -> Option<Key> {
    if s.starts_with("sha256:") {
        return s.parse::<Digest>().ok().map(Key::Digest);
    }
    TagKey::from_image_name(s).map(Key::Tag)
}

/// How long a lookup waits for providers when the caller does not say.
const DEFAULT_LOOKUP_TIMEOUT_MS: u32 = 2_000;
/// The longest a caller may make a lookup wait.
const MAX_LOOKUP_TIMEOUT_MS: u32 = 30_000;
/// Providers probed per lookup: enough to diagnose, few enough to keep the probe cheap.
const MAX_PROBED_PROVIDERS: usize = 64;
/// Content entries listed when the caller does not say.
const DEFAULT_CONTENT_LIMIT: usize = 1_000;
/// The client gives up on a socket that does not accept this soon (the daemon is not running).
const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longer than the longest lookup a caller may ask for.
const CLIENT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

struct Service(Arc<AdminState>, Arc<activity::Traffic>);

#[tonic::async_trait]
impl Admin for Service {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let s = &self.0;
        let r = s.readiness.borrow().clone();
        let reasons = s.health.not_ready_reasons();
        let rs = s.router.as_ref().map(|r| r.status()).unwrap_or_default();
        let tls = s.tls.as_ref().map(|t| t.borrow().clone());
        Ok(Response::new(StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            peer_id: rs.local_id.clone(),
            listen_addrs: rs.listen_addrs.clone(),
            advertised_addrs: rs.advertised_addrs.clone(),
            registry_addr: s.registry_addr.to_string(),
            ready: reasons.is_empty(),
            not_ready_reasons: reasons,
            containerd_up: r.source_up,
            index_loaded: r.loaded,
            containerd_reason: r.reason.unwrap_or_default(),
            blobs: s.index.blob_count() as u64,
            tags: s.index.tag_count() as u64,
            images: s.index.image_count() as u64,
            advertised_keys: u64::try_from(s.metrics.routing.advertised_keys.get()).unwrap_or(0),
            connected_peers: u32::try_from(rs.peer_count()).unwrap_or(u32::MAX),
            auth_mode: s.auth_mode.as_str().into(),
            cert_not_after: unix_secs(tls.as_ref().and_then(|t| t.cert_not_after)),
            crl_next_update: unix_secs(tls.as_ref().and_then(|t| t.crl_next_update)),
            containerd_version: s
                .containerd
                .as_ref()
                .and_then(|c| c.version())
                .map(|v| v.to_string())
                .unwrap_or_default(),
            warnings: warnings(s, tls.as_deref()),
            spool: spool_state(s),
            local_faults: s
                .metrics
                .faults
                .snapshot()
                .into_iter()
                .map(|f| LocalFault {
                    kind: f.kind.as_str().into(),
                    count: f.count,
                    last_at_ms: unix_millis(f.last_at),
                    last: f.last,
                })
                .collect(),
            containerd_namespace: s
                .containerd
                .as_ref()
                .map(|c| c.namespace().to_string())
                .unwrap_or_default(),
        }))
    }

    async fn peers(&self, _: Request<PeersRequest>) -> Result<Response<PeersResponse>, Status> {
        let peers = match &self.0.router {
            Some(r) => r.status().peers,
            None => Vec::new(),
        };
        Ok(Response::new(PeersResponse {
            peers: peers
                .into_iter()
                .map(|p| Peer {
                    peer_id: p.peer.to_string(),
                    registry_addr: p.registry.map(|a| a.to_string()).unwrap_or_default(),
                    addrs: p.addrs,
                    last_seen: unix_secs(Some(p.last_seen)),
                })
                .collect(),
        }))
    }

    async fn lookup(
        &self,
        req: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        let req = req.into_inner();
        let key = parse_key(&req.key).ok_or_else(|| {
            Status::invalid_argument("key must be sha256:<64 hex> or registry/repo:tag")
        })?;
        let timeout = Duration::from_millis(u64::from(if req.timeout_ms == 0 {
            DEFAULT_LOOKUP_TIMEOUT_MS
        } else {
            req.timeout_ms.min(MAX_LOOKUP_TIMEOUT_MS)
        }));
        let s = &self.0;
        let local = match &key {
            Key::Digest(d) => s.index.stat(d).is_some(),
            Key::Tag(t) => s.index.resolve(t).is_some(),
            Key::Partial(_) => false,
        };
        let providers = match &s.mirror {
            Some(mirror) => mirror
                .probe(&key, timeout, MAX_PROBED_PROVIDERS)
                .await
                .into_iter()
                .map(|r| ProviderCheck {
                    peer_id: r.provider.peer.to_string(),
                    registry_addr: r.provider.addr.to_string(),
                    answered: r.status.is_some_and(|s| s.is_success()),
                    status: r.status.map_or(0, |s| u32::from(s.as_u16())),
                    latency_ms: u32::try_from(r.latency.as_millis()).unwrap_or(u32::MAX),
                    error: r.error.unwrap_or_default(),
                })
                .collect(),
            None => Vec::new(),
        };
        Ok(Response::new(LookupResponse {
            key: key.to_string(),
            local,
            providers,
        }))
    }

    async fn content(
        &self,
        req: Request<ContentRequest>,
    ) -> Result<Response<ContentResponse>, Status> {
        let req = req.into_inner();
        let limit = if req.limit == 0 {
            DEFAULT_CONTENT_LIMIT
        } else {
            req.limit as usize
        };
        let index = &self.0.index;
        let mut keys: Vec<Key> = index
            .keys()
            .into_iter()
            .filter(|k| req.filter.is_empty() || k.to_string().contains(&req.filter))
            .collect();
        keys.sort();
        let total = keys.len() as u64;
        let entries = keys
            .into_iter()
            .take(limit)
            .map(|k| match &k {
                Key::Digest(d) | Key::Partial(d) => {
                    let desc = index.stat(d);
                    ContentEntry {
                        key: k.to_string(),
                        kind: "digest".into(),
                        size: desc.as_ref().map_or(0, |d| d.size),
                        media_type: desc.map(|d| d.media_type).unwrap_or_default(),
                        target: String::new(),
                    }
                }
                Key::Tag(t) => ContentEntry {
                    key: k.to_string(),
                    kind: "tag".into(),
                    size: 0,
                    media_type: String::new(),
                    target: index.resolve(t).map(|d| d.to_string()).unwrap_or_default(),
                },
            })
            .collect();
        Ok(Response::new(ContentResponse { entries, total }))
    }

    async fn activity(
        &self,
        _: Request<ActivityRequest>,
    ) -> Result<Response<ActivityResponse>, Status> {
        let (s, traffic) = (&self.0, &self.1);
        let requests = s
            .recent_requests
            .snapshot()
            .into_iter()
            .map(|r| RequestRecord {
                at_ms: unix_millis(r.at),
                method: r.method,
                path: r.path,
                remote: r.remote,
                client: r.client,
                status: u32::from(r.status),
                source: r.source.as_str().into(),
                bytes: r.bytes,
                complete: r.complete,
                duration_ms: u32::try_from(r.duration.as_millis()).unwrap_or(u32::MAX),
            })
            .collect();
        let traffic = traffic
            .snapshot(activity::TrafficSample::now(&s.metrics, &s.recent_requests))
            .into_iter()
            .map(|t| TrafficSample {
                at_ms: unix_millis(t.at),
                local_bytes: t.local_bytes,
                peer_bytes: t.peer_bytes,
                in_flight_bytes: t.in_flight_bytes,
                miss_requests: t.miss_requests,
            })
            .collect();
        let peer_events = s
            .mirror
            .as_ref()
            .map(|m| m.peer_events())
            .unwrap_or_default()
            .into_iter()
            .map(|e| PeerEvent {
                at_ms: unix_millis(e.at),
                peer_id: e.peer.to_string(),
                registry_addr: e.addr.to_string(),
                identity: e.identity,
                kind: e.kind.as_str().into(),
                shunned_until_ms: e.shunned_until.map_or(0, unix_millis),
            })
            .collect();
        Ok(Response::new(ActivityResponse {
            requests,
            traffic,
            sample_interval_ms: u32::try_from(activity::SAMPLE_EVERY.as_millis())
                .unwrap_or(u32::MAX),
            peer_events,
        }))
    }
}

/// Create the admin socket at `path` (mode 0600), replacing a stale one.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, AdminError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let bind_err = |source| AdminError::Bind {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    // A socket left by a previous run would make bind fail; anything else there is not ours.
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    // Bound inside a fresh 0700 directory, made 0600 there, then moved into place: the socket
    // is never reachable by others, not even between bind and chmod.
    let dir = path.parent().unwrap_or(Path::new("."));
    let private = dir.join(format!(".admin.{:016x}.d", rand::random::<u64>()));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .map_err(bind_err)?;
    }
    let staged = private.join("admin.sock");
    let result = tokio::net::UnixListener::bind(&staged).and_then(|l| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    result.map_err(bind_err)
}

/// Serve the admin API on `listener` until shutdown, then remove the socket file.
pub async fn serve(
    listener: tokio::net::UnixListener,
    path: &Path,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    tracing::info!(path = %path.display(), "admin API listening");
    let traffic = Arc::new(activity::Traffic::default());
    tokio::spawn({
        let (traffic, state, shutdown) = (traffic.clone(), state.clone(), shutdown.clone());
        async move {
            traffic
                .run(
                    &state.metrics,
                    &state.recent_requests,
                    activity::SAMPLE_EVERY,
                    shutdown,
                )
                .await
        }
    });
    tonic::transport::Server::builder()
        .add_service(AdminServer::new(Service(state, traffic)))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await?;
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// A client for the admin socket.
pub async fn connect(
    path: &Path,
) -> Result<proto::admin_client::AdminClient<tonic::transport::Channel>, AdminError> {
    let channel = crate::grpc::connect_unix(path, CLIENT_CONNECT_TIMEOUT, CLIENT_CALL_TIMEOUT)
        .await
        .map_err(|e| AdminError::Connect {
            path: path.display().to_string(),
            reason: format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            ),
        })?;
    Ok(proto::admin_client::AdminClient::new(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_refusals_show_while_recent() {
        let m = crate::metrics::Metrics::new();
        assert!(m.security.local_refusal().is_none());
        // A peer's refusal, or one from another address, is not containerd's.
        m.security
            .refused("wrong_token", [127, 0, 0, 1].into(), true);
        m.security
            .refused("no_certificate", [10, 0, 0, 7].into(), false);
        assert!(m.security.local_refusal().is_none());
        m.security
            .refused("missing_token", [127, 0, 0, 1].into(), false);
        m.security.refused("revoked", "::1".parse().unwrap(), false);
        let r = m.security.local_refusal().unwrap();
        assert_eq!((r.count, r.reason), (2, "revoked"));
        let w = refused_warning(&r, r.last_at).unwrap();
        assert!(
            w.starts_with("containerd's requests are being refused (401 / TLS): 2 ")
                && w.contains("(revoked)"),
            "{w}"
        );
        assert!(refused_warning(&r, r.last_at + LOCAL_REFUSAL_SHOWN).is_none());
        let serial = crate::pki::Serial::from_be_bytes(&[0x0a, 0x1b]);
        assert!(revoked_warning(Some(&serial)).contains("REVOKED"));
    }
}
