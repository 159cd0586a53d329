//! Why a lookup failed: for each failed lookup, the key's record holders (its REPLICATION
//! closest nodes by Kademlia distance, as the provider's announcement placed them), whether each
//! is alive, whether the asker's query heard from it, and the query's own figures (requests,
//! answers, failures, still pending), read from the asker's `peermirror::dht_lookups` log line.

use std::collections::{HashMap, HashSet};

use libp2p::PeerId;
use libp2p::kad::{KBucketKey, RecordKey};
use peermirror::admin::proto::StatusRequest;
use peermirror::content::Key;
use peermirror::routing::record_key;

use super::drive::SimNode;
use super::*;

/// One failed lookup: who asked, for which digest, when (since the phase began) and how long
/// it took (a lookup that ran to its timeout was slow; a quick one found nothing).
pub struct Failure {
    pub asker: usize,
    pub digest: String,
    pub at: Option<Duration>,
    pub took: Duration,
}

/// Each node's PeerId, from its admin status.
pub async fn peer_ids(nodes: &[SimNode]) -> HashMap<PeerId, usize> {
    let mut ids = HashMap::new();
    for n in nodes {
        let Ok(mut c) = peermirror::admin::connect(&n.dir.join("admin.sock")).await else {
            continue;
        };
        if let Ok(r) = c.status(StatusRequest {}).await
            && let Ok(id) = r.into_inner().peer_id.parse::<PeerId>()
        {
            ids.insert(id, n.index);
        }
    }
    ids
}

/// The `replication` nodes closest to `digest`'s record key: where its records should be.
fn holders(ids: &HashMap<PeerId, usize>, digest: &str, replication: usize) -> Vec<usize> {
    let Ok(d) = digest.parse::<Digest>() else {
        return Vec::new();
    };
    let target = KBucketKey::new(RecordKey::new(&record_key(&Key::Digest(d))));
    let mut by_distance: Vec<_> = ids
        .iter()
        .map(|(id, i)| (KBucketKey::from(*id).distance(&target), *i))
        .collect();
    by_distance.sort();
    by_distance
        .into_iter()
        .take(replication)
        .map(|(_, i)| i)
        .collect()
}

/// What the asker's log says about its lookup of `digest` (the last such line): its fields.
fn lookup_line(node: &SimNode, digest: &str) -> Option<HashMap<String, String>> {
    let log = std::fs::read_to_string(node.dir.join("log")).ok()?;
    let needle = format!("key={digest} ");
    let line = log
        .lines()
        .rfind(|l| l.contains("peermirror::dht_lookups") && l.contains(&needle))?;
    let fields = line
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(fields)
}

/// Print one line per failed lookup (up to `max`) and a count per cause.
pub fn explain(
    phase: &str,
    nodes: &[SimNode],
    ids: &HashMap<PeerId, usize>,
    dead: &HashSet<usize>,
    failures: &[Failure],
    replication: usize,
    max: usize,
) {
    if failures.is_empty() {
        println!("RESULT {phase}_failures_explained none");
        return;
    }
    let index_of: HashMap<String, usize> = ids.iter().map(|(p, i)| (p.to_string(), *i)).collect();
    let by_index: HashMap<usize, &SimNode> = nodes.iter().map(|n| (n.index, n)).collect();
    let mut causes: HashMap<&'static str, usize> = HashMap::new();
    for (i, f) in failures.iter().enumerate() {
        let hs = holders(ids, &f.digest, replication);
        let line = by_index
            .get(&f.asker)
            .and_then(|n| lookup_line(n, &f.digest));
        let answered: HashSet<usize> = line
            .as_ref()
            .and_then(|l| l.get("closest"))
            .map(|c| {
                c.split(',')
                    .filter_map(|p| index_of.get(p).copied())
                    .collect()
            })
            .unwrap_or_default();
        let alive_holders = hs.iter().filter(|h| !dead.contains(h)).count();
        let holders_heard = hs.iter().filter(|h| answered.contains(h)).count();
        let cause = match &line {
            _ if alive_holders == 0 => "every holder dead",
            None => "no lookup logged (answered from the provider book, or no log)",
            Some(l) if l.contains_key("first_ms") => {
                "the lookup found a provider (too late, or its HEAD failed)"
            }
            Some(l) if l.get("abandoned").is_some_and(|a| a == "true") => {
                "asker gave up while the query ran (slow answers)"
            }
            Some(_) if holders_heard > 0 => "a holder answered without the record (misplaced)",
            Some(_) => "no live holder answered (failed or never asked)",
        };
        *causes.entry(cause).or_default() += 1;
        if i < max {
            let marks: Vec<String> = hs
                .iter()
                .map(|h| {
                    let state = if dead.contains(h) {
                        "dead"
                    } else if answered.contains(h) {
                        "answered"
                    } else {
                        "not-heard"
                    };
                    format!("n{h}:{state}")
                })
                .collect();
            let get = |k: &str| {
                line.as_ref()
                    .and_then(|l| l.get(k).cloned())
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "failed {phase} lookup: asker n{}{} took_ms={:.0} key {}.. holders [{}] query: ms={} first_ms={} requests={} answered={} failed={} pending={} abandoned={} => {cause}",
                f.asker,
                f.at.map(|a| format!(" at_s={:.1}", a.as_secs_f64()))
                    .unwrap_or_default(),
                f.took.as_secs_f64() * 1000.0,
                &f.digest[..f.digest.len().min(19)],
                marks.join(" "),
                get("ms"),
                get("first_ms"),
                get("requests"),
                get("answered"),
                get("failed"),
                get("pending"),
                get("abandoned"),
            );
        }
    }
    let mut causes: Vec<_> = causes.into_iter().collect();
    causes.sort_by_key(|c| std::cmp::Reverse(c.1));
    let summary: Vec<String> = causes.iter().map(|(c, n)| format!("{n} {c}")).collect();
    println!(
        "RESULT {phase}_failures_explained {} ({})",
        failures.len(),
        summary.join("; ")
    );
}
