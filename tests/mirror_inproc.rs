//! The asking node's peer path against lying providers: fake peer registries on their own
//! loopback addresses (penalties are keyed by IP), an honest in-process node, and the node
//! under test in between. Each test names the lie and asserts what the client sees: never a
//! complete wrong or empty 200; the honest provider's bytes when there is one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use peermirror::auth::AuthMode;
use peermirror::content::{Key, MemorySource};
use peermirror::daemon::{Routing, Security};
use peermirror::mirror::MirrorConfig;
use peermirror::oci::{Digest, Name, Tag, TagKey};
use peermirror::routing::{
    MemoryNetwork, MemoryRouter, PeerStatus, Provider, Router, RouterError, RouterStatus,
};
use peermirror::server::ServerLimits;
use support::{Node, client, config, next_loopback, pattern, start_on, wait_ready};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const NS: &str = "127.0.0.1:5000";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

fn mirror_config() -> MirrorConfig {
    MirrorConfig {
        resolve_timeout: Duration::from_millis(500),
        ..MirrorConfig::default()
    }
}

/// What a fake provider answers for one reference (the last path segment).
#[derive(Clone)]
enum Answer {
    /// The right headers and bytes.
    Honest { data: Bytes, media_type: String },
    /// These headers (length = body length) and this body.
    Lie { digest: String, body: Bytes },
    /// The right headers, 1000 bytes, then one byte every 5 s.
    Drip(Bytes),
}

/// A fake peer registry; counts requests and records the Authorization header of each.
struct Fake {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    auth: Arc<Mutex<Vec<Option<String>>>>,
    stop: CancellationToken,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Fake {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn provider(&self, name: &str) -> Provider {
        Provider {
            peer: name.into(),
            addr: self.addr,
        }
    }
}

async fn fake(ip: IpAddr, answers: HashMap<String, Answer>) -> Fake {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let auth = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let answers = Arc::new(answers);
    let (h, a) = (hits.clone(), auth.clone());
    let handler = move |req: http::Request<hyper::body::Incoming>,
                        _conn: Arc<peermirror::server::ConnInfo>| {
        let (answers, hits, auth) = (answers.clone(), h.clone(), a.clone());
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            auth.lock().unwrap().push(
                req.headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_string()),
            );
            let reference = req.uri().path().rsplit('/').next().unwrap().to_string();
            let head = req.method() == http::Method::HEAD;
            let not_found = || http::Response::builder().status(404).body(empty()).unwrap();
            let Some(answer) = answers.get(&reference).cloned() else {
                return not_found();
            };
            let (digest, len, media_type, body) = match answer {
                Answer::Honest { data, media_type } => (
                    Digest::of(&data).to_string(),
                    data.len(),
                    media_type,
                    full(data),
                ),
                Answer::Lie { digest, body } => (
                    digest,
                    body.len(),
                    "application/octet-stream".into(),
                    full(body),
                ),
                Answer::Drip(data) => {
                    let first = data.slice(..1000);
                    let rest = data.slice(1000..);
                    let drip = futures_util::stream::unfold(0usize, move |i| {
                        let rest = rest.clone();
                        async move {
                            if i >= rest.len() {
                                return None;
                            }
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            Some((Ok(Frame::data(rest.slice(i..i + 1))), i + 1))
                        }
                    });
                    let s = futures_util::stream::once(async move { Ok(Frame::data(first)) })
                        .chain(drip);
                    (
                        Digest::of(&data).to_string(),
                        data.len(),
                        "application/octet-stream".into(),
                        BodyExt::boxed_unsync(StreamBody::new(s)),
                    )
                }
            };
            http::Response::builder()
                .header("content-length", len)
                .header("docker-content-digest", digest)
                .header("content-type", media_type)
                .body(if head { empty() } else { body })
                .unwrap()
        }
    };
    tokio::spawn(peermirror::server::serve(
        listener,
        handler,
        ServerLimits::default(),
        None,
        stop.clone(),
    ));
    Fake {
        addr,
        hits,
        auth,
        stop,
    }
}

use futures_util::StreamExt;

fn empty() -> peermirror::registry::Body {
    http_body_util::Empty::new()
        .map_err(|n| match n {})
        .boxed_unsync()
}

fn full(b: Bytes) -> peermirror::registry::Body {
    Full::new(b).map_err(|n| match n {}).boxed_unsync()
}

fn blob(data: &[u8]) -> Answer {
    Answer::Honest {
        data: Bytes::copy_from_slice(data),
        media_type: "application/octet-stream".into(),
    }
}

fn lie(digest: Digest, body: Vec<u8>) -> Answer {
    Answer::Lie {
        digest: digest.to_string(),
        body: body.into(),
    }
}

async fn node(net: &MemoryNetwork, name: &str, source: MemorySource, m: MirrorConfig) -> Node {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = MemoryRouter::new(net.clone(), name, l.local_addr().unwrap());
    let n = start_on(
        l,
        source,
        config(
            Routing::Custom {
                router: Arc::new(r),
                bootstrap_none: true,
            },
            m,
        ),
    )
    .await;
    wait_ready(&n, true).await;
    n
}

/// The honest node "b-good" holding `data` as a layer of an image.
async fn honest(net: &MemoryNetwork, data: &[u8]) -> (Node, peermirror::content::Descriptor) {
    let src = MemorySource::new();
    let manifest = src.add_image("127.0.0.1:5000/test/app:v1", &[data]);
    (node(net, "b-good", src, mirror_config()).await, manifest)
}

async fn get(node: &Node, digest: Digest) -> reqwest::Response {
    client()
        .get(format!("{}/v2/test/app/blobs/{digest}", node.base))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_zero_length_answer_is_never_an_empty_200() {
    let data = pattern(300_000, 21);
    let digest = Digest::of(&data);
    let liar = fake(
        next_loopback(),
        HashMap::from([(digest.to_string(), lie(digest, vec![]))]),
    )
    .await;

    // Alone: a clean 404 (containerd goes upstream), not an empty 200.
    let net = MemoryNetwork::new();
    net.insert(Key::Digest(digest), liar.provider("a-liar"));
    let c = node(&net, "c", MemorySource::new(), mirror_config()).await;
    let r = get(&c, digest).await;
    assert_eq!(r.status(), 404);
    c.stop().await;

    // With an honest provider: served by it.
    let net = MemoryNetwork::new();
    let (b, _) = honest(&net, &data).await;
    let liar = fake(
        next_loopback(),
        HashMap::from([(digest.to_string(), lie(digest, vec![]))]),
    )
    .await;
    net.insert(Key::Digest(digest), liar.provider("a-liar"));
    let c = node(&net, "c", MemorySource::new(), mirror_config()).await;
    let r = get(&c, digest).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    assert_eq!(liar.hits(), 1, "the liar was not asked first");
    b.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn an_inflated_length_is_refused_when_a_relayed_manifest_gave_the_size() {
    let net = MemoryNetwork::new();
    let data = pattern(400_000, 22);
    let digest = Digest::of(&data);
    let (b, manifest) = honest(&net, &data).await;
    let manifest_bytes = b_manifest(&b, manifest.digest).await;
    let mut inflated = data.clone();
    inflated.extend(std::iter::repeat_n(0u8, 1024 * 1024));
    // The liar relays the manifest honestly (so this node learns the layer's size from it,
    // and that the liar "has" the layer), then inflates the layer.
    let liar = fake(
        next_loopback(),
        HashMap::from([
            (
                manifest.digest.to_string(),
                Answer::Honest {
                    data: manifest_bytes.clone(),
                    media_type: MANIFEST_TYPE.into(),
                },
            ),
            (digest.to_string(), lie(digest, inflated)),
        ]),
    )
    .await;
    net.insert(Key::Digest(manifest.digest), liar.provider("a-liar"));
    net.insert(Key::Digest(digest), liar.provider("a-liar"));
    // Streaming everything: only the known size can refuse the liar before a byte is sent.
    let c = node(
        &net,
        "c",
        MemorySource::new(),
        MirrorConfig {
            verify_before_send: 0,
            ..mirror_config()
        },
    )
    .await;
    let r = client()
        .get(format!(
            "{}/v2/test/app/manifests/{}",
            c.base, manifest.digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), manifest_bytes);
    let r = get(&c, digest).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        data.len().to_string().as_str()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    assert_eq!(liar.hits(), 2, "the liar was not asked for both");
    b.stop().await;
    c.stop().await;
}

/// The manifest bytes the honest node serves.
async fn b_manifest(b: &Node, digest: Digest) -> Bytes {
    client()
        .get(format!("{}/v2/test/app/manifests/{digest}", b.base))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_wrong_length_fails_over_to_the_next_provider() {
    let net = MemoryNetwork::new();
    let data = pattern(500_000, 23);
    let digest = Digest::of(&data);
    let (b, _) = honest(&net, &data).await;
    let short = data[..data.len() - 10].to_vec();
    let liar = fake(
        next_loopback(),
        HashMap::from([(digest.to_string(), lie(digest, short))]),
    )
    .await;
    net.insert(Key::Digest(digest), liar.provider("a-liar"));
    let c = node(&net, "c", MemorySource::new(), mirror_config()).await;
    let r = get(&c, digest).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    assert_eq!(liar.hits(), 1);
    // A wrong digest header is refused at once, and the next provider serves.
    let other = pattern(200_000, 24);
    let other_digest = Digest::of(&other);
    let src = MemorySource::new();
    src.add_image("127.0.0.1:5000/test/other:v1", &[&other]);
    let b2 = node(&net, "b2-good", src, mirror_config()).await;
    let liar2 = fake(
        next_loopback(),
        HashMap::from([(
            other_digest.to_string(),
            lie(Digest::of(b"x"), other.clone()),
        )]),
    )
    .await;
    net.insert(Key::Digest(other_digest), liar2.provider("a-liar2"));
    let r = get(&c, other_digest).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), other.as_slice());
    assert_eq!(liar2.hits(), 1);
    b.stop().await;
    b2.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn a_dripping_provider_is_left_after_the_stall_timeout() {
    let net = MemoryNetwork::new();
    let data = pattern(1024 * 1024, 25);
    let digest = Digest::of(&data);
    let (b, _) = honest(&net, &data).await;
    let drip = fake(
        next_loopback(),
        HashMap::from([(digest.to_string(), Answer::Drip(data.clone().into()))]),
    )
    .await;
    net.insert(Key::Digest(digest), drip.provider("a-drip"));
    for verify_before_send in [16 * 1024 * 1024, 0] {
        let c = node(
            &net,
            "c",
            MemorySource::new(),
            MirrorConfig {
                verify_before_send,
                ..mirror_config()
            },
        )
        .await;
        let started = Instant::now();
        let r = get(&c, digest).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
        // The 2 s stall timeout, then the rest from the honest node.
        let took = started.elapsed();
        assert!(took < Duration::from_secs(4), "{took:?}");
        assert!(took >= Duration::from_secs(2), "{took:?}");
        let m = c.metrics().await;
        assert!(m.contains("peermirror_provider_failures_total 1"), "{m}");
        c.stop().await;
    }
    assert_eq!(drip.hits(), 2);
    b.stop().await;
}

fn tag_key() -> TagKey {
    TagKey::new(
        NS,
        &"test/app".parse::<Name>().unwrap(),
        &"v1".parse::<Tag>().unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn providers_that_disagree_about_a_tag_get_a_404() {
    let manifest_a = Bytes::from_static(br#"{"schemaVersion":2,"layers":[]}"#);
    let manifest_b = Bytes::from_static(br#"{"schemaVersion":2,"layers":[],"x":1}"#);
    let tag = |m: &Bytes| {
        HashMap::from([(
            "v1".to_string(),
            Answer::Honest {
                data: m.clone(),
                media_type: MANIFEST_TYPE.into(),
            },
        )])
    };
    let url = |n: &Node| format!("{}/v2/test/app/manifests/v1?ns={NS}", n.base);

    // Two providers naming the same digest: resolved.
    let net = MemoryNetwork::new();
    let f1 = fake(next_loopback(), tag(&manifest_a)).await;
    let f2 = fake(next_loopback(), tag(&manifest_a)).await;
    net.insert(Key::Tag(tag_key()), f1.provider("a1"));
    net.insert(Key::Tag(tag_key()), f2.provider("a2"));
    let c = node(&net, "c", MemorySource::new(), mirror_config()).await;
    let r = client().head(url(&c)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"],
        Digest::of(&manifest_a).to_string().as_str()
    );
    assert_eq!((f1.hits(), f2.hits()), (1, 1), "both asked");
    c.stop().await;

    // A third names another digest: nobody's word is taken.
    let f3 = fake(next_loopback(), tag(&manifest_b)).await;
    net.insert(Key::Tag(tag_key()), f3.provider("a0-liar"));
    let c = node(&net, "c", MemorySource::new(), mirror_config()).await;
    for r in [
        client().head(url(&c)).send().await.unwrap(),
        client().get(url(&c)).send().await.unwrap(),
    ] {
        assert_eq!(r.status(), 404);
    }
    let m = c.metrics().await;
    assert!(m.contains("peermirror_tag_disagreements_total 2"), "{m}");
    assert!(
        m.contains(r#"peermirror_mirror_misses_total{reason="tag_disagreement"} 2"#),
        "{m}"
    );
    c.stop().await;
}

#[tokio::test]
async fn wrong_bytes_shun_the_ip_whatever_the_peer_id() {
    let net = MemoryNetwork::new();
    let data = pattern(600_000, 26);
    let digest = Digest::of(&data);
    let (b, _) = honest(&net, &data).await;
    // One host, two PeerIds (and two ports): both lie with the right length.
    let ip = next_loopback();
    let wrong = vec![0x5a; data.len()];
    let f1 = fake(
        ip,
        HashMap::from([(digest.to_string(), lie(digest, wrong.clone()))]),
    )
    .await;
    let f2 = fake(
        ip,
        HashMap::from([(digest.to_string(), lie(digest, wrong))]),
    )
    .await;
    net.insert(Key::Digest(digest), f1.provider("a1-liar"));
    net.insert(Key::Digest(digest), f2.provider("a2-liar"));
    let c = node(&net, "c", MemorySource::new(), mirror_config()).await;
    // Small enough to be verified before sending: the lie costs a refetch, not the pull.
    let r = get(&c, digest).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    assert_eq!(f1.hits(), 1);
    assert_eq!(f2.hits(), 0, "a second PeerId on the liar's IP was asked");
    let m = c.metrics().await;
    assert!(
        m.contains(&format!(
            "peermirror_peer_mismatches_total{{peer=\"ip:{ip}\"}} 1"
        )),
        "{m}"
    );
    b.stop().await;

    // Alone with a liar: a clean 404, never a 200 of wrong bytes.
    let net = MemoryNetwork::new();
    let ip = next_loopback();
    let f3 = fake(
        ip,
        HashMap::from([(digest.to_string(), lie(digest, vec![1; data.len()]))]),
    )
    .await;
    net.insert(Key::Digest(digest), f3.provider("a3-liar"));
    let c2 = node(&net, "c2", MemorySource::new(), mirror_config()).await;
    let r = get(&c2, digest).await;
    assert_eq!(r.status(), 404);
    let m = c2.metrics().await;
    assert!(
        m.contains(&format!(
            "peermirror_peer_mismatches_total{{peer=\"ip:{ip}\"}} 1"
        )),
        "{m}"
    );
    c.stop().await;
    c2.stop().await;
}

/// A router whose lookups name fixed providers and whose status lists fixed peers.
struct FixedRouter {
    providers: Vec<Provider>,
    peers: Vec<SocketAddr>,
}

#[async_trait::async_trait]
impl Router for FixedRouter {
    fn lookup(&self, _key: &Key) -> mpsc::Receiver<Provider> {
        let (tx, rx) = mpsc::channel(self.providers.len().max(1));
        for p in &self.providers {
            let _ = tx.try_send(p.clone());
        }
        rx
    }

    async fn advertise(&self, _keys: Vec<Key>) -> Result<(), RouterError> {
        Ok(())
    }

    async fn withdraw(&self, _keys: Vec<Key>) -> Result<(), RouterError> {
        Ok(())
    }

    fn status(&self) -> RouterStatus {
        RouterStatus {
            local_id: "c".into(),
            peers: self
                .peers
                .iter()
                .map(|a| PeerStatus {
                    peer: a.to_string(),
                    registry: Some(*a),
                    addrs: Vec::new(),
                    last_seen: SystemTime::now(),
                })
                .collect(),
            expects_peers: true,
            ..RouterStatus::default()
        }
    }
}

#[tokio::test]
async fn the_token_goes_only_to_connected_peers() {
    let data = pattern(100_000, 27);
    let digest = Digest::of(&data);
    let recorder = fake(
        next_loopback(),
        HashMap::from([(digest.to_string(), blob(&data))]),
    )
    .await;
    let peer = fake(
        next_loopback(),
        HashMap::from([(digest.to_string(), blob(&data))]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "secret-token\n").unwrap();
    let router = FixedRouter {
        // The forged record first.
        providers: vec![recorder.provider("a-forged"), peer.provider("b-peer")],
        peers: vec![peer.addr],
    };
    let mut cfg = config(
        Routing::Custom {
            router: Arc::new(router),
            bootstrap_none: true,
        },
        mirror_config(),
    );
    cfg.security = Security {
        mode: AuthMode::Token,
        insecure_no_auth: false,
        tls: None,
        token_file: Some(tokens),
    };
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = start_on(l, MemorySource::new(), cfg).await;
    wait_ready(&c, true).await;
    let r = client()
        .get(format!("{}/v2/test/app/blobs/{digest}", c.base))
        .bearer_auth("secret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    assert_eq!(recorder.hits(), 0, "a request went to a non-peer address");
    assert!(recorder.auth.lock().unwrap().is_empty());
    assert_eq!(
        peer.auth.lock().unwrap().as_slice(),
        &[Some("Bearer secret-token".to_string())]
    );
    c.stop().await;
}

/// Issue 11: concurrent requests for one blob (containerd's ranged chunks, several clients)
/// share one download from the provider, and every answer carries the right bytes.
#[tokio::test]
async fn concurrent_ranged_requests_share_one_download() {
    let net = MemoryNetwork::new();
    let data = Bytes::from(pattern(6 * 1024 * 1024 + 17, 41));
    let digest = Digest::of(&data);
    let provider = fake(
        next_loopback(),
        HashMap::from([(digest.to_string(), blob(&data))]),
    )
    .await;
    net.insert(Key::Digest(digest), provider.provider("provider"));
    let m = MirrorConfig {
        // Stream (do not verify first), as for a big layer.
        verify_before_send: 1024,
        ..mirror_config()
    };
    let c = node(&net, "c", MemorySource::new(), m).await;
    let chunk = 1024 * 1024;
    let mut requests = Vec::new();
    for i in 0..8usize {
        let url = format!("{}/v2/test/app/blobs/{digest}", c.base);
        let range = (i < 6).then(|| {
            (
                i * chunk,
                if i == 5 {
                    data.len() - 1
                } else {
                    (i + 1) * chunk - 1
                },
            )
        });
        requests.push(async move {
            let mut req = client().get(url);
            if let Some((a, b)) = range {
                req = req.header("range", format!("bytes={a}-{b}"));
            }
            let r = req.send().await.unwrap();
            (range, r.status().as_u16(), r.bytes().await.unwrap())
        });
    }
    for (range, status, body) in futures_util::future::join_all(requests).await {
        match range {
            Some((a, b)) => {
                assert_eq!(status, 206);
                assert_eq!(body.as_ref(), &data[a..=b]);
            }
            None => {
                assert_eq!(status, 200);
                assert_eq!(body, data);
            }
        }
    }
    assert_eq!(provider.hits(), 1, "one download for eight requests");
    let m = c.metrics().await;
    let fetched: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("peermirror_peer_fetch_bytes_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(fetched as usize, data.len(), "{m}");
    c.stop().await;
}

/// Issue 11: a complete copy is asked before an in-flight one found at the same time.
#[tokio::test]
async fn complete_copies_are_preferred_to_in_flight_ones() {
    let net = MemoryNetwork::new();
    let data = pattern(300_000, 42);
    let digest = Digest::of(&data);
    let answers = || HashMap::from([(digest.to_string(), blob(&data))]);
    let partial = fake(next_loopback(), answers()).await;
    let complete = fake(next_loopback(), answers()).await;
    net.insert(Key::Partial(digest), partial.provider("in-flight"));
    net.insert(Key::Digest(digest), complete.provider("complete"));
    let c = node(&net, "c", MemorySource::new(), mirror_config()).await;
    let r = get(&c, digest).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    assert_eq!(complete.hits(), 1);
    assert_eq!(partial.hits(), 0);
    // An in-flight copy alone is used.
    let other = pattern(200_000, 43);
    let other_digest = Digest::of(&other);
    let only = fake(
        next_loopback(),
        HashMap::from([(other_digest.to_string(), blob(&other))]),
    )
    .await;
    net.insert(Key::Partial(other_digest), only.provider("only-in-flight"));
    let r = get(&c, other_digest).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), other.as_slice());
    assert_eq!(only.hits(), 1);
    c.stop().await;
}
