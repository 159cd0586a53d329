//! Connection-rate driver for `bench/tls.sh`: opens CONNS new connections to a peermirror
//! registry endpoint, CONC at a time, each doing one `GET REQ_PATH` (HTTP/1.1, `Connection: close`)
//! and reading the answer to the end, then reports connections per second and latency.
//!
//!   ADDR=127.0.0.1:5000 CA=ca.crt CERT=client.crt KEY=client.key \
//!       cargo run --release --example bench_tls           (CONNS=2000 CONC=16 REQ_PATH=/v2/)
//!
//! With CA set, every connection is a new mTLS connection (rustls with ring, the same stack as
//! peermirror; CERT/KEY are the client certificate). By default no session is resumed: each
//! connection is a full handshake (certificate signatures and chain/CRL checks on both sides).
//! RESUME=1 lets rustls resume sessions (TLS 1.3 tickets) for comparison. Without CA the
//! connections are plain TCP (the baseline). WARMUP connections are made first and not counted.
//! Runs on one thread (a current-thread tokio runtime), so `taskset -c N` pins it to one core.
//!
//! Prints one line: `conns= ok= failed= secs= rate= p50_ms= p99_ms= max_ms=`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_usize(name: &str, default: usize) -> usize {
    env(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn tls_config(ca: &str, cert: &str, key: &str, resume: bool) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in peermirror::pki::load_certs(ca).expect("load CA") {
        roots.add(c).expect("add CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(
            peermirror::pki::load_certs(cert).expect("load client certificate"),
            peermirror::pki::load_key(key).expect("load client key"),
        )
        .expect("client certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    config
}

/// Sends the request and reads to EOF; Ok when the answer is a 200.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
) -> Result<(), String> {
    s.write_all(request).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::with_capacity(1024);
    // A TLS peer may close without close_notify after `Connection: close`: what was read counts.
    let _ = s.read_to_end(&mut answer).await;
    if answer.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "answer: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(60)])
        ))
    }
}

async fn one(
    addr: &str,
    connector: Option<&TlsConnector>,
    request: &[u8],
) -> Result<Duration, String> {
    let started = Instant::now();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    match connector {
        Some(c) => {
            let name = ServerName::IpAddress(
                addr.rsplit_once(':')
                    .and_then(|(ip, _)| ip.parse::<std::net::IpAddr>().ok())
                    .expect("ADDR must be IP:PORT")
                    .into(),
            );
            let tls = c.connect(name, tcp).await.map_err(|e| e.to_string())?;
            exchange(tls, request).await?;
        }
        None => exchange(tcp, request).await?,
    }
    Ok(started.elapsed())
}

async fn run(
    addr: Arc<String>,
    connector: Option<TlsConnector>,
    request: Arc<Vec<u8>>,
    conns: usize,
    conc: usize,
) -> (Vec<Duration>, usize, Option<String>, Duration) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc.max(1) {
        let (addr, connector, request, next) = (
            addr.clone(),
            connector.clone(),
            request.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0;
            let mut first_error = None;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < conns {
                match one(&addr, connector.as_ref(), &request).await {
                    Ok(d) => lat.push(d),
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (lat, failed, first_error)
        }));
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    let mut first_error = None;
    for t in tasks {
        let (l, f, e) = t.await.expect("task");
        lat.extend(l);
        failed += f;
        if first_error.is_none() {
            first_error = e;
        }
    }
    (lat, failed, first_error, started.elapsed())
}

fn main() {
    let addr = env("ADDR").expect("ADDR=IP:PORT of the registry endpoint");
    let path = env("REQ_PATH").unwrap_or("/v2/".into());
    let conns = env_usize("CONNS", 2000);
    let conc = env_usize("CONC", 16);
    let warmup = env_usize("WARMUP", 50);
    let resume = env_usize("RESUME", 0) == 1;
    let connector = env("CA").map(|ca| {
        let cert = env("CERT").expect("CERT with CA");
        let key = env("KEY").expect("KEY with CA");
        TlsConnector::from(Arc::new(tls_config(&ca, &cert, &key, resume)))
    });
    let request = Arc::new(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").into_bytes(),
    );
    let addr = Arc::new(addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if warmup > 0 {
            let (_, failed, err, _) =
                run(addr.clone(), connector.clone(), request.clone(), warmup, conc).await;
            assert!(failed == 0, "warm-up failed: {err:?}");
        }
        let (mut lat, failed, err, took) = run(addr, connector, request, conns, conc).await;
        lat.sort();
        let q = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "conns={conns} ok={} failed={failed} secs={:.3} rate={:.1} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
            lat.len(),
            took.as_secs_f64(),
            lat.len() as f64 / took.as_secs_f64(),
            q(0.50),
            q(0.99),
            lat.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
        );
        if let Some(e) = err {
            eprintln!("first error: {e}");
        }
    });
}
