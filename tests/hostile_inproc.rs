//! Hostile peers against in-process nodes (issue 9): a real libp2p node that joins the DHT with
//! the project's protocols and advertises chosen keys, paired with an HTTP server that lies
//! (see `support::hostile`). For each lie the asking node's answer must never be a complete
//! wrong or empty 200: with an honest provider too, the client gets the right bytes; with the
//! liar alone, a clean 404 or an aborted body. A forged `registry=` address must never receive
//! a request or a token. And a 1 GB blob served between two nodes reaches its first byte fast.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use peermirror::auth::AuthMode;
use peermirror::content::{
    ByteStream, ContentSource, EventStream, Image, Key, MemorySource, SourceError,
};
use peermirror::daemon::{Routing, Security};
use peermirror::mirror::MirrorConfig;
use peermirror::oci::{Digest, Sha256Verifier, TagKey};
use peermirror::routing::{Bootstrap, P2pRouter, Router};
use support::hostile::{Hostile, Lie};
use support::{Node, client, config, p2p_router, pattern};
use tokio_util::sync::CancellationToken;

const NS: &str = "127.0.0.1:5000";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// Small enough to be verified whole before the first byte (`--verify-before-send`, 16 MiB).
const BLOB: usize = 1024 * 1024 + 17;
/// A request through the asking node must be over by then, whatever the liar does.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
const TOKEN: &str = "hostile-test-token-0123456789";

fn mirror_config() -> MirrorConfig {
    MirrorConfig {
        resolve_timeout: Duration::from_millis(500),
        resolve_tags: true,
        ..MirrorConfig::default()
    }
}

/// A node with a real libp2p router on 127.0.0.1, bootstrapping to `bootstrap`.
async fn node(
    source: Arc<dyn ContentSource>,
    bootstrap: Vec<Bootstrap>,
    security: Security,
) -> (Node, P2pRouter, CancellationToken) {
    let mut cfg = config(Routing::Off, mirror_config());
    cfg.security = security;
    support::libp2p_node(source, bootstrap, cfg).await
}

fn boot(addr: &libp2p::Multiaddr) -> Bootstrap {
    Bootstrap::Static(addr.clone())
}

/// The hostile node, an honest provider "n1" bootstrapping to it, and an observer router used
/// to wait until provider records are in the DHT. Askers are made per case ([`Cluster::asker`])
/// so one case's penalties do not hide the liar from the next.
struct Cluster {
    hostile: Hostile,
    src1: MemorySource,
    n1: Node,
    r1: P2pRouter,
    observer: P2pRouter,
    stops: Vec<CancellationToken>,
    askers: Vec<Node>,
    tokens: tempfile::TempDir,
}

impl Cluster {
    async fn start(forge: bool) -> Cluster {
        let hostile = Hostile::start(forge).await;
        let src1 = MemorySource::new();
        let (n1, r1, s1) = node(
            Arc::new(src1.clone()),
            vec![boot(&hostile.multiaddr())],
            Security::insecure(),
        )
        .await;
        let s2 = CancellationToken::new();
        let observer = p2p_router(
            1,
            None,
            vec![boot(&r1.listen_addrs()[0]), boot(&hostile.multiaddr())],
            &s2,
        )
        .await;
        hostile.wait_connected(2, Duration::from_secs(10)).await;
        let tokens = tempfile::tempdir().unwrap();
        std::fs::write(tokens.path().join("tokens"), format!("{TOKEN}\n")).unwrap();
        Cluster {
            hostile,
            src1,
            n1,
            r1,
            observer,
            stops: vec![s1, s2],
            askers: Vec::new(),
            tokens,
        }
    }

    /// A new asking node with no content, connected to n1 and the hostile node (it dials
    /// both, so its connection to the liar comes from the liar's own address).
    async fn asker(&mut self, token_mode: bool) -> Asker {
        let security = if token_mode {
            Security {
                mode: AuthMode::Token,
                insecure_no_auth: false,
                tls: None,
                token_file: Some(self.tokens.path().join("tokens")),
            }
        } else {
            Security::insecure()
        };
        let want = self.hostile.connected() + 1;
        let (n, _r, s) = node(
            Arc::new(MemorySource::new()),
            vec![
                boot(&self.r1.listen_addrs()[0]),
                boot(&self.hostile.multiaddr()),
            ],
            security,
        )
        .await;
        self.hostile
            .wait_connected(want, Duration::from_secs(10))
            .await;
        self.stops.push(s);
        let asker = Asker {
            base: n.base.clone(),
            ops: n.ops.clone(),
        };
        // Kept in the cluster, stopped at the end.
        self.askers.push(n);
        asker
    }

    /// A blob both n1 (as a layer of an image) and the liar have and advertise.
    async fn shared_blob(&self, seed: u8) -> (Digest, Vec<u8>) {
        let data = pattern(BLOB, seed);
        let d = Digest::of(&data);
        self.src1
            .add_image(&format!("{NS}/test/app:s{seed}"), &[&data]);
        self.hostile.http.add_blob(data.clone(), LAYER);
        self.hostile.provide(&[Key::Digest(d)]).await;
        self.wait_providers(&Key::Digest(d), 2).await;
        (d, data)
    }

    /// A blob only the liar has and advertises.
    async fn hostile_blob(&self, seed: u8) -> (Digest, Vec<u8>) {
        let data = pattern(BLOB, seed);
        let d = self.hostile.http.add_blob(data.clone(), LAYER);
        self.hostile.provide(&[Key::Digest(d)]).await;
        self.wait_providers(&Key::Digest(d), 1).await;
        (d, data)
    }

    /// Wait until the DHT names `n` providers of `key`.
    async fn wait_providers(&self, key: &Key, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut rx = self.observer.lookup(key);
            let mut seen = std::collections::HashSet::new();
            while let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
                seen.insert(p.peer);
            }
            if seen.len() >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{key}: {} of {n} providers in the DHT",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        for a in self.askers {
            a.stop().await;
        }
        self.n1.stop().await;
        for s in self.stops {
            s.cancel();
        }
    }
}

/// Where an asking node answers.
struct Asker {
    base: String,
    ops: String,
}

impl Asker {
    /// Its `/metrics` text.
    async fn metrics(&self) -> String {
        support::metrics_at(&self.ops).await
    }
}

/// What the client saw of one GET.
#[derive(Debug)]
enum Outcome {
    /// A complete response with this status and body.
    Complete(u16, Vec<u8>),
    /// The status line came, then the body broke.
    Aborted(u16),
    /// Nothing (or not all) within [`ANSWER_WITHIN`].
    TimedOut,
}

async fn get(url: &str, token: Option<&str>) -> (Outcome, Duration) {
    let started = Instant::now();
    let mut req = client().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let run = async {
        let r = match req.send().await {
            Ok(r) => r,
            Err(_) => return Outcome::Aborted(0),
        };
        let status = r.status().as_u16();
        match r.bytes().await {
            Ok(b) => Outcome::Complete(status, b.to_vec()),
            Err(_) => Outcome::Aborted(status),
        }
    };
    let out = tokio::time::timeout(ANSWER_WITHIN, run)
        .await
        .unwrap_or(Outcome::TimedOut);
    (out, started.elapsed())
}

fn blob_url(n: &Asker, d: &Digest) -> String {
    format!("{}/v2/test/app/blobs/{d}?ns={NS}", n.base)
}

/// With an honest provider as well: every GET gives the right bytes, in time. Fresh blobs
/// are asked for until the liar has been asked at least once (which of two providers a node
/// tries first is up to the DHT).
async fn with_honest_provider(lie: Lie) {
    let mut c = Cluster::start(false).await;
    c.hostile.set_lie(lie);
    let asker = c.asker(false).await;
    let mut asked = false;
    for seed in 1..=12u8 {
        let (d, data) = c.shared_blob(seed).await;
        let (out, took) = get(&blob_url(&asker, &d), None).await;
        match out {
            Outcome::Complete(200, body) => assert!(
                Digest::of(&body) == d && body == data,
                "{lie:?}: a complete 200 of {} wrong bytes (want {})",
                body.len(),
                data.len()
            ),
            other => panic!(
                "{lie:?}: an honest provider has it, yet the client got {} after {took:?}",
                describe(&other)
            ),
        }
        if c.hostile.http.hits(&d.to_string()) > 0 {
            asked = true;
            eprintln!("{lie:?}: the liar was asked (blob {seed}); right bytes in {took:?}");
            break;
        }
    }
    assert!(
        asked,
        "{lie:?}: harness: the liar was never asked in 12 tries"
    );
    c.stop().await;
}

/// The liar alone: a clean 404 or an aborted body, never a complete 200, in time.
async fn liar_alone(lie: Lie) {
    let mut c = Cluster::start(false).await;
    c.hostile.set_lie(lie);
    let asker = c.asker(false).await;
    let (d, _) = c.hostile_blob(100).await;
    let (out, took) = get(&blob_url(&asker, &d), None).await;
    assert!(
        c.hostile.http.hits(&d.to_string()) > 0,
        "{lie:?}: harness: the liar was never asked ({})",
        describe(&out)
    );
    eprintln!("{lie:?} alone: {} after {took:?}", describe(&out));
    match out {
        Outcome::Complete(404, _) | Outcome::Aborted(_) => {}
        other => panic!(
            "{lie:?}: only a liar has it: want a clean 404 or an aborted body, got {}",
            describe(&other)
        ),
    }
    c.stop().await;
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Complete(s, b) => format!("a complete {s} of {} bytes", b.len()),
        Outcome::Aborted(0) => "no response (request failed)".into(),
        Outcome::Aborted(s) => format!("{s} with an aborted body"),
        Outcome::TimedOut => format!("nothing complete within {ANSWER_WITHIN:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_body_with_right_digest_fails_over() {
    with_honest_provider(Lie::EmptyBody).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_body_alone_is_never_a_clean_200() {
    liar_alone(Lie::EmptyBody).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_body_then_close_fails_over() {
    with_honest_provider(Lie::HalfThenClose).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_body_alone_is_never_a_clean_200() {
    liar_alone(Lie::HalfThenClose).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inflated_length_fails_over() {
    with_honest_provider(Lie::Inflated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inflated_length_alone_is_never_a_clean_200() {
    liar_alone(Lie::Inflated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_bytes_of_a_small_blob_fail_over_before_the_first_byte() {
    with_honest_provider(Lie::WrongBytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_bytes_alone_are_never_a_clean_200() {
    liar_alone(Lie::WrongBytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dripping_peer_is_left_for_the_next_provider() {
    with_honest_provider(Lie::Drip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dripping_peer_alone_fails_the_response_in_time() {
    liar_alone(Lie::Drip).await;
}

/// A tag the liar maps to another image's (valid, verifiable) manifest: the asking node must
/// answer the honest digest or 404, never the liar's, and count the disagreement.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tag_answered_with_another_image_is_not_trusted() {
    let mut c = Cluster::start(false).await;
    // The decoy: a complete image the liar serves honestly by digest.
    let decoy_src = MemorySource::new();
    let decoy = decoy_src.add_manifest("decoy", "amd64", &[b"decoy layer"]);
    let decoy_bytes = decoy_src.blob(&decoy.digest).unwrap();
    c.hostile.http.add_blob(decoy_bytes, &decoy.media_type);
    let asker = c.asker(false).await;
    let mut liar_asked = 0;
    for i in 0..6 {
        let tag = format!("t{i}");
        let image = format!("{NS}/test/app:{tag}");
        let good = c.src1.add_image(&image, &[format!("layer {i}").as_bytes()]);
        c.hostile.http.add_tag(&tag, decoy.digest);
        let key = Key::Tag(TagKey::from_image_name(&image).unwrap());
        c.hostile.provide(std::slice::from_ref(&key)).await;
        // As a pull does, the asker asks once the DHT names a provider, not both: the
        // honest node's record may not be out yet, and then the liar's answer is alone.
        c.wait_providers(&key, 1).await;
        for head in [true, false] {
            let url = format!("{}/v2/test/app/manifests/{tag}?ns={NS}", asker.base);
            let r = if head {
                client().head(&url).send().await.unwrap()
            } else {
                client().get(&url).send().await.unwrap()
            };
            let status = r.status().as_u16();
            let digest = r
                .headers()
                .get("docker-content-digest")
                .map(|v| v.to_str().unwrap().to_string());
            eprintln!("tag {tag} (head: {head}): {status} {digest:?}");
            assert_ne!(
                digest.as_deref(),
                Some(decoy.digest.to_string().as_str()),
                "tag {tag} resolved to the liar's image"
            );
            match status {
                200 => assert_eq!(digest, Some(good.digest.to_string())),
                404 => {}
                s => panic!("tag {tag}: status {s}"),
            }
        }
        liar_asked += c.hostile.http.hits(&format!("/manifests/{tag}"));
    }
    assert!(
        liar_asked > 0,
        "harness: the liar was never asked for a tag"
    );
    let m = asker.metrics().await;
    let disagreements = m
        .lines()
        .find(|l| l.starts_with("peermirror_tag_disagreements_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    eprintln!(
        "the liar was asked {liar_asked} time(s); {disagreements} disagreement(s); misses: {:?}",
        m.lines()
            .filter(|l| l.starts_with("peermirror_mirror_misses_total"))
            .collect::<Vec<_>>()
    );
    assert!(
        disagreements >= 1.0,
        "no peermirror_tag_disagreements_total counted:\n{m}"
    );
    c.stop().await;
}

/// The liar alone answers a tag (the honest node does not have it, or its record has not
/// reached the asker): peers are not authenticated (`none`), so a lone answer is not trusted:
/// 404, counted as unconfirmed. Before issue 24 the liar's image was served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tag_only_an_unauthenticated_liar_answers_is_not_trusted() {
    let mut c = Cluster::start(false).await;
    let decoy_src = MemorySource::new();
    let decoy = decoy_src.add_manifest("decoy", "amd64", &[b"decoy layer"]);
    c.hostile
        .http
        .add_blob(decoy_src.blob(&decoy.digest).unwrap(), &decoy.media_type);
    let asker = c.asker(false).await;
    let image = format!("{NS}/test/app:alone");
    c.hostile.http.add_tag("alone", decoy.digest);
    let key = Key::Tag(TagKey::from_image_name(&image).unwrap());
    c.hostile.provide(std::slice::from_ref(&key)).await;
    c.wait_providers(&key, 1).await;
    let url = format!("{}/v2/test/app/manifests/alone?ns={NS}", asker.base);
    let started = Instant::now();
    let r = client().head(&url).send().await.unwrap();
    let took = started.elapsed();
    let digest = r.headers().get("docker-content-digest").cloned();
    eprintln!("lone liar: {} {digest:?} after {took:?}", r.status());
    assert!(
        c.hostile.http.hits("/manifests/alone") > 0,
        "harness: the liar was never asked"
    );
    assert_eq!(
        r.status().as_u16(),
        404,
        "a tag only the liar vouched for was answered ({digest:?})"
    );
    let m = asker.metrics().await;
    assert!(
        m.contains("peermirror_tag_unconfirmed_total 1")
            && m.contains(r#"peermirror_mirror_misses_total{reason="tag_unconfirmed"} 1"#),
        "not counted as unconfirmed:\n{m}"
    );
    c.stop().await;
}

/// identify's `registry=` names a recorder at another address: in token mode, the asking
/// node must never send it a request or its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_registry_address_never_receives_a_request_or_token() {
    let mut c = Cluster::start(true).await;
    assert!(
        c.hostile.agent.contains("registry=127.0.0.2:"),
        "{}",
        c.hostile.agent
    );
    let asker = c.asker(true).await;
    let (d, data) = c.hostile_blob(200).await;
    let (out, took) = get(&blob_url(&asker, &d), Some(TOKEN)).await;
    eprintln!(
        "forged address: {} after {took:?}; recorder saw {:?}; liar's own server saw {}",
        describe(&out),
        c.hostile.recorder.seen(),
        c.hostile.http.hits(&d.to_string())
    );
    let seen = c.hostile.recorder.seen();
    assert!(
        seen.is_empty(),
        "the forged registry address received {} request(s), token sent: {}",
        seen.len(),
        seen.iter().any(|s| s
            .authorization
            .as_deref()
            .is_some_and(|a| a.contains(TOKEN)))
    );
    // Never a wrong complete answer either (the liar's own server answers honestly here).
    if let Outcome::Complete(200, body) = out {
        assert_eq!(body, data);
    }
    c.stop().await;
}

// ---------------------------------------------------------------------------
// A 1 GB blob between two nodes
// ---------------------------------------------------------------------------

/// Images and small blobs in memory; one big blob in a file.
struct FileSource {
    memory: MemorySource,
    big: (Digest, PathBuf, u64),
    /// Bytes of the big blob read from the file so far, over every read.
    big_read: Arc<AtomicU64>,
}

#[async_trait]
impl ContentSource for FileSource {
    async fn list_images(&self) -> Result<Vec<Image>, SourceError> {
        self.memory.list_images().await
    }

    async fn get_image(&self, name: &str) -> Result<Option<Image>, SourceError> {
        self.memory.get_image(name).await
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, SourceError> {
        if *digest == self.big.0 {
            return Ok(Some(self.big.2));
        }
        self.memory.stat(digest).await
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, SourceError> {
        use futures_util::StreamExt;
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        if *digest != self.big.0 {
            return self.memory.read(digest, offset, len).await;
        }
        let mut f = tokio::fs::File::open(&self.big.1).await?;
        f.seek(std::io::SeekFrom::Start(offset)).await?;
        let take = len.unwrap_or(u64::MAX);
        let counter = self.big_read.clone();
        let r = tokio_util::io::ReaderStream::with_capacity(f.take(take), 1024 * 1024).inspect(
            move |chunk| {
                if let Ok(c) = chunk {
                    counter.fetch_add(c.len() as u64, Ordering::SeqCst);
                }
            },
        );
        Ok(Box::pin(r))
    }

    async fn subscribe(&self) -> Result<EventStream, SourceError> {
        self.memory.subscribe().await
    }

    async fn stamp(&self, digest: &Digest) -> Option<(u64, std::time::SystemTime)> {
        if *digest != self.big.0 {
            return None;
        }
        let m = std::fs::metadata(&self.big.1).ok()?;
        Some((m.len(), m.modified().ok()?))
    }
}

/// `size` random bytes (AES-256-CTR of zeros under a fixed key) in `dir/blob`; its digest.
fn random_file(dir: &std::path::Path, size: u64) -> (PathBuf, Digest) {
    let path = dir.join("blob");
    let sh = format!(
        "head -c {size} /dev/zero | openssl enc -aes-256-ctr -nosalt -pass pass:peermirror-bigblob -pbkdf2 > {p} && sha256sum {p}",
        p = path.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &sh])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    (path, format!("sha256:{hex}").parse().unwrap())
}

/// A 1 GB layer (random, made here, removed after) served from node 1 to node 2 through the
/// peer path, verified; node 2's first byte must come before node 1 has read half the blob
/// (the serving node streams while it hashes). The 4 GB version is `bench/bigblob.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_1gb_blob_reaches_a_peer_before_the_source_is_read_through() {
    const SIZE: u64 = 1 << 30;
    let dir = tempfile::Builder::new()
        .prefix("bigblob-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let (path, digest) = random_file(dir.path(), SIZE);
    let memory = MemorySource::new();
    let config = memory.add_blob(
        "application/vnd.oci.image.config.v1+json",
        r#"{"architecture":"amd64","os":"linux"}"#,
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"{}","digest":"{}","size":{}}},"layers":[{{"mediaType":"{LAYER}","digest":"{digest}","size":{SIZE}}}]}}"#,
        config.media_type, config.digest, config.size
    );
    let m = memory.add_blob("application/vnd.oci.image.manifest.v1+json", manifest);
    memory.put_image(&format!("{NS}/test/big:v1"), m);
    let big_read = Arc::new(AtomicU64::new(0));
    let source = FileSource {
        memory,
        big: (digest, path, SIZE),
        big_read: big_read.clone(),
    };
    let (n1, r1, s1) = node(Arc::new(source), vec![], Security::insecure()).await;
    let (n2, r2, s2) = node(
        Arc::new(MemorySource::new()),
        vec![boot(&r1.listen_addrs()[0])],
        Security::insecure(),
    )
    .await;
    let url = format!("{}/v2/test/big/blobs/{digest}?ns={NS}", n2.base);
    // Wait for the provider record through node 2's router, not with a HEAD through node 2:
    // today a HEAD makes node 1 hash the blob and cache the verdict, warming the GET.
    let deadline = Instant::now() + Duration::from_secs(15);
    while r2.lookup(&Key::Digest(digest)).recv().await.is_none() {
        assert!(Instant::now() < deadline, "node 2 never found the blob");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(30), client().get(&url).send())
        .await
        .expect("no response headers within 30 s")
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    use futures_util::StreamExt;
    let first = tokio::time::timeout(Duration::from_secs(60), body.next())
        .await
        .expect("no first byte within 60 s");
    let ttfb = started.elapsed();
    // How much of the blob node 1 had read from its source when node 2's client got the first
    // byte: a node that hashed before sending would have read all of it (and then some).
    let read_at_first_byte = big_read.load(Ordering::SeqCst);
    let mut v = Sha256Verifier::new(digest);
    v.update(&first.unwrap().unwrap());
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), body.next())
        .await
        .expect("transfer stalled")
    {
        v.update(&chunk.unwrap());
    }
    let took = started.elapsed();
    eprintln!(
        "1 GB through the peer path: first byte after {:.0} ms ({} MiB read at node 1), all in \
         {:.1} s ({:.0} MB/s)",
        ttfb.as_secs_f64() * 1000.0,
        read_at_first_byte >> 20,
        took.as_secs_f64(),
        SIZE as f64 / 1e6 / took.as_secs_f64()
    );
    assert_eq!(v.bytes_seen(), SIZE);
    assert!(v.matches(), "the 1 GB blob arrived with wrong bytes");
    // Proven by what was read, not by the clock (two shared cores make any time bound a guess):
    // the first byte left before the serving node had read half the blob.
    assert!(
        read_at_first_byte < SIZE / 2,
        "node 1 had read {read_at_first_byte} of {SIZE} bytes when node 2's first byte came \
         (after {ttfb:?}): the serving node hashes before it sends"
    );
    n2.stop().await;
    n1.stop().await;
    s1.cancel();
    s2.cancel();
    drop(dir);
}
