//! `containerd::ingest` against real containerd (1.6, 1.7, 2.1): a registry of the test's own on
//! 127.0.0.1 serves one layer slowly (64 KiB per 50 ms), so the pull's ingest is visible for a
//! few seconds. While it is in flight the watcher must report it with the right digest and size,
//! `follow` from byte 0 must return bytes that hash to the digest (across the commit), and once
//! containerd commits, the watcher must report its end (and it reports the start within
//! 500 ms of the ingest appearing; 7-23 ms measured). `killed_pull_*`: the puller killed
//! mid-layer, `follow` fails and the watcher reports the end once the left-over goes stale.
//!
//! Run with `cargo test --test e2e_ingest -- --include-ignored` (as root).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use peermirror::containerd::ingest::{IngestEvent, IngestWatcher, follow};
use peermirror::oci::Digest;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const LAYER_FILE: usize = 3 * 1024 * 1024;
const SLOW_CHUNK: usize = 64 * 1024;
const SLOW_PAUSE: Duration = Duration::from_millis(50);

macro_rules! matrix {
    ($($name:ident => $version:expr, $fetch_buffer:expr);+ $(;)?) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            #[ignore = "e2e: needs root + containerd (scripts/fetch-containerd.sh)"]
            async fn $name() {
                if $version.should_run() {
                    in_flight_pull_is_seen_and_followed($version, $fetch_buffer).await;
                }
            }
        )+
    };
}

matrix!(
    ingest_1_6 => CtdVersion::V1_6, None;
    ingest_1_7 => CtdVersion::V1_7, None;
    ingest_2_1 => CtdVersion::V2_1, None;
    // The chunked fetch (parallel `Range` requests of 1 MiB) still fills one `data` in order.
    ingest_chunked_2_1 => CtdVersion::V2_1, Some(1024 * 1024);
);

macro_rules! killed {
    ($($name:ident => $version:expr);+ $(;)?) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            #[ignore = "e2e: needs root + containerd (scripts/fetch-containerd.sh)"]
            async fn $name() {
                if $version.should_run() {
                    killed_pull_never_ends_cleanly($version).await;
                }
            }
        )+
    };
}

killed!(
    killed_pull_1_6 => CtdVersion::V1_6;
    killed_pull_1_7 => CtdVersion::V1_7;
    killed_pull_2_1 => CtdVersion::V2_1;
);

/// A one-file uncompressed tar (so every version can unpack it): ustar header, data, padding,
/// two zero blocks.
fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

/// Pseudo-random bytes (xorshift): not compressible, no dependency.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The image the slow registry serves: manifest, config and one layer.
struct SlowImage {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
}

impl SlowImage {
    fn new() -> Self {
        let layer = tar_of("blob.bin", &noise(LAYER_FILE));
        let layer_digest = digest_of(&layer);
        let config = format!(
            r#"{{"architecture":"{}","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#,
            host_arch()
        )
        .into_bytes();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
            digest_of(&config),
            config.len(),
            layer.len()
        )
        .into_bytes();
        SlowImage {
            manifest,
            config,
            layer,
        }
    }
}

/// Answers one request per connection (`Connection: close`): `/v2/`, the manifest (by tag or
/// digest), the config at once and the layer slowly. Sets `layer_sent` after the layer's last
/// byte went out.
async fn serve(listener: TcpListener, image: Arc<SlowImage>, layer_sent: Arc<AtomicBool>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(answer(conn, image.clone(), layer_sent.clone()));
    }
}

async fn answer(mut conn: TcpStream, image: Arc<SlowImage>, layer_sent: Arc<AtomicBool>) {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
        match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => req.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&req);
    let mut first = text.lines().next().unwrap_or("").split(' ');
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let head = method == "HEAD";
    // `Range: bytes=N-` or `bytes=N-M` (the chunked fetch); anything else gets the whole body.
    let range = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        let spec = name
            .trim()
            .eq_ignore_ascii_case("range")
            .then_some(value.trim())?
            .strip_prefix("bytes=")?;
        let (a, b) = spec.split_once('-')?;
        Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()))
    });
    let manifest_digest = digest_of(&image.manifest);
    let (status, ctype, body, slow): (&str, &str, &[u8], bool) = match path {
        "/v2/" => ("200 OK", "application/json", b"{}", false),
        p if p == "/v2/slow/img/manifests/v1"
            || p == format!("/v2/slow/img/manifests/{manifest_digest}") =>
        {
            (
                "200 OK",
                "application/vnd.oci.image.manifest.v1+json",
                &image.manifest,
                false,
            )
        }
        p if p == format!("/v2/slow/img/blobs/{}", digest_of(&image.config)) => {
            ("200 OK", "application/octet-stream", &image.config, false)
        }
        p if p == format!("/v2/slow/img/blobs/{}", digest_of(&image.layer)) => {
            ("200 OK", "application/octet-stream", &image.layer, true)
        }
        _ => ("404 Not Found", "application/json", b"{}", false),
    };
    let full_len = body.len();
    let (status, body, content_range) = match range {
        Some((a, b)) if slow && a < full_len => {
            let b = b.unwrap_or(full_len - 1).min(full_len - 1);
            (
                "206 Partial Content",
                &body[a..=b],
                Some(format!("bytes {a}-{b}/{full_len}")),
            )
        }
        _ => (status, body, None),
    };
    let last_byte =
        content_range.is_none() || body.as_ptr_range().end == image.layer.as_ptr_range().end;
    let mut headers = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Docker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(cr) = content_range {
        eprintln!("[slow registry] 206 {cr}");
        headers.push_str(&format!("Content-Range: {cr}\r\nAccept-Ranges: bytes\r\n"));
    }
    if path.contains("/manifests/") {
        headers.push_str(&format!("Docker-Content-Digest: {manifest_digest}\r\n"));
    }
    headers.push_str("\r\n");
    if conn.write_all(headers.as_bytes()).await.is_err() || head {
        return;
    }
    if !slow {
        let _ = conn.write_all(body).await;
        return;
    }
    for chunk in body.chunks(SLOW_CHUNK) {
        if conn.write_all(chunk).await.is_err() {
            return;
        }
        tokio::time::sleep(SLOW_PAUSE).await;
    }
    if last_byte {
        layer_sent.store(true, Ordering::SeqCst);
    }
}

/// What containerd left in each ingest dir: (ref, has total, total).
fn ingest_layout(content_dir: &Path) -> Vec<(String, bool, String)> {
    let Ok(rd) = fs::read_dir(content_dir.join("ingest")) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| {
            let dir = e.path();
            let reference = fs::read_to_string(dir.join("ref")).unwrap_or_default();
            let total = fs::read_to_string(dir.join("total"));
            let mut files: Vec<String> = fs::read_dir(&dir)
                .map(|r| {
                    r.filter_map(|f| f.ok())
                        .map(|f| f.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            (
                format!("{reference} files={files:?}"),
                total.is_ok(),
                total.unwrap_or_default(),
            )
        })
        .collect()
}

async fn in_flight_pull_is_seen_and_followed(version: CtdVersion, fetch_buffer: Option<u64>) {
    let image = Arc::new(SlowImage::new());
    let layer: Digest = digest_of(&image.layer).parse().unwrap();
    let layer_size = image.layer.len() as u64;
    let layer_sent = Arc::new(AtomicBool::new(false));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve(listener, image.clone(), layer_sent.clone()));

    let ctd = Containerd::start_with(
        &format!(
            "ingest-{}-{}",
            version.series(),
            fetch_buffer.map_or("seq".to_string(), |b| format!("chunk{b}"))
        ),
        CtdOptions {
            version,
            fetch_buffer,
            ..CtdOptions::default()
        },
    );
    let content_dir = ctd.content_dir();
    let watcher = Arc::new(IngestWatcher::new(
        content_dir.clone(),
        Duration::from_millis(50),
    ));
    let mut events = watcher.subscribe();
    let stop = CancellationToken::new();
    let watching = tokio::spawn(watcher.clone().run(stop.clone()));

    let hosts = tempfile::tempdir().unwrap();
    let upstream = format!("127.0.0.1:{port}");
    write_hosts_toml(hosts.path(), &upstream, &[]);
    let reference = format!("{upstream}/slow/img:v1");
    // A 1 ms poller of our own marks when the layer's ingest appears, to time the watcher.
    let appeared = {
        let (dir, needle) = (content_dir.join("ingest"), format!("/layer-{layer}"));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                let found = fs::read_dir(&dir).into_iter().flatten().flatten().any(|e| {
                    fs::read_to_string(e.path().join("ref")).is_ok_and(|r| r.ends_with(&needle))
                        && e.path().join("data").exists()
                });
                if found {
                    return Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            None
        })
    };
    let ctd = Arc::new(ctd);
    let pulling = {
        let (ctd, hosts) = (ctd.clone(), hosts.path().to_path_buf());
        tokio::task::spawn_blocking(move || ctd.pull(&reference, Some(&hosts), true))
    };

    // Started for the layer, while the registry is still sending it.
    let started = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match events.recv().await {
                Ok(IngestEvent::Started { digest, total }) if digest == layer => return total,
                Ok(_) => {}
                Err(e) => panic!("watcher events: {e}"),
            }
        }
    })
    .await
    .expect("no Started for the layer within 60 s");
    let seen = Instant::now();
    let appeared = appeared
        .join()
        .unwrap()
        .expect("the layer's ingest never appeared");
    let latency = seen.saturating_duration_since(appeared);
    eprintln!(
        "[ingest {}] Started {} ms after the ingest appeared",
        version.series(),
        latency.as_millis()
    );
    assert!(latency < Duration::from_millis(500), "{latency:?}");
    assert!(
        !layer_sent.load(Ordering::SeqCst),
        "the layer was already sent: not seen in flight"
    );
    let layout = ingest_layout(&content_dir);
    eprintln!("[ingest {}] in flight: {layout:#?}", version.series());
    assert_eq!(
        started,
        Some(layer_size),
        "Started carries the layer's size"
    );
    let ingest = watcher.get(&layer).expect("get() while in flight");
    assert_eq!(ingest.total, Some(layer_size));
    assert!(
        layout
            .iter()
            .any(|(r, has_total, _)| r.contains(&format!("/layer-{layer} ")) && *has_total),
        "the layer's ref is layer-<digest> with a total: {layout:?}"
    );

    // Follow it from byte 0 to the end: the bytes hash to the digest.
    let mut stream = follow(
        &ingest,
        &content_dir,
        0,
        layer_size - 1,
        Duration::from_secs(30),
    );
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("follow stalled")
    {
        let chunk = chunk.unwrap_or_else(|e| panic!("follow failed after {got} bytes: {e}"));
        got += chunk.len() as u64;
        hasher.update(&chunk);
    }
    assert_eq!(got, layer_size);
    assert_eq!(
        format!("sha256:{}", hex::encode(hasher.finalize())),
        layer.to_string()
    );

    // Ended once containerd has committed it.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(IngestEvent::Ended { digest }) if digest == layer => return,
                Ok(_) => {}
                Err(e) => panic!("watcher events: {e}"),
            }
        }
    })
    .await
    .expect("no Ended for the layer within 30 s");
    assert!(watcher.get(&layer).is_none());
    pulling
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("pull failed: {e}"));
    assert!(
        content_dir.join("blobs/sha256").join(layer.hex()).exists(),
        "the layer is committed"
    );
    eprintln!(
        "[ingest {}] after the pull: {:?}",
        version.series(),
        ingest_layout(&content_dir)
    );
    assert!(watcher.current().is_empty(), "{:?}", watcher.current());

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), watching).await;
    server.abort();
}

/// The puller (`ctr`) is killed mid-layer: whatever containerd does with the ingest (removes
/// it, or leaves it to go stale), `follow` must not end cleanly, and the watcher must report
/// the end (here within its 2 s stale window).
async fn killed_pull_never_ends_cleanly(version: CtdVersion) {
    let image = Arc::new(SlowImage::new());
    let layer: Digest = digest_of(&image.layer).parse().unwrap();
    let layer_size = image.layer.len() as u64;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve(
        listener,
        image.clone(),
        Arc::new(AtomicBool::new(false)),
    ));
    let ctd = Containerd::start_with(
        &format!("ingest-kill-{}", version.series()),
        CtdOptions {
            version,
            ..CtdOptions::default()
        },
    );
    let content_dir = ctd.content_dir();
    let watcher = Arc::new(
        IngestWatcher::new(content_dir.clone(), Duration::from_millis(50))
            .with_stale(Duration::from_secs(2)),
    );
    let mut events = watcher.subscribe();
    let stop = CancellationToken::new();
    let watching = tokio::spawn(watcher.clone().run(stop.clone()));

    let hosts = tempfile::tempdir().unwrap();
    let upstream = format!("127.0.0.1:{port}");
    write_hosts_toml(hosts.path(), &upstream, &[]);
    let mut puller = ChildGuard(
        std::process::Command::new(version.ctr_bin())
            .arg("--address")
            .arg(ctd.socket())
            .args(["--connect-timeout", "5s", "-n", NAMESPACE])
            .args(["images", "pull", "--snapshotter", "native", "--plain-http"])
            .arg("--hosts-dir")
            .arg(hosts.path())
            .arg(format!("{upstream}/slow/img:v1"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn ctr"),
    );
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match events.recv().await {
                Ok(IngestEvent::Started { digest, .. }) if digest == layer => return,
                Ok(_) => {}
                Err(e) => panic!("watcher events: {e}"),
            }
        }
    })
    .await
    .expect("no Started for the layer within 60 s");
    let ingest = watcher.get(&layer).expect("get() while in flight");
    let mut stream = follow(
        &ingest,
        &content_dir,
        0,
        layer_size - 1,
        Duration::from_secs(3),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    puller.kill();

    let mut got = 0u64;
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => got += c.len() as u64,
                Err(e) => return Some(e),
            }
        }
        None
    })
    .await
    .expect("follow neither ended nor failed within 30 s");
    let err =
        outcome.unwrap_or_else(|| panic!("follow ended cleanly after {got} of {layer_size} bytes"));
    assert!(got < layer_size, "all bytes arrived: {got}");
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(IngestEvent::Ended { digest }) if digest == layer => return,
                Ok(_) => {}
                Err(e) => panic!("watcher events: {e}"),
            }
        }
    })
    .await
    .expect("no Ended for the layer within 30 s");
    eprintln!(
        "[ingest {}] ctr killed: follow failed after {got} bytes with {:?}: {err}; ingest dirs now: {:?}",
        version.series(),
        err.kind(),
        ingest_layout(&content_dir)
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), watching).await;
    server.abort();
}

/// Kills the child by PID on drop (a failed assertion must not leave `ctr` running).
struct ChildGuard(std::process::Child);

impl ChildGuard {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
