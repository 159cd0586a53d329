//! What the coordinator reads from the nodes: metrics, admin and registry answers, `ss`, /proc.

use super::drive::SimNode;
use super::*;

pub async fn metrics_text(client: &reqwest::Client, n: &SimNode) -> Option<String> {
    let url = format!("http://{}:{}/metrics", n.ip, base_port(n.index) + 2);
    client.get(url).send().await.ok()?.text().await.ok()
}

/// Sum of every sample of metric `name` (all label sets) in a Prometheus text page.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One admin Lookup from `node`: (elapsed, did a provider answer its HEAD).
pub async fn admin_lookup(node: &SimNode, key: &str, timeout_ms: u32) -> (Duration, bool) {
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

pub async fn commit(node: &SimNode, text: &str) -> String {
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
pub async fn registry_head(
    client: &reqwest::Client,
    node: &SimNode,
    digest: &str,
) -> (Duration, bool) {
    let url = format!(
        "http://{}:{}/v2/sim/blobs/{digest}?ns=sim.local",
        node.ip,
        base_port(node.index)
    );
    let t = Instant::now();
    let status = client.head(url).send().await.map(|r| r.status().as_u16());
    (t.elapsed(), status.is_ok_and(|s| s == 200))
}

/// Per local router port: (bytes sent, bytes received) of established router TCP connections
/// (ports 30001, 30004, ...: outgoing connections reuse the listening port).
pub fn router_bytes() -> std::collections::HashMap<u16, (u64, u64)> {
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

pub const KINDS: [&str; 4] = ["find_node", "get_providers", "add_provider", "other"];

pub async fn dht_counts(client: &reqwest::Client, nodes: &[SimNode]) -> Vec<[f64; 4]> {
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

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// utime + stime of a process, in seconds (CLK_TCK is 100 on Linux).
pub fn pid_cpu_seconds(pid: i32) -> f64 {
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

pub fn cpu_seconds(nodes: &[SimNode]) -> f64 {
    nodes.iter().map(|n| pid_cpu_seconds(n.pid)).sum()
}

/// Cluster sums of announcements done, backlog, and failed announcements.
pub async fn announce_state(client: &reqwest::Client, nodes: &[SimNode]) -> (f64, f64, f64) {
    let texts = futures_util::future::join_all(nodes.iter().map(|n| metrics_text(client, n))).await;
    let mut sums = (0.0, 0.0, 0.0);
    for t in texts.iter().flatten() {
        sums.0 += metric_label(t, "peermirror_dht_announcements_total", "announced");
        sums.1 += metric_sum(t, "peermirror_dht_announce_backlog");
        sums.2 += metric_label(t, "peermirror_dht_announcements_total", "failed");
    }
    sums
}

pub fn metric_label(text: &str, name: &str, what: &str) -> f64 {
    let prefix = format!("{name}{{what=\"{what}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn status_kb(pid: i32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
