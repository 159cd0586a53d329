//! Rollouts (issue 25): every node of a cluster pulls one new image at the same moment, each node
//! and the upstream registry in a network namespace of its own, every link capped with tbf in
//! both directions (`Net::cap_link`). The harness measures, in one run: a lone pull on the same
//! link (node 1 pulls another new image of the same size first, nobody else pulling), then the
//! rollout (all nodes released by one barrier, `ctr content fetch` through each node's
//! peermirror): each pull's time, each node's upload in copies of the image (veth counters), the
//! upstream's copies, and that every node's layer is in its content store and hashes to its
//! digest. A fault (`stop`: SIGSTOP, `kill`: SIGKILL) hits the busiest uploader's peermirror once
//! it has sent a quarter of the image; its own pull is reported apart (a frozen node's containerd
//! waits on its own mirror until SIGCONT, sent once the others are done).
//!
//! - `rollout_six_nodes_at_line_rate` (the test command): 6 nodes, 20 MiB, 80 Mbit/s; a clean
//!   rollout, then one with a frozen source. Asserted: every pull completes and every stored
//!   blob hashes to its name, and the targets (slowest <= 2x lone, upstream <= 1.2
//!   copies; frozen: upstream <= 2.2 copies), which main before the rollout coordinator missed
//!   by 2-5x (docs/benchmarks.md, "Rollouts"). [`TARGETS_ENFORCED`] false (or
//!   `ROLLOUT_ENFORCE=0`) only prints them, to measure a build that misses them.
//! - `rollout_bench`: the instrument behind `bench/rollout.sh` (knobs from the environment, see
//!   [`Knobs::from_env`]); does nothing unless `ROLLOUT_BENCH=1`.
//!
//! Run with `cargo test --test e2e_rollout -- --include-ignored --test-threads=1` (as root).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Whether the issue-25 targets are asserted by the end-to-end test (see the module doc).
const TARGETS_ENFORCED: bool = true;

fn targets_enforced() -> bool {
    match std::env::var("ROLLOUT_ENFORCE").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => TARGETS_ENFORCED,
    }
}

/// The fault applied to the busiest uploader during a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// SIGSTOP (a hung process: its connections stay open, nothing moves).
    Stop,
    /// SIGKILL (connections reset).
    Kill,
}

impl Fault {
    fn parse(s: &str) -> Fault {
        match s {
            "none" => Fault::None,
            "stop" => Fault::Stop,
            "kill" => Fault::Kill,
            other => panic!("FAULT={other:?} is not none, stop or kill"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Stop => "stop",
            Fault::Kill => "kill",
        }
    }
}

/// One rollout's setting.
#[derive(Clone, Copy, Debug)]
struct Knobs {
    nodes: usize,
    rate_mbit: u32,
    size_mb: u64,
    ctd: CtdVersion,
    auth: ClusterAuth,
    fault: Fault,
    /// The fault fires once the busiest uploader has sent this many copies of the image.
    fault_after: f64,
    /// Node 1 starts this much before the others (0: all at once; a diagnostic, not a rollout).
    lead_ms: u64,
    runs: usize,
    /// containerd's `concurrent_layer_fetch_buffer` (2.1): pulls go through the transfer
    /// service (`ctr images pull`, chunked ranged fetches) instead of `ctr content fetch`.
    fetch_buffer: Option<u64>,
    /// tbf's queue on every link, in ms of its rate (200).
    queue_ms: u32,
    /// One node whose link is slower than the others' (node, Mbit/s), from the rollout on: a
    /// weak member somewhere in the chain.
    slow: Option<(usize, u32)>,
}

impl Knobs {
    /// `NODES` (8), `RATE` Mbit/s (50), `SIZE_MB` MiB (50), `CTD` 1.6|1.7|2.1 (1.6), `AUTH`
    /// none|mtls|token (none), `FAULT` none|stop|kill (none), `FAULT_AFTER` copies (0.25),
    /// `LEAD_MS` (0), `RUNS` (1), `FETCH_BUFFER` bytes (none; 2.1 only), `QUEUE_MS` (200),
    /// `SLOW` node:Mbit (none).
    fn from_env() -> Knobs {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => v
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
                _ => default,
            }
        }
        let ctd: String = var("CTD", "1.6".to_string());
        let auth: String = var("AUTH", "none".to_string());
        let fault: String = var("FAULT", "none".to_string());
        let slow: String = var("SLOW", String::new());
        let nodes = var("NODES", 8);
        let slow = (!slow.is_empty()).then(|| {
            slow.split_once(':')
                .and_then(|(n, r)| Some((n.parse().ok()?, r.parse().ok()?)))
                .filter(|(n, _)| (1..=nodes).contains(n))
                .unwrap_or_else(|| {
                    panic!("SLOW={slow:?} is not node:Mbit with a node in 1..={nodes} (e.g. 3:10)")
                })
        });
        Knobs {
            nodes,
            rate_mbit: var("RATE", 50),
            size_mb: var("SIZE_MB", 50),
            ctd: CtdVersion::parse_list(&ctd)
                .ok()
                .and_then(|v| v.first().copied())
                .unwrap_or_else(|| panic!("CTD={ctd:?} is not 1.6, 1.7 or 2.1")),
            auth: ClusterAuth::parse(&auth).unwrap_or_else(|e| panic!("AUTH: {e}")),
            fault: Fault::parse(&fault),
            fault_after: var("FAULT_AFTER", 0.25),
            lead_ms: var("LEAD_MS", 0),
            runs: var("RUNS", 1),
            fetch_buffer: Some(var("FETCH_BUFFER", 0u64)).filter(|b| *b > 0),
            queue_ms: var("QUEUE_MS", 200),
            slow,
        }
    }

    fn describe(&self) -> String {
        format!(
            "nodes={} rate_mbit={} size_mb={} ctd={} auth={} fault={} lead_ms={} fetch_buffer={} queue_ms={} slow={}",
            self.nodes,
            self.rate_mbit,
            self.size_mb,
            self.ctd.series(),
            self.auth.name(),
            self.fault.name(),
            self.lead_ms,
            self.fetch_buffer.unwrap_or(0),
            self.queue_ms,
            self.slow
                .map_or("none".to_string(), |(n, r)| format!("node{n}:{r}"))
        )
    }
}

/// One node's rollout pull.
struct NodePull {
    node: usize,
    took: Duration,
    result: Result<(), String>,
    /// Bytes it sent onto the bridge during the rollout (until the others were done).
    uploaded: u64,
    /// Its content store holds the layer and the layer hashes to its digest.
    verified: bool,
}

/// What one rollout measured.
struct Rollout {
    lone: Duration,
    pulls: Vec<NodePull>,
    /// The node whose peermirror the fault hit.
    victim: Option<usize>,
    upstream_sent: u64,
    image_bytes: u64,
}

impl Rollout {
    /// The pulls of every node but the victim.
    fn others(&self) -> impl Iterator<Item = &NodePull> {
        self.pulls.iter().filter(|p| Some(p.node) != self.victim)
    }

    fn others_sorted(&self) -> Vec<Duration> {
        let mut t: Vec<Duration> = self.others().map(|p| p.took).collect();
        t.sort();
        t
    }

    fn slowest(&self) -> Duration {
        self.others_sorted().last().copied().unwrap_or_default()
    }

    /// The lower median.
    fn median(&self) -> Duration {
        let t = self.others_sorted();
        t.get(t.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or_default()
    }

    fn ratio(&self, d: Duration) -> f64 {
        d.as_secs_f64() / self.lone.as_secs_f64().max(1e-3)
    }

    fn copies(&self, bytes: u64) -> f64 {
        bytes as f64 / self.image_bytes as f64
    }

    fn upstream_copies(&self) -> f64 {
        self.copies(self.upstream_sent)
    }

    fn busiest(&self) -> (usize, f64) {
        self.pulls
            .iter()
            .map(|p| (p.node, self.copies(p.uploaded)))
            .fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a })
    }

    fn failed(&self) -> usize {
        self.others().filter(|p| p.result.is_err()).count()
    }

    fn verified(&self) -> usize {
        self.pulls.iter().filter(|p| p.verified).count()
    }

    /// The human lines, then one `ROLLOUT key=value ...` line.
    fn print(&self, label: &str, knobs: &Knobs) {
        for p in &self.pulls {
            eprintln!(
                "[{label}] node{}{}: pull {:.2} s {}, uploaded {:.2} copies, layer {}",
                p.node,
                if Some(p.node) == self.victim {
                    " (fault victim)"
                } else {
                    ""
                },
                p.took.as_secs_f64(),
                match &p.result {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("FAILED ({})", last_lines_of(e, 2).replace('\n', " | ")),
                },
                self.copies(p.uploaded),
                if p.verified {
                    "verified"
                } else {
                    "NOT verified"
                }
            );
        }
        let (busiest, busiest_copies) = self.busiest();
        eprintln!(
            "[{label}] lone {:.2} s; slowest {:.2} s ({:.2}x lone), median {:.2} s ({:.2}x); upstream {:.2} copies; busiest uploader node{busiest} {busiest_copies:.2} copies; verified {}/{}; failed {}",
            self.lone.as_secs_f64(),
            self.slowest().as_secs_f64(),
            self.ratio(self.slowest()),
            self.median().as_secs_f64(),
            self.ratio(self.median()),
            self.upstream_copies(),
            self.verified(),
            self.pulls.len(),
            self.failed(),
        );
        let uploads: Vec<String> = self
            .pulls
            .iter()
            .map(|p| format!("{:.2}", self.copies(p.uploaded)))
            .collect();
        eprintln!(
            "ROLLOUT label={label} {} lone_s={:.2} slowest_s={:.2} median_s={:.2} slowest_x={:.2} median_x={:.2} upstream_copies={:.2} max_upload_copies={busiest_copies:.2} uploads={} verified={}/{} failed={} victim={}",
            knobs.describe(),
            self.lone.as_secs_f64(),
            self.slowest().as_secs_f64(),
            self.median().as_secs_f64(),
            self.ratio(self.slowest()),
            self.ratio(self.median()),
            self.upstream_copies(),
            uploads.join(","),
            self.verified(),
            self.pulls.len(),
            self.failed(),
            self.victim
                .map_or("none".to_string(), |v| format!("node{v}")),
        );
    }
}

/// A pull may take this long before it counts as failed.
fn pull_timeout(lone: Duration) -> Duration {
    (lone * 20).max(Duration::from_secs(120))
}

/// Node `i` fetches `image` through its peermirror (falling back to the upstream).
fn fetch(
    c: &Cluster,
    i: usize,
    image: &FixtureImage,
    timeout: Duration,
    knobs: &Knobs,
) -> Result<(), String> {
    let node = c.node(i);
    let reference = image.reference(&c.reg());
    if knobs.fetch_buffer.is_some() {
        // The chunked fetch is the transfer service's: `ctr images pull` on 2.1 goes through it.
        return node.ctd.pull_within(&reference, &node.hosts_dir(), timeout);
    }
    node.ctd
        .fetch_within(&reference, &node.hosts_dir(), timeout)
}

/// Every link capped at `mbit` both ways (tbf queues of `queue_ms`), the upstream's included.
fn cap_all(c: &Cluster, mbit: u32, queue_ms: u32) {
    c.net.cap_link_queue(UPSTREAM_NAME, mbit, queue_ms);
    for i in 1..=c.nodes.len() {
        c.net.cap_link_queue(&c.member(i).name, mbit, queue_ms);
    }
}

/// Node 1 pulls `lone` (a new image of the rollout's size) with nobody else pulling: the time
/// one pull takes on this link, through its mirror (a miss: from the upstream).
fn lone_pull(c: &Cluster, lone: &RandomImage, knobs: &Knobs) -> Duration {
    let started = Instant::now();
    if let Err(e) = fetch(c, 1, &lone.image, Duration::from_secs(600), knobs) {
        panic!(
            "the lone pull failed:\n{}\n--- node1 ---\n{}",
            last_lines_of(&e, 6),
            c.node(1).pm.log_tail(40)
        );
    }
    let took = started.elapsed();
    assert!(
        c.node(1).ctd.has_verified_blob(lone.layer().hex()),
        "the lone pull stored no verified layer"
    );
    took
}

/// Every node fetches `image` at once (one barrier releases them; node 1 `lead_ms` earlier);
/// `fault` hits the busiest uploader once it has sent `fault_after` copies. Node uploads and the upstream's bytes are
/// taken when every pull but the victim's is over; then a frozen victim gets SIGCONT and its
/// own pull is awaited.
fn rollout(c: &Cluster, image: &RandomImage, lone: Duration, knobs: &Knobs) -> Rollout {
    let (fault, fault_after) = (knobs.fault, knobs.fault_after);
    let lead = Duration::from_millis(knobs.lead_ms);
    let n = c.nodes.len();
    let timeout = pull_timeout(lone);
    let image_bytes = image.bytes();
    let base: Vec<u64> = (1..=n).map(|i| c.sent_bytes(i)).collect();
    let upstream_base = c.net.sent_bytes(UPSTREAM_NAME);
    let barrier = Barrier::new(n + 1);
    let (results, victim, uploaded, upstream_sent) = thread::scope(|s| {
        let pulls: Vec<_> = (1..=n)
            .map(|i| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    if i > 1 {
                        thread::sleep(lead);
                    }
                    let started = Instant::now();
                    let result = fetch(c, i, &image.image, timeout, knobs);
                    (result, started.elapsed())
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let mut victim = None;
        loop {
            let others_done = pulls
                .iter()
                .enumerate()
                .all(|(k, p)| p.is_finished() || victim == Some(k + 1));
            if others_done || started.elapsed() > timeout + Duration::from_secs(30) {
                break;
            }
            if fault != Fault::None && victim.is_none() {
                let (i, sent) = (1..=n)
                    .map(|i| (i, c.sent_bytes(i) - base[i - 1]))
                    .max_by_key(|&(_, sent)| sent)
                    .unwrap_or((1, 0));
                if sent as f64 >= fault_after * image_bytes as f64 {
                    let signal = if fault == Fault::Stop { "STOP" } else { "KILL" };
                    c.signal_peermirror(i, signal);
                    eprintln!(
                        "[rollout] SIG{signal} to node{i}'s peermirror {:.2} s in, after it sent {sent} bytes",
                        started.elapsed().as_secs_f64()
                    );
                    victim = Some(i);
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        let uploaded: Vec<u64> = (1..=n).map(|i| c.sent_bytes(i) - base[i - 1]).collect();
        let upstream_sent = c.net.sent_bytes(UPSTREAM_NAME) - upstream_base;
        if fault == Fault::Stop
            && let Some(v) = victim
        {
            c.signal_peermirror(v, "CONT");
        }
        let results: Vec<_> = pulls
            .into_iter()
            .map(|p| p.join().expect("pull thread"))
            .collect();
        (results, victim, uploaded, upstream_sent)
    });
    let hex = image.layer().hex().to_string();
    let pulls = results
        .into_iter()
        .enumerate()
        .map(|(k, (result, took))| NodePull {
            node: k + 1,
            took,
            result,
            uploaded: uploaded[k],
            verified: c.node(k + 1).ctd.has_verified_blob(&hex),
        })
        .collect();
    Rollout {
        lone,
        pulls,
        victim,
        upstream_sent,
        image_bytes,
    }
}

/// Nothing wrong was committed anywhere: every blob of every node's store hashes to its name.
fn assert_nothing_wrong(c: &Cluster) {
    for i in 1..=c.nodes.len() {
        c.node(i).ctd.verify_content_blobs();
    }
}

fn assert_all_pulled(c: &Cluster, r: &Rollout, label: &str) {
    for p in r.others() {
        if let Err(e) = &p.result {
            panic!(
                "[{label}] node{} pull failed:\n{}\n--- node{} ---\n{}",
                p.node,
                last_lines_of(e, 6),
                p.node,
                c.node(p.node).pm.log_tail(60)
            );
        }
        assert!(p.verified, "[{label}] node{}: layer not verified", p.node);
    }
}

fn seed(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{label}-{}-{nanos}", std::process::id())
}

// ------------------------------------------------------------------------------------------

/// 6 nodes, 20 MiB, 80 Mbit/s both ways on every link: a rollout, then a second image with the
/// busiest uploader frozen (SIGSTOP) a quarter-image in. See the module doc for what is always
/// asserted and what only with the targets enforced.
#[test]
#[ignore = "e2e: needs root + ip netns + tc + containerd + docker-registry"]
fn rollout_six_nodes_at_line_rate() {
    let knobs = Knobs {
        nodes: 6,
        rate_mbit: 80,
        size_mb: 20,
        ctd: CtdVersion::V1_6,
        auth: ClusterAuth::None,
        fault: Fault::None,
        fault_after: 0.25,
        lead_ms: 0,
        runs: 1,
        fetch_buffer: None,
        queue_ms: 200,
        slow: None,
    };
    let lone_image = random_image("lone", knobs.size_mb, &seed("lone"));
    let first = random_image("rollout", knobs.size_mb, &seed("rollout"));
    let second = random_image("frozen", knobs.size_mb, &seed("frozen"));
    let c = Cluster::start_with(
        knobs.nodes,
        &ClusterOptions::default(),
        &[&lone_image.image, &first.image, &second.image],
    );
    cap_all(&c, knobs.rate_mbit, knobs.queue_ms);
    let lone = lone_pull(&c, &lone_image, &knobs);

    let r = rollout(&c, &first, lone, &knobs);
    r.print("e2e", &knobs);
    print_rollout_logs(&c, "e2e");
    assert_all_pulled(&c, &r, "e2e");

    let frozen_knobs = Knobs {
        fault: Fault::Stop,
        ..knobs
    };
    let f = rollout(&c, &second, lone, &frozen_knobs);
    f.print("e2e-frozen", &frozen_knobs);
    assert_all_pulled(&c, &f, "e2e-frozen");
    match f.victim {
        // The frozen node itself, once thawed, completes too (pulls never get worse).
        Some(victim) => {
            let v = &f.pulls[victim - 1];
            assert!(
                v.result.is_ok() && v.verified,
                "node{victim} (frozen, then thawed) did not complete: {:?}",
                v.result
            );
        }
        // Every node went to the upstream at once (the start race): nobody was a source.
        None => {
            assert!(
                !targets_enforced(),
                "no node uploaded a quarter of the image: nothing was frozen"
            );
            eprintln!("[e2e-frozen] no node uploaded a quarter of the image: nothing was frozen");
        }
    }
    assert_nothing_wrong(&c);

    if targets_enforced() {
        assert!(
            r.ratio(r.slowest()) <= 2.0,
            "slowest pull {:.2} s is {:.2}x the lone pull ({:.2} s): target <= 2x",
            r.slowest().as_secs_f64(),
            r.ratio(r.slowest()),
            lone.as_secs_f64()
        );
        assert!(
            r.upstream_copies() <= 1.2,
            "the upstream sent {:.2} copies: target <= 1.2",
            r.upstream_copies()
        );
        assert!(
            f.upstream_copies() <= 2.2,
            "with node{:?} frozen the upstream sent {:.2} copies: target <= 2.2",
            f.victim,
            f.upstream_copies()
        );
    } else {
        eprintln!(
            "[e2e] issue-25 targets not enforced (ROLLOUT_ENFORCE=0 or TARGETS_ENFORCED=false): \
             slowest {:.2}x lone (<= 2), upstream {:.2} copies (<= 1.2), frozen upstream {:.2} copies (<= 2.2)",
            r.ratio(r.slowest()),
            r.upstream_copies(),
            f.upstream_copies()
        );
    }
}

/// With `ROLLOUT_LOGS=1`: every node's log lines about rollouts and failovers (a diagnostic
/// for slow fault runs).
fn print_rollout_logs(c: &Cluster, label: &str) {
    if std::env::var("ROLLOUT_LOGS").as_deref() != Ok("1") {
        return;
    }
    const MARKS: [&str; 7] = [
        "rollout",
        // The ingest watcher: when a first node's own upstream download became visible.
        "ingest",
        "stalled",
        "stream broke",
        "resuming",
        "does not answer",
        "followed died",
    ];
    for i in 1..=c.nodes.len() {
        for line in c.node(i).log().lines() {
            if MARKS.iter().any(|m| line.contains(m)) {
                eprintln!("[{label}] node{i}: {line}");
            }
        }
    }
}

/// Sums over every node of each metric named in `ROLLOUT_METRICS` (comma-separated, all series
/// of a name added up; a node that does not answer counts 0).
fn print_metric_sums(c: &Cluster, label: &str) {
    let Ok(names) = std::env::var("ROLLOUT_METRICS") else {
        return;
    };
    let sums: Vec<String> = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let sum: f64 = (1..=c.nodes.len())
                .map(|i| c.node(i).pm.metric(name, &[]))
                .sum();
            format!("{name}={sum}")
        })
        .collect();
    eprintln!("[{label}] metric sums over the nodes: {}", sums.join(" "));
}

/// The instrument behind `bench/rollout.sh`: [`Knobs::from_env`], RUNS fresh clusters, each a
/// lone pull then one rollout. Does nothing unless `ROLLOUT_BENCH=1`.
#[test]
#[ignore = "bench: run by bench/rollout.sh (ROLLOUT_BENCH=1)"]
fn rollout_bench() {
    if std::env::var("ROLLOUT_BENCH").as_deref() != Ok("1") {
        eprintln!("rollout_bench: ROLLOUT_BENCH=1 not set (bench/rollout.sh sets it): nothing run");
        return;
    }
    let knobs = Knobs::from_env();
    eprintln!(
        "[bench] {} runs={} peermirror={}",
        knobs.describe(),
        knobs.runs,
        peermirror_bin().display()
    );
    let lone_image = random_image("lone", knobs.size_mb, &seed("lone"));
    let image = random_image("rollout", knobs.size_mb, &seed("rollout"));
    // `ARGS`: extra `peermirror run` flags for every node (e.g. `--mirror-claim-wait 1s`).
    let extra = std::env::var("ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    // Per run: slowest x lone, upstream copies, the busiest node's copies. Runs of one case
    // spread as widely as two builds differ, so a case is its range, not one run.
    let mut summary: Vec<(f64, f64, f64)> = Vec::new();
    for run in 1..=knobs.runs {
        let c = Cluster::start_with(
            knobs.nodes,
            &ClusterOptions {
                version: knobs.ctd,
                auth: knobs.auth,
                args: &extra,
                fetch_buffer: knobs.fetch_buffer,
            },
            &[&lone_image.image, &image.image],
        );
        cap_all(&c, knobs.rate_mbit, knobs.queue_ms);
        let lone = lone_pull(&c, &lone_image, &knobs);
        if let Some((n, mbit)) = knobs.slow {
            c.net
                .cap_link_queue(&c.member(n).name, mbit, knobs.queue_ms);
        }
        let r = rollout(&c, &image, lone, &knobs);
        let label = format!("run{run}");
        r.print(&label, &knobs);
        summary.push((r.ratio(r.slowest()), r.upstream_copies(), r.busiest().1));
        print_metric_sums(&c, &label);
        print_rollout_logs(&c, &label);
        assert_nothing_wrong(&c);
        if knobs.fault != Fault::None && r.victim.is_none() {
            eprintln!(
                "[{label}] the fault never fired: no node uploaded {} copies",
                knobs.fault_after
            );
        }
    }
    if summary.len() > 1 {
        let mut slowest: Vec<f64> = summary.iter().map(|s| s.0).collect();
        slowest.sort_by(f64::total_cmp);
        let shown: Vec<String> = slowest.iter().map(|x| format!("{x:.2}")).collect();
        let max = |f: fn(&(f64, f64, f64)) -> f64| summary.iter().map(f).fold(0.0, f64::max);
        eprintln!(
            "[bench] {} runs: slowest x lone {} (median {:.2}); upstream up to {:.2} copies; busiest node up to {:.2} copies",
            summary.len(),
            shown.join(" "),
            (slowest[(slowest.len() - 1) / 2] + slowest[slowest.len() / 2]) / 2.0,
            max(|s| s.1),
            max(|s| s.2),
        );
    }
}
