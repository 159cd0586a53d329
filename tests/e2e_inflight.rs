//! Issue 11 end to end: pull storms served while still in flight.
//!
//! The upstream is docker-registry (with its access log) behind `tests/tools/throttle_proxy.py`
//! capped at 20 MB/s for all connections together, like a WAN link; containerd pulls through
//! the proxy (the image reference names the proxy's host:port) and each node's hosts.toml names
//! its own peermirror as the mirror of that host. The image is the `huge` fixture (one ~200 MB
//! incompressible layer, built on first use by `build-images.sh --huge`).
//!
//! - `inflight_from_upstream_pull_{1_7,2_1}`: node 1 starts pulling (a miss: its containerd
//!   goes to the upstream); 1 s later node 2 pulls the same image. Node 2's layer must come
//!   from node 1 while node 1 is still downloading it, and the upstream must send the layer once.
//! - `inflight_source_killed_midway_2_1`: as above, and node 1's peermirror (the in-flight source)
//!   is SIGKILLed once node 2 has ~30 % of the layer from peers: node 2's pull still completes.
//!
//! Metrics (issue 11): `peermirror_response_bytes_total{source="peer"}` = bytes served to the
//! own containerd from peers; `{source="in_flight"}` = bytes served to a peer from an ingest or
//! an unverified spool; `peermirror_peer_fetch_bytes_total` = body bytes fetched from peers.
//!
//! Run with `cargo test --test e2e_inflight -- --include-ignored` (as root).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The upstream's egress cap: 200 MB take ~10 s.
const RATE: u64 = 20_000_000;
/// Bytes fetched or sent per blob, at most, as a multiple of its size.
const AMPLIFICATION: f64 = 1.1;

/// One `#[test]` per containerd version for a scenario `fn(CtdVersion)`.
macro_rules! matrix {
    ($scenario:ident: $($name:ident => $version:expr),+ $(,)?) => {
        $(
            #[test]
            #[ignore = "e2e: needs root + containerd (scripts/fetch-containerd.sh) + docker-registry"]
            fn $name() {
                if $version.should_run() {
                    $scenario($version);
                }
            }
        )+
    };
}

matrix!(inflight_from_upstream:
    inflight_from_upstream_pull_1_7 => CtdVersion::V1_7,
    inflight_from_upstream_pull_2_1 => CtdVersion::V2_1,
);

matrix!(inflight_source_killed:
    inflight_source_killed_midway_2_1 => CtdVersion::V2_1,
);

/// The upstream (registry + throttle proxy), the image and two nodes pulling through the proxy,
/// node 2 bootstrapped to node 1.
struct Storm {
    // Drop order: nodes first (their logs print on failure), then proxy, then registry.
    node2: Node,
    node1: Node,
    proxy: RateProxy,
    registry: Registry,
    image: FixtureImage,
    layer: Descriptor,
}

impl Storm {
    fn start(v: CtdVersion) -> Storm {
        let image = fixture_huge();
        let layer = image.host_manifest().layers[0].clone();
        let registry = Registry::start_with_access_log();
        registry.push(&image);
        let proxy = RateProxy::start(&registry.host(), RATE);
        let node1 = Node::builder("node1").containerd(v).start();
        node1.configure_upstream(&proxy.url(), &node1.pm.registry_url());
        let node2 = Node::builder("node2")
            .containerd(v)
            .bootstrap(Some(&node1.pm))
            .start();
        node2.configure_upstream(&proxy.url(), &node2.pm.registry_url());
        Storm {
            node2,
            node1,
            proxy,
            registry,
            image,
            layer,
        }
    }

    /// What the upstream sent for the layer: GETs in the access log and their bytes.
    fn upstream_layer(&self) -> (usize, u64) {
        self.registry.blob_gets(&self.layer.digest)
    }

    fn report(&self, v: CtdVersion, what: &str, t1: Duration, t2: Duration) {
        let (gets, bytes) = self.upstream_layer();
        let size = self.layer.size as f64;
        eprintln!(
            "[{}] {what}: layer {} bytes; pulls node1 {:.1}s node2 {:.1}s; upstream: {gets} layer \
             GETs, {bytes} bytes ({:.2} copies), proxy sent {} bytes in all; node2 peer {} \
             peer_fetch {}; node1 in_flight {} local {}",
            v.series(),
            self.layer.size,
            t1.as_secs_f64(),
            t2.as_secs_f64(),
            bytes as f64 / size,
            self.proxy.bytes_from_upstream(),
            self.node2.bytes_from("peer"),
            self.node2
                .pm
                .metric("peermirror_peer_fetch_bytes_total", &[]),
            self.node1.bytes_from("in_flight"),
            self.node1.bytes_from("local"),
        );
    }
}

/// `ctr images pull` of `image` from `upstream` through `node`'s hosts.toml; how long it took.
fn pull(
    ctd: &Containerd,
    hosts: &std::path::Path,
    image: &FixtureImage,
    upstream: &str,
) -> (Result<(), String>, Duration) {
    let started = Instant::now();
    let res = ctd.pull(&image.reference(upstream), Some(hosts), false);
    (res, started.elapsed())
}

fn assert_pulled(node: &Node, res: Result<(), String>, image: &FixtureImage, v: CtdVersion) {
    if let Err(e) = res {
        panic!(
            "[{}] {}: pull of {} failed:\n{}\n--- {} peermirror ---\n{}",
            v.series(),
            node.name,
            image.name,
            last_lines_of(&strip_ansi_codes(&e), 6),
            node.name,
            node.pm.log_tail(40)
        );
    }
    node.ctd.assert_has(image);
    let checked = node.ctd.verify_content_blobs();
    eprintln!(
        "[{}] {} pulled {}: {checked} blobs verified",
        v.series(),
        node.name,
        image.name
    );
}

/// Node 1 pulls from the throttled upstream; 1 s later node 2 pulls the same image. Node 2's
/// layer comes from node 1 in flight; the upstream sends the layer once; both pulls verify.
fn inflight_from_upstream(v: CtdVersion) {
    let s = Storm::start(v);
    let up = s.proxy.host();
    let (h1, h2) = (s.node1.hosts_dir(), s.node2.hosts_dir());
    let ((r1, t1), (r2, t2)) = thread::scope(|scope| {
        let p1 = scope.spawn(|| pull(&s.node1.ctd, &h1, &s.image, &up));
        thread::sleep(Duration::from_secs(1));
        let p2 = scope.spawn(|| pull(&s.node2.ctd, &h2, &s.image, &up));
        (p1.join().unwrap(), p2.join().unwrap())
    });
    s.report(v, "in flight from the upstream", t1, t2);
    assert_pulled(&s.node1, r1, &s.image, v);
    assert_pulled(&s.node2, r2, &s.image, v);

    let size = s.layer.size as f64;
    let (gets, sent) = s.upstream_layer();
    // Lower bounds first: node 1's pull was a miss, so the upstream did send the layer, and an
    // access-log scrape that parsed nothing (0 GETs, 0 bytes) must not pass as "sent it once".
    assert!(
        gets >= 1 && sent >= s.layer.size,
        "[{}] the upstream's access log shows {gets} layer GETs and {sent} bytes for a {}-byte \
         layer that node 1 pulled from it: the scrape is broken\n{}",
        v.series(),
        s.layer.size,
        s.registry.log_tail(10)
    );
    let proxied = s.proxy.bytes_from_upstream();
    assert!(
        proxied >= s.layer.size,
        "[{}] the throttle proxy carried {proxied} bytes from the upstream, less than the \
         {}-byte layer node 1 pulled through it",
        v.series(),
        s.layer.size
    );
    assert!(
        sent as f64 <= AMPLIFICATION * size,
        "[{}] the upstream sent the layer {:.2} times ({gets} GETs, {sent} bytes for a {}-byte \
         layer): node 2 did not stream it from node 1 while in flight",
        v.series(),
        sent as f64 / size,
        s.layer.size
    );
    let peer = s.node2.bytes_from("peer");
    assert!(
        peer >= size,
        "[{}] node2 got {peer} bytes from peers, less than the {}-byte layer",
        v.series(),
        s.layer.size
    );
    let fetched = s.node2.pm.metric("peermirror_peer_fetch_bytes_total", &[]);
    assert!(
        fetched <= AMPLIFICATION * size,
        "[{}] node2 fetched {fetched} bytes from peers for a {}-byte layer",
        v.series(),
        s.layer.size
    );
    // Node 2 started 1 s into node 1's ~10 s download, so most of the layer can only have
    // come from node 1 while it was still downloading; and node 1 served node 2 the whole
    // layer, in flight or (the tail, once committed) from its content store.
    let in_flight = s.node1.bytes_from("in_flight");
    let local = s.node1.bytes_from("local");
    assert!(
        in_flight >= 0.5 * size,
        "[{}] node1 served {in_flight} bytes in flight, less than half the {}-byte layer",
        v.series(),
        s.layer.size
    );
    assert!(
        in_flight + local >= size,
        "[{}] node1 served {in_flight} bytes in flight and {local} local, less than the \
         {}-byte layer node 2 got from peers",
        v.series(),
        s.layer.size
    );
}

/// As [`inflight_from_upstream`]; node 1's peermirror is SIGKILLed once node 2 has ~30 % of the
/// layer from peers. Node 2's pull still completes and verifies (its peermirror resumes
/// elsewhere, or containerd falls back to the upstream).
fn inflight_source_killed(v: CtdVersion) {
    let mut s = Storm::start(v);
    let up = s.proxy.host();
    let (h1, h2) = (s.node1.hosts_dir(), s.node2.hosts_dir());
    let size = s.layer.size as f64;
    let done = AtomicBool::new(false);
    let mut killed_at = None;
    let (node1_ctd, node1_pm) = (&s.node1.ctd, &mut s.node1.pm);
    let (node2, image) = (&s.node2, &s.image);
    let ((r1, t1), (r2, t2)) = thread::scope(|scope| {
        let p1 = scope.spawn(|| pull(node1_ctd, &h1, image, &up));
        thread::sleep(Duration::from_secs(1));
        let p2 = scope.spawn(|| {
            let r = pull(&node2.ctd, &h2, image, &up);
            done.store(true, Ordering::SeqCst);
            r
        });
        // Poll node 2's metrics until it has ~30 % of the layer from peers (or its pull ended).
        let deadline = Instant::now() + Duration::from_secs(120);
        while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
            let got = node2
                .bytes_from("peer")
                .max(node2.pm.metric("peermirror_peer_fetch_bytes_total", &[]));
            if got >= 0.3 * size {
                node1_pm.kill();
                killed_at = Some(got);
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        (p1.join().unwrap(), p2.join().unwrap())
    });
    s.report(v, "in-flight source killed", t1, t2);
    assert_pulled(&s.node2, r2, &s.image, v);
    // Node 1's own pull goes to the upstream directly (a miss): it completes without its mirror.
    assert_pulled(&s.node1, r1, &s.image, v);
    let Some(got) = killed_at else {
        panic!(
            "[{}] node2 never had 30 % of the {}-byte layer from peers (peer {} bytes): it was \
             not served in flight, so the source was never killed midway",
            v.series(),
            s.layer.size,
            s.node2.bytes_from("peer")
        );
    };
    eprintln!(
        "[{}] node1's peermirror SIGKILLed after node2 had {got} of {} bytes from peers",
        v.series(),
        s.layer.size
    );
}
