//! End-to-end tests of the registry (mirror) endpoint of `peermirror run`
//! against a real docker-registry, real containerd daemons, skopeo and ctr.
//!
//! Each test builds its own world on 127.0.0.1: a registry holding the
//! fixture images, containerd "node1" that pulled them straight from it, and
//! peermirror serving node1's content. Run with `scripts/test.sh` (as root).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;

const ACCEPT_MANIFESTS: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, */*";

/// Fields drop in order: peermirror first (its log is printed on failure),
/// then containerd, then the registry.
struct World {
    pm: Peermirror,
    node1: Containerd,
    registry: Registry,
    http: Http,
}

impl World {
    /// Registry with the fixtures, node1 with all three images pulled
    /// directly from it, peermirror on node1 (content dir or gRPC only).
    fn start(content_dir: bool) -> World {
        let registry = Registry::start();
        registry.push_fixtures();
        let node1 = Containerd::start("node1");
        for name in FIXTURE_IMAGES {
            node1.pull_ok(&fixture(name).reference(&registry.host()), None, true);
        }
        let mut builder = Peermirror::builder(&node1);
        if !content_dir {
            builder = builder.without_content_dir();
        }
        let mut pm = builder.start();
        pm.wait_ready(Duration::from_secs(30));
        World {
            pm,
            node1,
            registry,
            http: Http::new(),
        }
    }

    /// `/v2/test/<name>/manifests/<reference>?ns=<registry>` on peermirror.
    fn manifest_url(&self, name: &str, reference: &str) -> String {
        format!(
            "{}/v2/test/{name}/manifests/{reference}?ns={}",
            self.pm.registry_url(),
            self.registry.host()
        )
    }

    /// `/v2/test/<name>/blobs/<digest>` on peermirror.
    fn blob_url(&self, name: &str, digest: &str) -> String {
        format!("{}/v2/test/{name}/blobs/{digest}", self.pm.registry_url())
    }

    async fn get(&self, url: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.http.get(url, headers).await
    }

    async fn head(&self, url: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.http.head(url, headers).await
    }
}

fn unknown_digest() -> String {
    format!("sha256:{}", "0".repeat(64))
}

fn assert_oci_error(resp: &HttpResponse, status: u16, code: &str, what: &str) {
    assert_eq!(
        resp.status,
        status,
        "{what}: status (body: {})",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(
        resp.error_code().as_deref(),
        Some(code),
        "{what}: error code (body: {})",
        String::from_utf8_lossy(&resp.body)
    );
}

/// Checks the manifest headers containerd relies on (a HEAD without
/// Content-Type fails the pull).
fn assert_manifest_headers(resp: &HttpResponse, desc: &Descriptor, what: &str) {
    assert_eq!(resp.status, 200, "{what}");
    assert_eq!(
        resp.header("content-type"),
        Some(desc.media_type.as_str()),
        "{what}: Content-Type"
    );
    assert_eq!(
        resp.header("content-length"),
        Some(desc.size.to_string().as_str()),
        "{what}: Content-Length"
    );
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(desc.digest.as_str()),
        "{what}: Docker-Content-Digest"
    );
}

// (a) ------------------------------------------------------------------------

/// skopeo sends no `ns`, so it can only use digest references; peermirror
/// answers those from local content whatever the repository name.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn skopeo_by_digest_matches_upstream() {
    let w = World::start(true);
    for name in ["big", "multi", "multiarch"] {
        let image = fixture(name);
        let upstream = skopeo_inspect_raw(&image.reference(&w.registry.host()));
        let via_pm = skopeo_inspect_raw(&format!(
            "{}/{}@{}",
            w.pm.registry_host(),
            image.repo(),
            image.root.digest
        ));
        assert_eq!(
            via_pm, upstream,
            "{name}: raw manifest differs from upstream"
        );
        assert_eq!(digest_of(&via_pm), image.root.digest, "{name}");
    }

    // Full copies (manifest, config, layers) of the single-platform images.
    for name in ["big", "multi"] {
        let image = fixture(name);
        let dest = tempfile::tempdir().unwrap();
        let src = format!(
            "docker://{}/{}@{}",
            w.pm.registry_host(),
            image.repo(),
            image.root.digest
        );
        let dst = format!("oci:{}:v1", dest.path().display());
        let out = skopeo(&["copy", "--quiet", "--src-tls-verify=false", &src, &dst]);
        assert!(
            out.status.success(),
            "skopeo copy {src}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let manifest = image.host_manifest();
        let mut expected = vec![manifest.descriptor.clone(), manifest.config.clone()];
        expected.extend(manifest.layers.clone());
        for desc in expected {
            let copied = dest.path().join("blobs/sha256").join(desc.hex());
            assert!(copied.exists(), "{name}: {} not copied", desc.digest);
            assert_eq!(sha256_file(&copied), desc.hex(), "{name}: {}", desc.digest);
        }
    }
}

// (b) ------------------------------------------------------------------------

/// A second node pulls everything through peermirror while the upstream
/// registry is down: only the mirror can have served it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn node2_pulls_through_peermirror_with_upstream_down() {
    let mut w = World::start(true);
    let node2 = Containerd::start("node2");
    let hosts = tempfile::tempdir().unwrap();
    write_hosts_toml(hosts.path(), &w.registry.host(), &[w.pm.registry_host()]);
    w.registry.stop();

    for name in FIXTURE_IMAGES {
        let image = fixture(name);
        let reference = image.reference(&w.registry.host());
        if let Err(e) = node2.pull(&reference, Some(hosts.path()), false) {
            panic!(
                "node2 pull of {reference} through peermirror failed:\n{e}\n--- peermirror log ---\n{}",
                w.pm.log_tail(40)
            );
        }
        let have = node2.content_digests();
        for digest in image.pulled_digests() {
            assert!(have.contains(&digest), "node2 lacks {digest} of {name}");
        }
    }
    assert!(
        node2
            .images()
            .contains(&fixture("big").reference(&w.registry.host()))
    );
    let checked = node2.verify_content_blobs();
    assert!(checked >= 13, "only {checked} blobs on node2");
}

// (c) ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn ranges_and_head_headers() {
    let w = World::start(true);
    check_ranges_and_headers(&w).await;
}

/// The same contract when blobs can only be read over containerd's gRPC API.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn grpc_only_ranges_and_head_headers() {
    let w = World::start(false);
    check_ranges_and_headers(&w).await;
}

async fn check_ranges_and_headers(w: &World) {
    let big = fixture("big");
    let layer = big.host_manifest().layers[0].clone();
    let bytes = big.read_blob(&layer.digest);
    let size = layer.size;
    let url = w.blob_url("big", &layer.digest);

    // Full body.
    let full = w.get(&url, &[]).await;
    assert_eq!(full.status, 200);
    assert_eq!(full.body.len() as u64, size);
    assert_eq!(digest_of(&full.body), layer.digest, "full blob body");
    assert_eq!(full.header("accept-ranges"), Some("bytes"));

    let cases: [(&str, u64, u64); 4] = [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, size - 1),
        ("bytes=-10", size - 10, size - 1),
        ("bytes=30000000-30065535", 30_000_000, 30_065_535),
    ];
    for (range, first, last) in cases {
        let resp = w.get(&url, &[("Range", range)]).await;
        assert_eq!(resp.status, 206, "{range}");
        assert_eq!(
            resp.header("content-range"),
            Some(format!("bytes {first}-{last}/{size}").as_str()),
            "{range}"
        );
        assert_eq!(
            resp.header("content-length"),
            Some((last - first + 1).to_string().as_str()),
            "{range}"
        );
        assert!(
            resp.body == bytes[first as usize..=last as usize],
            "{range}: wrong bytes"
        );
    }

    // Unsatisfiable.
    let beyond = format!("bytes={size}-");
    let resp = w.get(&url, &[("Range", beyond.as_str())]).await;
    assert_eq!(resp.status, 416, "{beyond}");
    assert_eq!(
        resp.header("content-range"),
        Some(format!("bytes */{size}").as_str()),
        "{beyond}"
    );

    // HEAD on blobs: no body, the headers a GET would carry.
    let resp = w.head(&url, &[]).await;
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_empty());
    assert_eq!(
        resp.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(layer.digest.as_str())
    );
    assert_eq!(resp.header("accept-ranges"), Some("bytes"));
    assert!(resp.header("content-type").is_some(), "blob Content-Type");

    // Blobs as containerd asks for them (with ns), every blob of every image.
    for name in FIXTURE_IMAGES {
        let image = fixture(name);
        let m = image.host_manifest();
        for desc in std::iter::once(m.config).chain(m.layers) {
            let url = format!(
                "{}?ns={}",
                w.blob_url(name, &desc.digest),
                w.registry.host()
            );
            let resp = w.get(&url, &[]).await;
            assert_eq!(resp.status, 200, "{url}");
            assert_eq!(digest_of(&resp.body), desc.digest, "{url}");
        }
    }

    // Manifests: by tag (ns + name + tag) and by digest, HEAD and GET.
    let accept = [("Accept", ACCEPT_MANIFESTS)];
    for name in FIXTURE_IMAGES {
        let image = fixture(name);
        for reference in ["v1", image.root.digest.as_str()] {
            let url = w.manifest_url(name, reference);
            let head = w.head(&url, &accept).await;
            assert_manifest_headers(&head, &image.root, &format!("HEAD {url}"));
            assert!(head.body.is_empty());
            let get = w.get(&url, &accept).await;
            assert_manifest_headers(&get, &image.root, &format!("GET {url}"));
            assert_eq!(get.body, image.read_blob(&image.root.digest), "GET {url}");
        }
        if image.is_index() {
            // Platform manifests are fetched from /manifests/<digest>.
            for (arch, desc) in image
                .platforms()
                .into_iter()
                .filter(|(a, _)| a == host_arch())
            {
                let url = w.manifest_url(name, &desc.digest);
                let get = w.get(&url, &accept).await;
                assert_manifest_headers(&get, &desc, &format!("{arch} {url}"));
                assert_eq!(digest_of(&get.body), desc.digest);
            }
        }
    }
}

// (d) ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn bad_inputs_get_documented_errors() {
    let w = World::start(true);
    let base = w.pm.registry_url();
    let layer = fixture("multi").host_manifest().layers[0].digest.clone();

    // API version check.
    for resp in [
        w.get(&format!("{base}/v2/"), &[]).await,
        w.head(&format!("{base}/v2/"), &[]).await,
    ] {
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
    }

    // Misses.
    let unknown = unknown_digest();
    let resp = w.get(&w.blob_url("multi", &unknown), &[]).await;
    assert_oci_error(&resp, 404, "BLOB_UNKNOWN", "unknown blob");
    let resp = w.head(&w.blob_url("multi", &unknown), &[]).await;
    assert_eq!(resp.status, 404, "HEAD unknown blob");
    let resp = w.get(&w.manifest_url("multi", &unknown), &[]).await;
    assert_oci_error(&resp, 404, "MANIFEST_UNKNOWN", "unknown manifest digest");
    let resp = w.get(&w.manifest_url("multi", "nope"), &[]).await;
    assert_oci_error(&resp, 404, "MANIFEST_UNKNOWN", "unknown tag");
    let resp = w.get(&w.manifest_url("absent", "v1"), &[]).await;
    assert_oci_error(&resp, 404, "MANIFEST_UNKNOWN", "unknown repository");

    // Malformed names and digests.
    for name in ["Test/Multi", "test/-multi", "test//multi"] {
        let resp = w.get(&format!("{base}/v2/{name}/blobs/{layer}"), &[]).await;
        assert_oci_error(&resp, 400, "NAME_INVALID", &format!("name {name}"));
    }
    let short = format!("sha256:{}", "a".repeat(63));
    for digest in ["sha256:xyz", short.as_str(), "sha256:"] {
        let resp = w.get(&w.blob_url("multi", digest), &[]).await;
        assert_oci_error(
            &resp,
            400,
            "DIGEST_INVALID",
            &format!("blob digest {digest}"),
        );
    }
    let resp = w.get(&w.manifest_url("multi", "sha256:xyz"), &[]).await;
    assert_oci_error(&resp, 400, "DIGEST_INVALID", "manifest digest sha256:xyz");

    // Read-only: every other method is refused.
    for url in [w.blob_url("multi", &layer), w.manifest_url("multi", "v1")] {
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let resp = w.http.request(m, &url, &[]).await;
            assert_oci_error(&resp, 405, "UNSUPPORTED", &format!("{method} {url}"));
        }
    }

    // Path tricks, sent raw (a normal client would normalise them away).
    // The layer exists, so a server that normalised would wrongly answer 200.
    let pm_host = w.pm.registry_host();
    for path in [
        format!("/v2/test/../multi/blobs/{layer}"),
        format!("/v2/test/multi/../multi/blobs/{layer}"),
        format!("/v2/./test/multi/blobs/{layer}"),
        format!("/v2/test%2Fmulti/blobs/{layer}"),
        format!("/v2/test/multi%2Fblobs/{layer}"),
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {pm_host}\r\nConnection: close\r\n\r\n");
        let resp = raw_request(&pm_host, req.as_bytes(), Duration::from_secs(10)).unwrap();
        let status = raw_status(&resp);
        assert!(
            matches!(status, Some(400..=499)),
            "{path}: expected 4xx, got {status:?}: {}",
            String::from_utf8_lossy(&resp[..resp.len().min(300)])
        );
    }

    // A 100 KB header: 431/4xx or a closed connection, never a 2xx.
    let req = format!(
        "GET /v2/ HTTP/1.1\r\nHost: {pm_host}\r\nX-Huge: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    match raw_request(&pm_host, req.as_bytes(), Duration::from_secs(10)) {
        Ok(resp) if resp.is_empty() => {}
        Ok(resp) => {
            let status = raw_status(&resp);
            assert!(
                matches!(status, Some(400..=499)),
                "oversized header: got {status:?}"
            );
        }
        Err(_) => {} // reset: fine
    }
    let resp = w.get(&format!("{base}/v2/"), &[]).await;
    assert_eq!(
        resp.status, 200,
        "server still serves after an oversized header"
    );

    // Slow clients: half a request line, then silence. Others must not wait.
    let stalled: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(&pm_host).unwrap();
            s.write_all(b"GET /v2/te").unwrap();
            s
        })
        .collect();
    for _ in 0..5 {
        let started = Instant::now();
        let resp = Http::new().get(&w.blob_url("multi", &layer), &[]).await;
        assert_eq!(resp.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "request behind stalled clients took {:?}",
            started.elapsed()
        );
    }
    drop(stalled);

    // Misses must be fast (containerd waits on a slow mirror): warm connection.
    let resp = w.get(&format!("{base}/v2/"), &[]).await;
    assert_eq!(resp.status, 200);
    for _ in 0..3 {
        for (what, url) in [
            ("unknown blob", w.blob_url("multi", &unknown)),
            ("unknown tag", w.manifest_url("multi", "nope")),
            ("unknown manifest digest", w.manifest_url("multi", &unknown)),
        ] {
            let started = Instant::now();
            let resp = w.get(&url, &[]).await;
            let took = started.elapsed();
            assert_eq!(resp.status, 404, "{what}");
            assert!(
                took < Duration::from_millis(100),
                "{what}: 404 took {took:?}"
            );
        }
    }
}

// (e) ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn readiness_follows_containerd() {
    let mut w = World::start(true);
    let healthz = || http_status_sync(&w.pm.metrics_host(), "/healthz");
    assert_eq!(healthz(), Some(200));
    assert_eq!(w.pm.readyz(), Some(200));

    w.node1.kill();
    assert!(
        wait_until(Duration::from_secs(10), || w.pm.readyz() == Some(503)),
        "/readyz not 503 within 10 s of containerd dying (now {:?})",
        w.pm.readyz()
    );
    assert_eq!(
        http_status_sync(&w.pm.metrics_host(), "/healthz"),
        Some(200),
        "alive while containerd is down"
    );

    w.node1.restart();
    assert!(
        wait_until(Duration::from_secs(30), || w.pm.readyz() == Some(200)),
        "/readyz not 200 within 30 s of containerd coming back (now {:?})",
        w.pm.readyz()
    );
    let layer = fixture("multi").host_manifest().layers[1].clone();
    let resp = w.get(&w.blob_url("multi", &layer.digest), &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(digest_of(&resp.body), layer.digest);
    let resp = w
        .head(
            &w.manifest_url("multi", "v1"),
            &[("Accept", ACCEPT_MANIFESTS)],
        )
        .await;
    assert_manifest_headers(&resp, &fixture("multi").root, "tag after restart");
}

// (f) ------------------------------------------------------------------------

/// SIGTERM while a 52 MB blob is being read slowly: the response completes
/// with the right bytes, then the process exits 0.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn sigterm_drains_inflight_download() {
    let mut w = World::start(true);
    let layer = fixture("big").host_manifest().layers[0].clone();
    let client = http_client();
    let mut resp = client
        .get(w.blob_url("big", &layer.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Read ~25 MB/s so the transfer spans the shutdown (about 2 s in all).
    const RATE: f64 = 25.0 * 1024.0 * 1024.0;
    let started = Instant::now();
    let mut body = Vec::with_capacity(layer.size as usize);
    let mut signalled = false;
    while let Some(chunk) = resp.chunk().await.expect("body broke off") {
        body.extend_from_slice(&chunk);
        if !signalled && body.len() >= 1 << 20 {
            w.pm.sigterm();
            signalled = true;
        }
        let due = Duration::from_secs_f64(body.len() as f64 / RATE);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    assert!(signalled, "blob ended before 1 MiB");
    assert_eq!(body.len() as u64, layer.size, "truncated after SIGTERM");
    assert_eq!(digest_of(&body), layer.digest);
    drop(resp);
    drop(client);

    let status =
        w.pm.wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no exit within 10 s of the drain:\n{}", w.pm.log_tail(40)));
    assert_eq!(status.code(), Some(0), "exit status {status}");
}
