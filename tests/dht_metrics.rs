//! The Kademlia requests a node answers are counted by kind (`peermirror_dht_requests_total`),
//! the figure `bench/dht_sim.sh` reports as DHT messages per node; announcements are counted
//! by result and republished on the node's own schedule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use peermirror::content::Key;
use peermirror::metrics::Metrics;
use peermirror::oci::Digest;
use peermirror::routing::{Bootstrap, P2pConfig, P2pRouter, Router};
use tokio_util::sync::CancellationToken;

fn router(bootstrap: Vec<Bootstrap>, metrics: Arc<Metrics>, stop: &CancellationToken) -> P2pRouter {
    router_with(
        bootstrap,
        metrics,
        stop,
        Duration::from_secs(180),
        Some(peermirror::routing::P2pConfig::ANNOUNCE_AGAIN_AFTER),
    )
}

fn router_with(
    bootstrap: Vec<Bootstrap>,
    metrics: Arc<Metrics>,
    stop: &CancellationToken,
    republish_interval: Duration,
    announce_again_after: Option<Duration>,
) -> P2pRouter {
    P2pRouter::start(
        P2pConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            registry_port: 5000,
            bootstrap,
            keypair: libp2p::identity::Keypair::generate_ed25519(),
            psk: None,
            provider_ttl: Duration::from_secs(600),
            republish_interval,
            replication: 20,
            announce_again_after,
        },
        metrics,
        stop.clone(),
    )
    .unwrap()
    .0
}

fn count(metrics: &Metrics, what: &str) -> u64 {
    sample(metrics, "peermirror_dht_requests_total", what)
}

fn sample(metrics: &Metrics, name: &str, what: &str) -> u64 {
    let prefix = format!("{name}{{what=\"{what}\"}} ");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_is_announced_then_republished_on_schedule_until_withdrawn() {
    const KEYS: usize = 120;
    let stop = CancellationToken::new();
    let metrics: Vec<Arc<Metrics>> = (0..3).map(|_| Arc::new(Metrics::new())).collect();
    let republish = Duration::from_secs(2);
    // Only the schedule's announcements are counted here: no second pass (the routing table
    // doubles as node 3 joins, which would announce every key once more; dht_recovery tests
    // that pass).
    let r1 = router_with(vec![], metrics[0].clone(), &stop, republish, None);
    until("node 1 to listen", || !r1.listen_addrs().is_empty()).await;
    let seed = vec![Bootstrap::Static(r1.listen_addrs()[0].clone())];
    let r2 = router_with(seed.clone(), metrics[1].clone(), &stop, republish, None);
    let r3 = router_with(seed, metrics[2].clone(), &stop, republish, None);
    until("the nodes to connect", || {
        [&r1, &r2, &r3].iter().all(|r| r.status().peer_count() == 2)
    })
    .await;

    // More keys than announcements run at a time: all are announced, each once.
    let keys: Vec<Key> = (0..KEYS)
        .map(|i| Key::Digest(Digest::of(format!("key {i}").as_bytes())))
        .collect();
    r1.advertise(keys.clone()).await.unwrap();
    let announced = || {
        sample(
            &metrics[0],
            "peermirror_dht_announcements_total",
            "announced",
        )
    };
    until("the first round", || announced() >= KEYS as u64).await;
    assert!(
        announced() < 2 * KEYS as u64,
        "announced {} times before a republish was due",
        announced()
    );
    for key in [&keys[0], &keys[KEYS / 2], &keys[KEYS - 1]] {
        let mut rx = r3.lookup(key);
        let found = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert!(matches!(found, Ok(Some(_))), "node 3 did not find {key:?}");
    }

    // Without being asked again, node 1 republishes within the interval.
    until("the republish", || announced() >= 2 * KEYS as u64).await;

    // Withdrawn keys are not republished: over the next two intervals only the rest is.
    r1.withdraw(keys[..KEYS / 2].to_vec()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = announced();
    tokio::time::sleep(2 * republish).await;
    let more = announced() - before;
    assert!(
        more <= 2 * (KEYS / 2) as u64 + KEYS as u64 / 4,
        "{more} announcements in two intervals for {} keys",
        KEYS / 2
    );
    assert!(more >= (KEYS / 2) as u64, "only {more} republished");
    assert_eq!(
        sample(&metrics[0], "peermirror_dht_announcements_total", "failed"),
        0
    );
    stop.cancel();
}
