//! Tag HEAD benchmark (issue 24): how long a HEAD of `test/app:v1` takes at a node that must
//! resolve the tag through its peers, with 1, 2 and 3 providers of it.
//!
//!   cargo run --release --example bench_tags            (ROUNDS=30 GAP_MS=100 PROVIDERS=1,2,3)
//!
//! For each N in PROVIDERS, a fresh swarm of in-process nodes, each with the real libp2p
//! `P2pRouter` on 127.0.0.1 and the real registry endpoint on loopback, `MirrorConfig::default()`
//! and no peer authentication (`Security::insecure()`): N providers hold the same image (tag v1)
//! and one asking node holds nothing. Warm means: every `/readyz` 200, the asker connected to
//! all N providers, its DHT lookup of the tag naming all N, and one HEAD through it (not
//! counted). Then ROUNDS HEADs of `/v2/test/app/manifests/v1?ns=...` at the asker, GAP_MS
//! apart, each timed to its response headers; a 200 must name the image's digest.
//!
//! Every HEAD is a real resolve: the mirror keeps providers only for digests, never for a
//! tag, and its negative cache holds only lookups that found nobody. The asker's DHT lookup
//! counter is checked to have risen by exactly ROUNDS.
//!
//! The example uses only what exists both before and after issue 24, so the same file builds
//! at either commit; LABEL names the build in the output. All nodes and the client share one
//! process and its tokio runtime, so the figures include that contention.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod bench_support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use bench_support::{
    Node, client, env_usize, loadavg, ms, percentile, start_node, wait_ready, wait_until,
};
use peermirror::content::{Key, MemorySource};
use peermirror::oci::TagKey;
use peermirror::routing::{Bootstrap, Router};

const NS: &str = "127.0.0.1:5000";

/// One swarm's figures.
struct Row {
    providers: usize,
    statuses: BTreeMap<u16, usize>,
    times: Vec<Duration>,
    local_p50: Duration,
    misses: Vec<String>,
    load: String,
}

/// Distinct providers (by registry address) the asker's DHT lookup of `key` names.
async fn providers_found(asker: &Node, key: &Key) -> usize {
    let mut rx = asker.router.lookup(key);
    let mut seen = HashSet::new();
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
        seen.insert(p.addr);
    }
    seen.len()
}

/// The asker's metric lines whose name contains `part`.
async fn metric_lines(client: &reqwest::Client, node: &Node, part: &str) -> Vec<String> {
    node.metrics(client)
        .await
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(part))
        .map(str::to_string)
        .collect()
}

async fn dht_lookups(client: &reqwest::Client, node: &Node) -> f64 {
    metric_lines(client, node, "dht_lookups_total")
        .await
        .first()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("the asker exports a DHT lookup counter")
}

/// HEAD `url`: its status, the digest it names and the time to its headers.
async fn timed_head(client: &reqwest::Client, url: &str) -> (u16, Option<String>, Duration) {
    let t0 = Instant::now();
    let resp = client.head(url).send().await.expect("send");
    let took = t0.elapsed();
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (resp.status().as_u16(), digest, took)
}

async fn run_swarm(client: &reqwest::Client, n: usize, rounds: usize, gap: Duration) -> Row {
    let image = format!("{NS}/test/app:v1");
    let key = Key::Tag(TagKey::from_image_name(&image).expect("tag key"));
    let mut providers = Vec::new();
    let mut digest = String::new();
    for _ in 0..n {
        let src = MemorySource::new();
        // Same name and layer: every provider holds byte-identical content.
        digest = src
            .add_image(&image, &[b"bench_tags layer"])
            .digest
            .to_string();
        let boot = providers
            .first()
            .map(|p: &Node| vec![Bootstrap::Static(p.router.listen_addrs()[0].clone())])
            .unwrap_or_default();
        providers.push(start_node(src, boot).await);
    }
    let boot = Bootstrap::Static(providers[0].router.listen_addrs()[0].clone());
    let asker = start_node(MemorySource::new(), vec![boot]).await;

    let mut all: Vec<&Node> = providers.iter().collect();
    all.push(&asker);
    wait_ready(client, &all).await;
    let r = asker.router.clone();
    wait_until(
        "asker connected to every provider",
        Duration::from_secs(30),
        || {
            let r = r.clone();
            async move { r.status().peer_count() >= n }
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = providers_found(&asker, &key).await;
        if found >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the DHT names {found} of {n} providers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let url = format!("{}/v2/test/app/manifests/v1?ns={NS}", asker.base);
    let local_url = format!("{}/v2/test/app/manifests/v1?ns={NS}", providers[0].base);
    let _ = timed_head(client, &url).await;
    let mut local = Vec::new();
    for _ in 0..rounds {
        let (status, _, took) = timed_head(client, &local_url).await;
        assert_eq!(status, 200, "a provider's own HEAD of the tag");
        local.push(took);
    }

    let lookups_before = dht_lookups(client, &asker).await;
    let mut statuses = BTreeMap::new();
    let mut times = Vec::new();
    for _ in 0..rounds {
        tokio::time::sleep(gap).await;
        let (status, named, took) = timed_head(client, &url).await;
        if status == 200 {
            assert_eq!(named.as_deref(), Some(digest.as_str()), "the tag's digest");
        }
        *statuses.entry(status).or_insert(0) += 1;
        times.push(took);
    }
    let lookups = dht_lookups(client, &asker).await - lookups_before;
    assert_eq!(
        lookups, rounds as f64,
        "every HEAD must be a DHT lookup, not a cached answer"
    );
    let misses = metric_lines(client, &asker, "mirror_misses_total").await;
    let load = loadavg();

    asker.shut().await;
    for p in providers {
        p.shut().await;
    }
    times.sort();
    local.sort();
    Row {
        providers: n,
        statuses,
        times,
        local_p50: percentile(&local, 50.0),
        misses,
        load,
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rounds = env_usize("ROUNDS", 30).max(1);
    let gap = Duration::from_millis(env_usize("GAP_MS", 100) as u64);
    let label = std::env::var("LABEL").unwrap_or_else(|_| "unlabelled".into());
    let counts: Vec<usize> = std::env::var("PROVIDERS")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n >= 1)
        .collect();
    let load_start = loadavg();
    let client = client();

    let mut rows = Vec::new();
    for n in counts {
        rows.push(run_swarm(&client, n, rounds, gap).await);
    }

    println!();
    println!("== examples/bench_tags.rs ({label}): {rounds} tag HEADs per swarm, {gap:?} apart ==");
    println!(
        "machine: {} cores, load at start {load_start}, at end {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!();
    println!(
        "| build | providers | status | p50 | p90 | max | provider-local p50 | load (1/5/15) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let status: Vec<String> = r
            .statuses
            .iter()
            .map(|(s, c)| format!("{c}x {s}"))
            .collect();
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} |",
            r.providers,
            status.join(", "),
            ms(percentile(&r.times, 50.0)),
            ms(percentile(&r.times, 90.0)),
            ms(r.times.last().copied().unwrap_or_default()),
            ms(r.local_p50),
            r.load
        );
    }
    println!();
    for r in &rows {
        println!("{} provider(s): asker misses {:?}", r.providers, r.misses);
    }
}
