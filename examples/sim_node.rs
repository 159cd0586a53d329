//! The DHT simulation (issue 12, part 2): one program, two roles. `bench/dht_sim.sh` runs it.
//!
//!   sim_node node  --index I --ip 127.0.0.1 --dir D --seed INDEX...  one peermirror daemon
//!   sim_node drive PHASE --nodes FILE ...                            the measuring coordinator
//!
//! `node` runs the real daemon (`daemon::run_with_source`, `Routing::P2p`: real libp2p
//! Kademlia, the real registry endpoint, ops endpoint and admin API) on its own loopback
//! ports (see [`base_port`] for why not its own address), over a `MemorySource` of
//! KEYS blobs (20 images of config + manifest + layers, each blob a few bytes). It also listens
//! on `<dir>/ctl.sock` for one line, `commit TEXT`: the bytes are committed to its content as
//! containerd 2.1 does mid-pull, so the node indexes and advertises that one new digest.
//!
//! `drive` measures over every node listed in FILE (`index ip pid dir` per line); see
//! [`Phase`]. Nothing listens beyond 127.0.0.0/8; every wait has a deadline.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use peermirror::admin::proto::LookupRequest;
use peermirror::content::MemorySource;
use peermirror::daemon::{Config, Listeners, P2pSettings, Routing, Security, run_with_source};
use peermirror::mirror::MirrorConfig;
use peermirror::oci::Digest;
use peermirror::routing::Bootstrap;
use peermirror::server::ServerLimits;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// Node `i` listens on 127.0.0.1: registry `base`, router `base + 1`, ops `base + 2`, with
/// `base = 30000 + 3 i`. Not one 127.0.x.y per node with the same ports: libp2p's TCP port reuse
/// binds outgoing connections to 0.0.0.0:<router port>, so on one host they all leave from
/// 127.0.0.1, and a node dialled by a peer would take 127.0.0.1 as that peer's registry IP
/// (the registry address is the connection's IP plus the announced port, see `parse_registry`).
fn base_port(index: usize) -> u16 {
    30000 + 3 * index as u16
}
const IMAGES: usize = 20;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    Node(NodeArgs),
    Drive(DriveArgs),
}

#[derive(Parser)]
struct NodeArgs {
    #[arg(long)]
    index: usize,
    #[arg(long)]
    ip: IpAddr,
    #[arg(long)]
    dir: PathBuf,
    /// Indices of the seed nodes (`--bootstrap static:` each).
    #[arg(long)]
    seed: Vec<usize>,
    #[arg(long, default_value_t = 2000)]
    keys: usize,
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    provider_ttl: Duration,
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    republish_interval: Duration,
    /// Kademlia's k (`--dht-replication`).
    #[arg(long, default_value_t = 5)]
    replication: usize,
    /// The mirror's wait for a first provider (the product's default is 20 ms; longer here
    /// so a slow lookup is measured rather than turned into a 404).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    resolve_timeout: Duration,
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// Until every node's /readyz is 200 and its advertised-keys gauge is KEYS.
    Ready,
    /// New keys committed on one node each: time until a registry HEAD (the pull path) on every
    /// other node finds a provider.
    Propagate,
    /// Lookups at steady state: registry HEADs (the pull path) and admin Lookups.
    Lookups,
    /// DHT requests (from /metrics) and router TCP bytes (from `ss`) per node over a window.
    Traffic,
    /// Until the first announcement of every key is done: the cluster's ADD_PROVIDER rate has
    /// dropped below a tenth of its peak (sampled every 10 s).
    Settle,
    /// RSS (VmRSS, VmHWM) of every node.
    Rss,
    /// SIGKILL a fraction of the nodes; time until lookups of keys on survivors succeed again.
    Recover,
}

#[derive(Parser)]
struct DriveArgs {
    #[arg(value_enum)]
    phase: Phase,
    #[arg(long)]
    nodes: PathBuf,
    #[arg(long, default_value_t = 2000)]
    keys: usize,
    /// How many samples (new keys for `propagate`, lookups of each kind for `lookups`).
    #[arg(long, default_value_t = 5)]
    samples: usize,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    window: Duration,
    #[arg(long, default_value_t = 0.2)]
    kill_fraction: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    match args.role {
        Role::Node(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(a.workers.max(1))
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(node(a));
        }
        Role::Drive(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(drive(a));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The node
// ---------------------------------------------------------------------------------------------

/// Layer `l` of image `k` of node `n`: a few distinct bytes.
fn layer_bytes(n: usize, k: usize, l: usize) -> Vec<u8> {
    format!("sim n{n} i{k} l{l}").into_bytes()
}

/// Layers per image so the node holds `keys` digests (each image adds a config and a manifest).
fn layers_per_image(keys: usize) -> usize {
    (keys / IMAGES).saturating_sub(2).max(1)
}

/// The digest of a layer held by node `n` (the coordinator computes it without asking).
fn layer_digest(n: usize, k: usize, l: usize) -> Digest {
    Digest::of(&layer_bytes(n, k, l))
}

async fn node(a: NodeArgs) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let source = MemorySource::new();
    let per = layers_per_image(a.keys);
    // Every node shares nothing: KEYS distinct digests each (the worst case for the DHT).
    for k in 0..IMAGES {
        let layers: Vec<Vec<u8>> = (0..per).map(|l| layer_bytes(a.index, k, l)).collect();
        let refs: Vec<&[u8]> = layers.iter().map(|l| l.as_slice()).collect();
        source.add_image(&format!("sim.local/n{}/i{k}:v1", a.index), &refs);
    }
    let base = base_port(a.index);
    let registry = TcpListener::bind((a.ip, base))
        .await
        .expect("bind registry");
    let ops = TcpListener::bind((a.ip, base + 2)).await.expect("bind ops");
    let bootstrap: Vec<Bootstrap> = a
        .seed
        .iter()
        .filter(|s| **s != a.index)
        .map(|s| {
            format!("static:/ip4/{}/tcp/{}", a.ip, base_port(*s) + 1)
                .parse()
                .expect("seed")
        })
        .collect();
    let bootstrap = if bootstrap.is_empty() {
        vec![Bootstrap::None]
    } else {
        bootstrap
    };
    std::fs::create_dir_all(&a.dir).expect("dir");
    let config = Config {
        containerd_sock: "/nonexistent".into(),
        containerd_namespace: "k8s.io".into(),
        content_dir: None,
        limits: ServerLimits::default(),
        routing: Routing::P2p(P2pSettings {
            listen: SocketAddr::new(a.ip, base + 1),
            advertise: None,
            bootstrap,
            data_dir: a.dir.join("data"),
            psk_file: None,
            provider_ttl: a.provider_ttl,
            republish_interval: a.republish_interval,
            replication: a.replication,
        }),
        mirror: MirrorConfig {
            resolve_timeout: a.resolve_timeout,
            // Digests only: KEYS keys per node, no tags.
            resolve_tags: false,
            ..MirrorConfig::default()
        },
        security: Security::insecure(),
        token: Default::default(),
        max_uploads: 0,
        max_egress_bps: 0,
        admin_sock: Some(a.dir.join("admin.sock")),
        containerd_config: None,
        spool: None,
    };
    let stop = CancellationToken::new();
    let ctl_path = a.dir.join("ctl.sock");
    let _ = std::fs::remove_file(&ctl_path);
    let ctl = UnixListener::bind(&ctl_path).expect("bind ctl.sock");
    tokio::spawn(control(ctl, source.clone()));
    let s = stop.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        s.cancel();
    });
    if let Err(e) =
        run_with_source(config, Arc::new(source), Listeners { registry, ops }, stop).await
    {
        eprintln!("node {}: {e}", a.index);
        std::process::exit(1);
    }
}

/// `commit TEXT` → the digest of TEXT, committed to the node's content.
async fn control(listener: UnixListener, source: MemorySource) {
    while let Ok((conn, _)) = listener.accept().await {
        let source = source.clone();
        tokio::spawn(async move {
            let (r, mut w) = conn.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = match line.strip_prefix("commit ") {
                    Some(text) => source
                        .commit_blob(text.as_bytes().to_vec())
                        .digest
                        .to_string(),
                    None => "error: commit TEXT".to_string(),
                };
                if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The coordinator
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct SimNode {
    index: usize,
    ip: IpAddr,
    pid: i32,
    dir: PathBuf,
}

fn read_nodes(path: &Path) -> Vec<SimNode> {
    std::fs::read_to_string(path)
        .expect("nodes file")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            SimNode {
                index: f[0].parse().unwrap(),
                ip: f[1].parse().unwrap(),
                pid: f[2].parse().unwrap(),
                dir: f[3].into(),
            }
        })
        .collect()
}

/// A small deterministic generator (xorshift), so runs pick the same pairs for a seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `name: n=.. p50=.. p99=.. max=..` in milliseconds, and the same as a machine-readable line.
fn report(name: &str, mut ms: Vec<f64>, extra: &str) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
    println!(
        "RESULT {name} n={} p50_ms={:.1} p90_ms={:.1} p99_ms={:.1} max_ms={:.1} mean_ms={:.1} {extra}",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 90.0),
        percentile(&ms, 99.0),
        ms.last().copied().unwrap_or(f64::NAN),
        mean
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn drive(a: DriveArgs) {
    let nodes = read_nodes(&a.nodes);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(2)
        .build()
        .unwrap();
    match a.phase {
        Phase::Ready => ready(&a, &nodes, &client).await,
        Phase::Propagate => propagate(&a, &nodes, &client).await,
        Phase::Lookups => lookups(&a, &nodes, &client).await,
        Phase::Traffic => traffic(&a, &nodes, &client).await,
        Phase::Settle => settle(&a, &nodes, &client).await,
        Phase::Rss => rss(&nodes),
        Phase::Recover => recover(&a, &nodes).await,
    }
}

async fn metrics_text(client: &reqwest::Client, n: &SimNode) -> Option<String> {
    let url = format!("http://{}:{}/metrics", n.ip, base_port(n.index) + 2);
    client.get(url).send().await.ok()?.text().await.ok()
}

/// Sum of every sample of metric `name` (all label sets) in a Prometheus text page.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn ready(a: &DriveArgs, nodes: &[SimNode], client: &reqwest::Client) {
    let t0 = Instant::now();
    let deadline = t0 + a.window;
    let mut pending: Vec<SimNode> = nodes.to_vec();
    let mut ready_at = Vec::new();
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for n in pending {
            let url = format!("http://{}:{}/readyz", n.ip, base_port(n.index) + 2);
            let ok = match client.get(url).send().await {
                Ok(r) if r.status().is_success() => metrics_text(client, &n)
                    .await
                    .is_some_and(|t| metric_sum(&t, "peermirror_advertised_keys") >= a.keys as f64),
                _ => false,
            };
            if ok {
                ready_at.push(ms(t0.elapsed()));
            } else {
                still.push(n);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    println!(
        "RESULT ready nodes={} not_ready={} waited_s={:.1}",
        nodes.len() - pending.len(),
        pending.len(),
        t0.elapsed().as_secs_f64()
    );
    let mut peers = Vec::new();
    for n in nodes {
        if let Some(t) = metrics_text(client, n).await {
            peers.push(metric_sum(&t, "peermirror_connected_peers"));
        }
    }
    report("connected_peers_as_ms", peers, "(values are peer counts)");
}

/// One admin Lookup from `node`: (elapsed, did a provider answer its HEAD).
async fn admin_lookup(node: &SimNode, key: &str, timeout_ms: u32) -> (Duration, bool) {
    let t = Instant::now();
    let Ok(mut c) = peermirror::admin::connect(&node.dir.join("admin.sock")).await else {
        return (t.elapsed(), false);
    };
    let r = c
        .lookup(LookupRequest {
            key: key.to_string(),
            timeout_ms,
        })
        .await;
    let found = r.is_ok_and(|r| r.into_inner().providers.iter().any(|p| p.answered));
    (t.elapsed(), found)
}

async fn commit(node: &SimNode, text: &str) -> String {
    let mut s = UnixStream::connect(node.dir.join("ctl.sock"))
        .await
        .unwrap();
    s.write_all(format!("commit {text}\n").as_bytes())
        .await
        .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await.unwrap();
    line.trim().to_string()
}

/// A registry `HEAD` of a blob on `node`: the pull path (local miss, DHT lookup until the first
/// provider, that provider's HEAD). (elapsed, 200?)
async fn registry_head(client: &reqwest::Client, node: &SimNode, digest: &str) -> (Duration, bool) {
    let url = format!(
        "http://{}:{}/v2/sim/blobs/{digest}?ns=sim.local",
        node.ip,
        base_port(node.index)
    );
    let t = Instant::now();
    let status = client.head(url).send().await.map(|r| r.status().as_u16());
    (t.elapsed(), status.is_ok_and(|s| s == 200))
}

async fn propagate(a: &DriveArgs, nodes: &[SimNode], client: &reqwest::Client) {
    let mut rng = Rng(a.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let (mut per_node, mut everywhere) = (Vec::new(), Vec::new());
    let mut missing = 0;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    for s in 0..a.samples {
        let origin = &nodes[rng.below(nodes.len())];
        let digest = commit(origin, &format!("new key {stamp} {s}")).await;
        let t0 = Instant::now();
        let deadline = t0 + a.window;
        let tasks: Vec<_> = nodes
            .iter()
            .filter(|n| n.index != origin.index)
            .cloned()
            .map(|n| {
                let (digest, client) = (digest.clone(), client.clone());
                tokio::spawn(async move {
                    // Each node asks as a pull would, every 250 ms: 199 askers at once are
                    // themselves a load on this machine's two cores.
                    while Instant::now() < deadline {
                        let (_, found) = registry_head(&client, &n, &digest).await;
                        if found {
                            return Some(t0.elapsed());
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    None
                })
            })
            .collect();
        let mut times = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Some(d) => times.push(ms(d)),
                None => missing += 1,
            }
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "key {s} on node {}: all-but-origin found by {:.0} ms (p50 {:.0} ms)",
            origin.index,
            times.last().copied().unwrap_or(f64::NAN),
            percentile(&times, 50.0)
        );
        everywhere.push(times.last().copied().unwrap_or(f64::NAN));
        per_node.extend(times);
    }
    report(
        "new_key_found_per_node",
        per_node,
        &format!("never_found={missing}"),
    );
    report("new_key_found_everywhere", everywhere, "");
}

/// A key held by a node other than `asker`, not asked before by the same asker.
fn pick_key(
    rng: &mut Rng,
    nodes: &[SimNode],
    keys: usize,
    asker: &SimNode,
    used: &mut std::collections::HashSet<(usize, String)>,
) -> String {
    let per = layers_per_image(keys);
    loop {
        let holder = &nodes[rng.below(nodes.len())];
        if holder.index == asker.index {
            continue;
        }
        let d = layer_digest(holder.index, rng.below(IMAGES), rng.below(per)).to_string();
        if used.insert((asker.index, d.clone())) {
            return d;
        }
    }
}

async fn lookups(a: &DriveArgs, nodes: &[SimNode], client: &reqwest::Client) {
    let mut rng = Rng(a.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
    let mut used = std::collections::HashSet::new();
    let mut jobs = Vec::new();
    for _ in 0..a.samples {
        let asker = nodes[rng.below(nodes.len())].clone();
        let head = pick_key(&mut rng, nodes, a.keys, &asker, &mut used);
        let adm = pick_key(&mut rng, nodes, a.keys, &asker, &mut used);
        jobs.push((asker, head, adm));
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
    let tasks: Vec<_> = jobs
        .into_iter()
        .map(|(asker, head, adm)| {
            let (client, sem) = (client.clone(), sem.clone());
            tokio::spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let head_t = registry_head(&client, &asker, &head).await;
                let adm_t = admin_lookup(&asker, &adm, 2000).await;
                (head_t, adm_t)
            })
        })
        .collect();
    let (mut h_ok, mut h_fail, mut a_ok, mut a_fail) = (Vec::new(), 0, Vec::new(), 0);
    for t in tasks {
        let ((ht, hok), (at, aok)) = t.await.unwrap();
        if hok {
            h_ok.push(ms(ht))
        } else {
            h_fail += 1
        }
        if aok { a_ok.push(ms(at)) } else { a_fail += 1 }
    }
    let under20 = h_ok.iter().filter(|t| **t <= 20.0).count();
    let n = h_ok.len();
    report(
        "lookup_registry_head",
        h_ok,
        &format!("failed={h_fail} within_20ms={under20}/{n}"),
    );
    report("lookup_admin", a_ok, &format!("failed={a_fail}"));
}

/// Per local router port: (bytes sent, bytes received) of established router TCP connections
/// (ports 30001, 30004, ...: outgoing connections reuse the listening port).
fn router_bytes() -> std::collections::HashMap<u16, (u64, u64)> {
    let out = std::process::Command::new("ss")
        .args([
            "-tinH",
            "state",
            "established",
            "( sport >= :30000 and sport < :31000 )",
        ])
        .output()
        .expect("ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut map = std::collections::HashMap::new();
    let mut local: Option<u16> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            // "0 0 127.0.0.1:30001 127.0.0.1:30004" (no state column with a state filter)
            local = line
                .split_whitespace()
                .nth(2)
                .and_then(|s| s.parse::<SocketAddr>().ok())
                .map(|s| s.port())
                .filter(|p| p % 3 == 1);
            continue;
        }
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        if let Some(ip) = local.take() {
            let e = map.entry(ip).or_insert((0, 0));
            e.0 += field("bytes_sent:");
            e.1 += field("bytes_received:");
        }
    }
    map
}

const KINDS: [&str; 4] = ["find_node", "get_providers", "add_provider", "other"];

async fn dht_counts(client: &reqwest::Client, nodes: &[SimNode]) -> Vec<[f64; 4]> {
    let mut v = Vec::new();
    for n in nodes {
        let t = metrics_text(client, n).await.unwrap_or_default();
        let mut c = [0.0; 4];
        for (i, k) in KINDS.iter().enumerate() {
            c[i] = t
                .lines()
                .filter(|l| {
                    l.starts_with("peermirror_dht_requests_total{")
                        && l.contains(&format!("what=\"{k}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
        }
        v.push(c);
    }
    v
}

async fn settle(a: &DriveArgs, nodes: &[SimNode], client: &reqwest::Client) {
    let t0 = Instant::now();
    let target = (nodes.len() * a.keys) as f64;
    let mut done = false;
    let mut last = (0.0, 0.0, 0.0);
    while t0.elapsed() < a.window {
        last = announce_state(client, nodes).await;
        let (announced, backlog, failed) = last;
        println!(
            "settle: {:.0} s, {announced:.0} of {target:.0} keys announced, backlog {backlog:.0}, failed {failed:.0}, load {}",
            t0.elapsed().as_secs_f64(),
            loadavg()
        );
        if announced >= target && backlog == 0.0 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    println!(
        "RESULT settle seconds={:.0} announced={:.0} failed={:.0} backlog={:.0} settled={done}",
        t0.elapsed().as_secs_f64(),
        last.0,
        last.2,
        last.1,
    );
    // Everything since the nodes started (counters and connections are as old as the nodes):
    // the cost of announcing every key once, i.e. of one republish round.
    let c = dht_counts(client, nodes).await;
    let b = router_bytes();
    let keys = (nodes.len() * a.keys) as f64;
    let mut sums = [0.0; 4];
    for x in &c {
        for i in 0..4 {
            sums[i] += x[i];
        }
    }
    let (sent, recv) = b
        .values()
        .fold((0u64, 0u64), |acc, v| (acc.0 + v.0, acc.1 + v.1));
    let cpu = cpu_seconds(nodes);
    println!(
        "RESULT first_announcement_per_key find_node={:.2} get_providers={:.2} add_provider={:.2} other={:.2} bytes_sent={:.0} bytes_received={:.0} cpu_ms={:.2} (cluster totals since start / {keys:.0} keys)",
        sums[0] / keys,
        sums[1] / keys,
        sums[2] / keys,
        sums[3] / keys,
        sent as f64 / keys,
        recv as f64 / keys,
        cpu * 1000.0 / keys
    );
    let requests: f64 = sums.iter().sum();
    println!(
        "RESULT cpu_since_start cluster_s={cpu:.0} per_request_us={:.0} (all nodes' CPU, start-up included)",
        cpu * 1e6 / requests.max(1.0)
    );
}

async fn traffic(a: &DriveArgs, nodes: &[SimNode], client: &reqwest::Client) {
    let c0 = dht_counts(client, nodes).await;
    let b0 = router_bytes();
    let cpu0: Vec<f64> = nodes.iter().map(|n| pid_cpu_seconds(n.pid)).collect();
    let t0 = Instant::now();
    tokio::time::sleep(a.window).await;
    let c1 = dht_counts(client, nodes).await;
    let b1 = router_bytes();
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    let cpu: Vec<f64> = nodes
        .iter()
        .zip(&cpu0)
        .map(|(n, c0)| (pid_cpu_seconds(n.pid) - c0) * 1000.0 / (minutes * 60.0))
        .collect();
    report(
        "cpu_ms_per_node_per_s_as_ms",
        cpu,
        "(values are CPU-ms per second)",
    );
    let mut per_kind = [0.0; 4];
    let mut totals = Vec::new();
    for (x, y) in c0.iter().zip(&c1) {
        let mut t = 0.0;
        for i in 0..4 {
            per_kind[i] += (y[i] - x[i]) / minutes;
            t += (y[i] - x[i]) / minutes;
        }
        totals.push(t);
    }
    let n = nodes.len() as f64;
    println!(
        "RESULT dht_requests_per_node_per_min mean={:.0} find_node={:.0} get_providers={:.0} add_provider={:.0} other={:.0}",
        totals.iter().sum::<f64>() / n,
        per_kind[0] / n,
        per_kind[1] / n,
        per_kind[2] / n,
        per_kind[3] / n
    );
    report(
        "dht_requests_per_node_per_min_as_ms",
        totals,
        "(values are requests/min)",
    );
    let (mut sent, mut recv) = (Vec::new(), Vec::new());
    for node in nodes {
        let port = base_port(node.index) + 1;
        let (s0, r0) = b0.get(&port).copied().unwrap_or((0, 0));
        let (s1, r1) = b1.get(&port).copied().unwrap_or((0, 0));
        sent.push(s1.saturating_sub(s0) as f64 / minutes / 1000.0);
        recv.push(r1.saturating_sub(r0) as f64 / minutes / 1000.0);
    }
    report(
        "router_kb_sent_per_node_per_min_as_ms",
        sent,
        "(values are kB/min)",
    );
    report(
        "router_kb_received_per_node_per_min_as_ms",
        recv,
        "(values are kB/min)",
    );
    let conns: usize = router_bytes().len();
    println!(
        "RESULT window_s={:.0} nodes_with_router_sockets={conns}",
        t0.elapsed().as_secs_f64()
    );
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// utime + stime of a process, in seconds (CLK_TCK is 100 on Linux).
fn pid_cpu_seconds(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) start at the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // rest starts at field 3 (state): utime is field 14, stime 15.
    (ticks(11) + ticks(12)) / 100.0
}

fn cpu_seconds(nodes: &[SimNode]) -> f64 {
    nodes.iter().map(|n| pid_cpu_seconds(n.pid)).sum()
}

/// Cluster sums of announcements done, backlog, and failed announcements.
async fn announce_state(client: &reqwest::Client, nodes: &[SimNode]) -> (f64, f64, f64) {
    let texts = futures_util::future::join_all(nodes.iter().map(|n| metrics_text(client, n))).await;
    let mut sums = (0.0, 0.0, 0.0);
    for t in texts.iter().flatten() {
        sums.0 += metric_label(t, "peermirror_dht_announcements_total", "announced");
        sums.1 += metric_sum(t, "peermirror_dht_announce_backlog");
        sums.2 += metric_label(t, "peermirror_dht_announcements_total", "failed");
    }
    sums
}

fn metric_label(text: &str, name: &str, what: &str) -> f64 {
    let prefix = format!("{name}{{what=\"{what}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn status_kb(pid: i32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn rss(nodes: &[SimNode]) {
    let rss: Vec<f64> = nodes
        .iter()
        .filter_map(|n| status_kb(n.pid, "VmRSS:"))
        .map(|k| k / 1024.0)
        .collect();
    let hwm: Vec<f64> = nodes
        .iter()
        .filter_map(|n| status_kb(n.pid, "VmHWM:"))
        .map(|k| k / 1024.0)
        .collect();
    let fds: Vec<f64> = nodes
        .iter()
        .filter_map(|n| std::fs::read_dir(format!("/proc/{}/fd", n.pid)).ok())
        .map(|d| d.count() as f64)
        .collect();
    report("vmrss_mib_as_ms", rss, "(values are MiB)");
    report("vmhwm_mib_as_ms", hwm, "(values are MiB)");
    report("open_fds_as_ms", fds, "(values are fds)");
}

async fn recover(a: &DriveArgs, nodes: &[SimNode]) {
    let mut rng = Rng(a.seed.wrapping_mul(0x1234_5678_9abc_def1) | 1);
    let n_kill = ((nodes.len() as f64) * a.kill_fraction).round() as usize;
    // Never the seeds (indices 0..3): the chart's Service would still resolve to live pods.
    let mut order: Vec<usize> = (3..nodes.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let dead: std::collections::HashSet<usize> = order.into_iter().take(n_kill).collect();
    let alive: Vec<SimNode> = nodes
        .iter()
        .filter(|n| !dead.contains(&n.index))
        .cloned()
        .collect();
    // Probe keys: per survivor, fresh keys held by other survivors.
    let mut used = std::collections::HashSet::new();
    let probes: Vec<Vec<String>> = alive
        .iter()
        .map(|n| {
            (0..64)
                .map(|_| pick_key(&mut rng, &alive, a.keys, n, &mut used))
                .collect()
        })
        .collect();
    let t0 = Instant::now();
    for n in nodes.iter().filter(|n| dead.contains(&n.index)) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(n.pid).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    println!("killed {} of {} nodes (SIGKILL)", dead.len(), nodes.len());
    let window = a.window;
    // Each survivor looks keys up back to back; recovered = the start of its last run of
    // successes that lasts to the end of the window (at least 3 lookups long).
    let tasks: Vec<_> = alive
        .into_iter()
        .zip(probes)
        .map(|(n, keys)| {
            tokio::spawn(async move {
                let mut log = Vec::new();
                for k in keys.iter().cycle() {
                    let start = t0.elapsed();
                    if start > window {
                        break;
                    }
                    let (took, ok) = admin_lookup(&n, k, 2000).await;
                    log.push((start, took, ok));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                log
            })
        })
        .collect();
    let (mut recovered, mut never, mut failures, mut total) = (Vec::new(), 0, 0, 0);
    let mut first_after = Vec::new();
    for t in tasks {
        let log = t.await.unwrap();
        total += log.len();
        failures += log.iter().filter(|e| !e.2).count();
        let tail = log.iter().rev().take_while(|e| e.2).count();
        if tail >= 3 {
            let first_ok = &log[log.len() - tail];
            recovered.push(ms(first_ok.0));
        } else {
            never += 1;
        }
        first_after.extend(log.iter().take(3).filter(|e| e.2).map(|e| ms(e.1)));
    }
    report(
        "recovery_per_survivor",
        recovered,
        &format!("not_recovered={never} failed_lookups={failures}/{total}"),
    );
    report(
        "lookup_admin_first_3_after_kill",
        first_after,
        "(successful ones)",
    );
}
