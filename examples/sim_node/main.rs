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
//! [`Phase`]. Nothing listens beyond 127.0.0.0/8, or the node's own namespace address
//! (bench/dht_sim.sh NETNS=1); every wait has a deadline.
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

mod drive;
mod explain;
mod node;
mod probe;

use drive::drive;
use node::node;

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
    /// The seeds' IPs, in `--seed`'s order, when each node has its own (bench/dht_sim.sh's
    /// NETNS=1: a network namespace per node); by default every seed is at `--ip`.
    #[arg(long)]
    seed_ip: Vec<IpAddr>,
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
    /// The adaptive wait's ceiling (`--mirror-resolve-timeout-max`; the product's is 250 ms);
    /// the floor by default (off), to measure lookups rather than the wait.
    #[arg(long, value_parser = humantime::parse_duration)]
    resolve_timeout_max: Option<Duration>,
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
    /// The nodes' Kademlia k: how many nodes hold each key's records (to explain failures).
    #[arg(long, default_value_t = 5)]
    replication: usize,
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
