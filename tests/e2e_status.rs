//! End-to-end tests of `peermirror status` against a real two-node run: two
//! containerd daemons, two `peermirror run` processes (node 2 bootstrapping to
//! node 1, `--auth-mode none`), docker-registry as the upstream, the admin
//! socket at an explicit `--admin-sock` path in each node's directory.
//!
//! Run with `cargo test --test e2e_status -- --include-ignored` (as root).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

/// How long a node may take to learn, through the DHT, what another one holds.
const VISIBLE_WITHIN: Duration = Duration::from_secs(30);

/// A node with its admin socket at an explicit `--admin-sock` in its directory.
fn start_node(name: &'static str, peer: Option<&Peermirror>) -> Node {
    Node::builder(name).bootstrap(peer).admin_sock().start()
}

/// `peermirror status --admin-sock <node's socket> ARGS...`
fn status(node: &Node, args: &[&str]) -> Output {
    status_at(&node.admin_sock(), args)
}

/// Like [`status`], panicking unless the exit code is `code`; stdout.
fn status_code(node: &Node, code: i32, args: &[&str]) -> String {
    let out = status(node, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "status {args:?}: {}",
        describe_output(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `status --output json ARGS...`, parsed.
fn status_json(node: &Node, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let out = status(node, &all);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {all:?}: not JSON ({e}): {}", describe_output(&out)))
}

fn status_at(sock: &Path, args: &[&str]) -> Output {
    let sock = sock.display().to_string();
    let mut all = vec!["status", "--admin-sock", sock.as_str()];
    all.extend_from_slice(args);
    peermirror_cli(&all)
}

/// The `KEY   value` row of `status`'s table.
fn row<'a>(table: &'a str, key: &str) -> Option<&'a str> {
    table.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?;
        rest.starts_with("  ").then(|| rest.trim())
    })
}

/// The two-node run of every check below, one after another (the setup, three
/// processes per node and a registry, costs more than the checks).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn status_against_a_two_node_run() {
    let registry = Registry::start();
    let big = fixture("big");
    registry.push(&big);
    let reg = registry.host();
    let mut node1 = start_node("node1", None);
    node1.ctd.pull_ok(&big.reference(&reg), None, true);
    let node2 = start_node("node2", Some(&node1.pm));
    let layer = big.host_manifest().layers[0].clone();

    // --- status: ready, peers --------------------------------------------
    let ready = wait_until(VISIBLE_WITHIN, || {
        status(&node1, &[]).status.code() == Some(0)
            && status_json(&node1, &[])["content"]["blobs"].as_u64() >= Some(3)
    });
    let table = status_code(&node1, if ready { 0 } else { 3 }, &[]);
    eprintln!("[status] node1 `status`:\n{table}");
    assert!(ready, "node1 not ready with its content indexed");
    assert_eq!(row(&table, "ready"), Some("yes"));
    assert_eq!(row(&table, "peers"), Some("1"));
    assert_eq!(row(&table, "containerd"), Some("reachable, indexed"));
    assert_eq!(row(&table, "auth"), Some("none"));
    // containerd's own version, from its Version service; no --containerd-config, no warnings.
    assert!(
        row(&table, "containerd version").is_some_and(|v| v.starts_with("1.6")),
        "{table}"
    );
    assert!(!table.lines().any(|l| l.starts_with("WARNING")), "{table}");
    assert_eq!(
        row(&table, "registry"),
        Some(node1.pm.registry_host().as_str())
    );
    let s1 = status_json(&node1, &[]);
    let s2 = status_json(&node2, &[]);
    assert_eq!(s1["ready"], true);
    assert_eq!(s1["warnings"], serde_json::json!([]), "{s1}");
    assert!(
        s1["containerd"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.6")),
        "{s1}"
    );
    assert_eq!(s1["connected_peers"], 1);
    assert_eq!(s2["connected_peers"], 1);
    assert!(s1["content"]["images"].as_u64() >= Some(1), "{s1}");
    let id1 = s1["peer_id"].as_str().unwrap().to_string();
    let id2 = s2["peer_id"].as_str().unwrap().to_string();
    assert!(id1.starts_with("12D3") && id1 != id2, "{id1} / {id2}");
    assert_eq!(row(&table, "peer id"), Some(id1.as_str()));

    // --- status peers ----------------------------------------------------
    let peers = status_code(&node2, 0, &["peers"]);
    eprintln!("[status] node2 `status peers`:\n{peers}");
    let line = peers
        .lines()
        .find(|l| l.starts_with(&id1))
        .unwrap_or_else(|| panic!("node2's peers do not list node1 {id1}:\n{peers}"));
    assert!(
        line.contains(&node1.pm.registry_host()),
        "node1's registry address missing: {line}"
    );
    assert!(peers.contains("1 peer(s)"));
    let pj = status_json(&node2, &["peers"]);
    let listed: Vec<&str> = pj["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["peer_id"].as_str())
        .collect();
    assert_eq!(listed, vec![id1.as_str()], "{pj}");
    // Options after the subcommand, as a person types them, mean the same.
    let after = status(&node2, &["peers", "--output", "json"]);
    let after: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap_or_else(|e| {
        panic!(
            "status peers --output json: {e}: {}",
            describe_output(&after)
        )
    });
    assert_eq!(
        after["peers"][0]["peer_id"], pj["peers"][0]["peer_id"],
        "{after}"
    );
    assert_eq!(
        pj["peers"][0]["registry_addr"].as_str(),
        Some(node1.pm.registry_host().as_str())
    );

    // --- status lookup (tag and digest) on node 2 ------------------------
    let tag = format!("{reg}/test/big:v1");
    for key in [tag.as_str(), layer.digest.as_str()] {
        let started = Instant::now();
        let found = wait_until(VISIBLE_WITHIN, || {
            status(&node2, &["lookup", key]).status.code() == Some(0)
        });
        let table = status_code(&node2, if found { 0 } else { 3 }, &["lookup", key]);
        eprintln!(
            "[status] node2 `status lookup {key}` (found after {:.2}s):\n{table}",
            started.elapsed().as_secs_f64()
        );
        assert!(found, "node2 did not find {key} within {VISIBLE_WITHIN:?}");
        assert_eq!(row(&table, "local"), Some("no"));
        let provider = table
            .lines()
            .find(|l| l.starts_with(&id1))
            .unwrap_or_else(|| panic!("lookup {key} does not name node1:\n{table}"));
        let cols: Vec<&str> = provider.split_whitespace().collect();
        assert_eq!(cols.get(1), Some(&node1.pm.registry_host().as_str()));
        assert_eq!(cols.get(2), Some(&"ok"), "node1 did not answer: {provider}");
        let lj = status_json(&node2, &["lookup", key]);
        assert_eq!(lj["local"], false);
        let p = &lj["providers"][0];
        assert_eq!(p["peer_id"].as_str(), Some(id1.as_str()), "{lj}");
        assert_eq!(p["answered"], true, "{lj}");
        assert_eq!(p["status"], 200, "{lj}");
    }
    // The same digest on node 1 itself is local.
    let local = status_json(&node1, &["lookup", &layer.digest]);
    assert_eq!(local["local"], true, "{local}");
    // Something nobody has: exit 3, says so.
    let nobody = format!("sha256:{}", sha256_hex(b"nobody has this"));
    let out = status_code(&node2, 3, &["lookup", &nobody, "--timeout", "300ms"]);
    eprintln!("[status] node2 `status lookup <unknown>`:\n{out}");
    assert!(out.contains("none found"), "{out}");
    let out = status_code(&node2, 3, &["lookup", &format!("{reg}/test/absent:v9")]);
    assert!(out.contains("none found"), "{out}");

    // --- status content on node 1 ----------------------------------------
    let content = status_code(&node1, 0, &["content"]);
    eprintln!(
        "[status] node1 `status content`:\n{}",
        content.lines().take(12).collect::<Vec<_>>().join("\n")
    );
    let layer_line = content
        .lines()
        .find(|l| l.contains(&layer.digest))
        .unwrap_or_else(|| {
            panic!(
                "content does not list the layer {}:\n{content}",
                layer.digest
            )
        });
    assert!(layer_line.starts_with("digest"), "{layer_line}");
    assert!(layer_line.contains(&layer.size.to_string()), "{layer_line}");
    assert!(
        content
            .lines()
            .any(|l| l.starts_with("tag") && l.contains("test/big:v1")),
        "no tag line for test/big:v1:\n{content}"
    );
    let filtered = status_code(&node1, 0, &["content", &layer.hex()[..16]]);
    assert_eq!(
        filtered.lines().filter(|l| l.starts_with("digest")).count(),
        1,
        "{filtered}"
    );
    let cj = status_json(&node1, &["content"]);
    let entries = cj["entries"].as_array().unwrap();
    assert!(cj["total"].as_u64().unwrap() >= entries.len() as u64);
    assert!(
        entries
            .iter()
            .any(|e| e["key"] == layer.digest.as_str() && e["size"] == layer.size),
        "{cj}"
    );
    let limited = status_json(&node1, &["content", "--limit", "1"]);
    assert_eq!(limited["entries"].as_array().unwrap().len(), 1);
    assert_eq!(limited["total"], cj["total"]);

    // --- node 1's containerd stops: exit 3, reason names containerd ------
    node1.ctd.kill();
    let started = Instant::now();
    let not_ready = wait_until(VISIBLE_WITHIN, || {
        status(&node1, &[]).status.code() == Some(3)
    });
    let took = started.elapsed();
    let out = status(&node1, &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "[status] node1 `status` {:.2}s after its containerd was killed (exit {:?}):\n{text}",
        took.as_secs_f64(),
        out.status.code()
    );
    assert!(
        not_ready,
        "status did not turn not-ready: {}",
        describe_output(&out)
    );
    assert_eq!(row(&text, "ready"), Some("NO"));
    let because: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("because"))
        .collect();
    assert!(
        because
            .iter()
            .any(|l| l.to_lowercase().contains("containerd")),
        "no not-ready reason mentions containerd:\n{text}"
    );
    assert!(
        row(&text, "containerd").is_some_and(|v| v.starts_with("NOT ready")),
        "{text}"
    );
    let j = status_json(&node1, &[]);
    assert_eq!(j["ready"], false);
    assert_eq!(j["containerd"]["up"], false, "{j}");
    assert!(
        j["not_ready_reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap_or_default().contains("containerd")),
        "{j}"
    );
    assert_eq!(node1.pm.readyz(), Some(503));

    // --- no daemon on the socket: a clear error, not a hang ---------------
    node1.pm.kill();
    let started = Instant::now();
    let out = status(&node1, &[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "[status] with the daemon gone ({:.2}s, exit {:?}): {}",
        started.elapsed().as_secs_f64(),
        out.status.code(),
        err.trim()
    );
    assert!(!out.status.success());
    assert_ne!(
        out.status.code(),
        Some(3),
        "a dead daemon is not 'not ready'"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        err.contains("admin.sock"),
        "the error does not name the socket: {err}"
    );
}
