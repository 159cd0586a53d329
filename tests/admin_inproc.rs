//! The admin API against running nodes: status, peers, lookup and content.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use peermirror::admin::{connect, proto};
use peermirror::content::MemorySource;
use peermirror::daemon::Routing;
use peermirror::mirror::MirrorConfig;
use peermirror::oci::Digest;
use peermirror::routing::{Bootstrap, P2pRouter};
use support::{config, p2p_router, start_on, wait_ready};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

async fn node(
    src: MemorySource,
    bootstrap: Vec<Bootstrap>,
    sock: std::path::PathBuf,
    stop: &CancellationToken,
) -> (support::Node, P2pRouter) {
    let registry = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let none = bootstrap.is_empty();
    let router = p2p_router(registry.local_addr().unwrap().port(), None, bootstrap, stop).await;
    let mut cfg = config(
        Routing::Custom {
            router: Arc::new(router.clone()),
            bootstrap_none: none,
        },
        MirrorConfig::default(),
    );
    cfg.admin_sock = Some(sock);
    let n = start_on(registry, src, cfg).await;
    wait_ready(&n, true).await;
    (n, router)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_api_reports_status_peers_lookup_and_content() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let src1 = MemorySource::new();
    let m = src1.add_image("127.0.0.1:5000/test/app:v1", &[b"layer one"]);
    let (n1, r1) = node(src1.clone(), vec![], dir.path().join("a1.sock"), &stop).await;
    let (n2, r2) = node(
        MemorySource::new(),
        vec![Bootstrap::Static(r1.listen_addrs()[0].clone())],
        dir.path().join("a2.sock"),
        &stop,
    )
    .await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("a2.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let mut c2 = connect(&dir.path().join("a2.sock")).await.unwrap();
    let s = c2
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(s.ready, "{s:?}");
    assert_eq!(s.peer_id, r2.peer_id());
    assert_eq!(s.connected_peers, 1);
    assert_eq!(s.auth_mode, "none");
    assert!(!s.listen_addrs.is_empty());

    // The registry address arrives with identify, just after the connection itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    let peers = loop {
        let p = c2.peers(proto::PeersRequest {}).await.unwrap().into_inner();
        if p.peers.iter().all(|x| !x.registry_addr.is_empty()) {
            break p;
        }
        assert!(Instant::now() < deadline, "identify never completed: {p:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(peers.peers.len(), 1);
    assert_eq!(peers.peers[0].peer_id, r1.peer_id());
    assert_eq!(peers.peers[0].registry_addr, n1.addr.to_string());

    // Node 2 finds node 1 as the provider of node 1's layer, and node 1 answers the HEAD.
    let layer = Digest::of(b"layer one");
    let deadline = Instant::now() + Duration::from_secs(10);
    let l = loop {
        let l = c2
            .lookup(proto::LookupRequest {
                key: layer.to_string(),
                timeout_ms: 1000,
            })
            .await
            .unwrap()
            .into_inner();
        if !l.providers.is_empty() {
            break l;
        }
        assert!(Instant::now() < deadline, "lookup never found node 1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!l.local);
    assert_eq!(l.providers[0].peer_id, r1.peer_id());
    assert!(l.providers[0].answered, "{l:?}");
    // A tag, by image reference.
    let l = c2
        .lookup(proto::LookupRequest {
            key: "127.0.0.1:5000/test/app:v1".into(),
            timeout_ms: 1000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(l.providers.iter().any(|p| p.answered), "{l:?}");
    // Bad keys are refused with a message.
    let e = c2
        .lookup(proto::LookupRequest {
            key: "nonsense".into(),
            timeout_ms: 10,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // Node 2 serves node 1's layer through the mirror: the activity (the status page's data)
    // shows the request, its source and its bytes, and the traffic's last point counts them.
    let r = support::client()
        .get(format!("{}/v2/test/app/blobs/{layer}", n2.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"layer one");
    let deadline = Instant::now() + Duration::from_secs(5);
    let a = loop {
        let a = c2
            .activity(proto::ActivityRequest {})
            .await
            .unwrap()
            .into_inner();
        if !a.requests.is_empty() {
            break a;
        }
        assert!(Instant::now() < deadline, "no request in the activity");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let req = &a.requests[0];
    assert_eq!(req.path, format!("/v2/test/app/blobs/{layer}"), "{a:?}");
    assert_eq!((req.method.as_str(), req.status), ("GET", 200));
    assert_eq!((req.source.as_str(), req.bytes), ("peer", 9), "{a:?}");
    assert!(req.complete && req.at_ms > 0, "{req:?}");
    assert_eq!(a.sample_interval_ms, 15_000);
    let now = a.traffic.last().unwrap();
    assert!(a.traffic.len() >= 2, "the sample at start, then now: {a:?}");
    assert_eq!((now.peer_bytes, now.local_bytes), (9, 0));
    assert_eq!(a.traffic[0].peer_bytes, 0);
    assert!(a.peer_events.is_empty(), "{a:?}");

    let mut c1 = connect(&dir.path().join("a1.sock")).await.unwrap();
    let content = c1
        .content(proto::ContentRequest {
            filter: String::new(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // Config, layer, manifest, and the tag.
    assert_eq!(content.total, 4);
    let tag = content.entries.iter().find(|e| e.kind == "tag").unwrap();
    assert_eq!(tag.target, m.digest.to_string());
    let filtered = c1
        .content(proto::ContentRequest {
            filter: layer.hex()[..12].to_string(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.total, 1);
    assert_eq!(filtered.entries[0].size, 9);

    // containerd going away shows up as not ready, with the reason.
    src1.set_unavailable(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c1
            .status(proto::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if !s.ready {
            assert!(!s.containerd_up);
            assert!(!s.not_ready_reasons.is_empty());
            break;
        }
        assert!(Instant::now() < deadline, "never not-ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n1.stop().await;
    n2.stop().await;
    stop.cancel();
}
