//! Multi-host end-to-end tests: every node (containerd + peermirror) and the upstream registry
//! in a network namespace of its own, one address each on a bridge the test creates, the same
//! ports on every node (5000 registry, 5001 router, 9090 metrics, as with hostPorts), bootstrap
//! by DNS name (`dns:peermirror:5001` through a hosts file per namespace, as with a headless
//! Service). Faults: a link cut (`ip link set down`), a silent drop (a blackhole qdisc: this
//! kernel has no netem), SIGKILL, a partition (iptables inside the namespaces), 20 % of nodes
//! gone at once. Every pull must end with the upstream's digests in containerd. Also what only
//! another host can show: a bootstrap name whose address changes is followed, and a failing
//! address is answered 429 until its window ends (loopback never is).
//!
//! Traffic stays between the test's namespaces: every process, `curl` included, runs inside
//! one (see `tests/common/netns.rs`). Run with
//! `cargo test --test e2e_netns -- --include-ignored` (as root: `ip netns`, `tc`, iptables).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// One cluster at a time: two cores, and every node is a containerd and a peermirror.
static SERIAL: Mutex<()> = Mutex::new(());

/// How long a node may take to learn, through the DHT, what another one holds.
const VISIBLE_WITHIN: Duration = Duration::from_secs(30);
/// Providers' egress during mid-pull cases: the ~54 MB layer takes ~11 s.
const SLOW_MBIT: u32 = 40;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn big_layer() -> Descriptor {
    fixture("big").host_manifest().layers[0].clone()
}

/// Nodes 1 and 2 hold `big` (pulled from the upstream) and have advertised it; node 3 sees it
/// through its peermirror.
fn two_providers(c: &Cluster) {
    let big = fixture("big");
    c.pull_direct(1, &big);
    c.pull_direct(2, &big);
    let keys = |i: usize| c.node(i).pm.metric("peermirror_advertised_keys", &[]);
    let both = wait_until(VISIBLE_WITHIN, || {
        let (k1, k2) = (keys(1), keys(2));
        k1 > 0.0 && k1 == k2
    });
    assert!(both, "advertised keys: {} vs {}", keys(1), keys(2));
    assert!(
        c.wait_visible(3, &big, &big_layer().digest, VISIBLE_WITHIN),
        "node3 does not see the big layer:\n{}",
        c.node(3).pm.log_tail(40)
    );
}

/// Runs `pull` on node 3 in a thread while watching the bytes nodes 1 and 2 send; once one of
/// them has sent `at` bytes of this pull, `fault(cluster, victim)` is applied to it. Returns
/// the pull result, the victim (if the fault fired) and the bytes it had sent.
fn pull_with_fault(
    c: &Cluster,
    image: &FixtureImage,
    at: u64,
    fault: impl Fn(&Cluster, usize),
) -> (Result<(), String>, Option<(usize, u64)>) {
    let base = [c.sent_bytes(1), c.sent_bytes(2)];
    thread::scope(|s| {
        let pull = s.spawn(|| c.pull(3, image));
        let mut victim = None;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !pull.is_finished() && victim.is_none() && Instant::now() < deadline {
            let sent = [c.sent_bytes(1) - base[0], c.sent_bytes(2) - base[1]];
            let i = if sent[0] >= sent[1] { 1 } else { 2 };
            if sent[i - 1] >= at {
                fault(c, i);
                victim = Some((i, sent[i - 1]));
            }
            thread::sleep(Duration::from_millis(20));
        }
        (pull.join().unwrap(), victim)
    })
}

/// A provider's link fails mid-pull (`cut`: link down or silent drop); node 3's pull completes
/// with the upstream's digests from the other provider: the upstream is down, so only node 3's
/// mirror noticing the broken or stalled stream and resuming with a Range from the other
/// provider can finish it.
fn link_fault_mid_pull(label: &str, cut: impl Fn(&Cluster, usize)) {
    let _serial = serial();
    let big = fixture("big");
    let layer = big_layer();
    let mut c = Cluster::start(3, &[], &[&big]);
    two_providers(&c);
    c.upstream.stop();
    c.slow_egress(1, SLOW_MBIT);
    c.slow_egress(2, SLOW_MBIT);
    let upstream_before = c.net.sent_bytes(UPSTREAM_NAME);
    let started = Instant::now();
    let (result, victim) = pull_with_fault(&c, &big, 8 << 20, cut);
    let took = started.elapsed();
    let other = victim.map_or(0, |(v, _)| 3 - v);
    let other_sent = if other == 0 { 0 } else { c.sent_bytes(other) };
    let upstream_sent = c.net.sent_bytes(UPSTREAM_NAME) - upstream_before;
    eprintln!(
        "[{label}] pull {} in {:.1}s; cut (node, bytes sent): {victim:?}; node{other} sent {other_sent} bytes in all, the upstream {upstream_sent} during the pull\n[{label}] node3: {}",
        if result.is_ok() { "ok" } else { "FAILED" },
        took.as_secs_f64(),
        grep(
            &c.node(3).log(),
            &["resuming", "stream broke", "stall", "shunned"],
            6
        )
    );
    if let Err(e) = result {
        panic!(
            "node3 pull failed after the cut of {victim:?}:\n{}\n--- node3 ---\n{}",
            last_lines_of(&e, 6),
            c.node(3).pm.log_tail(60)
        );
    }
    let (v, sent) = victim.expect("no provider was seen sending 8 MiB: the cut never happened");
    assert!(
        sent < layer.size,
        "node{v} had sent {sent} bytes: the cut was not mid-pull"
    );
    c.assert_pulled(3, &big);
    // The rest came from the other provider, through a resume in node 3's mirror.
    let log = c.node(3).log();
    assert!(
        log.contains("resuming from another provider"),
        "node3 did not resume from node{other} (the upstream is down):\n{}",
        grep(&log, &["provider", "resum", "stall"], 20)
    );
    assert!(
        c.node(3).bytes_from("peer") >= layer.size as f64,
        "node3 served {} bytes from peers, less than the {}-byte layer",
        c.node(3).bytes_from("peer"),
        layer.size
    );
}

// 1 ----------------------------------------------------------------------------------------

#[test]
#[ignore = "e2e: needs root + ip netns + containerd + docker-registry"]
fn link_down_mid_pull() {
    link_fault_mid_pull("link-down", |c, v| c.link(v, false));
}

#[test]
#[ignore = "e2e: needs root + ip netns + containerd + docker-registry"]
fn silent_drop_mid_pull() {
    link_fault_mid_pull("silent-drop", |c, v| c.blackhole(v));
}

// 2 ----------------------------------------------------------------------------------------

/// The provider streaming the big layer to node 3 is SIGKILLed mid-pull: the pull completes.
/// Then it is restarted: same PeerId (from its data dir), `/readyz` 200 again, its keys
/// advertised again, and node 4 pulls an image only it holds, with the upstream down.
#[test]
#[ignore = "e2e: needs root + ip netns + containerd + docker-registry"]
fn provider_sigkill_mid_pull_then_restart() {
    let _serial = serial();
    let (big, small, multi) = (fixture("big"), fixture("small"), fixture("multi"));
    let mut c = Cluster::start(4, &[], &[&big, &small, &multi]);
    two_providers(&c);
    // One image only each provider holds, to find the restarted one by.
    let keys = |c: &Cluster, i: usize| c.node(i).pm.metric("peermirror_advertised_keys", &[]);
    let before = [keys(&c, 1), keys(&c, 2)];
    c.pull_direct(1, &small);
    c.pull_direct(2, &multi);
    assert!(
        wait_until(VISIBLE_WITHIN, || keys(&c, 1) > before[0]
            && keys(&c, 2) > before[1]),
        "the new images were not advertised: {before:?} -> {} {}",
        keys(&c, 1),
        keys(&c, 2)
    );
    let ids = [
        c.peer_id(1).expect("node1 id"),
        c.peer_id(2).expect("node2 id"),
    ];
    c.slow_egress(1, SLOW_MBIT);
    c.slow_egress(2, SLOW_MBIT);
    // The upstream down from here: only a resume from the surviving provider finishes the pull.
    c.upstream.stop();
    let started = Instant::now();
    let (result, victim) = pull_with_fault(&c, &big, 8 << 20, |c, v| c.sigkill_peermirror(v));
    eprintln!(
        "[sigkill] pull {} in {:.1}s; killed (node, bytes sent): {victim:?}",
        if result.is_ok() { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!(
            "node3 pull failed after killing {victim:?}:\n{}\n--- node3 ---\n{}",
            last_lines_of(&e, 6),
            c.node(3).pm.log_tail(60)
        );
    }
    let (v, sent) = victim.expect("no provider was seen sending 8 MiB: nobody was killed");
    assert!(sent < big_layer().size, "the kill was not mid-pull");
    c.assert_pulled(3, &big);
    let log3 = c.node(3).log();
    assert!(
        log3.contains("resuming from another provider"),
        "node3's pull finished without a resume from node{} after node{v} was killed:\n{}",
        3 - v,
        grep(&log3, &["provider", "resum", "stream broke"], 20)
    );

    // Restart: same data dir, so the same PeerId.
    c.clear_egress(v);
    let restarted = Instant::now();
    c.node_mut(v).pm.restart();
    c.wait_ready(v);
    let ready_after = restarted.elapsed();
    let id = c.peer_id(v).expect("restarted node logged no PeerId");
    assert_eq!(id, ids[v - 1], "node{v} came back with another PeerId");
    let advertised = wait_until(VISIBLE_WITHIN, || keys(&c, v) > 0.0);
    assert!(advertised, "node{v} advertised nothing after its restart");
    eprintln!(
        "[sigkill] node{v} ready {:.1}s after its restart, same PeerId, {} keys advertised",
        ready_after.as_secs_f64(),
        keys(&c, v)
    );

    // An image only the restarted node holds is found and pulled from it.
    let only = if v == 1 { &small } else { &multi };
    assert!(
        c.wait_visible(
            4,
            only,
            &only.host_manifest().layers[0].digest,
            VISIBLE_WITHIN
        ),
        "node4 does not find node{v}'s {} after the restart",
        only.name
    );
    if let Err(e) = c.pull(4, only) {
        panic!(
            "node4 pull of {} (only on node{v}) failed:\n{}\n--- node4 ---\n{}",
            only.name,
            last_lines_of(&e, 6),
            c.node(4).pm.log_tail(40)
        );
    }
    c.assert_pulled(4, only);
    assert!(
        c.node(4).bytes_from("peer") > 0.0,
        "node4 served nothing from peers"
    );
}

// 3 ----------------------------------------------------------------------------------------

/// The republish interval the partition case runs with (`--republish-interval`).
const REPUBLISH: Duration = Duration::from_secs(10);

/// How long the partition holds: longer than two DHT query timeouts (5 s).
const PARTITION_FOR: Duration = Duration::from_secs(12);

/// Nodes {1, 2} and {3, 4} cannot reach each other while node 1 pulls `small` and node 3
/// `multi`: each half finds its own image, not the other's, for [`PARTITION_FOR`]. Healed,
/// every node finds both within the republish interval (plus a lookup's time), and node 4
/// pulls `small` from a peer with the upstream down.
#[test]
#[ignore = "e2e: needs root + ip netns + containerd + docker-registry"]
fn partition_then_heal() {
    let _serial = serial();
    let (small, multi) = (fixture("small"), fixture("multi"));
    let layer = |image: &FixtureImage| image.host_manifest().layers[0].digest.clone();
    let republish = format!("{}s", REPUBLISH.as_secs());
    let c = Cluster::start(4, &["--republish-interval", &republish], &[&small, &multi]);
    c.partition(&[1, 2], &[3, 4]);
    let partitioned = Instant::now();
    c.pull_direct(1, &small);
    c.pull_direct(3, &multi);
    // (node, image it must find, image it must not find)
    let cases = [
        (2, &small, &multi),
        (4, &multi, &small),
        (1, &small, &multi),
        (3, &multi, &small),
    ];
    for (i, own, _) in cases {
        assert!(
            c.wait_visible(i, own, &layer(own), VISIBLE_WITHIN),
            "node{i} does not find its own half's {}:\n{}",
            own.name,
            c.node(i).pm.log_tail(40)
        );
    }
    let leak = wait_until(PARTITION_FOR.saturating_sub(partitioned.elapsed()), || {
        cases
            .iter()
            .any(|(i, _, other)| c.head_blob(*i, other, &layer(other)) == Some(200))
    });
    assert!(
        !leak,
        "a node found the other half's image through the partition"
    );

    c.heal();
    let healed = Instant::now();
    let within = REPUBLISH + Duration::from_secs(10);
    let mut found = Vec::new();
    for (i, _, other) in cases {
        let seen = c.wait_visible(i, other, &layer(other), within);
        assert!(
            seen,
            "node{i} did not find the other half's {} within {within:?} of the heal:\n{}",
            other.name,
            c.node(i).pm.log_tail(40)
        );
        found.push(format!("node{i} {:.1}s", healed.elapsed().as_secs_f64()));
    }
    eprintln!(
        "[partition] held {:.1}s; after the heal the other half's image was found by: {} (republish interval {REPUBLISH:?})",
        (healed - partitioned).as_secs_f64(),
        found.join(", ")
    );
    let mut c = c;
    c.upstream.stop();
    if let Err(e) = c.pull(4, &small) {
        panic!(
            "node4 pull after the heal failed:\n{}\n--- node4 ---\n{}",
            last_lines_of(&e, 6),
            c.node(4).pm.log_tail(40)
        );
    }
    c.assert_pulled(4, &small);
    assert!(
        c.node(4).bytes_from("peer") > 0.0,
        "node4 served nothing from peers"
    );
}

// 4 ----------------------------------------------------------------------------------------

/// Five nodes; nodes 1 and 2 hold `big` and `small`. Node 1 (20 %) goes away at once (its
/// peermirror and containerd SIGKILLed, its link down: no RST, silence), and so does the
/// upstream. Nodes 3, 4 and 5 then pull both images at the same time: all complete from the
/// remaining providers.
#[test]
#[ignore = "e2e: needs root + ip netns + containerd + docker-registry"]
fn fifth_of_nodes_stopped_at_once() {
    let _serial = serial();
    let (big, small) = (fixture("big"), fixture("small"));
    let images = [&big, &small];
    let mut c = Cluster::start(5, &[], &images);
    for i in [1, 2] {
        for image in images {
            c.pull_direct(i, image);
        }
    }
    for i in [3, 4, 5] {
        for image in images {
            let digest = image.host_manifest().layers[0].digest.clone();
            assert!(
                c.wait_visible(i, image, &digest, VISIBLE_WITHIN),
                "node{i} does not see {}",
                image.name
            );
        }
    }
    c.stop_node(1);
    c.upstream.stop();
    let started = Instant::now();
    let results: Vec<(usize, Result<(), String>, Duration)> = thread::scope(|s| {
        let pulls: Vec<_> = [3, 4, 5]
            .into_iter()
            .map(|i| {
                let c = &c;
                let images = &images;
                s.spawn(move || {
                    let result = images.iter().try_for_each(|image| c.pull(i, image));
                    (i, result, started.elapsed())
                })
            })
            .collect();
        pulls.into_iter().map(|p| p.join().unwrap()).collect()
    });
    for (i, result, took) in &results {
        eprintln!(
            "[fifth] node{i}: {} in {:.1}s",
            if result.is_ok() { "ok" } else { "FAILED" },
            took.as_secs_f64()
        );
    }
    for (i, result, _) in results {
        if let Err(e) = result {
            panic!(
                "node{i} pull with node1 gone failed:\n{}\n--- node{i} ---\n{}",
                last_lines_of(&e, 6),
                c.node(i).pm.log_tail(60)
            );
        }
        for image in images {
            c.assert_pulled(i, image);
        }
        let from_peers = c.node(i).bytes_from("peer");
        assert!(
            from_peers >= big_layer().size as f64,
            "node{i} served only {from_peers} bytes from peers"
        );
    }
}

// 5 ----------------------------------------------------------------------------------------

/// The bootstrap name is re-resolved while a node is connected, so a name whose address
/// changes is followed: node1's `peermirror` names node2 at first, then node3 only. node2's
/// and node3's name only themselves, so nothing but node1's DNS can bring node1 and node3
/// together (node1 already has a peer: only the periodic re-resolve, every 30 s, looks again).
#[test]
#[ignore = "e2e: needs root + ip netns + containerd + docker-registry"]
fn a_bootstrap_name_whose_address_changes_is_followed() {
    let _serial = serial();
    let c = Cluster::start_with_service(3, &ClusterOptions::default(), &[], |i| {
        if i == 1 { vec![2] } else { vec![i] }
    });
    let peers = |i: usize| c.node(i).pm.metric("peermirror_connected_peers", &[]);
    assert!(
        wait_until(VISIBLE_WITHIN, || peers(1) >= 1.0 && peers(2) >= 1.0),
        "node1 never met node2:\n{}",
        c.node(1).pm.log_tail(40)
    );
    assert_eq!(
        peers(3),
        0.0,
        "node3 met someone before its address was named"
    );

    c.net.set_node_service(1, &[3]);
    let changed = Instant::now();
    let met = wait_until(Duration::from_secs(90), || {
        let met = peers(3) >= 1.0;
        if !met {
            thread::sleep(Duration::from_millis(500));
        }
        met
    });
    assert!(
        met,
        "node1 never followed its bootstrap name to node3:\n{}",
        c.node(1).pm.log_tail(40)
    );
    eprintln!(
        "[dns] node3 met {:.1}s after node1's name changed",
        changed.elapsed().as_secs_f64()
    );
    assert!(peers(1) >= 2.0, "node1 peers: {}", peers(1));
}

// 6 ----------------------------------------------------------------------------------------

/// A remote address that fails authentication `--auth-failures-max` times gets 429, with
/// `Retry-After` naming `--auth-failure-window`, even with the right token, until the window
/// (counted from its first failure) has passed; the node's own loopback is never throttled.
/// The client is another host (the upstream's namespace): loopback would not count.
#[test]
#[ignore = "e2e: needs root + ip netns + containerd + docker-registry"]
fn a_failing_address_gets_429_until_its_window_ends() {
    const WINDOW_S: u64 = 6;
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "right-token\n").unwrap();
    let window = format!("{WINDOW_S}s");
    let c = Cluster::start(
        1,
        &[
            "--auth-mode",
            "token",
            "--token-file",
            tokens.to_str().unwrap(),
            "--auth-failures-max",
            "3",
            "--auth-failure-window",
            &window,
        ],
        &[],
    );
    let node = c.node(1).pm.registry_host();
    let stranger = c.net.member(UPSTREAM_NAME).ns.clone();
    let get = |ns: &str, addr: &str, token: &str| {
        let auth = format!("Authorization: Bearer {token}");
        http_in_netns_with(ns, "GET", addr, "/v2/", &[&auth]).map(|r| r.0)
    };
    assert_eq!(get(&stranger, &node, "right-token"), Some(200));
    let first_failure = Instant::now();
    for _ in 0..3 {
        assert_eq!(get(&stranger, &node, "wrong"), Some(401));
    }
    assert_eq!(get(&stranger, &node, "right-token"), Some(429));
    let out = run_with_timeout(
        command_in(Some(&stranger), "curl").args([
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-H",
            "Authorization: Bearer right-token",
            &format!("http://{node}/v2/"),
        ]),
        Duration::from_secs(10),
    );
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        head.contains(&format!("retry-after: {WINDOW_S}\r\n")),
        "{head}"
    );
    // The node's own loopback (containerd's address) fails as often as it likes.
    let own = c.member(1).ns.clone();
    let local = format!("127.0.0.1:{NETNS_REGISTRY_PORT}");
    for _ in 0..5 {
        assert_eq!(get(&own, &local, "wrong"), Some(401));
    }
    assert_eq!(get(&own, &local, "right-token"), Some(200));

    let through = wait_until(Duration::from_secs(40), || {
        let ok = get(&stranger, &node, "right-token") == Some(200);
        if !ok {
            thread::sleep(Duration::from_millis(250));
        }
        ok
    });
    let waited = first_failure.elapsed();
    assert!(
        through,
        "still throttled {waited:?} after the first failure"
    );
    assert!(
        waited >= Duration::from_secs(WINDOW_S),
        "let through after {waited:?}, before the {WINDOW_S} s window ended"
    );
    eprintln!(
        "[429] let through {:.1}s after the first failure",
        waited.as_secs_f64()
    );
    // The count starts over: one more failure does not throttle again.
    assert_eq!(get(&stranger, &node, "wrong"), Some(401));
    assert_eq!(get(&stranger, &node, "right-token"), Some(200));
}
