//! What every [`Router`] must do, written once and run against each implementation: the libp2p
//! router (three real nodes on 127.0.0.1) and the in-memory router. Each check gets a fresh
//! cluster; `conformance!` at the bottom expands every check for every implementation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peermirror::content::Key;
use peermirror::metrics::Metrics;
use peermirror::oci::{Digest, TagKey};
use peermirror::routing::{
    Bootstrap, MemoryNetwork, MemoryRouter, P2pConfig, P2pRouter, Provider, Router,
};
use tokio_util::sync::CancellationToken;

/// How long provider records live when a check does not care. (The libp2p router forgets a
/// withdrawn key only when the records other nodes hold expire; the withdraw check shortens it
/// and tells the withdraw from expiry by a kept key that outlives it.)
const LONG_TTL: Duration = Duration::from_secs(600);
const SHORT_TTL: Duration = Duration::from_secs(3);
/// Generous for debug builds on a loaded 2-core machine.
const SETTLE: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Libp2p,
    Memory,
}

struct Member {
    router: Arc<dyn Router>,
    /// What the router says its identity is: the `peer` others must see in lookups.
    id: String,
    /// The registry endpoint other nodes must be told.
    registry: SocketAddr,
}

struct Cluster {
    nodes: Vec<Member>,
    stop: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn registry_addr(i: usize) -> SocketAddr {
    // Nothing listens there: the router only carries the address, it never connects to it.
    SocketAddr::from(([127, 0, 0, 1], 41_000 + u16::try_from(i).unwrap()))
}

async fn cluster(kind: Kind, nodes: usize, provider_ttl: Duration) -> Cluster {
    let stop = CancellationToken::new();
    let routers: Vec<Arc<dyn Router>> = match kind {
        Kind::Memory => {
            let net = MemoryNetwork::new();
            (0..nodes)
                .map(|i| {
                    Arc::new(MemoryRouter::new(
                        net.clone(),
                        &format!("node{i}"),
                        registry_addr(i),
                    )) as Arc<dyn Router>
                })
                .collect()
        }
        Kind::Libp2p => libp2p_routers(nodes, provider_ttl, &stop).await,
    };
    let nodes = routers
        .into_iter()
        .enumerate()
        .map(|(i, router)| Member {
            id: router.status().local_id,
            router,
            registry: registry_addr(i),
        })
        .collect();
    Cluster { nodes, stop }
}

/// Node 0 starts alone, the others bootstrap from it; returns once every node is connected
/// and knows its peers' registry ports (identify done).
async fn libp2p_routers(
    nodes: usize,
    provider_ttl: Duration,
    stop: &CancellationToken,
) -> Vec<Arc<dyn Router>> {
    let mut routers: Vec<P2pRouter> = Vec::new();
    for i in 0..nodes {
        let bootstrap = match routers.first() {
            None => Vec::new(),
            Some(first) => vec![Bootstrap::Static(first.listen_addrs()[0].clone())],
        };
        let (router, _task) = P2pRouter::start(
            P2pConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                advertise: None,
                registry_port: registry_addr(i).port(),
                bootstrap,
                keypair: libp2p::identity::Keypair::generate_ed25519(),
                psk: None,
                provider_ttl,
                republish_interval: provider_ttl / 3,
                replication: 20,
                announce_again_after: Some(peermirror::routing::P2pConfig::ANNOUNCE_AGAIN_AFTER),
            },
            Arc::new(Metrics::new()),
            stop.clone(),
        )
        .unwrap();
        wait_for("the router to listen", || !router.listen_addrs().is_empty()).await;
        routers.push(router);
    }
    let first = routers[0].clone();
    wait_for("node 0 to know every other node's registry", || {
        let s = first.status();
        s.peers.iter().filter(|p| p.registry.is_some()).count() == nodes - 1
    })
    .await;
    for r in &routers[1..] {
        wait_for("a node to know node 0's registry", || {
            r.status().peers.iter().any(|p| p.registry.is_some())
        })
        .await;
    }
    routers
        .into_iter()
        .map(|r| Arc::new(r) as Arc<dyn Router>)
        .collect()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Everything one lookup yields until its channel closes.
async fn lookup_once(router: &dyn Router, key: &Key) -> Vec<Provider> {
    let mut rx = router.lookup(key);
    let mut found = Vec::new();
    // The libp2p query times out after 5 s; a lookup that outlives that is a bug.
    let collect = async {
        while let Some(p) = rx.recv().await {
            found.push(p);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), collect)
        .await
        .expect("a lookup never ended");
    found
}

/// Repeats lookups (records spread asynchronously) until `done` holds for what one yields.
async fn lookup_until(
    router: &dyn Router,
    key: &Key,
    what: &str,
    done: impl Fn(&[Provider]) -> bool,
) -> Vec<Provider> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let found = lookup_once(router, key).await;
        if done(&found) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{key}: {what}; last lookup found {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn provider(m: &Member) -> Provider {
    Provider {
        peer: m.id.clone().into(),
        addr: m.registry,
    }
}

fn digest_key(seed: &str) -> Key {
    Key::Digest(Digest::of(seed.as_bytes()))
}

fn tag_key(image: &str) -> Key {
    Key::Tag(TagKey::from_image_name(image).unwrap())
}

async fn advertise_then_lookup_finds_it(kind: Kind) {
    let c = cluster(kind, 3, LONG_TTL).await;
    let (a, b, third) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    for key in [digest_key("a layer"), tag_key("127.0.0.1:5000/test/app:v1")] {
        b.router.advertise(vec![key.clone()]).await.unwrap();
        for other in [a, third] {
            let found = lookup_until(&*other.router, &key, "the provider never showed", |f| {
                !f.is_empty()
            })
            .await;
            assert_eq!(found, vec![provider(b)], "{key}");
        }
        // A node never finds itself.
        assert!(lookup_once(&*b.router, &key).await.is_empty(), "{key}");
    }
}

/// The libp2p router cannot delete the records other nodes hold (Kademlia has no "unprovide"):
/// its withdraw stops re-publishing, so the records die at their TTL while a kept key's are
/// renewed every TTL/3. What shows the withdraw (and not a lookup that came back empty, or
/// expiry alone) is that contrast held over two more lifetimes: the withdrawn key never comes
/// back, the kept one is found throughout. The in-memory router forgets at once (its records
/// never expire, so nothing else could have removed it).
async fn withdraw_makes_it_disappear(kind: Kind) {
    let c = cluster(kind, 3, SHORT_TTL).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let keep = digest_key("kept");
    let drop = digest_key("withdrawn");
    a.router
        .advertise(vec![keep.clone(), drop.clone()])
        .await
        .unwrap();
    for key in [&keep, &drop] {
        lookup_until(&*b.router, key, "never advertised", |f| !f.is_empty()).await;
    }
    a.router.withdraw(vec![drop.clone()]).await.unwrap();
    if let Kind::Memory = kind {
        assert!(
            lookup_once(&*b.router, &drop).await.is_empty(),
            "still found right after the withdraw"
        );
    }
    lookup_until(&*b.router, &drop, "still found after withdraw", |f| {
        f.is_empty()
    })
    .await;
    let until = Instant::now() + 2 * SHORT_TTL;
    while Instant::now() < until {
        assert!(
            lookup_once(&*b.router, &drop).await.is_empty(),
            "the withdrawn key came back (still re-published?)"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Withdrawing one key leaves the others (re-published past their lifetime) alone.
    assert_eq!(
        lookup_once(&*b.router, &keep).await,
        vec![provider(a)],
        "the kept key was lost with the withdrawn one"
    );
}

async fn an_unknown_key_ends_quickly_and_empty(kind: Kind) {
    let c = cluster(kind, 3, LONG_TTL).await;
    c.nodes[0]
        .router
        .advertise(vec![digest_key("something else")])
        .await
        .unwrap();
    for key in [
        digest_key("nobody"),
        tag_key("127.0.0.1:5000/nobody/app:v1"),
    ] {
        let started = Instant::now();
        assert!(lookup_once(&*c.nodes[1].router, &key).await.is_empty());
        // The mirror answers 404 when the channel closes, instead of waiting out its timeout.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{key}: {:?}",
            started.elapsed()
        );
    }
}

async fn status_reports_peers(kind: Kind) {
    let c = cluster(kind, 3, LONG_TTL).await;
    // The in-memory router meets peers through their records: everyone advertises something.
    for (i, m) in c.nodes.iter().enumerate() {
        m.router
            .advertise(vec![digest_key(&format!("held by {i}"))])
            .await
            .unwrap();
    }
    for m in &c.nodes {
        let s = m.router.status();
        assert!(!s.local_id.is_empty());
        assert_eq!(s.local_id, m.id);
        assert!(s.expects_peers);
        wait_for("every other node among the peers", || {
            let s = m.router.status();
            c.nodes.iter().filter(|o| o.id != m.id).all(|o| {
                s.peers
                    .iter()
                    .any(|p| p.peer.as_str() == o.id && p.registry == Some(o.registry))
            })
        })
        .await;
        let s = m.router.status();
        assert!(
            s.peers.iter().all(|p| p.peer.as_str() != m.id),
            "itself as a peer"
        );
        assert_eq!(s.peer_count(), s.peers.len());
        assert_eq!(s.peer_count(), 2);
        assert!(!s.waiting_for_peers());
    }
}

async fn many_keys_advertise_and_resolve(kind: Kind) {
    let c = cluster(kind, 3, LONG_TTL).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let keys: Vec<Key> = (0..2_000)
        .map(|i| digest_key(&format!("layer {i}")))
        .collect();
    a.router.advertise(keys.clone()).await.unwrap();
    for key in [&keys[0], &keys[999], &keys[1_999]] {
        let found = lookup_until(&*b.router, key, "never found", |f| !f.is_empty()).await;
        assert_eq!(found, vec![provider(a)]);
    }
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod libp2p_router {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::Kind::Libp2p).await;
                }
            )*
        }
        mod memory_router {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(super::Kind::Memory).await;
                }
            )*
        }
    };
}

conformance!(
    advertise_then_lookup_finds_it,
    withdraw_makes_it_disappear,
    an_unknown_key_ends_quickly_and_empty,
    status_reports_peers,
    many_keys_advertise_and_resolve,
);
