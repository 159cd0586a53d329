#!/usr/bin/env bash
# Rollouts at line rate (issue 25): NODES nodes, each (containerd + peermirror) in a network
# namespace of its own, the upstream docker-registry in another, every link capped with tbf at
# RATE Mbit/s in both directions; all nodes pull one new image (one SIZE_MB MiB layer of
# incompressible bytes) at the same moment (one barrier releases every `ctr content fetch`).
#   cargo build --release --bins --examples && sudo bash bench/rollout.sh
#
# Per run (a fresh cluster each) it prints: the lone pull on the same link in the same run (node 1
# pulls another new image of the same size before the rollout, nobody else pulling), each node's
# pull time and upload in copies of the image (veth counters), the slowest and median rollout
# pull and their ratio to the lone pull, the upstream's copies, that every node's layer is in its
# content store and hashes to its digest, then one machine-readable `ROLLOUT key=value ...` line;
# with RUNS > 1, a last `[bench]` line gives every run's slowest ratio, sorted (runs of one case
# spread about as widely as two builds differ).
#
# Knobs: NODES (8), RATE (50, Mbit/s), SIZE_MB (50), CTD (1.6|1.7|2.1), AUTH (none|mtls|token),
# FAULT (none|stop|kill: SIGSTOP or SIGKILL the busiest uploader's peermirror once it has sent
# FAULT_AFTER copies, 0.25; its own pull is reported apart), LEAD_MS (0: node 1 starts this
# much before the others, a diagnostic), RUNS (1), ROLLOUT_METRICS (comma-separated metric
# names: each one's sum over the nodes after each run), ARGS (extra `peermirror run` flags for
# every node, e.g. "--mirror-claim-wait 1s"), QUEUE_MS (200: tbf's queue on every link, in ms of its
# rate), SLOW (node:Mbit, e.g. 3:10: that node's link is capped lower from the rollout on, a weak
# member of the chain), FETCH_BUFFER (bytes: containerd 2.1's
# concurrent_layer_fetch_buffer on every node, pulls by `ctr images pull` through the transfer
# service; CTD=2.1), PEERMIRROR (the binary the nodes run:
# target/release/peermirror).
#
# The harness is the ignored test `rollout_bench` in tests/e2e_rollout.rs (the end-to-end test
# `rollout_six_nodes_at_line_rate` runs the same functions), built here as a debug test binary:
# it only drives processes and hashes with sha2 (optimised in debug builds too); the nodes run
# PEERMIRROR. Root (ip netns, tc); every process is stopped by PID and every namespace, veth and
# bridge removed on exit (tests/common/netns.rs). Traffic stays between the namespaces it makes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERMIRROR="${PEERMIRROR:-$ROOT/target/release/peermirror}"
[ "$(id -u)" -eq 0 ] || { echo "rollout.sh: run as root (ip netns, tc, containerd)" >&2; exit 1; }
[ -x "$PEERMIRROR" ] || { echo "rollout.sh: $PEERMIRROR missing: cargo build --release --bins --examples" >&2; exit 1; }
PEERMIRROR="$(readlink -f "$PEERMIRROR")"

echo "== bench/rollout.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "peermirror sha256 $(sha256sum "$PEERMIRROR" | cut -c1-12); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
cd "$ROOT"
export ROLLOUT_BENCH=1 E2E_PEERMIRROR_BIN="$PEERMIRROR"
export NODES="${NODES:-8}" RATE="${RATE:-50}" SIZE_MB="${SIZE_MB:-50}" CTD="${CTD:-1.6}" \
    AUTH="${AUTH:-none}" FAULT="${FAULT:-none}" FAULT_AFTER="${FAULT_AFTER:-0.25}" LEAD_MS="${LEAD_MS:-0}" \
    RUNS="${RUNS:-1}" ARGS="${ARGS:-}" FETCH_BUFFER="${FETCH_BUFFER:-}" QUEUE_MS="${QUEUE_MS:-200}" \
    SLOW="${SLOW:-}"
CARGO_INCREMENTAL=0 cargo test --test e2e_rollout -- --ignored --exact rollout_bench \
    --nocapture --test-threads=1 2>&1 |
    grep --line-buffered -v '^\(running\|test \|$\)' | grep --line-buffered -v 'test result:'
