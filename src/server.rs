//! The HTTP accept loop shared by the registry and operations listeners: connection limits,
//! TLS handshakes off the accept path with a deadline, header size and read timeouts,
//! HTTP/1.1 and HTTP/2, and graceful draining on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::pki::Serial;

/// Limits that keep hostile or broken clients from tying the server up.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Connections beyond this are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Connections from one address beyond this are closed at once, so one source that opens
    /// sockets and stays silent cannot take every slot.
    pub max_connections_per_ip: usize,
    /// A client must finish sending request headers within this time.
    pub header_read_timeout: Duration,
    /// Largest request head accepted (HTTP/1 read buffer; HTTP/2 header list).
    pub max_header_bytes: usize,
    /// How long in-flight responses may take to finish after shutdown begins.
    pub drain_timeout: Duration,
    /// A TLS client must complete its handshake within this time.
    pub handshake_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            max_connections_per_ip: 128,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// The verified client certificate, on an mTLS listener.
    pub client_cert: Option<ClientCert>,
}

/// The parts of a verified client certificate worth logging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    pub subject: String,
    /// `None` only for a certificate that verified but that x509-parser cannot read.
    pub serial: Option<Serial>,
}

/// Supplies the TLS configuration for each new connection and hears about failed handshakes.
pub trait TlsProvider: Send + Sync + 'static {
    /// The configuration new connections use now (it may change on reload).
    fn server_config(&self) -> Arc<rustls::ServerConfig>;
    /// Describe the peer's verified certificate.
    fn identify(&self, cert: &rustls_pki_types::CertificateDer<'_>) -> ClientCert;
    /// A handshake failed (or timed out: `None`).
    fn handshake_failed(&self, remote: SocketAddr, error: Option<&std::io::Error>);
}

/// Serve `handler` on `listener` until `shutdown` fires, then drain in-flight responses.
/// With `tls`, every connection is a TLS connection first.
pub async fn serve<H, Fut, B>(
    listener: TcpListener,
    handler: H,
    limits: ServerLimits,
    tls: Option<Arc<dyn TlsProvider>>,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>, Arc<ConnInfo>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(128);
    let builder = Arc::new(builder);
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(ip_slot) = per_ip
            .clone()
            .enter(remote.ip(), limits.max_connections_per_ip)
        else {
            tracing::warn!(%remote, "per-address connection limit reached; closing new connection");
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "connection limit reached; closing new connection");
            continue;
        };
        let permit = (permit, ip_slot);
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let handshake_timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            let Some(tls) = tls else {
                let info = Arc::new(ConnInfo {
                    remote,
                    client_cert: None,
                });
                serve_conn(stream, info, handler, &builder, watcher).await;
                drop(permit);
                return;
            };
            // The handshake runs here, not in the accept loop: a client that stalls in it
            // holds only its own connection slot, and only until the deadline.
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            let stream =
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tls.handshake_failed(remote, Some(&e));
                        return;
                    }
                    Err(_) => {
                        tls.handshake_failed(remote, None);
                        return;
                    }
                };
            let client_cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| tls.identify(c));
            let info = Arc::new(ConnInfo {
                remote,
                client_cert,
            });
            serve_conn(stream, info, handler, &builder, watcher).await;
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!("all connections drained"),
        _ = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!("drain timeout reached; closing remaining connections")
        }
    }
}

/// Open connections per remote address.
#[derive(Default)]
struct PerIp {
    counts: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection's place in [`PerIp`], given back on drop.
struct IpSlot {
    table: Arc<PerIp>,
    ip: std::net::IpAddr,
}

impl PerIp {
    fn enter(self: Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<IpSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        drop(counts);
        Some(IpSlot { table: self, ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

async fn serve_conn<I, H, Fut, B>(
    io: I,
    info: Arc<ConnInfo>,
    handler: H,
    builder: &Builder<TokioExecutor>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, Arc<ConnInfo>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let remote = info.remote;
    let service = hyper::service::service_fn(move |req| {
        let handler = handler.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(handler(req, info).await) }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}
