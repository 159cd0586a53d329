#!/usr/bin/env bash
# The 200-node DHT simulation (issue 12, part 2; figures and model in docs/scale.md).
#
#   cargo build --release --example sim_node && bash bench/dht_sim.sh
#
# Starts NODES processes of examples/sim_node/main.rs, each one real peermirror daemon (real libp2p
# Kademlia, registry, ops endpoint, admin API) on 127.0.0.1 with its own ports (node i:
# registry 30000+3i, router +1, ops +2; why not one 127.0.x.y each: examples/sim_node/main.rs,
# base_port), KEYS in-memory blobs each, bootstrapped from SEEDS seed nodes. Then the coordinator (`sim_node drive`) measures,
# in order:
#   ready      every /readyz 200 and every node's advertised-keys gauge at KEYS
#   rss        VmRSS / VmHWM / open fds per node
#   settle     until the first announcement of all NODES x KEYS keys is done (the nodes'
#              peermirror_dht_announcements_total reach NODES x KEYS and no backlog is left),
#              then rss again; reports requests, bytes and CPU per key announced
#   propagate  SAMPLES new keys, each committed on one node: time until a registry HEAD on
#              every other node (the pull path) finds a provider (polled every 250 ms)
#   lookups    LOOKUPS lookups at steady state, CONC at a time, of keys held by another node:
#              a registry HEAD (the pull path: first provider, then its HEAD) and an admin
#              Lookup (the full DHT query, then a HEAD of each provider)
#   traffic    TRAFFIC_S seconds: Kademlia requests answered per node (the
#              peermirror_dht_requests_total counter) and router TCP bytes per node (`ss -ti`
#              bytes_sent / bytes_received of the sockets on each node's router port)
#   rss        again, after the steady phase
#   recover    SIGKILL KILL_FRACTION of the nodes at once (never the seeds); every survivor
#              looks up keys held by survivors for RECOVER_S seconds: recovery time per node
# After `lookups` and `recover`, every failed lookup is explained: the key's REPLICATION
# closest nodes (its record holders), which were dead, which the asker's query heard from, and
# the query's requests / answers / failures / pending (from the asker's log, NODE_LOG).
# PROVIDER_TTL and REPUBLISH are short by default (5m / 2m, the product's are 10m / 3m) so the
# traffic window sees each node republish.
#
# NETNS=1: every node in a network namespace of its own (10.213.0.0/16 on a bridge with no
# address in the root namespace), and the coordinator in one more: one host per node, as in a
# cluster (own IP, own TCP stack and ports), on the same cores. The `traffic` phase is skipped
# there (it reads `ss` of one namespace). Namespaces, veths and the bridge are deleted on exit;
# the ARP table limits (one table for all namespaces) are raised for the run and put back.
#
# Only 127.0.0.0/8, or the namespaces' own addresses from inside them. Every node is stopped by PID on exit (TERM, then KILL after 10 s); the
# temp dir is removed (BENCH_KEEP=1 keeps it, with each node's log). NICE=10 runs the nodes
# niced. Needs `ss` (iproute2); about 25 MB of RAM per node.

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" # log, die, loadavg (no nodes of its kind here)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIM="${SIM:-$ROOT/target/release/examples/sim_node}"
NODES="${NODES:-200}"
KEYS="${KEYS:-2000}"
SEEDS="${SEEDS:-3}"
PROVIDER_TTL="${PROVIDER_TTL:-5m}"
REPUBLISH="${REPUBLISH:-2m}"
REPLICATION="${REPLICATION:-5}"
SAMPLES="${SAMPLES:-5}"
LOOKUPS="${LOOKUPS:-400}"
CONC="${CONC:-4}"
TRAFFIC_S="${TRAFFIC_S:-240}"
RECOVER_S="${RECOVER_S:-60}"
KILL_FRACTION="${KILL_FRACTION:-0.2}"
READY_S="${READY_S:-900}"
NICE="${NICE:-0}"
# The nodes' --mirror-resolve-timeout (the floor of the adaptive wait): 2 s so a slow lookup is
# measured rather than turned into a 404; 20ms (the product's) to measure the adaptive wait.
RESOLVE_TIMEOUT="${RESOLVE_TIMEOUT:-2s}"
# The adaptive wait's ceiling (--mirror-resolve-timeout-max); empty: off (the floor). The
# product's defaults are RESOLVE_TIMEOUT=20ms RESOLVE_TIMEOUT_MAX=250ms.
RESOLVE_TIMEOUT_MAX="${RESOLVE_TIMEOUT_MAX:-}"
WORKERS="${WORKERS:-1}"
NETNS="${NETNS:-0}"
NS="pmd$$"
# Each lookup's end at debug (peermirror::dht_lookups): `drive` reads the asker's line to say
# why a lookup failed (which of the key's holders answered, what the query asked).
NODE_LOG="${NODE_LOG:-warn,peermirror::dht_lookups=debug}"


PIDS=()
WORK=""
NEIGH_WAS=""
cleanup() {
    local rc=$? pid i alive
    set +e
    if [ "${#PIDS[@]}" -gt 0 ]; then
        log "stopping ${#PIDS[@]} nodes"
        for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
        for ((i = 0; i < 100; i++)); do
            alive=0
            for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1 && break; done
            [ "$alive" = 0 ] && break
            sleep 0.1
        done
        for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
        for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    fi
    if [ "$NETNS" = 1 ]; then
        for ((i = 0; i < NODES; i++)); do
            ip netns del "$NS-$i" 2>/dev/null
            ip link del "${NS}v$i" 2>/dev/null
        done
        ip netns del "$NS-drive" 2>/dev/null
        ip link del "${NS}vd" 2>/dev/null
        ip link del "${NS}br" 2>/dev/null
        if [ -n "$NEIGH_WAS" ]; then
            read -r t1 t2 t3 <<<"$NEIGH_WAS"
            sysctl -qw net.ipv4.neigh.default.gc_thresh1="$t1" net.ipv4.neigh.default.gc_thresh2="$t2" \
                net.ipv4.neigh.default.gc_thresh3="$t3"
        fi
    fi
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$SIM" ] || die "$SIM missing: cargo build --release --example sim_node"
command -v ss >/dev/null || die "ss (iproute2) not found"
if [ "$NETNS" = 1 ]; then
    [ "$(id -u)" = 0 ] || die "NETNS=1 needs root (ip netns)"
    [ "$NODES" -le 2000 ] || die "NETNS=1: at most 2000 nodes"
else
    [ -z "$(ss -ltnH "( sport >= :30000 and sport < :$((30000 + 3 * NODES)) )")" ] ||
        die "ports 30000..$((30000 + 3 * NODES)) are in use"
fi
WORK="$(mktemp -d /tmp/pm-dht-sim.XXXXXX)"
NODES_FILE="$WORK/nodes.txt"
SUMMARY="$WORK/summary.txt"
: >"$NODES_FILE"

if [ "$NETNS" = 1 ]; then
    ip_of() { echo "10.213.$(($1 / 250)).$(($1 % 250 + 1))"; }
    in_node() { NODE_PREFIX=(ip netns exec "$NS-$1"); }
    IN_DRIVER=(ip netns exec "$NS-drive")
    # One namespace per node (and one for the coordinator) on a bridge. No address on the
    # root side, IPv6 off there: the root namespace sends nothing into the cluster.
    netns_member() { # name veth ip
        ip netns add "$1"
        ip link add "$2" type veth peer name eth0 netns "$1"
        sysctl -qw "net.ipv6.conf.$2.disable_ipv6=1"
        ip link set "$2" master "${NS}br" up
        ip -n "$1" addr add "$3/16" dev eth0
        ip -n "$1" link set eth0 up
        ip -n "$1" link set lo up
    }
    # The kernel's ARP table is one for all namespaces (gc_thresh3 entries, 1024 by default):
    # every node keeps an entry per peer, so past ~30 nodes it overflows ("neighbor table
    # overflow" in dmesg) and new hosts cannot be reached at all. Sized for the run, put back
    # on exit.
    need=$(((NODES + 1) * (NODES + 1) + 1024))
    t3=$(sysctl -n net.ipv4.neigh.default.gc_thresh3)
    if [ "$t3" -lt "$need" ]; then
        NEIGH_WAS="$(sysctl -n net.ipv4.neigh.default.gc_thresh1) $(sysctl -n net.ipv4.neigh.default.gc_thresh2) $t3"
        log "raising the ARP table to $need entries for $NODES namespaces (was $t3; put back on exit)"
        sysctl -qw net.ipv4.neigh.default.gc_thresh3="$need" net.ipv4.neigh.default.gc_thresh2="$need" \
            net.ipv4.neigh.default.gc_thresh1="$((need / 2))"
    fi
    ip link add "${NS}br" type bridge
    sysctl -qw "net.ipv6.conf.${NS}br.disable_ipv6=1"
    ip link set "${NS}br" up
    for ((i = 0; i < NODES; i++)); do netns_member "$NS-$i" "${NS}v$i" "$(ip_of "$i")"; done
    netns_member "$NS-drive" "${NS}vd" 10.213.255.254
    log "$NODES network namespaces on bridge ${NS}br (10.213.0.0/16)"
else
    ip_of() { echo 127.0.0.1; }
    in_node() { NODE_PREFIX=(); }
    IN_DRIVER=()
fi
drive() {
    local phase="$1"
    shift
    log "phase $phase (load $(loadavg))"
    timeout "${DRIVE_TIMEOUT:-1800}" "${IN_DRIVER[@]}" "$SIM" drive "$phase" --nodes "$NODES_FILE" --keys "$KEYS" \
        --replication "$REPLICATION" "$@" |
        tee -a "$WORK/drive.log" | grep -E '^(RESULT|failed )' | sed "s/^RESULT /[$phase] /" | tee -a "$SUMMARY" >&2
    echo "[$phase] load after: $(loadavg); uptime: $(uptime)" >>"$SUMMARY"
}

seeds=()
for ((i = 0; i < SEEDS && i < NODES; i++)); do seeds+=(--seed "$i" --seed-ip "$(ip_of "$i")"); done

log "starting $NODES nodes ($KEYS keys each, provider TTL $PROVIDER_TTL, republish $REPUBLISH; load $(loadavg))"
T_START=$(date +%s.%N)
for ((i = 0; i < NODES; i++)); do
    ip="$(ip_of "$i")"
    dir="$WORK/n$i"
    mkdir -p "$dir"
    in_node "$i" # NODE_PREFIX: the node's namespace, if any (exec'd: $! stays the node's PID)
    RUST_LOG="$NODE_LOG" "${NODE_PREFIX[@]}" nice -n "$NICE" "$SIM" node --index "$i" --ip "$ip" --dir "$dir" "${seeds[@]}" \
        --keys "$KEYS" --provider-ttl "$PROVIDER_TTL" --republish-interval "$REPUBLISH" \
        --replication "$REPLICATION" --resolve-timeout "$RESOLVE_TIMEOUT" \
        ${RESOLVE_TIMEOUT_MAX:+--resolve-timeout-max "$RESOLVE_TIMEOUT_MAX"} \
        --workers "$WORKERS" >"$dir/log" 2>&1 &
    PIDS+=($!)
    echo "$i $ip $! $dir" >>"$NODES_FILE"
    # Seeds first, then a steady trickle (a rolling DaemonSet start is slower still).
    if [ "$i" -lt "$SEEDS" ]; then sleep 0.5; else sleep 0.05; fi
done
log "all $NODES started in $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $T_START }") s"

{
    echo "dht_sim: NETNS=$NETNS NODES=$NODES KEYS=$KEYS SEEDS=$SEEDS PROVIDER_TTL=$PROVIDER_TTL REPUBLISH=$REPUBLISH REPLICATION=$REPLICATION RESOLVE_TIMEOUT=$RESOLVE_TIMEOUT RESOLVE_TIMEOUT_MAX=${RESOLVE_TIMEOUT_MAX:-off} WORKERS=$WORKERS NICE=$NICE"
    echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo +changes); uptime at start: $(uptime)"
    echo "machine: $(uname -r), $(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM; load at start $(loadavg); $(date -u +%FT%TZ)"
} >>"$SUMMARY"

drive ready --window "${READY_S}s"
echo "[ready] seconds since first start: $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $T_START }")" >>"$SUMMARY"
drive rss
drive settle --window "${SETTLE_S:-1200}s"
# WARMUP_S: wait this long after the first announcements settle before measuring (e.g. 60 s,
# past the second announcement pass a minute after the first peers came).
if [ "${WARMUP_S:-0}" -gt 0 ]; then
    log "waiting ${WARMUP_S} s (WARMUP_S)"
    sleep "$WARMUP_S"
fi
drive rss
drive propagate --samples "$SAMPLES" --window 60s
drive lookups --samples "$LOOKUPS" --concurrency "$CONC"
if [ "$NETNS" = 1 ]; then
    echo "[traffic] skipped (NETNS=1)" >>"$SUMMARY"
else
    drive traffic --window "${TRAFFIC_S}s"
fi
drive rss
drive recover --window "${RECOVER_S}s" --kill-fraction "$KILL_FRACTION"
dead=0
for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || dead=$((dead + 1)); done
echo "[end] nodes not running: $dead (the killed ones); error lines in node logs: $(cat "$WORK"/n*/log | grep -c ERROR || true)" >>"$SUMMARY"
echo
cat "$SUMMARY"
