//! The registry endpoint over the in-memory content source: every route, header and error
//! code, without containerd. The same behaviour is checked against real containerd in e2e.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use peermirror::content::MemorySource;
use peermirror::daemon::Routing;
use peermirror::mirror::MirrorConfig;
use peermirror::oci::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{client, config, start, wait_ready};

fn local_config() -> peermirror::daemon::Config {
    config(Routing::Off, MirrorConfig::default())
}

async fn error_code(resp: reqwest::Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    v["errors"][0]["code"].as_str().unwrap().to_string()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

const NS: &str = "127.0.0.1:5000";

#[tokio::test]
async fn serves_manifests_blobs_and_ranges() {
    let src = MemorySource::new();
    let big = pattern(3 * 1024 * 1024 + 17, 1);
    let manifest = src.add_image("127.0.0.1:5000/test/app:v1", &[&big, b"small layer"]);
    let node = start(src.clone(), local_config()).await;
    let c = client();

    let r = c.get(format!("{}/v2/", node.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );

    // Tag resolves through ns + name + tag; HEAD and GET carry the same headers.
    for method in [reqwest::Method::HEAD, reqwest::Method::GET] {
        let r = c
            .request(
                method.clone(),
                format!("{}/v2/test/app/manifests/v1?ns={}", node.base, NS),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{method}");
        assert_eq!(
            r.headers()["content-type"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(
            r.headers()["docker-content-digest"],
            manifest.digest.to_string().as_str()
        );
        assert_eq!(
            r.headers()["content-length"],
            manifest.size.to_string().as_str()
        );
        let body = r.bytes().await.unwrap();
        if method == reqwest::Method::GET {
            assert_eq!(Digest::of(&body), manifest.digest);
        } else {
            assert!(body.is_empty());
        }
    }
    // Without ns (or with another registry) the tag is unknown.
    let r = c
        .get(format!("{}/v2/test/app/manifests/v1", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = c
        .get(format!(
            "{}/v2/test/app/manifests/v1?ns=docker.io",
            node.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A digest is served from any repository name.
    let r = c
        .get(format!(
            "{}/v2/other/repo/manifests/{}",
            node.base, manifest.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let layer = Digest::of(&big);
    let url = format!("{}/v2/test/app/blobs/{layer}", node.base);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(
        r.headers()["docker-content-digest"],
        layer.to_string().as_str()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), big.as_slice());

    for (range, start, end) in [
        ("bytes=0-99", 0usize, 99usize),
        ("bytes=1000-", 1000, big.len() - 1),
        ("bytes=-10", big.len() - 10, big.len() - 1),
        ("bytes=1048570-1048590", 1048570, 1048590),
    ] {
        let r = c.get(&url).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {start}-{end}/{}", big.len()).as_str()
        );
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            &big[start..=end],
            "{range}"
        );
    }
    let r = c
        .get(&url)
        .header("range", format!("bytes={}-", big.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", big.len()).as_str()
    );

    node.stop().await;
}

#[tokio::test]
async fn bad_requests_get_documented_errors_and_misses_are_fast() {
    let src = MemorySource::new();
    src.add_image("127.0.0.1:5000/test/app:v1", &[b"layer"]);
    let node = start(src, local_config()).await;
    let c = client();
    let unknown = Digest::of(b"nobody has this");
    let cases: Vec<(reqwest::Method, String, u16, &str)> = vec![
        (
            reqwest::Method::GET,
            format!("/v2/test/app/blobs/{unknown}"),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            reqwest::Method::HEAD,
            format!("/v2/test/app/manifests/{unknown}"),
            404,
            "",
        ),
        (
            reqwest::Method::GET,
            format!("/v2/test/app/manifests/nope?ns={NS}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            reqwest::Method::GET,
            format!("/v2/Test/App/blobs/{unknown}"),
            400,
            "NAME_INVALID",
        ),
        (
            reqwest::Method::GET,
            "/v2/test/app/blobs/sha256:1234".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            reqwest::Method::GET,
            "/v2/test/app/blobs/md5:abc".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            reqwest::Method::GET,
            "/v2/test/app/manifests/-x".into(),
            400,
            "TAG_INVALID",
        ),
        (
            reqwest::Method::GET,
            format!("/v2/test%2Fapp/blobs/{unknown}"),
            400,
            "NAME_INVALID",
        ),
        (
            reqwest::Method::GET,
            "/v2/_catalog".into(),
            404,
            "NOT_FOUND",
        ),
        (
            reqwest::Method::PUT,
            "/v2/test/app/manifests/v1".to_string(),
            405,
            "UNSUPPORTED",
        ),
        (
            reqwest::Method::POST,
            "/v2/test/app/blobs/uploads/".into(),
            404,
            "NOT_FOUND",
        ),
        (
            reqwest::Method::DELETE,
            format!("/v2/test/app/blobs/{unknown}"),
            405,
            "UNSUPPORTED",
        ),
    ];
    for (method, path, status, code) in cases {
        let started = Instant::now();
        let r = c
            .request(method.clone(), format!("{}{path}", node.base))
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        if status == 404 {
            assert!(took < Duration::from_millis(100), "miss took {took:?}");
        }
        if !code.is_empty() {
            assert_eq!(r.headers()["content-type"], "application/json");
            assert_eq!(error_code(r).await, code, "{method} {path}");
        }
    }

    // `..` segments are not normalised away by the server: raw request over TCP.
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    s.write_all(
        format!("GET /v2/a/../test/app/blobs/{unknown} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 400"));

    node.stop().await;
}

#[tokio::test]
async fn hostile_clients_do_not_hurt_others() {
    let src = MemorySource::new();
    src.add_image("127.0.0.1:5000/test/app:v1", &[b"layer"]);
    let node = start(src, local_config()).await;

    // A 100 KB header is refused (431) or the connection closed.
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    let huge = "a".repeat(100 * 1024);
    let _ = s
        .write_all(format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n").as_bytes())
        .await;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("server must answer or close, not hang")
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || head.starts_with("HTTP/1.1 431"), "got {head:?}");

    // A client that stalls mid-request-line is dropped after the header timeout...
    let mut slow = TcpStream::connect(node.addr).await.unwrap();
    slow.write_all(b"GET /v2/te").await.unwrap();
    // ...and meanwhile others are served.
    let r = reqwest::get(format!("{}/v2/", node.base)).await.unwrap();
    assert_eq!(r.status(), 200);
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        let mut b = [0u8; 64];
        loop {
            match slow.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "stalled client was never disconnected");

    node.stop().await;
}

#[tokio::test]
async fn follows_source_changes_and_recovers_from_outage() {
    let src = MemorySource::new();
    let m = src.add_image("127.0.0.1:5000/test/app:v1", &[b"layer one"]);
    let node = start(src.clone(), local_config()).await;
    let c = client();
    let url = |tag: &str| format!("{}/v2/test/app/manifests/{tag}?ns={NS}", node.base);
    assert_eq!(c.get(url("v1")).send().await.unwrap().status(), 200);

    // A new image appears through an event.
    src.add_image("127.0.0.1:5000/test/app:v2", &[b"layer two"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.get(url("v2")).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "v2 never indexed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Deleting v1 withdraws its manifest.
    src.delete_image("127.0.0.1:5000/test/app:v1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.get(url("v1")).send().await.unwrap().status() != 404 {
        assert!(Instant::now() < deadline, "v1 never removed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = c
        .get(format!("{}/v2/test/app/manifests/{}", node.base, m.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The source goes away: not ready, with a reason; it comes back: ready again.
    src.set_unavailable(true);
    wait_ready(&node, false).await;
    let body = reqwest::get(format!("{}/readyz", node.ops))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("not ready"), "{body}");
    src.set_unavailable(false);
    wait_ready(&node, true).await;
    assert_eq!(c.get(url("v2")).send().await.unwrap().status(), 200);

    let metrics = reqwest::get(format!("{}/metrics", node.ops))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("peermirror_requests_total"), "{metrics}");

    node.stop().await;
}

#[tokio::test]
async fn multi_platform_index_with_absent_platform() {
    let src = MemorySource::new();
    let amd = src.add_manifest("a", "amd64", &[b"amd64 layer"]);
    // The arm64 manifest exists in the index but not in the store (not pulled).
    let arm = peermirror::content::Descriptor {
        digest: Digest::of(b"absent arm64 manifest"),
        size: 21,
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
    };
    let idx = src.add_index(
        "127.0.0.1:5000/test/multi:v1",
        &[("amd64", amd.clone()), ("arm64", arm.clone())],
    );
    let node = start(src, local_config()).await;
    let c = client();
    let r = c
        .get(format!("{}/v2/test/multi/manifests/v1?ns={NS}", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(
        r.headers()["docker-content-digest"],
        idx.digest.to_string().as_str()
    );
    for (d, want) in [(amd.digest, 200), (arm.digest, 404)] {
        let r = c
            .head(format!("{}/v2/test/multi/manifests/{d}", node.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{d}");
    }
    node.stop().await;
}

#[tokio::test]
async fn one_address_cannot_take_every_connection_slot() {
    let src = MemorySource::new();
    src.add_image("127.0.0.1:5000/test/app:v1", &[b"layer"]);
    let mut cfg = local_config();
    cfg.limits.max_connections_per_ip = 4;
    let node = start(src, cfg).await;
    // Four silent sockets from 127.0.0.1 use up that address's share...
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(node.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so a fifth connection from it is closed at once, not queued behind them.
    let mut fifth = TcpStream::connect(node.addr).await.unwrap();
    let _ = fifth
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), fifth.read(&mut buf))
        .await
        .expect("the extra connection must be closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "over-limit connection was served");
    // Once they go, the address is served again.
    drop(silent);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = reqwest::get(format!("{}/v2/", node.base)).await.unwrap();
    assert_eq!(r.status(), 200);
    node.stop().await;
}

/// A node on TLS (server certificate only, no client auth) and a client that trusts its CA,
/// offering `alpn` (so `h2` gives HTTP/2 and `http/1.1` HTTP/1.1).
async fn tls_node(src: MemorySource) -> (support::Node, tempfile::TempDir, std::path::PathBuf) {
    use peermirror::auth::AuthMode;
    use peermirror::certs::{Ca, issue_for_test};
    use peermirror::daemon::Security;
    use peermirror::tls::{CrlExpired, TlsFiles};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("test CA").unwrap();
    let (cert, key) = issue_for_test(&ca, "node", 30, true).unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("ca.crt"), ca.cert_pem()).unwrap();
    std::fs::write(p("node.crt"), cert).unwrap();
    std::fs::write(p("node.key"), key).unwrap();
    let mut cfg = local_config();
    cfg.security = Security {
        mode: AuthMode::None,
        insecure_no_auth: true,
        tls: Some(TlsFiles {
            cert: p("node.crt"),
            key: p("node.key"),
            client_ca: None,
            peer_ca: Some(p("ca.crt")),
            crls: Vec::new(),
            crl_expired: CrlExpired::Deny,
            peer_server_name: None,
        }),
        token_file: None,
    };
    let node = start(src, cfg).await;
    let ca_path = p("ca.crt");
    (node, dir, ca_path)
}

fn tls_client(ca: &std::path::Path, alpn: &[u8]) -> reqwest::Client {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in peermirror::pki::load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .build()
        .unwrap()
}

/// HEAD answers headers only (Content-Length of what GET would send), hit or miss, on HTTP/2
/// as on HTTP/1.1: a body on a HEAD response is a protocol error on an HTTP/2 stream.
#[tokio::test]
async fn head_answers_headers_only_over_http2_and_http1() {
    let src = MemorySource::new();
    let layer = b"a layer of some bytes";
    let manifest = src.add_image("127.0.0.1:5000/test/app:v1", &[layer]);
    let (node, _dir, ca) = tls_node(src).await;
    let base = format!("https://localhost:{}", node.addr.port());
    let missing = Digest::of(b"nobody has this");
    let cases = [
        ("/v2/".to_string(), 200, Some(2)),
        (
            format!("/v2/test/app/manifests/{}", manifest.digest),
            200,
            Some(manifest.size),
        ),
        (
            format!("/v2/test/app/manifests/v1?ns={NS}"),
            200,
            Some(manifest.size),
        ),
        (
            format!("/v2/test/app/blobs/{}", Digest::of(layer)),
            200,
            Some(layer.len() as u64),
        ),
        (format!("/v2/test/app/blobs/{missing}"), 404, None),
        (format!("/v2/test/app/manifests/nope?ns={NS}"), 404, None),
    ];
    for (alpn, version) in [
        (&b"h2"[..], reqwest::Version::HTTP_2),
        (&b"http/1.1"[..], reqwest::Version::HTTP_11),
    ] {
        let c = tls_client(&ca, alpn);
        for (path, status, len) in &cases {
            let url = format!("{base}{path}");
            let get = c.get(&url).send().await.unwrap();
            assert_eq!(get.version(), version);
            assert_eq!(get.status(), *status, "GET {path}");
            let get_len = get.headers()["content-length"].clone();
            let get_body = get.bytes().await.unwrap();
            assert_eq!(get_len.to_str().unwrap(), get_body.len().to_string());
            if let Some(len) = len {
                assert_eq!(get_body.len() as u64, *len, "GET {path}");
            }
            let head = c
                .head(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("HEAD {path} over {version:?}: {e:?}"));
            assert_eq!(head.status(), *status, "HEAD {path}");
            assert_eq!(head.headers()["content-length"], get_len, "HEAD {path}");
            let body = head
                .bytes()
                .await
                .unwrap_or_else(|e| panic!("HEAD {path} body over {version:?}: {e:?}"));
            assert!(body.is_empty(), "HEAD {path}");
        }
    }
    node.stop().await;
}

/// A content source whose reads stop after `open` bytes until the gate opens: a blob that
/// takes a long time to read whole (a multi-GB layer on a slow disk).
struct Gated {
    inner: MemorySource,
    open: usize,
    gate: tokio::sync::watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl peermirror::content::ContentSource for Gated {
    async fn list_images(
        &self,
    ) -> Result<Vec<peermirror::content::Image>, peermirror::content::SourceError> {
        self.inner.list_images().await
    }
    async fn get_image(
        &self,
        name: &str,
    ) -> Result<Option<peermirror::content::Image>, peermirror::content::SourceError> {
        self.inner.get_image(name).await
    }
    async fn stat(&self, d: &Digest) -> Result<Option<u64>, peermirror::content::SourceError> {
        self.inner.stat(d).await
    }
    async fn read(
        &self,
        d: &Digest,
        offset: u64,
        len: Option<u64>,
    ) -> Result<peermirror::content::ByteStream, peermirror::content::SourceError> {
        use futures_util::StreamExt;
        let data = self.inner.blob(d).unwrap();
        let end = len
            .map_or(data.len(), |l| (offset + l) as usize)
            .min(data.len());
        let data = data.slice(offset as usize..end);
        let open = self.open.min(data.len());
        let (head, tail) = (data.slice(..open), data.slice(open..));
        let mut gate = self.gate.clone();
        let first = futures_util::stream::iter([Ok(head)]);
        if tail.is_empty() {
            return Ok(Box::pin(first));
        }
        let rest = futures_util::stream::once(async move {
            let _ = gate.wait_for(|g| *g).await;
            Ok(tail)
        });
        Ok(Box::pin(first.chain(rest)))
    }
    async fn subscribe(
        &self,
    ) -> Result<peermirror::content::EventStream, peermirror::content::SourceError> {
        self.inner.subscribe().await
    }
}

async fn start_source(
    source: std::sync::Arc<dyn peermirror::content::ContentSource>,
) -> support::Node {
    let registry = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = registry.local_addr().unwrap();
    let ops_addr = ops.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(peermirror::daemon::run_with_source(
        local_config(),
        source,
        peermirror::daemon::Listeners { registry, ops },
        shutdown.clone(),
    ));
    let node = support::Node {
        base: format!("http://{addr}"),
        ops: format!("http://{ops_addr}"),
        addr,
        shutdown,
        task,
        spool_dir: None,
    };
    wait_ready(&node, true).await;
    node
}

/// issue 9, hole 4: a peer's request for a large local blob gets its headers and first bytes
/// at once, not after the whole blob was read and hashed; HEAD never reads the blob.
#[tokio::test]
async fn a_peer_gets_the_first_byte_before_the_blob_is_read_whole() {
    let mem = MemorySource::new();
    // Above the size hashed before the headers (64 MiB).
    let big = pattern(65 * 1024 * 1024, 3);
    let digest = Digest::of(&big);
    mem.add_image("127.0.0.1:5000/test/app:v1", &[&big]);
    let (open, gate) = tokio::sync::watch::channel(false);
    let node = start_source(std::sync::Arc::new(Gated {
        inner: mem,
        open: 1024 * 1024,
        gate,
    }))
    .await;
    let url = format!("{}/v2/test/app/blobs/{digest}", node.base);
    let c = client();
    let quick = Duration::from_secs(3);

    let r = tokio::time::timeout(
        quick,
        c.head(&url).header("x-peermirror-mirrored", "true").send(),
    )
    .await
    .expect("HEAD from a peer waited for the blob to be read")
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        big.len().to_string().as_str()
    );

    let started = Instant::now();
    let mut r = tokio::time::timeout(
        quick,
        c.get(&url).header("x-peermirror-mirrored", "true").send(),
    )
    .await
    .expect("no headers before the whole blob was read")
    .unwrap();
    assert_eq!(r.status(), 200);
    let first = tokio::time::timeout(quick, r.chunk())
        .await
        .expect("no first byte before the whole blob was read")
        .unwrap()
        .unwrap();
    assert!(!first.is_empty());
    assert!(started.elapsed() < quick);
    open.send_replace(true);
    let mut got = first.to_vec();
    while let Some(c) = r.chunk().await.unwrap() {
        got.extend_from_slice(&c);
    }
    assert_eq!(Digest::of(&got), digest);
    node.stop().await;
}

/// A damaged copy of a large blob streams to the peer but never completes: the body breaks
/// before its last byte, and the node stops offering the blob.
#[tokio::test]
async fn a_damaged_large_blob_breaks_before_its_last_byte() {
    let src = MemorySource::new();
    // Above the size hashed before the headers (64 MiB).
    let good = pattern(65 * 1024 * 1024, 4);
    let digest = Digest::of(&good);
    src.add_image("127.0.0.1:5000/test/app:v1", &[&good]);
    let mut bad = good.clone();
    bad[100] ^= 0xff;
    src.add_blob_as(digest, bad);
    let node = start(src, local_config()).await;
    let url = format!("{}/v2/test/app/blobs/{digest}", node.base);
    let c = client();

    let mut r = c
        .get(&url)
        .header("x-peermirror-mirrored", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut got = 0usize;
    let end = loop {
        match r.chunk().await {
            Ok(Some(c)) => got += c.len(),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(end.is_err(), "a damaged copy completed ({got} bytes)");
    assert!(got < good.len(), "the last byte went out");
    let m = node.metrics().await;
    assert!(m.contains("peermirror_local_corruptions_total 1"), "{m}");
    // Withdrawn: no longer offered, to peers or anyone.
    let r = c
        .head(&url)
        .header("x-peermirror-mirrored", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    node.stop().await;
}
