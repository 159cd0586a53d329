//! Lookup benchmark: time to first byte of peer-served small blobs on a warm 3-node swarm.
//!
//!   cargo run --release --example bench_p2p            (BLOBS=200 MISSES=50 BLOB_SIZE=4096)
//!
//! Three in-process nodes, each with the real libp2p `P2pRouter` on 127.0.0.1 and the real
//! registry endpoint (`daemon::run_with_source`) on loopback, default `MirrorConfig` (20 ms
//! resolve timeout, 100 ms hedge delay). Node 1 holds BLOBS distinct small blobs (layers of one
//! image, in a `MemorySource`); nodes 2 and 3 hold nothing and bootstrap from node 1. Warm means:
//! all three `/readyz` 200 (indexed, first advertisement done, a peer connected), nodes 2 and 3
//! each connected to both others, and a probe blob fetched through node 2 and node 3.
//! Then node 2 is asked for each blob once, over one keep-alive HTTP/1.1 connection, and the time
//! to the first body byte is recorded (the body is verified). Baseline in the same run: node 1
//! serving the same blobs from its own content. Then MISSES digests nobody has: time to the 404.
//!
//! All nodes and the client share one process and its tokio runtime (2 worker threads on a
//! 2-core machine), so the figures include that contention. Nothing listens beyond 127.0.0.1.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod bench_support;

use std::time::{Duration, Instant};

use bench_support::{
    client, env_usize, loadavg, ms, percentile, start_node, wait_ready, wait_until,
};
use peermirror::content::MemorySource;
use peermirror::oci::Digest;
use peermirror::routing::{Bootstrap, Router};

const NS: &str = "127.0.0.1:5000";

/// Deterministic, distinct bytes for blob `i`.
fn blob(i: usize, len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
}

/// GET `url`; returns (status, time to headers, time to first body byte, body).
async fn timed_get(client: &reqwest::Client, url: &str) -> (u16, Duration, Duration, Vec<u8>) {
    let t0 = Instant::now();
    let mut resp = client.get(url).send().await.expect("send");
    let headers = t0.elapsed();
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    let mut first = None;
    while let Some(chunk) = resp.chunk().await.expect("body") {
        if first.is_none() {
            first = Some(t0.elapsed());
        }
        body.extend_from_slice(&chunk);
    }
    (status, headers, first.unwrap_or_else(|| t0.elapsed()), body)
}

struct Stats {
    n: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    Stats {
        n: v.len(),
        p50: percentile(&v, 50.0),
        p99: percentile(&v, 99.0),
        max: v.last().copied().unwrap_or_default(),
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n_blobs = env_usize("BLOBS", 200);
    let n_misses = env_usize("MISSES", 50);
    let blob_size = env_usize("BLOB_SIZE", 4096);
    let load_start = loadavg();

    let src1 = MemorySource::new();
    let blobs: Vec<Vec<u8>> = (0..n_blobs).map(|i| blob(i, blob_size + i)).collect();
    let layers: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
    src1.add_image(&format!("{NS}/bench/small:v1"), &layers);
    let probe = blob(1_000_000, 1024);
    src1.add_image(&format!("{NS}/bench/probe:v1"), &[&probe]);

    let n1 = start_node(src1, vec![]).await;
    let boot = Bootstrap::Static(n1.router.listen_addrs()[0].clone());
    let n2 = start_node(MemorySource::new(), vec![boot.clone()]).await;
    let n3 = start_node(MemorySource::new(), vec![boot]).await;

    let client = client();

    // Warm-up: ready, fully connected, a probe through nodes 2 and 3.
    let warm_start = Instant::now();
    wait_ready(&client, &[&n1, &n2, &n3]).await;
    for node in [&n2, &n3] {
        let r = node.router.clone();
        wait_until("both peers connected", Duration::from_secs(30), || {
            let r = r.clone();
            async move { r.status().peer_count() >= 2 }
        })
        .await;
    }
    let probe_digest = Digest::of(&probe);
    for node in [&n2, &n3] {
        let url = format!("{}/v2/bench/probe/blobs/{probe_digest}", node.base);
        let c = client.clone();
        wait_until("probe fetch", Duration::from_secs(30), || {
            let (c, url) = (c.clone(), url.clone());
            async move {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                    _ => false,
                }
            }
        })
        .await;
    }
    let warm = warm_start.elapsed();

    // Baseline: node 1 serving the blobs from its own content.
    let mut local = Vec::new();
    for b in &blobs {
        let url = format!("{}/v2/bench/small/blobs/{}", n1.base, Digest::of(b));
        let (status, _, ttfb, body) = timed_get(&client, &url).await;
        assert_eq!(status, 200, "node 1 local {url}");
        assert_eq!(&body, b, "node 1 local body");
        local.push(ttfb);
    }

    // Each blob once through node 2 (a DHT lookup, then a verified fetch from node 1).
    let mut peer = Vec::new();
    let mut peer_headers = Vec::new();
    let mut failed = Vec::new();
    for (i, b) in blobs.iter().enumerate() {
        let url = format!("{}/v2/bench/small/blobs/{}", n2.base, Digest::of(b));
        let (status, headers, ttfb, body) = timed_get(&client, &url).await;
        if status == 200 {
            assert_eq!(&body, b, "peer body of blob {i} differs");
            peer.push(ttfb);
            peer_headers.push(headers);
        } else {
            failed.push((i, status, ttfb));
        }
    }

    // Misses: nobody has these.
    let mut misses = Vec::new();
    for i in 0..n_misses {
        let d = Digest::of(format!("peermirror bench miss {i}").as_bytes());
        let url = format!("{}/v2/bench/small/blobs/{d}", n2.base);
        let (status, _, total, _) = timed_get(&client, &url).await;
        assert_eq!(status, 404, "miss {i}");
        misses.push(total);
    }
    let m2 = n2.metrics(&client).await;

    for node in [n1, n2, n3] {
        node.shut().await;
    }

    let l = stats(local);
    let p = stats(peer);
    let h = stats(peer_headers);
    let m = stats(misses);
    let yes = |ok: bool| if ok { "yes" } else { "NO" };
    let p50_ok = p.p50 <= Duration::from_millis(5);
    let p99_ok = p.p99 <= Duration::from_millis(20) && failed.is_empty();
    let miss_ok = m.p99 <= Duration::from_millis(25);
    println!();
    println!(
        "== examples/bench_p2p.rs summary ({n_blobs} blobs of {blob_size}..{} bytes, {n_misses} misses) ==",
        blob_size + n_blobs - 1
    );
    println!(
        "machine: {} cores, load at start {load_start}, at end {}; warm-up took {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        ms(warm)
    );
    println!();
    println!("| figure | p50 | p99 | max | target | met? |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| node 1 local TTFB (baseline, n={}) | {} | {} | {} | | |",
        l.n,
        ms(l.p50),
        ms(l.p99),
        ms(l.max)
    );
    println!(
        "| node 2 peer-served TTFB (n={}) | {} | {} | {} | p50 <= 5 ms, p99 <= 20 ms | {} / {} |",
        p.n,
        ms(p.p50),
        ms(p.p99),
        ms(p.max),
        yes(p50_ok),
        yes(p99_ok)
    );
    println!(
        "| node 2 peer-served, time to headers | {} | {} | {} | | |",
        ms(h.p50),
        ms(h.p99),
        ms(h.max)
    );
    println!(
        "| miss answered 404 (n={}) | {} | {} | {} | <= 20 ms resolve timeout + 5 ms | {} |",
        m.n,
        ms(m.p50),
        ms(m.p99),
        ms(m.max),
        yes(miss_ok)
    );
    println!();
    println!(
        "peer lookups that answered non-200 (not found within the resolve timeout): {} {:?}",
        failed.len(),
        failed
            .iter()
            .map(|(i, s, t)| format!("#{i}:{s}@{}", ms(*t)))
            .collect::<Vec<_>>()
    );
    let bytes: Vec<&str> = m2
        .lines()
        .filter(|l| l.starts_with("peermirror_response_bytes_total"))
        .collect();
    println!("node 2 {bytes:?}");
}
