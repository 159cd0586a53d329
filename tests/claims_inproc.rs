//! Claims of the flags and docs that no other test checked (issue 22, item 10), each through
//! the daemon in process: `--resolve-latest-tag`, `--spool-max-bytes 0`, peers served from a
//! spool still downloading, the drain cutoff, and the reserve for connected peers; and, at the
//! auth gate, the throttle of a failing address and its expiry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peermirror::content::{Key, MemorySource};
use peermirror::daemon::{Config, Routing};
use peermirror::mirror::MirrorConfig;
use peermirror::oci::{Digest, Name, Tag, TagKey};
use peermirror::routing::{MemoryNetwork, MemoryRouter, Provider};
use support::fake_peer::{FakePeer, Lie};
use support::{Node, client, config, next_loopback, pattern, routed, start_on, wait_ready};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const NS: &str = "127.0.0.1:5000";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A node called `name` on `net`, with no content of its own, `mirror` and `tweak`ed config.
async fn node(
    net: &MemoryNetwork,
    name: &str,
    mirror: MirrorConfig,
    tweak: impl FnOnce(&mut Config),
) -> Node {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = MemoryRouter::new(net.clone(), name, l.local_addr().unwrap());
    let mut cfg = config(routed(router), mirror);
    tweak(&mut cfg);
    let n = start_on(l, MemorySource::new(), cfg).await;
    wait_ready(&n, true).await;
    n
}

fn tag_key(tag: &str) -> Key {
    Key::Tag(
        TagKey::new(
            NS,
            &"test/app".parse::<Name>().unwrap(),
            &tag.parse::<Tag>().unwrap(),
        )
        .unwrap(),
    )
}

#[tokio::test]
async fn latest_is_resolved_through_peers_only_with_resolve_latest_tag() {
    // A real manifest's bytes, served by a fake peer under the tags `latest` and `v1`.
    let image = MemorySource::new();
    let desc = image.add_image("127.0.0.1:5000/test/app:v1", &[b"layer"]);
    let manifest = image.blob(&desc.digest).unwrap();
    let fake = FakePeer::default();
    let digest = fake.add_blob(manifest.clone(), MANIFEST_TYPE);
    fake.add_tag("latest", digest);
    fake.add_tag("v1", digest);
    let fake = fake.start(next_loopback()).await;
    let net = MemoryNetwork::new();
    for tag in ["latest", "v1"] {
        net.insert(tag_key(tag), fake.provider("a-fake"));
    }
    let url = |n: &Node, tag: &str| format!("{}/v2/test/app/manifests/{tag}?ns={NS}", n.base);
    let mirror = MirrorConfig {
        resolve_timeout: Duration::from_millis(500),
        single_tag_answer: true,
        ..MirrorConfig::default()
    };

    // Off (the default): `latest` is a 404 miss, and no peer is asked about it.
    let off = node(&net, "c-off", mirror.clone(), |_| {}).await;
    let r = client().get(url(&off, "latest")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(fake.hits("latest"), 0, "{:?}", fake.seen());
    // The same node does resolve another tag through the same peer.
    let r = client().get(url(&off, "v1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), manifest);
    assert!(fake.hits("v1") >= 1, "{:?}", fake.seen());
    off.stop().await;

    // On: `latest` is resolved through the peer and its bytes are served.
    let on = node(
        &net,
        "c-on",
        MirrorConfig {
            resolve_latest_tag: true,
            ..mirror
        },
        |_| {},
    )
    .await;
    let r = client().get(url(&on, "latest")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"],
        digest.to_string().as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), manifest);
    assert!(fake.hits("latest") >= 1, "{:?}", fake.seen());
    on.stop().await;
}

fn blob_url(n: &Node, d: Digest) -> String {
    format!("{}/v2/test/app/blobs/{d}?ns={NS}", n.base)
}

#[tokio::test]
async fn with_the_spool_off_a_peer_blob_streams_verified_and_nothing_is_spooled() {
    let data = pattern(3 * 1024 * 1024, 41);
    let digest = Digest::of(&data);
    let honest = FakePeer::with_blob(data.clone(), Lie::Honest)
        .start(next_loopback())
        .await;
    let net = MemoryNetwork::new();
    net.insert(Key::Digest(digest), honest.provider("a-honest"));
    let spool_dir = support::fresh_spool_dir();
    // Streamed, not verified first: only the streaming path's own check stands between a
    // lie and the client.
    let mirror = MirrorConfig {
        resolve_timeout: Duration::from_millis(500),
        verify_before_send: 0,
        ..MirrorConfig::default()
    };
    let c = node(&net, "c", mirror, |c| {
        // What `--spool-max-bytes 0` makes of the data dir's spool.
        c.spool = peermirror::daemon::SpoolSettings::new(spool_dir.clone(), 0);
    })
    .await;

    // Each request streams its own download: two GETs, two fetches from the peer.
    for _ in 0..2 {
        let r = client().get(blob_url(&c, digest)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.bytes().await.unwrap().as_ref() == data.as_slice(),
            "wrong bytes"
        );
    }
    assert_eq!(honest.hits(&digest.to_string()), 2, "{:?}", honest.seen());
    assert!(
        !spool_dir.exists(),
        "the spool was written with --spool-max-bytes 0"
    );

    // A provider of the right length of wrong bytes: the streamed body never ends cleanly.
    let other = pattern(3 * 1024 * 1024, 42);
    let other_digest = Digest::of(&other);
    let liar = FakePeer::with_blob(other.clone(), Lie::WrongBytes)
        .start(next_loopback())
        .await;
    net.insert(Key::Digest(other_digest), liar.provider("a-liar"));
    let r = client()
        .get(blob_url(&c, other_digest))
        .send()
        .await
        .unwrap();
    if r.status() == 200 {
        let body = r.bytes().await;
        assert!(body.is_err(), "a complete 200 of wrong bytes");
    } else {
        assert_eq!(r.status(), 404);
    }
    assert_eq!(liar.hits(&other_digest.to_string()), 1);
    assert!(!spool_dir.exists());
    c.stop().await;
}

#[tokio::test]
async fn a_peer_is_served_from_a_spool_still_downloading() {
    let data = pattern(1024 * 1024, 43);
    let digest = Digest::of(&data);
    // All but the last byte at once, the last after DRIP_EVERY (5 s): node A's download is in
    // progress for that long.
    let slow = FakePeer::with_blob(data.clone(), Lie::DripAfter(data.len() - 1))
        .start(next_loopback())
        .await;
    let patient = MirrorConfig {
        resolve_timeout: Duration::from_millis(500),
        stall_timeout: Duration::from_secs(30),
        response_timeout: Duration::from_secs(30),
        verify_before_send: 0,
        ..MirrorConfig::default()
    };
    // A knows the slow fake; B knows only A (so B's bytes can come from nowhere else).
    let net_a = MemoryNetwork::new();
    net_a.insert(Key::Digest(digest), slow.provider("f-slow"));
    let a = node(&net_a, "a", patient.clone(), |_| {}).await;
    let net_b = MemoryNetwork::new();
    net_b.insert(
        Key::Digest(digest),
        Provider {
            peer: "a".into(),
            addr: a.addr,
        },
    );
    let b = node(&net_b, "b", patient, |_| {}).await;

    // A's own client starts A's download.
    let url_a = blob_url(&a, digest);
    let a_pull = tokio::spawn(async move {
        let r = client().get(url_a).send().await.unwrap();
        (r.status(), r.bytes().await.unwrap())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.hits(&digest.to_string()) == 0 {
        assert!(Instant::now() < deadline, "A never asked the fake");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!a_pull.is_finished(), "A's download ended before B asked");
    let r = client().get(blob_url(&b, digest)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.unwrap().as_ref() == data.as_slice(),
        "B: wrong bytes"
    );
    let (status, body) = a_pull.await.unwrap();
    assert_eq!(status, 200);
    assert!(body.as_ref() == data.as_slice(), "A: wrong bytes");
    assert_eq!(slow.hits(&digest.to_string()), 1, "{:?}", slow.seen());
    a.stop().await;
    b.stop().await;
}

/// In process, on the test's own runtime (as a library user or `start` runs it): nothing drops
/// the runtime to end what is left, so the listener itself must cut the response it stops
/// waiting for, before `run` returns.
#[tokio::test]
async fn a_response_still_running_at_the_drain_timeout_is_cut_and_the_daemon_exits() {
    // Large enough that an unread body cannot fit in the socket buffers.
    let layer = pattern(32 * 1024 * 1024, 44);
    let source = MemorySource::new();
    source.add_image("127.0.0.1:5000/test/app:v1", &[&layer]);
    let mut cfg = config(Routing::Off, MirrorConfig::default());
    cfg.limits.drain_timeout = Duration::from_millis(300);
    let mut n = support::start(source, cfg).await;

    let url = format!("{}/v2/test/app/blobs/{}", n.base, Digest::of(&layer));
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The body is not read: the response is still running when shutdown begins.
    n.shutdown.cancel();
    let exit = tokio::time::timeout(Duration::from_secs(20), &mut n.task).await;
    assert!(
        matches!(exit, Ok(Ok(Ok(())))),
        "the daemon did not exit cleanly after the drain timeout: {exit:?}"
    );
    // The runtime lives on: only the cutoff can end this body early.
    let body = tokio::time::timeout(Duration::from_secs(20), r.bytes()).await;
    assert!(
        matches!(body, Ok(Err(_))),
        "the response was not cut: {:?}",
        body.map(|b| b.map(|b| b.len()))
    );
}

/// A connection from `src` (a loopback address of our choosing) to `to`.
async fn connect_from(src: std::net::IpAddr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(src, 0)).unwrap();
    s.connect(to).await.unwrap()
}

/// One keep-alive `GET /v2/` on `s`: the status line, or what went wrong.
async fn status_line(s: &mut TcpStream) -> String {
    if let Err(e) = s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").await {
        return format!("write failed: {e}");
    }
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
        Ok(Ok(0)) => "closed".into(),
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        Ok(Err(e)) => format!("read failed: {e}"),
        Err(_) => "no answer in 10 s".into(),
    }
}

#[tokio::test]
async fn a_connected_peer_gets_a_reserved_slot_when_strangers_fill_the_pool() {
    let peer_ip = next_loopback();
    let stranger_ip = next_loopback();
    // The peer is connected: the router lists it (with its registry address) among its peers.
    let net = MemoryNetwork::new();
    net.insert(
        Key::Digest(Digest::of(b"anything")),
        Provider {
            peer: "p-peer".into(),
            addr: SocketAddr::new(peer_ip, 5000),
        },
    );
    let n = node(&net, "c", MirrorConfig::default(), |c| {
        c.limits.max_connections = 2;
        c.limits.reserved_connections = 1;
        // Busy keep-alive connections stay open for the whole test.
        c.limits.header_read_timeout = Duration::from_secs(60);
    })
    .await;

    // Strangers fill the pool with connections that each completed a request (none to evict).
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from(stranger_ip, n.addr).await;
        let line = status_line(&mut s).await;
        assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
        busy.push(s);
    }
    // Another stranger finds no slot...
    let mut s = connect_from(stranger_ip, n.addr).await;
    let line = status_line(&mut s).await;
    assert!(
        !line.starts_with("HTTP/1.1 200"),
        "a stranger beyond the pool: {line:?}"
    );
    // ...but the connected peer is served from the reserve.
    let mut s = connect_from(peer_ip, n.addr).await;
    let line = status_line(&mut s).await;
    assert!(
        line.starts_with("HTTP/1.1 200"),
        "the connected peer: {line:?}"
    );
    let m = n.metrics().await;
    assert!(
        m.contains("peermirror_connections_refused_total{reason=\"pool_full\"} 1"),
        "{m}"
    );
    drop(busy);
    n.stop().await;
}

fn bearer(t: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {t}").parse().unwrap(),
    );
    h
}

/// At the gate, not through the daemon: the daemon never throttles loopback (containerd's
/// address), so through the daemon this takes a client on another host:
/// `e2e_netns::a_failing_address_gets_429_until_its_window_ends` (429, `Retry-After` naming
/// `--auth-failure-window`). The gate is what the registry asks.
#[tokio::test]
async fn a_failing_address_is_throttled_until_its_window_expires() {
    use peermirror::auth::{AuthMode, FailureThrottle, Guard, Refusal, Tokens};
    use peermirror::server::ConnInfo;
    const WINDOW: Duration = Duration::from_millis(300);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("tokens");
    std::fs::write(&f, "s3cret\n").unwrap();
    let g = Guard {
        mode: AuthMode::Token,
        tokens: Some(Arc::new(Tokens::load(&f).unwrap())),
        throttle: FailureThrottle::new(3, WINDOW),
        revocation: None,
    };
    let from = |a: &str| ConnInfo {
        remote: a.parse().unwrap(),
        client_cert: None,
    };
    let (stranger, neighbour, local) = (
        from("10.0.0.9:1234"),
        from("10.0.0.10:1234"),
        from("127.0.0.1:1234"),
    );

    for _ in 0..3 {
        assert_eq!(
            g.check(&bearer("nope"), &stranger),
            Err(Refusal::WrongToken)
        );
    }
    // Three failures: refused even with the right token, other addresses unaffected.
    assert_eq!(
        g.check(&bearer("s3cret"), &stranger),
        Err(Refusal::Throttled)
    );
    assert!(g.check(&bearer("s3cret"), &neighbour).is_ok());
    // containerd's loopback address is never throttled.
    for _ in 0..5 {
        assert_eq!(g.check(&bearer("nope"), &local), Err(Refusal::WrongToken));
    }
    assert!(g.check(&bearer("s3cret"), &local).is_ok());

    // The window passes (the throttle keeps std time: a real, short wait).
    tokio::time::sleep(WINDOW + Duration::from_millis(200)).await;
    assert!(g.check(&bearer("s3cret"), &stranger).is_ok());
    // The count starts over: one more failure does not throttle again.
    assert_eq!(
        g.check(&bearer("nope"), &stranger),
        Err(Refusal::WrongToken)
    );
    assert!(g.check(&bearer("s3cret"), &stranger).is_ok());
}
