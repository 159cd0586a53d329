//! The HTTP accept loop shared by the registry and operations listeners: connection limits,
//! TLS handshakes off the accept path with a deadline, header size and read timeouts,
//! HTTP/1.1 and HTTP/2, and graceful draining on shutdown.
//!
//! - `admission`: the connection registry: general pool, trusted reserve, per-address cap,
//!   eviction of the oldest connection that never completed a request.
//! - `fds`: fitting the caps under the open-file limit.

mod admission;
mod fds;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pki::Serial;
use admission::Slot;
pub use admission::{Admission, ConnCounters, Refusal, Trusted, cached_set, is_local_containerd};
pub use fds::{HEADROOM, fit_to_fd_limit, raise_nofile_limit};

/// Limits that keep hostile or broken clients from tying the server up.
///
/// Slots are cheap (measured in tests/slots_inproc.rs: 12-21 KiB of RSS per silent
/// connection, plain or TLS, both ends counted), so the default pool is 4,096 plus a reserve
/// of 256: under 100 MiB when full of silent sockets, under 300 MiB if every one also filled
/// its 64 KiB header buffer (the chart's limit is 512 MiB), and 5,376 descriptors with
/// [`HEADROOM`]; [`fit_to_fd_limit`] lowers the caps when the open-file limit is smaller. An unfinished request head
/// or handshake holds its slot for 5 s at most, and less under pressure: when the pool is
/// full the oldest such connection is closed for a newcomer.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// The general pool: connections anyone may hold. When it is full, the oldest
    /// connection from a stranger that has not completed a request is closed to make room.
    pub max_connections: usize,
    /// A reserve only this node's containerd (127.0.0.1, ::1) and trusted addresses
    /// (connected peers) may use once the general pool is full.
    pub reserved_connections: usize,
    /// Connections from one address beyond this are closed at once, so one source that opens
    /// sockets and stays silent cannot take every slot.
    pub max_connections_per_ip: usize,
    /// A client must finish sending a request head within this time (HTTP/1: also how long
    /// an idle keep-alive connection stays open; any protocol: a connection that has sent no
    /// complete request within this time after its handshake is closed).
    pub header_read_timeout: Duration,
    /// Largest request head accepted (HTTP/1 read buffer; HTTP/2 header list).
    pub max_header_bytes: usize,
    /// How long in-flight responses may take to finish after shutdown begins.
    pub drain_timeout: Duration,
    /// A TLS client must complete its handshake within this time.
    pub handshake_timeout: Duration,
    /// A remote address with this many failed authentications within `auth_failure_window`
    /// is answered 429 until the window ends (loopback never is: containerd connects from it).
    pub auth_failures_max: u32,
    pub auth_failure_window: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 4096,
            reserved_connections: 256,
            max_connections_per_ip: 128,
            header_read_timeout: Duration::from_secs(5),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(5),
            auth_failures_max: 10,
            auth_failure_window: Duration::from_secs(60),
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
/// With `tls`, every connection is a TLS connection first. Only this node's containerd may
/// use the reserve; nothing is exported (see [`serve_with`]).
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
    let admission = Admission::new(&limits, None, ConnCounters::default());
    serve_with(listener, handler, limits, tls, admission, shutdown).await
}

/// [`serve`], with slots given out by `admission` (its trusted addresses and counters).
pub async fn serve_with<H, Fut, B>(
    listener: TcpListener,
    handler: H,
    limits: ServerLimits,
    tls: Option<Arc<dyn TlsProvider>>,
    admission: Arc<Admission>,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>, Arc<ConnInfo>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let tasks = Tasks::default();
    let mut builder = Builder::new(tasks.clone());
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
    // Refusals and evictions are summed up once a minute, not logged one by one: under a
    // flood that would be thousands of lines a second.
    let mut summary = tokio::time::interval(Duration::from_secs(60));
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An unfinished connection gets the handshake deadline plus the header deadline in all,
    // whatever its protocol (an HTTP/2 client that sends only the preface, too).
    let deadlines = Deadlines {
        handshake: limits.handshake_timeout,
        first_request: limits.handshake_timeout + limits.header_read_timeout,
    };
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = summary.tick() => {
                admission.log_summary();
                continue;
            }
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
        let Ok(slot) = admission.admit(remote.ip()) else {
            // Dropping the stream closes it; `admit` counted why.
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            remote,
            slot: Arc::new(slot),
            watcher: graceful.watcher(),
        };
        tasks.spawn(conn.run(
            stream,
            handler.clone(),
            builder.clone(),
            tls.clone(),
            deadlines,
        ));
    }
    drop(listener);
    admission.log_summary();
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!("all connections drained"),
        _ = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!("drain timeout reached; closing remaining connections")
        }
    }
    tasks.cut().await;
}

/// Every task this listener starts (connections, and the HTTP/2 streams hyper spawns through
/// it as its executor), so that the drain cutoff ends them. Without it they would outlive
/// [`serve_with`] on a runtime it shares with its caller (a library user, a test), still
/// streaming after the daemon said it had stopped.
#[derive(Clone, Default)]
struct Tasks {
    cutoff: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    fn spawn<F>(&self, fut: F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let cutoff = self.cutoff.clone();
        self.tracker.spawn(async move {
            cutoff.run_until_cancelled(fut).await;
        });
    }

    /// Ends every task at its next poll (dropping its socket) and waits until all are gone.
    async fn cut(&self) {
        self.cutoff.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl<F> hyper::rt::Executor<F> for Tasks
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.spawn(fut);
    }
}

#[derive(Clone, Copy)]
struct Deadlines {
    handshake: Duration,
    /// From accept to the first complete request head.
    first_request: Duration,
}

/// One accepted connection and its slot.
struct Conn {
    remote: SocketAddr,
    slot: Arc<Slot>,
    watcher: Watcher,
}

impl Conn {
    /// Serves the connection until it ends, is evicted, or has completed no request in time.
    async fn run<H, Fut, B>(
        self,
        stream: tokio::net::TcpStream,
        handler: H,
        builder: Arc<Builder<Tasks>>,
        tls: Option<Arc<dyn TlsProvider>>,
        deadlines: Deadlines,
    ) where
        H: Fn(Request<Incoming>, Arc<ConnInfo>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let slot = self.slot.clone();
        let cancel = slot.cancel.clone();
        let deadline = async {
            tokio::time::sleep(deadlines.first_request).await;
            if slot.is_finished() {
                std::future::pending::<()>().await;
            }
        };
        // Whichever ends first drops the others, and with `serve` the socket; the slot goes
        // back when the last handle to it (in-flight HTTP/2 streams hold one) is gone.
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = deadline => {}
            _ = self.serve(stream, handler, &builder, tls, deadlines.handshake) => {}
        }
    }

    async fn serve<H, Fut, B>(
        self,
        stream: tokio::net::TcpStream,
        handler: H,
        builder: &Builder<Tasks>,
        tls: Option<Arc<dyn TlsProvider>>,
        handshake_timeout: Duration,
    ) where
        H: Fn(Request<Incoming>, Arc<ConnInfo>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let remote = self.remote;
        let Some(tls) = tls else {
            let info = Arc::new(ConnInfo {
                remote,
                client_cert: None,
            });
            serve_conn(stream, info, handler, builder, self.watcher, self.slot).await;
            return;
        };
        // The handshake runs here, not in the accept loop: a client that stalls in it
        // holds only its own connection slot, and only until the deadline.
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
        let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
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
        serve_conn(stream, info, handler, builder, self.watcher, self.slot).await;
    }
}

async fn serve_conn<I, H, Fut, B>(
    io: I,
    info: Arc<ConnInfo>,
    handler: H,
    builder: &Builder<Tasks>,
    watcher: Watcher,
    slot: Arc<Slot>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, Arc<ConnInfo>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let remote = info.remote;
    let service = hyper::service::service_fn(move |req| {
        // A request head arrived: the connection is a client, not a squatter.
        slot.finish();
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
