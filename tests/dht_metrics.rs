//! The Kademlia requests a node answers are counted by kind (`peermirror_dht_requests_total`),
//! the figure `bench/dht_sim.sh` reports as DHT messages per node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use peermirror::content::Key;
use peermirror::metrics::Metrics;
use peermirror::oci::Digest;
use peermirror::routing::{Bootstrap, P2pConfig, P2pRouter, Router};
use tokio_util::sync::CancellationToken;

fn router(bootstrap: Vec<Bootstrap>, metrics: Arc<Metrics>, stop: &CancellationToken) -> P2pRouter {
    P2pRouter::start(
        P2pConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            registry_port: 5000,
            bootstrap,
            keypair: libp2p::identity::Keypair::generate_ed25519(),
            psk: None,
            provider_ttl: Duration::from_secs(600),
            republish_interval: Duration::from_secs(180),
        },
        metrics,
        stop.clone(),
    )
    .unwrap()
    .0
}

fn count(metrics: &Metrics, what: &str) -> u64 {
    let prefix = format!("peermirror_dht_requests_total{{what=\"{what}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_dht_requests_are_counted_by_kind() {
    let stop = CancellationToken::new();
    let (m1, m2) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
    let r1 = router(vec![], m1.clone(), &stop);
    until("node 1 to listen", || !r1.listen_addrs().is_empty()).await;
    let r2 = router(
        vec![Bootstrap::Static(r1.listen_addrs()[0].clone())],
        m2.clone(),
        &stop,
    );
    until("the nodes to connect", || {
        r1.status().peer_count() == 1 && r2.status().peer_count() == 1
    })
    .await;

    // Node 2 advertises: node 1, its only peer, is asked for closer peers and stores the record.
    let key = Key::Digest(Digest::of(b"counted"));
    r2.advertise(vec![key.clone()]).await.unwrap();
    until("node 1 to count the ADD_PROVIDER", || {
        count(&m1, "add_provider") >= 1
    })
    .await;
    assert!(count(&m1, "find_node") >= 1, "{}", m1.encode());

    // Node 1 looks the key up: node 2 answers a GET_PROVIDERS.
    let mut rx = r1.lookup(&key);
    let found = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    assert!(matches!(found, Ok(Some(_))), "node 1 never found node 2");
    until("node 2 to count the GET_PROVIDERS", || {
        count(&m2, "get_providers") >= 1
    })
    .await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_advertised_before_the_first_peer_are_announced_when_it_connects() {
    let stop = CancellationToken::new();
    let (m1, m2) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
    let r1 = router(vec![], m1.clone(), &stop);
    until("node 1 to listen", || !r1.listen_addrs().is_empty()).await;
    // Node 1 advertises while alone (as when its index loads before bootstrap connects).
    r1.advertise(vec![Key::Digest(Digest::of(b"early"))])
        .await
        .unwrap();
    let _r2 = router(
        vec![Bootstrap::Static(r1.listen_addrs()[0].clone())],
        m2.clone(),
        &stop,
    );
    // Without the re-announcement the record reaches node 2 only at the republish (3 min).
    until("node 2 to receive node 1's early record", || {
        count(&m2, "add_provider") >= 1
    })
    .await;
    stop.cancel();
}
