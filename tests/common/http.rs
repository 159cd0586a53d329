//! HTTP clients: reqwest over plain http and (m)TLS, and raw sockets for what a client refuses
//! to send.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A response with its body read in full.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `errors[0].code` of an OCI error body.
    pub fn error_code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v["errors"][0]["code"].as_str().map(str::to_string)
    }
}

/// HTTP/1.1 (as containerd speaks to a plain-http mirror), no proxy from the
/// environment, no automatic decompression, keep-alive on.
pub fn http_client() -> reqwest::Client {
    // reqwest is built with rustls but no default crypto provider; it panics
    // at build() unless one is installed, even for plain http.
    static PROVIDER: OnceLock<()> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("build reqwest client")
}

/// A reusable client (warm connections) with request helpers.
#[derive(Clone)]
pub struct Http {
    pub client: reqwest::Client,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Http {
        Http {
            client: http_client(),
        }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        let mut req = self.client.request(method.clone(), url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: body: {e}"))
            .to_vec();
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.request(reqwest::Method::GET, url, headers).await
    }

    pub async fn head(&self, url: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.request(reqwest::Method::HEAD, url, headers).await
    }
}

/// One-off GET with a fresh client.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    Http::new().get(url, headers).await
}

/// One-off HEAD with a fresh client.
pub async fn head(url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    Http::new().head(url, headers).await
}

/// Sends raw bytes on a new TCP connection and reads until the peer closes,
/// `timeout` passes, or 1 MiB arrived. For requests a normal client would
/// refuse to send (`..` segments, huge headers, half a request line).
/// An error means the connection failed or was reset before any byte came back.
pub fn raw_request(addr: &str, request: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // A server may answer and close before it read everything (e.g. 431):
    // a write error is not the end, the answer may still be readable.
    let write_result = stream.write_all(request);
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while Instant::now() < deadline && buf.len() < (1 << 20) {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) if buf.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    if buf.is_empty() {
        write_result?;
    }
    Ok(buf)
}

/// Status code from a raw HTTP/1.x response.
pub fn raw_status(response: &[u8]) -> Option<u16> {
    let line = response.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Body of a raw HTTP/1.x response (after the blank line), as text.
pub fn raw_body(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response);
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Minimal blocking `GET path`: status and body text (None: no answer).
pub fn http_get_sync(addr: &str, path: &str) -> Option<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let resp = raw_request(addr, req.as_bytes(), Duration::from_secs(2)).ok()?;
    Some((raw_status(&resp)?, raw_body(&resp)))
}

/// Minimal blocking `GET path` returning only the status: readiness polling
/// from sync code, no async runtime needed.
pub fn http_status_sync(addr: &str, path: &str) -> Option<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let resp = raw_request(addr, req.as_bytes(), Duration::from_secs(2)).ok()?;
    raw_status(&resp)
}

/// `GET` (or `HEAD`) of `http://ADDR/PATH` by curl run inside network namespace `netns`: the
/// request stays on the namespace's own network (tests never reach a namespace's address from
/// the root namespace). (status, body); None when nothing answered within 5 s.
pub fn http_in_netns(netns: &str, method: &str, addr: &str, path: &str) -> Option<(u16, String)> {
    http_in_netns_with(netns, method, addr, path, &[])
}

/// [`http_in_netns`] with request `headers` (`Name: value`).
pub fn http_in_netns_with(
    netns: &str,
    method: &str,
    addr: &str,
    path: &str,
    headers: &[&str],
) -> Option<(u16, String)> {
    let url = format!("http://{addr}{path}");
    let mut cmd = super::process::command_in(Some(netns), "curl");
    cmd.args(["-s", "-m", "5", "-o", "-", "-w", "\n%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if method == "HEAD" {
        // `-X HEAD` would wait for a body that never comes.
        cmd.arg("-I");
    } else {
        cmd.args(["-X", method]);
    }
    let out = super::process::run_with_timeout(cmd.arg(&url), Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    match code.trim().parse::<u16>() {
        Ok(0) | Err(_) => None,
        Ok(status) => Some((status, body.to_string())),
    }
}

/// [`http_get_sync`] from the root namespace, or [`http_in_netns`] inside `netns` when given.
pub fn http_get_in(netns: Option<&str>, addr: &str, path: &str) -> Option<(u16, String)> {
    match netns {
        Some(ns) => http_in_netns(ns, "GET", addr, path),
        None => http_get_sync(addr, path),
    }
}

/// A rustls client config (ring) trusting the CA in `ca` and presenting
/// `identity` (certificate, key) when given.
pub fn tls_client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> rustls::ClientConfig {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in peermirror::pki::load_certs(ca).expect("load CA") {
        roots.add(c).expect("add CA root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                peermirror::pki::load_certs(cert).expect("load client cert"),
                peermirror::pki::load_key(key).expect("load client key"),
            )
            .expect("client auth cert"),
        None => builder.with_no_client_auth(),
    }
}

/// Like [`Http::new`] (HTTP/1.1, no proxy, no decompression) but for https
/// URLs, trusting `ca` and presenting `identity` when given.
pub fn https_http(ca: &Path, identity: Option<(&Path, &Path)>) -> Http {
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls_client_config(ca, identity))
        .no_proxy()
        .http1_only()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build https client");
    Http { client }
}
