//! The `drive` role: the coordinator's phases (see [`Phase`]).

use super::explain::{Failure, explain, peer_ids};
use super::probe::*;
use super::*;

#[derive(Clone)]
pub struct SimNode {
    pub index: usize,
    pub ip: IpAddr,
    pub pid: i32,
    pub dir: PathBuf,
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

pub async fn drive(a: DriveArgs) {
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
                (asker.index, head, adm, head_t, adm_t)
            })
        })
        .collect();
    let (mut h_ok, mut h_fail, mut a_ok, mut a_fail) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for t in tasks {
        let (asker, head, adm, (ht, hok), (at, aok)) = t.await.unwrap();
        if hok {
            h_ok.push(ms(ht))
        } else {
            h_fail.push(Failure {
                asker,
                digest: head,
                at: None,
                took: ht,
            })
        }
        if aok {
            a_ok.push(ms(at))
        } else {
            a_fail.push(Failure {
                asker,
                digest: adm,
                at: None,
                took: at,
            })
        }
    }
    let under20 = h_ok.iter().filter(|t| **t <= 20.0).count();
    let n = h_ok.len();
    report(
        "lookup_registry_head",
        h_ok,
        &format!("failed={} within_20ms={under20}/{n}", h_fail.len()),
    );
    report("lookup_admin", a_ok, &format!("failed={}", a_fail.len()));
    let ids = peer_ids(nodes).await;
    let none = std::collections::HashSet::new();
    explain(
        "steady_head",
        nodes,
        &ids,
        &none,
        &h_fail,
        a.replication,
        40,
    );
    explain(
        "steady_admin",
        nodes,
        &ids,
        &none,
        &a_fail,
        a.replication,
        40,
    );
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
    // PeerIds before the kill: the dead cannot be asked afterwards.
    let ids = peer_ids(nodes).await;
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
                let (mut log, mut failed_keys) = (Vec::new(), Vec::new());
                for k in keys.iter().cycle() {
                    let start = t0.elapsed();
                    if start > window {
                        break;
                    }
                    let (took, ok) = admin_lookup(&n, k, 2000).await;
                    log.push((start, took, ok));
                    if !ok {
                        failed_keys.push((k.clone(), start, took));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                (n.index, log, failed_keys)
            })
        })
        .collect();
    let (mut recovered, mut never, mut failures, mut total) = (Vec::new(), 0, 0, 0);
    // The first run of 3 successes: when lookups worked again, whatever failed later (each
    // later failure is listed below with its time).
    let mut first_recovered = Vec::new();
    let (mut first_after, mut explained) = (Vec::new(), Vec::new());
    for t in tasks {
        let (asker, log, failed_keys) = t.await.unwrap();
        explained.extend(failed_keys.into_iter().map(|(digest, at, took)| Failure {
            asker,
            digest,
            at: Some(at),
            took,
        }));
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
        if let Some(w) = log.windows(3).find(|w| w.iter().all(|e| e.2)) {
            first_recovered.push(ms(w[0].0));
        }
    }
    report(
        "recovery_per_survivor",
        recovered,
        &format!("not_recovered={never} failed_lookups={failures}/{total}"),
    );
    report(
        "first_recovery_per_survivor",
        first_recovered,
        "(the start of its first 3 successes in a row)",
    );
    report(
        "lookup_admin_first_3_after_kill",
        first_after,
        "(successful ones)",
    );
    explain("recover", nodes, &ids, &dead, &explained, a.replication, 40);
}
