//! Connection-rate driver for `bench/tls.sh`: opens CONNS new connections to a peermirror
//! registry endpoint, CONC at a time, each doing one `GET REQ_PATH` (HTTP/1.1, `Connection: close`)
//! and reading the answer to the end, then reports connections per second and latency.
//!
//!   ADDR=127.0.0.1:5000 CA=ca.crt CERT=client.crt KEY=client.key \
//!       cargo run --release --example bench_tls           (CONNS=2000 CONC=16 REQ_PATH=/v2/)
//!
//! With CA set, every connection is a new mTLS connection (rustls with ring, as peermirror's
//! own peer fetches; CLIENT_CRYPTO=aws-lc in a `--features aws-lc` build uses aws-lc-rs, which
//! decrypted at 1.3-1.5 CPU-s/GB here against ring's 0.5-0.6; CERT/KEY are the client
//! certificate). By default no session is resumed: each
//! connection is a full handshake (certificate signatures and chain/CRL checks on both sides).
//! RESUME=1 lets rustls resume sessions (TLS 1.3 tickets) for comparison. Without CA the
//! connections are plain TCP (the baseline). WARMUP connections are made first and not counted.
//! Runs on one thread (a current-thread tokio runtime), so `taskset -c N` pins it to one core.
//!
//! Prints one line: `conns= ok= failed= secs= rate= p50_ms= p99_ms= max_ms=`.
//!
//! MODE=get: one download instead, negotiated as containerd does with peermirror (HTTP/1.1,
//! TLS 1.3 with `TLS13_AES_128_GCM_SHA256` only, ALPN `http/1.1`): `GET REQ_PATH` on one new
//! connection, the body read to its `Content-Length` into a reused 256 KiB buffer and dropped
//! (or written to OUT). Prints `bytes secs` like `curl -w '%{size_download} %{time_total}'`.
//! This is the lean client for measuring the server's cost per GB: curl (OpenSSL) spends about
//! 1-2 CPU-s/GB decrypting, which on two shared cores caps what the server can show.
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

fn tls_config(ca: &str, cert: &str, key: &str, resume: bool, aes128: bool) -> rustls::ClientConfig {
    // The client's crypto is ring unless CLIENT_CRYPTO=aws-lc (in a `--features aws-lc` build).
    #[cfg(feature = "aws-lc")]
    if env("CLIENT_CRYPTO").as_deref() == Some("aws-lc") {
        use rustls::crypto::aws_lc_rs as crypto;
        let mut provider = crypto::default_provider();
        if aes128 {
            provider.cipher_suites = vec![crypto::cipher_suite::TLS13_AES_128_GCM_SHA256];
        }
        return finish_config(Arc::new(provider), ca, cert, key, resume);
    }
    let mut provider = rustls::crypto::ring::default_provider();
    if aes128 {
        provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    }
    finish_config(Arc::new(provider), ca, cert, key, resume)
}

fn finish_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    ca: &str,
    cert: &str,
    key: &str,
    resume: bool,
) -> rustls::ClientConfig {
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

/// MODE=get: one download of `path` on a new connection; returns (body bytes, seconds).
async fn download(
    addr: &str,
    connector: Option<&TlsConnector>,
    path: &str,
    out: Option<&str>,
) -> Result<(u64, f64), String> {
    let started = Instant::now();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let n = match connector {
        Some(c) => {
            let ip: std::net::IpAddr = addr
                .rsplit_once(':')
                .and_then(|(ip, _)| ip.parse().ok())
                .ok_or("ADDR must be IP:PORT")?;
            let tls = c
                .connect(ServerName::IpAddress(ip.into()), tcp)
                .await
                .map_err(|e| e.to_string())?;
            read_body(tls, request.as_bytes(), out).await?
        }
        None => read_body(tcp, request.as_bytes(), out).await?,
    };
    Ok((n, started.elapsed().as_secs_f64()))
}

/// Sends the request, checks for a 200 with a Content-Length, reads exactly that many bytes.
async fn read_body<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
    out: Option<&str>,
) -> Result<u64, String> {
    s.write_all(request).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut filled = 0;
    let head_end = loop {
        let n = s
            .read(&mut buf[filled..])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the response head".into());
        }
        filled += n;
        if let Some(i) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if filled == buf.len() {
            return Err("response head too long".into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(format!("answer: {:?}", &head[..head.len().min(60)]));
    }
    let len: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no content-length")?;
    let mut file = match out {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| e.to_string())?),
        None => None,
    };
    let mut got = (filled - head_end) as u64;
    if let Some(f) = file.as_mut() {
        std::io::Write::write_all(f, &buf[head_end..filled]).map_err(|e| e.to_string())?;
    }
    while got < len {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("body ended after {got} of {len} bytes"));
        }
        if let Some(f) = file.as_mut() {
            std::io::Write::write_all(f, &buf[..n]).map_err(|e| e.to_string())?;
        }
        got += n as u64;
    }
    Ok(got)
}

fn main() {
    let addr = env("ADDR").expect("ADDR=IP:PORT of the registry endpoint");
    let path = env("REQ_PATH").unwrap_or("/v2/".into());
    if env("MODE").as_deref() == Some("get") {
        let connector = env("CA").map(|ca| {
            let cert = env("CERT").expect("CERT with CA");
            let key = env("KEY").expect("KEY with CA");
            TlsConnector::from(Arc::new(tls_config(&ca, &cert, &key, false, true)))
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let out = env("OUT");
        match rt.block_on(download(&addr, connector.as_ref(), &path, out.as_deref())) {
            Ok((bytes, secs)) => println!("{bytes} {secs:.6}"),
            Err(e) => {
                eprintln!("download failed: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let conns = env_usize("CONNS", 2000);
    let conc = env_usize("CONC", 16);
    let warmup = env_usize("WARMUP", 50);
    let resume = env_usize("RESUME", 0) == 1;
    let connector = env("CA").map(|ca| {
        let cert = env("CERT").expect("CERT with CA");
        let key = env("KEY").expect("KEY with CA");
        TlsConnector::from(Arc::new(tls_config(&ca, &cert, &key, resume, false)))
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
