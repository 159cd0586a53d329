#!/usr/bin/env bash
# Benchmark "peer-to-peer" with real containerd, docker-registry and the release binary.
#
#   cargo build --release && sudo bash bench/p2p.sh
#
# Parts (PARTS="peer pull fanout" by default):
#   peer    node 2 (empty containerd) serves the big layer, fetching it from node 1 and
#           verifying it, versus node 1 serving it from its own containerd; interleaved,
#           RUNS rounds, medians. Each round starts a fresh node 2, so every relayed GET is
#           cold (since issue 11 a second GET is served from node 2's spool, also reported).
#           Targets (issue 13): relayed >= 0.6 x local, node 2 <= 1.0 CPU-s per GB relayed.
#           The profile of a relaying node: PERF=1 bash bench/bigblob.sh.
#   pull    `ctr images pull` of the big image on a fresh containerd: through its
#           peermirror with the upstream registry stopped (node 1 has the image) versus
#           straight from the registry; alternated, PULLS rounds, medians. Target <= 1.2x.
#   fanout  NODES nodes (NODES containerd + NODES peermirror); node 1 pulled the image from
#           the registry (its access log gives the upstream egress), the registry is
#           stopped, then nodes 2..NODES pull concurrently through their peermirrors.
#           Wall time, bytes each node served (/metrics), 404 misses, CPU per node.
#           Run once per --mirror-resolve-timeout in FANOUT_RESOLVE ("20ms 250ms": the
#           default, then a longer one to see what the CPU-starved lookups need).
#
# Root; needs containerd, ctr, docker-registry, skopeo, umoci (scripts/install-deps.sh).
# Only 127.0.0.1; every process is stopped by PID on exit; the temp dir is removed.

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PARTS="${PARTS:-peer pull fanout}"
RUNS="${RUNS:-7}"
PULLS="${PULLS:-5}"
NODES="${NODES:-10}"

bench_init p2p
LOAD_START="$(loadavg)"
log "load before: $LOAD_START"
read -r LAYER SIZE < <(big_layer)
IMAGE_BYTES="$(find "$FIXTURES/big/blobs/sha256" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')"
log "big layer $LAYER ($SIZE bytes); all blobs of the layout: $IMAGE_BYTES bytes"

met() { if awk "BEGIN { exit !($1) }"; then echo yes; else echo NO; fi; }
SUMMARY="$WORK/summary.md"
: >"$SUMMARY"

registry_setup
registry_start
registry_push big
REF="127.0.0.1:$REGISTRY_PORT/test/big:v1"
NSQ="ns=127.0.0.1:$REGISTRY_PORT"

# Node 1 pulls from the registry: the only upstream traffic of the whole script
# (apart from the baseline pulls of part "pull", counted separately).
egress0="$(registry_egress_bytes)"
ctd_start n1
t0="$(date +%s.%N)"
ctd_pull n1 "$REF"
t1="$(date +%s.%N)"
EGRESS_N1=$(($(registry_egress_bytes) - egress0))
log "node 1 pulled from the registry in $(calc "$t1 - $t0") s; registry sent $EGRESS_N1 bytes"
pm_start n1 n1 dir none
pm_wait_ready n1

# wait_blob NODE: until NODE answers 200 for the big layer (found through the DHT).
wait_blob() {
    local url="http://${PM_REG[$1]}/v2/test/big/blobs/$LAYER?$NSQ" i
    for ((i = 0; i < 200; i++)); do
        [ "$(curl -s -o /dev/null -m 5 -I -w '%{http_code}' "$url" || true)" = 200 ] && return 0
        sleep 0.1
    done
    die "node $1 never found the layer through its peers"
}

# ---------------------------------------------------------------------------
part_peer() {
    ctd_start n2
    local local_url="http://${PM_REG[n1]}/v2/test/big/blobs/$LAYER?$NSQ"
    curl -s -f -m 120 -o /dev/null "$local_url"
    local c1a c1b c2a c2b r bytes secs rate p1 name peer_url cold_cpu=0 relayed=0
    c1a="$(cpu_ticks "${PM_PID[n1]}")"
    p1="$(pm_bytes n1 local)"
    for ((r = 1; r <= RUNS; r++)); do
        read -r bytes secs rate < <(fetch_rate "$local_url")
        [ "$bytes" = "$SIZE" ] || die "local: $bytes bytes"
        echo "$rate" >>"$WORK/peer.local"
        # A fresh node 2 each round: its first GET is a cold relay (fetch from node 1, hash,
        # spool, serve); its second is served from its spool (verified, no peer traffic).
        name="n2r$r"
        pm_start "$name" n2 dir n1
        pm_wait_ready "$name"
        wait_blob "$name"
        peer_url="http://${PM_REG[$name]}/v2/test/big/blobs/$LAYER?$NSQ"
        c2a="$(cpu_ticks "${PM_PID[$name]}")"
        read -r bytes secs rate < <(fetch_rate "$peer_url")
        c2b="$(cpu_ticks "${PM_PID[$name]}")"
        [ "$bytes" = "$SIZE" ] || die "peer: $bytes bytes"
        echo "$rate" >>"$WORK/peer.peer"
        cold_cpu=$((cold_cpu + c2b - c2a))
        if [ "$r" = 1 ]; then
            curl -s -f -m 120 -o "$WORK/blob" "$peer_url" || die "peer download failed"
            [ "sha256:$(sha256sum "$WORK/blob" | cut -d' ' -f1)" = "$LAYER" ] || die "peer download: wrong digest"
            rm -f "$WORK/blob"
        fi
        read -r bytes secs rate < <(fetch_rate "$peer_url")
        [ "$bytes" = "$SIZE" ] || die "spool: $bytes bytes"
        echo "$rate" >>"$WORK/peer.spool"
        relayed=$((relayed + $(pm_bytes "$name" peer)))
        log "round $r: local $(tail -n1 "$WORK/peer.local") MB/s, relayed $(tail -n1 "$WORK/peer.peer") MB/s ($(calc "($c2b - $c2a) / $CLK_TCK") CPU-s), from the spool $rate MB/s"
        pm_stop "$name"
    done
    c1b="$(cpu_ticks "${PM_PID[n1]}")"
    local served=$(($(pm_bytes n1 local) - p1))
    local med_l med_p med_s ratio gb per_gb
    med_l="$(median <"$WORK/peer.local")"
    med_p="$(median <"$WORK/peer.peer")"
    med_s="$(median <"$WORK/peer.spool")"
    ratio="$(calc "$med_p / $med_l")"
    gb="$(calc "$RUNS * $SIZE / 1e9")"
    per_gb="$(calc "$cold_cpu / $CLK_TCK / $gb")"
    cat >>"$SUMMARY" <<EOF

### peer path ($RUNS interleaved rounds, blob $SIZE bytes, load at end $(loadavg))
| figure | value | target | met? |
|---|---|---|---|
| node 1 serving locally (content dir), median | $med_l MB/s | | |
| node 2 relaying it from node 1 (cold: fetch, verify, spool, serve), median | $med_p MB/s | | |
| relayed / local | $ratio | >= 0.6 | $(met "$ratio >= 0.6") |
| CPU of node 2 during its cold GETs | $(calc "$cold_cpu / $CLK_TCK") s for $gb GB = $per_gb s/GB | <= 1.0 s/GB | $(met "$per_gb <= 1.0") |
| node 2 serving it again from its spool (warm), median | $med_s MB/s | | |
| CPU node 1 (local rounds + serving the node 2s) | $(calc "($c1b - $c1a) / $CLK_TCK") s | | |
| bytes node 1 served (local source) / the node 2s served (peer source) | $served / $relayed | | |

raw local MB/s: $(paste -sd' ' "$WORK/peer.local")
raw relayed MB/s: $(paste -sd' ' "$WORK/peer.peer")
raw from-spool MB/s: $(paste -sd' ' "$WORK/peer.spool")
EOF
    ctd_stop n2
}

# ---------------------------------------------------------------------------
part_pull() {
    local r t0 t1 name hosts
    for ((r = 1; r <= PULLS; r++)); do
        # Straight from the registry, fresh containerd.
        [ -n "$REGISTRY_PID" ] || registry_start
        name="reg$r"
        ctd_start "$name"
        t0="$(date +%s.%N)"
        ctd_pull "$name" "$REF" || die "registry pull failed"
        t1="$(date +%s.%N)"
        calc "$t1 - $t0" >>"$WORK/pull.registry"
        ctd_stop "$name"

        # Through peers, upstream stopped, fresh containerd + its peermirror.
        registry_stop
        name="peer$r"
        ctd_start "$name"
        pm_start "$name" "$name" dir n1
        pm_wait_ready "$name"
        wait_blob "$name"
        hosts="$WORK/hosts-$name"
        hosts_dir "$hosts" "${PM_REG[$name]}"
        t0="$(date +%s.%N)"
        ctd_pull "$name" "$REF" "$hosts" || die "pull through peers failed (upstream is stopped)"
        t1="$(date +%s.%N)"
        calc "$t1 - $t0" >>"$WORK/pull.peer"
        ctd_ctr "$name" images ls -q | grep -qx "$REF" || die "$name: image missing after pull"
        pm_bytes "$name" peer >>"$WORK/pull.peerbytes"
        log "pull round $r: registry $(tail -n1 "$WORK/pull.registry") s, through peers $(tail -n1 "$WORK/pull.peer") s"
        pm_stop "$name"
        ctd_stop "$name"
    done
    [ -n "$REGISTRY_PID" ] || registry_start
    local med_r med_p ratio
    med_r="$(median <"$WORK/pull.registry")"
    med_p="$(median <"$WORK/pull.peer")"
    ratio="$(calc "$med_p / $med_r")"
    cat >>"$SUMMARY" <<EOF

### ctr images pull of test/big:v1 ($PULLS alternated rounds, fresh containerd each, load at end $(loadavg))
| figure | value | target | met? |
|---|---|---|---|
| straight from the registry, median | $med_r s | | |
| through peermirror + peers, upstream stopped, median | $med_p s | | |
| peers / registry | $ratio | <= 1.2 | $(met "$ratio <= 1.2") |

raw registry s: $(paste -sd' ' "$WORK/pull.registry")
raw peers s: $(paste -sd' ' "$WORK/pull.peer")
bytes each pulling node relayed from peers: $(paste -sd' ' "$WORK/pull.peerbytes")
EOF
}

# ---------------------------------------------------------------------------
# part_fanout RESOLVE_TIMEOUT: one fan-out round with that --mirror-resolve-timeout.
part_fanout() {
    local resolve="$1"
    local fp="f${resolve}-" i name pids=() t0 t1 fails=0
    [ -z "$REGISTRY_PID" ] || registry_stop
    for ((i = 2; i <= NODES; i++)); do
        name="$fp$i"
        ctd_start "$name"
        pm_start "$name" "$name" dir n1 --mirror-resolve-timeout "$resolve"
    done
    for ((i = 2; i <= NODES; i++)); do
        pm_wait_ready "$fp$i" 60
        hosts_dir "$WORK/hosts-$fp$i" "${PM_REG[$fp$i]}"
    done
    for ((i = 2; i <= NODES; i++)); do wait_blob "$fp$i"; done
    local b1_local b1_peer c1
    b1_local="$(pm_bytes n1 local)"
    b1_peer="$(pm_bytes n1 peer)"
    c1="$(cpu_ticks "${PM_PID[n1]}")"
    declare -A ctd_cpu0 pm_cpu0 miss0
    for ((i = 2; i <= NODES; i++)); do
        name="$fp$i"
        ctd_cpu0[$name]="$(cpu_ticks "${CTD_PID[$name]}")"
        pm_cpu0[$name]="$(cpu_ticks "${PM_PID[$name]}")"
        miss0[$name]="$(grep -c '"miss"' "${PM_LOG[$name]}" || true)"
    done
    LOAD_FAN="$(loadavg)"
    log "fan-out (resolve timeout $resolve): $((NODES - 1)) nodes pull concurrently (load $LOAD_FAN)"
    t0="$(date +%s.%N)"
    for ((i = 2; i <= NODES; i++)); do
        name="$fp$i"
        (
            s="$(date +%s.%N)"
            ctd_pull "$name" "$REF" "$WORK/hosts-$name"
            e="$(date +%s.%N)"
            calc "$e - $s" >"$WORK/fan.time.$name"
        ) >"$WORK/fan.log.$name" 2>&1 &
        pids+=($!)
        track "$!"
    done
    for i in "${!pids[@]}"; do
        name="$fp$((i + 2))"
        wait "${pids[i]}" || {
            fails=$((fails + 1))
            log "node $name pull FAILED: $(tail -n 1 "$WORK/fan.log.$name")"
        }
    done
    t1="$(date +%s.%N)"
    local wall total_local=0 total_peer=0 total_miss=0 rows="" l p c cc tm ms
    wall="$(calc "$t1 - $t0")"
    l=$(($(pm_bytes n1 local) - b1_local))
    p=$(($(pm_bytes n1 peer) - b1_peer))
    c="$(calc "($(cpu_ticks "${PM_PID[n1]}") - $c1) / $CLK_TCK")"
    total_local=$((total_local + l))
    total_peer=$((total_peer + p))
    rows+="| n1 (had the image) | - | $l | $p | - | $c | - |"$'\n'
    for ((i = 2; i <= NODES; i++)); do
        name="$fp$i"
        l="$(pm_bytes "$name" local)"
        p="$(pm_bytes "$name" peer)"
        c="$(calc "($(cpu_ticks "${PM_PID[$name]}") - ${pm_cpu0[$name]}) / $CLK_TCK")"
        cc="$(calc "($(cpu_ticks "${CTD_PID[$name]}") - ${ctd_cpu0[$name]}) / $CLK_TCK")"
        ms=$(($(grep -c '"miss"' "${PM_LOG[$name]}" || true) - miss0[$name]))
        tm="$(cat "$WORK/fan.time.$name" 2>/dev/null || echo FAILED)"
        total_local=$((total_local + l))
        total_peer=$((total_peer + p))
        total_miss=$((total_miss + ms))
        rows+="| n$i | $tm | $l | $p | $ms | $c | $cc |"$'\n'
    done
    cat >>"$SUMMARY" <<EOF

### fan-out, --mirror-resolve-timeout $resolve: $((NODES - 1)) nodes pull test/big:v1 concurrently, node 1 has it, upstream stopped
| figure | value |
|---|---|
| wall time, all $((NODES - 1)) pulls | $wall s |
| failed pulls | $fails of $((NODES - 1)) |
| requests answered 404 (no provider within the resolve timeout), all nodes | $total_miss |
| upstream egress: node 1's pull from the registry (access log) | $EGRESS_N1 bytes (image blobs total $IMAGE_BYTES) |
| upstream egress during the fan-out | 0 (registry stopped) |
| bytes served from local containerd, all nodes | $total_local |
| bytes relayed from peers, all nodes | $total_peer ($(calc "$total_peer / $IMAGE_BYTES") image copies) |
| load before / at end | $LOAD_FAN / $(loadavg) |

| node | pull s | local bytes served | peer bytes relayed | 404 misses | peermirror CPU s | containerd CPU s |
|---|---|---|---|---|---|---|
$rows
EOF
    for ((i = 2; i <= NODES; i++)); do
        pm_stop "$fp$i"
        ctd_stop "$fp$i"
    done
}

for part in $PARTS; do
    case "$part" in
        peer) part_peer ;;
        pull) part_pull ;;
        fanout) for resolve in ${FANOUT_RESOLVE:-20ms 250ms}; do part_fanout "$resolve"; done ;;
        *) die "unknown part $part" ;;
    esac
done

cat <<EOF

== bench/p2p.sh summary ($(date -u +%Y-%m-%dT%H:%MZ)) ==
machine: $(machine_notes); load at start $LOAD_START
node 1's pull from the registry: $EGRESS_N1 bytes of egress
$(cat "$SUMMARY")
EOF
