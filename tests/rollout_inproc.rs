//! Issue 25, rollouts at line rate, in process: nodes on loopback with a shared in-memory
//! router. A source with its `--max-followers` answers the next peer "busy" so it follows a
//! node that follows the source (a chain, each node uploading about one copy); a peer that
//! finds every copy busy is let in anyway (pulls never get worse); nodes that miss a new blob
//! ask its coordinator, which sends one to the upstream and chains the others behind it. The rates and figures
//! at scale are measured by `bench/rollout.sh`, not here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use peermirror::content::{Key, MemorySource};
use peermirror::daemon::Config;
use peermirror::mirror::{MirrorConfig, coordinator_of};
use peermirror::oci::Digest;
use peermirror::routing::{MemoryNetwork, MemoryRouter, Router};
use support::{Node, client, config, pattern, routed, start_on, wait_ready};
use tokio::net::TcpListener;

/// Big enough to be capped (1 MiB or more), small enough to stream in a few seconds when the
/// source's egress is capped at [`SLOW`].
const SIZE: usize = 6 * 1024 * 1024 + 11;
const SLOW: u64 = 2 * 1024 * 1024;

async fn node(
    net: &MemoryNetwork,
    name: &str,
    source: MemorySource,
    tune: impl FnOnce(&mut Config),
) -> Node {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = MemoryRouter::new(net.clone(), name, l.local_addr().unwrap());
    let mut c = config(
        routed(r),
        MirrorConfig {
            // Stream, as for a big layer.
            verify_before_send: 1024,
            // Claims are off by default; these tests run with them on.
            claim_wait: Duration::from_secs(1),
            ..MirrorConfig::default()
        },
    );
    tune(&mut c);
    let n = start_on(l, source, c).await;
    wait_ready(&n, true).await;
    n
}

/// A node holding `data` as a layer, sending at most [`SLOW`] bytes a second.
async fn slow_source(
    net: &MemoryNetwork,
    name: &str,
    data: &[u8],
    tune: impl FnOnce(&mut Config),
) -> Node {
    let src = MemorySource::new();
    src.add_image("127.0.0.1:5000/test/app:v1", &[data]);
    node(net, name, src, |c| {
        c.max_egress_bps = SLOW;
        tune(c);
    })
    .await
}

/// GET `digest` from `node` in a task of its own: the status and the body.
fn spawn_get(node: &Node, digest: Digest) -> tokio::task::JoinHandle<(u16, Bytes)> {
    let url = format!("{}/v2/test/app/blobs/{digest}", node.base);
    tokio::spawn(async move {
        let r = client().get(url).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.bytes().await.unwrap_or_default())
    })
}

async fn get(node: &Node, digest: Digest) -> (u16, Bytes) {
    spawn_get(node, digest).await.unwrap()
}

/// The value of the series starting with `prefix` (name and labels), 0 if absent.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Poll (bounded) until `peer` provides `key` in the network.
async fn wait_for_record(net: &MemoryNetwork, key: &Key, peer: &str) {
    let observer = MemoryRouter::new(net.clone(), "observer", "127.0.0.1:9".parse().unwrap());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut rx = observer.lookup(key);
        while let Some(p) = rx.recv().await {
            if p.peer.as_str() == peer {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{peer} never advertised {key}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A source streaming a blob to its one follower answers the next peer "busy", and that
/// peer streams from the follower's in-flight copy: the source uploads one copy, not two,
/// although a complete copy is otherwise always preferred. (Shown failing with
/// `max_followers: 0` on the source: it then uploads two copies.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_source_sends_the_next_peer_to_its_follower() {
    let net = MemoryNetwork::new();
    let data = Bytes::from(pattern(SIZE, 51));
    let digest = Digest::of(&data);
    let s = slow_source(&net, "s", &data, |_| {}).await;
    let b = node(&net, "b", MemorySource::new(), |_| {}).await;
    let c = node(&net, "c", MemorySource::new(), |_| {}).await;
    let first = spawn_get(&b, digest);
    // b follows s and advertises its in-flight copy once s has answered.
    wait_for_record(&net, &Key::Partial(digest), "b").await;
    let (status, body) = get(&c, digest).await;
    assert_eq!(status, 200);
    assert!(body == data, "c got the blob's bytes");
    let (status, body) = first.await.unwrap();
    assert_eq!(status, 200);
    assert!(body == data, "b got the blob's bytes");
    assert_refused_and_uploaded(&s, 1, data.len()).await;
    let bm = b.metrics().await;
    assert_eq!(
        metric(&bm, "peermirror_response_bytes_total{source=\"in_flight\"}") as usize,
        data.len(),
        "c streamed b's in-flight copy: {bm}"
    );
    for n in [s, b, c] {
        n.stop().await;
    }
}

/// When every copy found is busy (here: the source's one follower streams without a spool,
/// so it advertises no copy of its own), the asker looks again a few times and then crowds
/// the least busy source rather than answer 404: a pull never gets worse for the cap.
/// (Shown failing with the crowd step removed from `ProviderSet::next`: c answers 404.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_every_copy_is_busy_the_least_busy_takes_one_more() {
    let net = MemoryNetwork::new();
    let data = Bytes::from(pattern(SIZE, 52));
    let digest = Digest::of(&data);
    let s = slow_source(&net, "s", &data, |_| {}).await;
    let b = node(&net, "b", MemorySource::new(), |c| c.spool = None).await;
    let c = node(&net, "c", MemorySource::new(), |_| {}).await;
    let first = spawn_get(&b, digest);
    // b is streaming from s once s has a follower; poll its upload gauge.
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&s.metrics().await, "peermirror_uploads_in_flight") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "b never started streaming from s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = get(&c, digest).await;
    assert_eq!(
        status, 200,
        "every copy busy is no reason to send containerd upstream"
    );
    assert!(body == data);
    let (status, body) = first.await.unwrap();
    assert_eq!(status, 200);
    assert!(body == data);
    assert_refused_and_uploaded(&s, 2, data.len()).await;
    for n in [s, b, c] {
        n.stop().await;
    }
}

/// The source `s` told at least one peer "busy" and uploaded `copies` copies of a `len`-byte
/// blob from its own store.
async fn assert_refused_and_uploaded(s: &Node, copies: usize, len: usize) {
    let sm = s.metrics().await;
    assert!(
        metric(&sm, "peermirror_uploads_followers_refused_total") >= 1.0,
        "{sm}"
    );
    assert_eq!(
        metric(&sm, "peermirror_response_bytes_total{source=\"local\"}") as usize,
        copies * len,
        "the source uploaded {copies} copies: {sm}"
    );
}

/// A node with a small image of its own (`seed`), so the others count it as a peer (and as a
/// candidate coordinator), and a handle on its store to commit blobs into later, as its
/// containerd would after fetching them from the upstream.
async fn member(net: &MemoryNetwork, name: &str, seed: u8) -> (Node, MemorySource) {
    let src = MemorySource::new();
    src.add_image(
        &format!("127.0.0.1:5000/test/seed{seed}:v1"),
        &[&pattern(1000, seed)],
    );
    let n = node(net, name, src.clone(), |_| {}).await;
    (n, src)
}

/// Nodes that miss one new blob one after another (as a rollout does, within the claim wait)
/// each ask the blob's coordinator: the first answers 404 (its containerd goes to the
/// upstream) and each later one is held and then streams the copy of the node that asked just
/// before it: a chain, one upstream copy, each node uploading one copy. A node whose
/// predecessor's copy never appears answers 404 after the claim wait. (Shown failing with
/// `claim_wait: 0`: b and c answer 404 at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_missing_a_new_blob_form_a_chain_behind_the_first() {
    let net = MemoryNetwork::new();
    let data = Bytes::from(pattern(SIZE, 53));
    let digest = Digest::of(&data);
    let (a, a_store) = member(&net, "a", 1).await;
    let (b, _) = member(&net, "b", 2).await;
    let (c, _) = member(&net, "c", 3).await;
    let (status, _) = get(&a, digest).await;
    assert_eq!(
        status, 404,
        "nobody has it: a's containerd goes to the upstream"
    );
    let held_b = spawn_get(&b, digest);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held_c = spawn_get(&c, digest);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !held_b.is_finished() && !held_c.is_finished(),
        "b and c are held"
    );
    // a's containerd has the blob from the upstream.
    a_store.commit_blob(data.clone());
    for (who, held) in [("b", held_b), ("c", held_c)] {
        let (status, body) = held.await.unwrap();
        assert_eq!(status, 200, "{who} followed the chain");
        assert!(body == data, "{who} got the blob's bytes");
    }
    let am = a.metrics().await;
    assert_eq!(
        metric(&am, "peermirror_response_bytes_total{source=\"local\"}") as usize,
        data.len(),
        "a uploaded one copy (to b): {am}"
    );
    let bm = b.metrics().await;
    assert_eq!(
        metric(&bm, "peermirror_response_bytes_total{source=\"in_flight\"}") as usize,
        data.len(),
        "c streamed b's copy: {bm}"
    );
    for n in [&b, &c] {
        assert_eq!(
            metric(&n.metrics().await, "peermirror_claim_waits_total"),
            1.0
        );
    }

    // A predecessor whose copy never appears holds a miss only for the claim wait.
    let other = Digest::of(&pattern(300_000, 54));
    assert_eq!(get(&a, other).await.0, 404);
    let started = Instant::now();
    assert_eq!(get(&b, other).await.0, 404);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        metric(&b.metrics().await, "peermirror_claim_timeouts_total"),
        1.0
    );
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// Nodes missing one blob at the same moment: exactly one goes to the upstream, and the others
/// follow its copy once its containerd has it. (Shown failing with `claim_wait: 0`: all three
/// answer 404.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_nodes_missing_at_once_only_one_goes_upstream() {
    let net = MemoryNetwork::new();
    let data = Bytes::from(pattern(300_000, 55));
    let digest = Digest::of(&data);
    let mut nodes = Vec::new();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        nodes.push(member(&net, name, 10 + i as u8).await);
    }
    let mut held: Vec<_> = nodes.iter().map(|(n, _)| spawn_get(n, digest)).collect();
    // The first answer is the one 404: that node fetches; commit the blob in its store.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(i) = held.iter().position(|h| h.is_finished()) {
            break i;
        }
        assert!(Instant::now() < deadline, "nobody answered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (status, _) = held.remove(first).await.unwrap();
    assert_eq!(
        status, 404,
        "the first answer sends one containerd upstream"
    );
    nodes[first].1.commit_blob(data.clone());
    for h in held {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, 200, "the others follow");
        assert!(body == data);
    }
    for (n, _) in nodes {
        n.stop().await;
    }
}

/// The first node of a chain dies mid-transfer: its follower b (the coordinator finds the dead
/// node does not answer) becomes the first: b's response is cut and containerd's `Range`
/// resume gets a 404 (so b's containerd fetches the rest from the upstream), while c, which
/// followed b, stays on b (alive) and completes from b's new copy: one node goes to the
/// upstream, not all. (Shown failing with the reassignment removed from `ProviderSet::next`:
/// c's body is not the blob.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_first_dies_only_its_follower_goes_upstream_and_the_rest_follow_it() {
    first_dies("c").await;
}

/// The same when the node that dies also coordinated the blob: b and c ask the next node in
/// rendezvous order, which starts a new chain from them (b first, as it reported first).
/// (Shown failing with `COORDINATORS` = 1: c's body is not the blob.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_first_dies_and_it_coordinated_the_next_coordinator_takes_over() {
    first_dies("a").await;
}

async fn first_dies(coordinator: &str) {
    let net = MemoryNetwork::new();
    let data = (56..)
        .map(|seed| Bytes::from(pattern(SIZE, seed)))
        .find(|d| coordinator_of(&["a", "b", "c"], &Digest::of(d)) == Some(coordinator))
        .unwrap();
    let digest = Digest::of(&data);
    let a_store = MemorySource::new();
    a_store.add_image("127.0.0.1:5000/test/seed20:v1", &[&pattern(1000, 20)]);
    let a = node(&net, "a", a_store.clone(), |c| {
        c.max_egress_bps = SLOW;
        c.limits.drain_timeout = Duration::ZERO;
    })
    .await;
    let (b, b_store) = member(&net, "b", 21).await;
    let (c, _) = member(&net, "c", 22).await;
    assert_eq!(get(&a, digest).await.0, 404, "a fetches from the upstream");
    let url = format!("{}/v2/test/app/blobs/{digest}", b.base);
    let held_b = tokio::spawn(async move {
        let r = client().get(url).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.bytes().await.map(|b| b.len()))
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held_c = spawn_get(&c, digest);
    tokio::time::sleep(Duration::from_millis(200)).await;
    a_store.commit_blob(data.clone());
    // a dies once b has part of the blob.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(
        &a.metrics().await,
        "peermirror_response_bytes_total{source=\"local\"}",
    ) < (SIZE / 4) as f64
    {
        assert!(
            Instant::now() < deadline,
            "a never sent a quarter of the blob"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.stop().await;
    let (status, body) = held_b.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.map_or(true, |n| n < SIZE),
        "b's response was cut, so its containerd resumes"
    );
    let resumed = client()
        .get(format!("{}/v2/test/app/blobs/{digest}", b.base))
        .header("range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resumed.status().as_u16(),
        404,
        "b's resume goes to the upstream"
    );
    // b's containerd has the rest from the upstream.
    b_store.commit_blob(data.clone());
    let (status, body) = held_c.await.unwrap();
    assert_eq!(status, 200);
    assert!(body == data, "c completed from b's new copy");
    for n in [b, c] {
        n.stop().await;
    }
}

/// In a rollout the first node soon has the image's manifest complete while its layer is still
/// in flight. A node that relays that manifest from it remembers it as a likely provider of the
/// layer; that guess must not bypass the coordinator (it would follow the first node directly
/// and make it feed two, or, while the first node's copy has not begun, answer 404 and send
/// its containerd to the upstream). Here b relays the manifest from a, whose layer is not there
/// yet: a serves the manifest without saying it holds its children, so b does not take a for a
/// complete copy, and b's layer request is held as a's follower and streams a's copy once it
/// is there.
/// (Shown failing with the asker remembering every provider of a relayed manifest, as before
/// `x-peermirror-children`: b answers 404.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_relayed_the_manifest_still_joins_the_chain_for_the_layer() {
    let net = MemoryNetwork::new();
    let data = Bytes::from(pattern(SIZE, 60));
    let digest = Digest::of(&data);
    let a_store = MemorySource::new();
    let manifest = a_store.add_image("127.0.0.1:5000/test/app:v2", &[&data]);
    // a's containerd has the manifest and config; the layer is still on its way.
    a_store.remove_blob(&digest);
    let a = node(&net, "a", a_store.clone(), |c| c.max_egress_bps = SLOW).await;
    let (b, _) = member(&net, "b", 30).await;
    let (c, _) = member(&net, "c", 31).await;
    assert_eq!(get(&a, digest).await.0, 404, "a fetches from the upstream");
    wait_for_record(&net, &Key::Digest(manifest.digest), "a").await;
    let r = client()
        .get(format!(
            "{}/v2/test/app/manifests/{}",
            b.base, manifest.digest
        ))
        .header("accept", manifest.media_type.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "b relays the manifest from a");
    b_follows_a(&b, &a_store, &data).await;
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// b misses `data`'s blob and is held as a's follower until a's containerd commits it; then
/// b streams it from a.
async fn b_follows_a(b: &Node, a_store: &MemorySource, data: &Bytes) {
    let held_b = spawn_get(b, Digest::of(data));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held_b.is_finished(), "b is held as a's follower");
    a_store.commit_blob(data.clone());
    let (status, body) = held_b.await.unwrap();
    assert_eq!(status, 200, "b followed a");
    assert!(body == *data, "b got the blob's bytes");
}

/// Asks `node`, as a peer named `id` from address `from`, for a place in `digest`'s rollout:
/// the role it answers.
async fn ask_as(node: &Node, digest: Digest, id: &str, from: &str) -> String {
    let url = format!("{}/v2/test/app/blobs/{digest}", node.base);
    let client = reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().ok())
        .build()
        .unwrap();
    let r = client
        .head(url)
        .header("x-peermirror-mirrored", "true")
        .header("x-peermirror-rollout", id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    r.headers()
        .get("x-peermirror-rollout")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Only a node that speaks for itself joins a chain: a connected peer asking from its own
/// address. An id nobody knows ("ghost"), or a real node's id sent from another address, is
/// told where it would stand and not remembered; otherwise the next real asker would be
/// told to follow it and (a ghost) answer 404 at once or (an impostor's victim, which has no
/// copy) wait out the claim wait, and go to the upstream. (Shown failing with the check in
/// `Mirror::rollout_join` removed: the ghost joined, and the impostor was told to follow it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ids_that_are_not_peers_at_their_own_address_do_not_enter_a_chain() {
    let net = MemoryNetwork::new();
    let data = Bytes::from(pattern(300_000, 57));
    let digest = Digest::of(&data);
    let (a, a_store) = member(&net, "a", 21).await;
    let (b, _) = member(&net, "b", 22).await;
    let (c, _) = member(&net, "c", 23).await;
    let nodes = [("a", &a), ("b", &b), ("c", &c)];
    let name = coordinator_of(&["a", "b", "c"], &digest).unwrap();
    let coordinator = nodes.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(get(&a, digest).await.0, 404, "a goes to the upstream");
    // A stranger asks in the name of a ghost, then of c from an address that is not c's.
    for (id, from) in [("ghost", "127.0.0.1"), ("c", "127.0.0.2")] {
        let role = ask_as(coordinator, digest, id, from).await;
        assert_eq!(role, "follow a", "{id} from {from} is told its place");
    }
    b_follows_a(&b, &a_store, &data).await;
    // c itself joins behind b.
    let (status, body) = get(&c, digest).await;
    assert_eq!(status, 200);
    assert!(body == data);
    let cm = coordinator.metrics().await;
    assert_eq!(
        metric(&cm, "peermirror_rollout_strangers_total"),
        2.0,
        "{cm}"
    );
    for n in [a, b, c] {
        n.stop().await;
    }
}
