//! Issue 26 at a scale that fits the test command: 30 real libp2p routers on 127.0.0.1 with
//! the product's k = 5, each providing keys of its own. At steady state every lookup finds its
//! provider; then a fifth of the nodes freeze at once and every survivor must find every
//! survivor's keys again within a generous, polled bound, and at most 0.5 % fail afterwards
//! (issue 26's bound for the minute after a loss).
//!
//! The fifth that goes is chosen so that some keys lose every record holder (the six nodes
//! closest to one key whose provider survives): the worst case, which only a re-announcement
//! repairs before the next republish (3 min). Frozen: the node's runtime stops being driven,
//! its sockets stay open and the kernel keeps accepting and acknowledging, but nothing answers
//! (a machine that died without a RST, a stopped process). Only pings notice it; a SIGKILL's
//! closed sockets are noticed at once (bench/dht_sim.sh measures that case).
//!
//! Each node runs on its own single-threaded runtime in its own thread, so it can be frozen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::kad::{KBucketKey, RecordKey};
use peermirror::content::Key;
use peermirror::metrics::Metrics;
use peermirror::oci::Digest;
use peermirror::routing::{Bootstrap, P2pConfig, P2pRouter, Router, record_key};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

const NODES: usize = 30;
/// A fifth of the nodes.
const GONE: usize = 6;
const KEYS_PER_NODE: usize = 20;
/// The product's default (--dht-replication).
const K: usize = 5;
/// 30 nodes are what 2 cores carry at a time: the tests of this file take turns.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// How long one lookup may take to hand over a provider (debug build, 30 nodes on 2 shared
/// cores): generous, this is not a latency test (bench/dht_sim.sh measures that).
const LOOKUP_WAIT: Duration = Duration::from_secs(5);
/// How long the survivors may take to find every survivor's key again.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(90);
/// Lookups in flight at once, as a few pulls at a time would start them (a burst of 300 at
/// once measures how fast 30 debug-build nodes share 2 cores, not whether keys are found).
const CONCURRENT: usize = 8;

struct Node {
    router: P2pRouter,
    metrics: Arc<Metrics>,
    peer: PeerId,
    keys: Vec<Key>,
    /// Sent: the node freezes. Dropped: it stops.
    freeze: Option<oneshot::Sender<()>>,
    /// Dropped at the end: a frozen node's thread then drops its runtime.
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    fn start(index: usize, bootstrap: Vec<Bootstrap>) -> Node {
        Node::start_with(index, bootstrap, Some(P2pConfig::ANNOUNCE_AGAIN_AFTER))
    }

    /// [`Node::start`] with the second announcement pass `announce_again_after` the first peers.
    fn start_with(
        index: usize,
        bootstrap: Vec<Bootstrap>,
        announce_again_after: Option<Duration>,
    ) -> Node {
        let metrics = Arc::new(Metrics::new());
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let peer = keypair.public().to_peer_id();
        let (router_tx, router_rx) = std::sync::mpsc::channel();
        let (freeze, freeze_rx) = oneshot::channel::<()>();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let m = metrics.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let stop = CancellationToken::new();
            let frozen = rt.block_on(async {
                let (router, _task) = P2pRouter::start(
                    P2pConfig {
                        listen: "127.0.0.1:0".parse().unwrap(),
                        advertise: None,
                        registry_port: 5000,
                        bootstrap,
                        keypair,
                        psk: None,
                        provider_ttl: Duration::from_secs(600),
                        republish_interval: Duration::from_secs(180),
                        replication: K,
                        announce_again_after,
                    },
                    m,
                    stop.clone(),
                )
                .unwrap();
                router_tx.send(router).unwrap();
                freeze_rx.await.is_ok()
            });
            if frozen {
                // Nothing on this runtime runs until the test ends.
                let _ = release_rx.recv();
            }
            stop.cancel();
            drop(rt);
        });
        let router = router_rx.recv().unwrap();
        let keys = (0..KEYS_PER_NODE)
            .map(|j| Key::Digest(Digest::of(format!("node {index} key {j}").as_bytes())))
            .collect();
        Node {
            router,
            metrics,
            peer,
            keys,
            freeze: Some(freeze),
            release: Some(release),
            thread: Some(thread),
        }
    }

    fn announced(&self) -> u64 {
        let prefix = "peermirror_dht_announcements_total{what=\"announced\"} ";
        self.metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.freeze.take();
        self.release.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn distance_key(key: &Key) -> KBucketKey<RecordKey> {
    KBucketKey::new(RecordKey::new(&record_key(key)))
}

/// The nodes (indices) by distance to `key`, closest first.
fn by_distance(nodes: &[Node], key: &Key) -> Vec<usize> {
    let target = distance_key(key);
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|&i| KBucketKey::from(nodes[i].peer).distance(&target));
    order
}

async fn until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Does `router` find a provider of `key` (its query hands one over within LOOKUP_WAIT)?
async fn finds(router: P2pRouter, key: Key) -> bool {
    let mut rx = router.lookup(&key);
    matches!(
        tokio::time::timeout(LOOKUP_WAIT, rx.recv()).await,
        Ok(Some(_))
    )
}

/// The (asker, key) lookups, CONCURRENT at a time; the ones that found nobody.
async fn failed_lookups(nodes: &[Node], asks: &[(usize, Key)]) -> Vec<(usize, Key)> {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
    let mut set = tokio::task::JoinSet::new();
    for (i, (asker, key)) in asks.iter().enumerate() {
        let (router, key) = (nodes[*asker].router.clone(), key.clone());
        let slot = slots.clone().acquire_owned().await.unwrap();
        set.spawn(async move {
            let found = finds(router, key).await;
            drop(slot);
            (i, found)
        });
    }
    let mut failed = Vec::new();
    while let Some(r) = set.join_next().await {
        let (i, found) = r.unwrap();
        if !found {
            failed.push(asks[i].clone());
        }
    }
    failed
}

/// Each of `askers` looks up `per_asker` keys of other nodes among `providers`, spread over them.
fn spread_asks(
    nodes: &[Node],
    askers: &[usize],
    providers: &[usize],
    per_asker: usize,
) -> Vec<(usize, Key)> {
    let mut asks = Vec::new();
    for (n, &a) in askers.iter().enumerate() {
        for j in 0..per_asker {
            let p = providers[(n * per_asker + j + 1) % providers.len()];
            let p = if p == a {
                providers[(n * per_asker + j + 2) % providers.len()]
            } else {
                p
            };
            asks.push((a, nodes[p].keys[(n + j) % KEYS_PER_NODE].clone()));
        }
    }
    asks
}

/// For a failed assertion: each missed key's provider, its holders (gone ones marked) and
/// which of them the provider is connected to.
fn explain(nodes: &[Node], gone: &[usize], failed: &[(usize, Key)]) -> String {
    let index = |peer: &str| nodes.iter().position(|n| n.peer.to_string() == peer);
    let mut out = String::new();
    for (asker, key) in failed {
        let Some(provider) = nodes.iter().position(|n| n.keys.contains(key)) else {
            continue;
        };
        let connected: Vec<usize> = nodes[provider]
            .router
            .status()
            .peers
            .iter()
            .filter_map(|p| index(p.peer.as_str()))
            .collect();
        let holders: Vec<String> = by_distance(nodes, key)
            .into_iter()
            .filter(|i| *i != provider)
            .take(2 * K)
            .map(|i| {
                let g = if gone.contains(&i) { "gone" } else { "" };
                let c = if connected.contains(&i) { "+conn" } else { "" };
                format!("{i}{g}{c}")
            })
            .collect();
        out += &format!(
            "\n  node {asker} missed {key:?} of node {provider}; its 2k closest: {holders:?}; provider connected to {} peers, announced {}",
            connected.len(),
            nodes[provider].announced()
        );
    }
    out
}

async fn survivors_find_every_key_after_a_fifth_goes() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    // Node 0 is the seed everyone starts from; it never goes (the simulation's seeds never do).
    let mut nodes = vec![Node::start(0, vec![])];
    until("the seed to listen", Duration::from_secs(10), || {
        !nodes[0].router.listen_addrs().is_empty()
    })
    .await;
    let seed = vec![Bootstrap::Static(nodes[0].router.listen_addrs()[0].clone())];
    join(&mut nodes, NODES - 1, &seed).await;
    for n in &nodes {
        n.router.advertise(n.keys.clone()).await.unwrap();
    }
    until(
        "every key's first announcement",
        Duration::from_secs(90),
        || nodes.iter().all(|n| n.announced() >= KEYS_PER_NODE as u64),
    )
    .await;

    // Steady state: nobody misses a key another node provides.
    let all: Vec<usize> = (0..NODES).collect();
    let failed = failed_lookups(&nodes, &spread_asks(&nodes, &all, &all, 10)).await;
    assert!(
        failed.is_empty(),
        "{} of {} steady-state lookups found nobody: {failed:?}",
        failed.len(),
        NODES * 10
    );

    // The fifth to go: the GONE nodes closest to a key whose provider is far from it (not
    // among its 2k closest, so it is neither a holder nor asked first), never the seed.
    let (victim_provider, victim, gone) = nodes
        .iter()
        .enumerate()
        .flat_map(|(p, n)| n.keys.iter().map(move |k| (p, k)))
        .find_map(|(p, k)| {
            let order = by_distance(&nodes, k);
            let closest = &order[..GONE];
            let far = !order[..2 * K].contains(&p) && !closest.contains(&0);
            far.then(|| (p, k.clone(), closest.to_vec()))
        })
        .expect("no key has its provider far from its closest nodes");
    let survivors: Vec<usize> = all.iter().copied().filter(|i| !gone.contains(i)).collect();
    // Survivors' keys whose holders (the k closest nodes other than the provider) all go.
    let orphaned: Vec<(usize, Key)> = survivors
        .iter()
        .flat_map(|&p| nodes[p].keys.iter().map(move |k| (p, k)))
        .filter(|(p, k)| {
            by_distance(&nodes, k)
                .into_iter()
                .filter(|i| i != p)
                .take(K)
                .all(|i| gone.contains(&i))
        })
        .map(|(p, k)| (p, k.clone()))
        .collect();
    assert!(
        orphaned.iter().any(|(_, k)| *k == victim),
        "{victim:?} keeps a holder"
    );
    eprintln!(
        "frozen: nodes {gone:?}; {} survivors' keys lose every holder",
        orphaned.len()
    );

    let t0 = Instant::now();
    for &g in &gone {
        let _ = nodes[g].freeze.take().unwrap().send(());
    }
    // In rounds, each survivor still missing keys looks up three orphaned keys (the victim and
    // two others, a different pair each round) and two keys of other survivors, until one
    // round finds them all. Recovery is also every orphaned key found again: each round asks
    // for up to UNPLACED_PER_ROUND of those not found yet (their providers re-announce them
    // one by one, some seconds apart), so the check below does not start while some are
    // still being re-announced.
    const UNPLACED_PER_ROUND: usize = 16;
    let mut pending: Vec<usize> = survivors.clone();
    let mut unplaced: Vec<(usize, Key)> = orphaned.clone();
    let mut recovered = Vec::new();
    let mut replaced_at = None;
    let mut round = 0;
    let mut last_failed = Vec::new();
    while !pending.is_empty() || !unplaced.is_empty() {
        assert!(
            t0.elapsed() < RECOVERY_DEADLINE,
            "frozen: {} survivors still miss keys, {} orphaned keys not found again, {:?} after the fifth went: {}",
            pending.len(),
            unplaced.len(),
            RECOVERY_DEADLINE,
            explain(&nodes, &gone, &last_failed)
        );
        let mut asks = spread_asks(&nodes, &pending, &survivors, 2);
        for (n, &a) in pending.iter().enumerate() {
            if a != victim_provider {
                asks.push((a, victim.clone()));
            }
            // (A node never looks up a key it provides: its lookup skips itself.)
            let others: Vec<&Key> = orphaned
                .iter()
                .filter(|(p, _)| *p != a)
                .map(|(_, k)| k)
                .collect();
            for j in 0..2 {
                let k = others[(round * 2 + n + j) % others.len()];
                asks.push((a, k.clone()));
            }
        }
        let asked_unplaced: Vec<Key> = unplaced
            .iter()
            .take(UNPLACED_PER_ROUND)
            .enumerate()
            .map(|(n, (p, k))| {
                let mut asker = survivors[(round + n) % survivors.len()];
                if asker == *p {
                    asker = survivors[(round + n + 1) % survivors.len()];
                }
                asks.push((asker, k.clone()));
                k.clone()
            })
            .collect();
        round += 1;
        let failed = failed_lookups(&nodes, &asks).await;
        last_failed = failed.clone();
        let at = t0.elapsed();
        pending.retain(|a| {
            let missed = failed.iter().any(|(f, _)| f == a);
            if !missed {
                recovered.push(at);
            }
            missed
        });
        // A key is found again once any survivor finds it (its records are back on live
        // holders). The ones asked and missed (the front) go to the back: each round asks
        // different ones.
        let missed_again = asked_unplaced
            .iter()
            .filter(|k| failed.iter().any(|(_, f)| f == *k))
            .count();
        unplaced.retain(|(_, k)| !asked_unplaced.contains(k) || failed.iter().any(|(_, f)| f == k));
        unplaced.rotate_left(missed_again);
        if unplaced.is_empty() && replaced_at.is_none() {
            replaced_at = Some(at);
        }
        if !pending.is_empty() || !unplaced.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    recovered.sort();
    eprintln!(
        "frozen: survivors recovered after p50 {:?}, max {:?}; every orphaned key found again after {:?}",
        recovered[recovered.len() / 2],
        recovered[recovered.len() - 1],
        replaced_at.unwrap_or_default()
    );

    // And stay recovered: every orphaned key, and ten keys per survivor, none missed.
    let mut asks = spread_asks(&nodes, &survivors, &survivors, 10);
    for (n, (p, k)) in orphaned.iter().enumerate() {
        let mut asker = survivors[n % survivors.len()];
        if asker == *p {
            asker = survivors[(n + 1) % survivors.len()];
        }
        asks.push((asker, k.clone()));
    }
    // Issue 26's bound for the minute after a loss: at most 0.5 % fail (1 of 275 here; one
    // run of the test command saw exactly that).
    let failed = failed_lookups(&nodes, &asks).await;
    assert!(
        failed.len() * 200 <= asks.len(),
        "frozen: {} of {} lookups found nobody after recovery (> 0.5 %):{}",
        failed.len(),
        asks.len(),
        explain(&nodes, &gone, &failed)
    );
    // Drop the nodes off this runtime's threads: each joins its own thread.
    tokio::task::spawn_blocking(move || drop(nodes))
        .await
        .unwrap();
}

/// Frozen rather than killed: the harder case (a SIGKILL's closed sockets are noticed at once,
/// bench/dht_sim.sh measures that), and it needs both repairs, pings noticing the silence and
/// the re-announcement that follows. One test: 30 nodes are what 2 cores carry at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_find_every_key_after_a_fifth_of_nodes_freezes() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    survivors_find_every_key_after_a_fifth_goes().await;
}

/// Starts `count` more nodes through `seed` and waits until every node knows a few peers.
async fn join(nodes: &mut Vec<Node>, count: usize, seed: &[Bootstrap]) {
    let first = nodes.len();
    for i in first..first + count {
        nodes.push(Node::start(i, seed.to_vec()));
    }
    until(
        "every node to know a few peers",
        Duration::from_secs(60),
        || nodes.iter().all(|n| n.router.status().peer_count() >= K),
    )
    .await;
}

/// The early node's timed second pass: out of the test's reach, so the pass that repairs its
/// keys is the one its grown routing table triggers.
const TIMED_PASS: Duration = Duration::from_secs(600);
/// How long after the cluster has filled the early node may take to announce again (the
/// table settles for 5 s first).
const PASS_WAIT: Duration = Duration::from_secs(30);

/// The second announcement pass (issue 26): a node whose first announcement went out while
/// the cluster was one other node (its routing table held nothing else) stored its records on
/// that node only. Once the others have joined, the keys' k closest nodes are others, which
/// never got the records, so lookups miss until the next republish (minutes). When the routing
/// table has doubled and stopped growing, the node announces every key again, and every
/// lookup finds them, long before the timed pass (a minute in the product).
/// (Fails with the pass disabled: `announce_again_after: None`, or the growth check removed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_announced_before_the_cluster_filled_are_found_once_it_stops_growing() {
    const LATE: usize = 20;
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let seed = Node::start(0, vec![]);
    until("the seed to listen", Duration::from_secs(10), || {
        !seed.router.listen_addrs().is_empty()
    })
    .await;
    let to_seed = vec![Bootstrap::Static(seed.router.listen_addrs()[0].clone())];
    let early = Node::start_with(1, to_seed.clone(), Some(TIMED_PASS));
    early.router.advertise(early.keys.clone()).await.unwrap();
    until(
        "the early node's first announcement",
        Duration::from_secs(30),
        || early.announced() >= KEYS_PER_NODE as u64,
    )
    .await;
    let mut nodes = vec![seed, early];
    join(&mut nodes, LATE, &to_seed).await;
    let filled = Instant::now();
    // How many of the early node's keys have all their k closest among the nodes that were
    // not there when it first announced (neither the seed, which holds the records, nor the
    // early node): what the pass has to repair.
    let misplaced = nodes[1]
        .keys
        .iter()
        .filter(|k| by_distance(&nodes, k).into_iter().take(K).all(|i| i > 1))
        .count();
    eprintln!(
        "second pass: {misplaced} of {KEYS_PER_NODE} keys have their k closest among the late nodes"
    );
    assert!(misplaced > 0, "no key to repair: the test shows nothing");
    // Wait for the pass, but look up either way: what matters is whether the keys are found.
    let passed = tokio::time::timeout(PASS_WAIT, async {
        while nodes[1].announced() < 2 * KEYS_PER_NODE as u64 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .is_ok();
    eprintln!(
        "second pass: {} {:?} after every node knew a few peers",
        if passed { "done" } else { "not done" },
        filled.elapsed()
    );
    // Every late node looks up every key of the early node.
    let asks: Vec<(usize, Key)> = (2..2 + LATE)
        .flat_map(|a| nodes[1].keys.iter().map(move |k| (a, k.clone())))
        .collect();
    let failed = failed_lookups(&nodes, &asks).await;
    assert!(
        failed.is_empty(),
        "{} of {} lookups of keys announced before the cluster filled found nobody (second pass {}):{}",
        failed.len(),
        asks.len(),
        if passed { "done" } else { "not done" },
        explain(&nodes, &[], &failed)
    );
    assert!(passed, "the early node never announced its keys again");
    tokio::task::spawn_blocking(move || drop(nodes))
        .await
        .unwrap();
}
