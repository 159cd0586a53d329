//! `peermirror status web`: one read-only page over the admin API, served by the CLI process
//! (the daemon itself serves nothing new). Loopback by default; the page is a single embedded
//! HTML file whose script fetches `/api/*` (JSON made from the admin API's answers) and draws
//! with SVG. Nothing on it is a secret: the admin API carries no tokens or keys.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::admin::proto::{self, admin_client::AdminClient};

/// The page: markup, style and script in one file.
const PAGE: &str = include_str!("page.html");
/// A client that sends no request head this soon is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections the page accepts: plenty for a few browser tabs polling it.
const MAX_CONNECTIONS: usize = 64;
/// Kept for loopback clients (the operator's own browser) when the pool is full.
const RESERVED_CONNECTIONS: usize = 16;
const MAX_CONNECTIONS_PER_IP: usize = 32;
/// How long responses in flight may finish after Ctrl-C.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a lookup from the page searches and waits for HEAD answers.
const LOOKUP_TIMEOUT_MS: u32 = 2_000;
/// Content rows shown for a filter.
const CONTENT_LIMIT: u32 = 200;

#[derive(Args, Debug, Clone)]
pub struct WebArgs {
    /// Address of the page. Loopback by default, so nothing new is exposed on the node's
    /// network; in a cluster reach it with `kubectl port-forward`.
    #[arg(long, env = "PEERMIRROR_WEB_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Allow --listen on a non-loopback address: anyone who reaches it can read this node's
    /// peers, content and recent requests (the page has no authentication).
    #[arg(long, env = "PEERMIRROR_WEB_ALLOW_REMOTE")]
    pub allow_remote: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(
        "--listen {0} is not a loopback address: the page has no authentication; use \
         127.0.0.1 with `kubectl port-forward`, or pass --allow-remote to expose it anyway"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl WebArgs {
    /// Refuse a non-loopback address unless --allow-remote says so.
    pub fn check_listen(&self) -> Result<(), WebError> {
        if self.listen.ip().is_loopback() || self.allow_remote {
            Ok(())
        } else {
            Err(WebError::NotLoopback(self.listen))
        }
    }
}

/// Serve the page on `args.listen` until SIGINT or SIGTERM.
pub async fn run(args: &WebArgs, client: AdminClient<Channel>) -> Result<(), WebError> {
    args.check_listen()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| WebError::Bind {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(args.listen);
    eprintln!("peermirror status web: serving http://{addr}/ (Ctrl-C to stop)");
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    serve(listener, client, args.allow_remote, shutdown).await;
    Ok(())
}

async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    shutdown.cancel();
}

/// Answer on `listener` until `shutdown`. `any_host`: accept any `Host` header (the page was
/// deliberately exposed); otherwise only loopback names, so a web site the operator visits
/// cannot read the page through a DNS name rebound to 127.0.0.1.
pub async fn serve(
    listener: tokio::net::TcpListener,
    client: AdminClient<Channel>,
    any_host: bool,
    shutdown: CancellationToken,
) {
    let app = Arc::new(App {
        client,
        any_host,
        csp: content_security_policy(PAGE),
    });
    let handler = move |req: Request<Incoming>, _conn: Arc<crate::server::ConnInfo>| {
        let app = app.clone();
        async move { app.handle(req).await }
    };
    // The same accept loop and admission as every other listener: connection caps, a cap
    // per address, and a deadline on request heads. A page for a few operators needs few.
    let limits = crate::server::ServerLimits {
        max_connections: MAX_CONNECTIONS,
        reserved_connections: RESERVED_CONNECTIONS,
        max_connections_per_ip: MAX_CONNECTIONS_PER_IP,
        header_read_timeout: HEADER_READ_TIMEOUT,
        drain_timeout: DRAIN_TIMEOUT,
        ..crate::server::ServerLimits::default()
    };
    crate::server::serve(listener, handler, limits, None, shutdown).await;
}

struct App {
    client: AdminClient<Channel>,
    any_host: bool,
    csp: HeaderValue,
}

type Reply = Response<Full<Bytes>>;

impl App {
    async fn handle(&self, req: Request<Incoming>) -> Reply {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "read-only: GET only");
        }
        if !self.any_host && !loopback_host(req.headers().get(HOST)) {
            return text(
                StatusCode::FORBIDDEN,
                "unexpected Host header: open the page as http://127.0.0.1:PORT/ or http://localhost:PORT/",
            );
        }
        let query = req.uri().query().unwrap_or("");
        let mut reply = match req.uri().path() {
            "/" => self.page(),
            "/api/overview" => self.overview().await,
            "/api/content" => self.content(param(query, "filter")).await,
            "/api/lookup" => self.lookup(param(query, "key")).await,
            _ => text(StatusCode::NOT_FOUND, "not found"),
        };
        let h = reply.headers_mut();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        h.insert("x-frame-options", HeaderValue::from_static("DENY"));
        reply
    }

    fn page(&self) -> Reply {
        let mut r = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r.headers_mut()
            .insert("content-security-policy", self.csp.clone());
        r
    }

    /// Everything the page refreshes every few seconds, in one answer.
    async fn overview(&self) -> Reply {
        let (mut c1, mut c2, mut c3) = (
            self.client.clone(),
            self.client.clone(),
            self.client.clone(),
        );
        let (status, peers, activity) = tokio::join!(
            c1.status(proto::StatusRequest {}),
            c2.peers(proto::PeersRequest {}),
            c3.activity(proto::ActivityRequest {}),
        );
        match (status, peers, activity) {
            (Ok(s), Ok(p), Ok(a)) => json_reply(&json!({
                "status": super::status_value(s.get_ref()),
                "peers": super::peers_value(p.get_ref())["peers"],
                "activity": activity_value(a.get_ref()),
            })),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => admin_failed(&e),
        }
    }

    async fn content(&self, filter: String) -> Reply {
        let r = self
            .client
            .clone()
            .content(proto::ContentRequest {
                filter,
                limit: CONTENT_LIMIT,
            })
            .await;
        match r {
            Ok(c) => json_reply(&super::content_value(c.get_ref())),
            Err(e) => admin_failed(&e),
        }
    }

    async fn lookup(&self, key: String) -> Reply {
        let r = self
            .client
            .clone()
            .lookup(proto::LookupRequest {
                key,
                timeout_ms: LOOKUP_TIMEOUT_MS,
            })
            .await;
        match r {
            Ok(l) => json_reply(&super::lookup_value(l.get_ref())),
            Err(e) if e.code() == tonic::Code::InvalidArgument => {
                json_error(StatusCode::BAD_REQUEST, e.message())
            }
            Err(e) => admin_failed(&e),
        }
    }
}

fn activity_value(a: &proto::ActivityResponse) -> serde_json::Value {
    let requests: Vec<_> = a
        .requests
        .iter()
        .map(|r| {
            json!({"at_ms": r.at_ms, "method": r.method, "path": r.path, "remote": r.remote,
                   "client": r.client, "status": r.status, "source": r.source, "bytes": r.bytes,
                   "complete": r.complete, "duration_ms": r.duration_ms})
        })
        .collect();
    let traffic: Vec<_> = a
        .traffic
        .iter()
        .map(|t| {
            json!({"at_ms": t.at_ms, "local": t.local_bytes, "peer": t.peer_bytes,
                   "in_flight": t.in_flight_bytes, "miss_requests": t.miss_requests})
        })
        .collect();
    let events: Vec<_> = a
        .peer_events
        .iter()
        .map(|e| {
            json!({"at_ms": e.at_ms, "peer_id": e.peer_id, "registry_addr": e.registry_addr,
                   "identity": e.identity, "kind": e.kind, "shunned_until_ms": e.shunned_until_ms})
        })
        .collect();
    json!({"requests": requests, "traffic": traffic, "sample_interval_ms": a.sample_interval_ms,
           "peer_events": events})
}

/// `name`'s value in a query string, decoded ("" when absent).
fn param(query: &str, name: &str) -> String {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Whether a `Host` header names this machine's loopback: `localhost`, `127.x.x.x` or `[::1]`,
/// with or without a port.
fn loopback_host(host: Option<&HeaderValue>) -> bool {
    let Some(host) = host.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn text(status: StatusCode, body: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_reply(v: &serde_json::Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn json_error(status: StatusCode, message: &str) -> Reply {
    let mut r = json_reply(&json!({ "error": message }));
    *r.status_mut() = status;
    r
}

fn admin_failed(e: &tonic::Status) -> Reply {
    json_error(
        StatusCode::BAD_GATEWAY,
        &format!("the daemon's admin API: {}", e.message()),
    )
}

/// A policy that runs only the page's own script and style (by hash) and lets it fetch only
/// from this origin: a request path or peer name that slipped past the page's escaping still
/// could not run.
fn content_security_policy(page: &str) -> HeaderValue {
    let hash = |open: &str, close: &str| {
        let body = page
            .split_once(open)
            .and_then(|(_, rest)| rest.split_once(close))
            .map_or("", |(body, _)| body);
        use sha2::Digest as _;
        format!(
            "'sha256-{}'",
            base64(&sha2::Sha256::digest(body.as_bytes()))
        )
    };
    let policy = format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self'; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        hash("<script>", "</script>"),
        hash("<style>", "</style>"),
    );
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'none'"))
}

/// Standard base64 with padding (CSP hashes); too small a need for a dependency.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_listen_addresses_unless_allowed() {
        let args = |listen: &str, allow_remote| WebArgs {
            listen: listen.parse().unwrap(),
            allow_remote,
        };
        assert!(args("127.0.0.1:8080", false).check_listen().is_ok());
        assert!(args("[::1]:8080", false).check_listen().is_ok());
        for addr in ["0.0.0.0:8080", "10.1.2.3:8080", "[::]:8080"] {
            let e = args(addr, false).check_listen().unwrap_err().to_string();
            assert!(e.contains("--allow-remote"), "{e}");
            assert!(args(addr, true).check_listen().is_ok());
        }
    }

    #[test]
    fn only_loopback_host_headers() {
        let ok = |h: &str| loopback_host(Some(&HeaderValue::from_str(h).unwrap()));
        for h in [
            "localhost:8080",
            "LOCALHOST",
            "127.0.0.1:8080",
            "127.3.4.5",
            "[::1]:80",
        ] {
            assert!(ok(h), "{h}");
        }
        for h in [
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1",
            "[::2]:80",
            "",
        ] {
            assert!(!ok(h), "{h}");
        }
        assert!(!loopback_host(None));
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn the_policy_names_the_pages_own_script_and_style() {
        let csp = content_security_policy(PAGE);
        let csp = csp.to_str().unwrap();
        assert!(csp.contains("script-src 'sha256-"), "{csp}");
        assert!(csp.contains("style-src 'sha256-"), "{csp}");
        // One inline script and one style: a second would be blocked by the policy.
        assert_eq!(PAGE.matches("<script>").count(), 1);
        assert_eq!(PAGE.matches("<style>").count(), 1);
        assert!(
            !PAGE.contains("innerHTML"),
            "data goes in as text, never as markup"
        );
    }
}
