#!/usr/bin/env bash
# Benchmark "pull storm" (issue 11) with real containerd, docker-registry and the release binary.
#
#   cargo build --release && sudo bash bench/storm.sh
#   NODES=4 SIZE_MB=200 bash bench/storm.sh          # a quick run
#
# The upstream is docker-registry behind tests/tools/throttle_proxy.py (one token bucket for
# every connection: RATE_MB MB/s of upstream egress in all, like a WAN link); containerd
# pulls through the proxy (the image reference names it) with its own peermirror as mirror.
# The image has one SIZE_MB layer of incompressible bytes (AES-256-CTR of zeros, as
# bench/bigblob.sh makes them), an uncompressed tar made here and removed on exit.
#
# Parts (PARTS="storm chunked" by default):
#   storm    First one pull alone (a fresh node, nobody else), then NODES fresh nodes (node 1
#            bootstraps the DHT) all start pulling within STAGGER_S s (uniform random offsets,
#            SEED printed). Reported: upstream bytes sent (access log of the layer's GETs, and
#            the proxy's total) in copies of the image (issue 11's target <= 1.5), pull time
#            p50/p99 against the lone pull, peak RSS (VmHWM) of each peermirror.
#            Pulls are `ctr content fetch` (PULL=fetch, default: no unpack, so the disk holds
#            one copy per node) or `ctr images pull` (PULL=pull: also unpacks SIZE_MB per node).
#   chunked  containerd 2.1 with concurrent_layer_fetch_buffer = FETCH_BUFFER (4 MiB) pulls
#            (`ctr images pull`, transfer service) the 54.5 MB `big` fixture and the SIZE_MB
#            layer through its peermirror with the upstream stopped; reported: bytes the
#            providing nodes served / blob size (issue 11's target <= 1.1). Needs the storm.
#
# Knobs: NODES (10), SIZE_MB (1024), RATE_MB (200), STAGGER_S (2), SEED (random), CTD (2.1 when
# target/containerd/2.1 exists, else 1.6: the storm nodes' containerd), PULL (fetch),
# FETCH_BUFFER (4194304), CHUNKED_TIMEOUT (240 s per chunked pull), PEERMIRROR (target/release/peermirror), BENCH_KEEP=1 (keep the dir).
#
# Root; needs containerd, ctr, docker-registry, skopeo, python3, openssl (scripts/install-deps.sh)
# and for `chunked` containerd 2.1 (scripts/fetch-containerd.sh 2.1). Only 127.0.0.1; every
# process is stopped by PID on exit; the temp dir (blobs, every containerd) is removed.
# Disk: about (NODES + 3) x SIZE_MB under /tmp while it runs.

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PARTS="${PARTS:-storm chunked}"
NODES="${NODES:-10}"
SIZE_MB="${SIZE_MB:-1024}"
RATE_MB="${RATE_MB:-200}"
STAGGER_S="${STAGGER_S:-2}"
SEED="${SEED:-$RANDOM}"
PULL="${PULL:-fetch}"
FETCH_BUFFER="${FETCH_BUFFER:-4194304}"
CHUNKED_TIMEOUT="${CHUNKED_TIMEOUT:-240}"
if [ -z "${CTD:-}" ]; then
    if [ -x "$BENCH_ROOT/target/containerd/2.1/usr/bin/containerd" ]; then CTD=2.1; else CTD=1.6; fi
fi

bench_init storm
command -v openssl >/dev/null || die "openssl not found"
LOAD_START="$(loadavg)"
log "NODES=$NODES SIZE_MB=$SIZE_MB RATE_MB=$RATE_MB STAGGER_S=$STAGGER_S SEED=$SEED CTD=$CTD PULL=$PULL"
log "peermirror: $PEERMIRROR (sha256 $(sha256sum "$PEERMIRROR" | cut -c1-12)); load $LOAD_START"

# --- the image: one uncompressed tar layer holding /data.bin (SIZE_MB random bytes) ----------
layout="$WORK/layout"
mkdir -p "$layout/blobs/sha256" "$WORK/src"
log "making a ${SIZE_MB} MB random layer"
random_file "$WORK/src/data.bin" "$SIZE_MB" peermirror-storm
touch -d @1700000000 "$WORK/src/data.bin"
tar -C "$WORK/src" --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -cf "$WORK/layer.tar" data.bin
rm -rf "$WORK/src"
LAYER_SIZE="$(stat -c %s "$WORK/layer.tar")"
LAYER_HEX="$(sha256sum "$WORK/layer.tar" | cut -d' ' -f1)"
LAYER="sha256:$LAYER_HEX"
mv "$WORK/layer.tar" "$layout/blobs/sha256/$LAYER_HEX"
oci_layout_image "$layout" "$LAYER_HEX" "$LAYER_SIZE" \
    "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"$LAYER\"]}}"
IMAGE_BYTES=$((LAYER_SIZE + CONFIG_SIZE + MANIFEST_SIZE))
log "layer $LAYER ($LAYER_SIZE bytes); image $IMAGE_BYTES bytes"

registry_setup
registry_start
# With curl, not skopeo: skopeo would gzip the tar layer on the way (another digest and size).
push_blob() { # push_blob FILE DIGEST: POST an upload, PUT the whole blob
    local loc
    loc="$(curl -s -f -m 10 -X POST -D - -o /dev/null "http://127.0.0.1:$REGISTRY_PORT/v2/bench/storm/blobs/uploads/" |
        awk 'tolower($1) == "location:" { print $2 }' | tr -d '\r')"
    [ -n "$loc" ] || die "registry gave no upload location"
    case "$loc" in http*) ;; *) loc="http://127.0.0.1:$REGISTRY_PORT$loc" ;; esac
    curl -s -f -m 600 -H 'Content-Type: application/octet-stream' -T "$1" \
        "$loc&digest=$2" -o /dev/null || die "blob upload of $2 failed"
}
push_blob "$layout/blobs/sha256/$LAYER_HEX" "$LAYER"
push_blob "$layout/blobs/sha256/$CONFIG_HEX" "sha256:$CONFIG_HEX"
curl -s -f -m 10 -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$layout/blobs/sha256/$MANIFEST_HEX" \
    "http://127.0.0.1:$REGISTRY_PORT/v2/bench/storm/manifests/v1" -o /dev/null || die "manifest upload failed"
rm -rf "$layout"
registry_push big
proxy_start "$((RATE_MB * 1000 * 1000))"
UP="127.0.0.1:$PROXY_PORT"
REF="$UP/bench/storm:v1"
log "upstream: registry 127.0.0.1:$REGISTRY_PORT behind the throttle proxy $UP at $RATE_MB MB/s"

SUMMARY="$WORK/summary.md"
: >"$SUMMARY"

# fetch NODE REF: the storm's pull through NODE's hosts dir (see PULL).
fetch() {
    if [ "$PULL" = pull ]; then
        ctd_ctr "$1" images pull --snapshotter native --plain-http --hosts-dir "$WORK/hosts-$1" "$2" >/dev/null
    else
        ctd_ctr "$1" content fetch --plain-http --hosts-dir "$WORK/hosts-$1" "$2" >/dev/null
    fi
}

# has_layer NODE: NODE's content store holds the whole layer.
has_layer() {
    local f
    f="$(ctd_content_dir "$1")/blobs/sha256/$LAYER_HEX"
    [ -f "$f" ] && [ "$(stat -c %s "$f")" = "$LAYER_SIZE" ]
}

# node_start NAME BOOT: containerd CTD + peermirror (bootstrapping to BOOT or none) + hosts dir.
node_start() {
    ctd_start_series "$1" "$CTD"
    pm_start "$1" "$1" dir "$2"
}

# pct P FILE: the P-th percentile (nearest rank) of the numbers in FILE.
pct() {
    sort -g "$2" | awk -v p="$1" '{ v[NR] = $1 } END { r = int((p * NR + 99) / 100); if (r < 1) r = 1; print v[r] }'
}

# ---------------------------------------------------------------------------
part_storm() {
    local t0 t1 e0 p0 i name pids=() fails=0 offsets rows="" off
    # One pull alone: a fresh node, nobody to share with.
    node_start solo none
    pm_wait_ready solo
    hosts_dir_for "$WORK/hosts-solo" "$UP" "${PM_REG[solo]}"
    e0="$(registry_blob_egress "$LAYER")"
    p0="$(proxy_bytes)"
    t0="$(date +%s.%N)"
    fetch solo "$REF" || die "lone pull failed"
    t1="$(date +%s.%N)"
    SOLO_S="$(calc "$t1 - $t0")"
    has_layer solo || die "lone pull: layer missing"
    local solo_up=$(($(registry_blob_egress "$LAYER") - e0)) solo_proxy=$(($(proxy_bytes) - p0))
    log "lone pull: $SOLO_S s, upstream sent $solo_up layer bytes ($solo_proxy through the proxy)"
    pm_stop solo
    ctd_stop solo

    for ((i = 1; i <= NODES; i++)); do
        if [ "$i" = 1 ]; then node_start "n$i" none; else node_start "n$i" n1; fi
    done
    for ((i = 1; i <= NODES; i++)); do
        pm_wait_ready "n$i" 60
        hosts_dir_for "$WORK/hosts-n$i" "$UP" "${PM_REG[n$i]}"
    done
    sleep 3 # let the DHT settle
    offsets="$(python3 -c "import random; random.seed($SEED); print(' '.join('%.3f' % random.uniform(0, $STAGGER_S) for _ in range($NODES)))")"
    log "storm: $NODES pulls, start offsets (seed $SEED): $offsets (load $(loadavg))"
    e0="$(registry_blob_egress "$LAYER")"
    p0="$(proxy_bytes)"
    t0="$(date +%s.%N)"
    read -r -a offs <<<"$offsets"
    for ((i = 1; i <= NODES; i++)); do
        name="n$i"
        (
            sleep "${offs[i - 1]}"
            s="$(date +%s.%N)"
            fetch "$name" "$REF"
            e="$(date +%s.%N)"
            calc "$e - $s" >"$WORK/storm.time.$name"
        ) >"$WORK/storm.log.$name" 2>&1 &
        pids+=($!)
        track "$!"
    done
    for i in "${!pids[@]}"; do
        wait "${pids[i]}" || {
            fails=$((fails + 1))
            log "node n$((i + 1)) pull FAILED: $(tail -n 1 "$WORK/storm.log.n$((i + 1))")"
        }
        untrack "${pids[i]}"
    done
    t1="$(date +%s.%N)"
    local wall up prox hwm tm served peer
    wall="$(calc "$t1 - $t0")"
    up=$(($(registry_blob_egress "$LAYER") - e0))
    prox=$(($(proxy_bytes) - p0))
    : >"$WORK/storm.times"
    for ((i = 1; i <= NODES; i++)); do
        name="n$i"
        tm="$(cat "$WORK/storm.time.$name" 2>/dev/null || echo FAILED)"
        [ "$tm" = FAILED ] || echo "$tm" >>"$WORK/storm.times"
        has_layer "$name" || { [ "$tm" = FAILED ] || log "$name: layer missing after its pull"; }
        hwm="$(vm_hwm_kb "${PM_PID[$name]}")"
        echo "$hwm" >>"$WORK/storm.hwm"
        served="$(pm_served "$name")"
        peer="$(pm_bytes "$name" peer)"
        rows+="| $name | ${offs[i - 1]} | $tm | $peer | $served | $(calc "$hwm / 1024") |"$'\n'
    done
    local p50 p99
    p50="$(pct 50 "$WORK/storm.times")"
    p99="$(pct 99 "$WORK/storm.times")"
    cat >>"$SUMMARY" <<EOF

### storm: $NODES nodes (containerd $CTD, \`$PULL\`), one ${SIZE_MB} MB layer, upstream capped at $RATE_MB MB/s, starts within $STAGGER_S s (seed $SEED)
| figure | value | target |
|---|---|---|
| upstream bytes sent for the layer during the storm (access log) | $up ($(calc "$up / $IMAGE_BYTES") image copies) | <= 1.5 copies |
| bytes through the throttle proxy during the storm | $prox ($(calc "$prox / $IMAGE_BYTES") copies) | |
| lone pull (same upstream, nobody to share with) | $SOLO_S s | |
| storm pull time p50 / p99 | $p50 s / $p99 s ($(calc "$p50 / $SOLO_S")x / $(calc "$p99 / $SOLO_S")x the lone pull) | |
| wall time, all $NODES pulls | $wall s | |
| failed pulls | $fails of $NODES | 0 |
| peermirror peak RSS (VmHWM), max of the nodes | $(calc "$(sort -g "$WORK/storm.hwm" | tail -n1) / 1024") MB | |
| load before / at end | $LOAD_START / $(loadavg) | |

| node | start offset s | pull s | bytes from peers (source=peer) | bytes served (all sources) | peak RSS MB |
|---|---|---|---|---|---|
$rows
EOF
}

# ---------------------------------------------------------------------------
# chunked_one NAME REF DIGEST SIZE: a fresh 2.1 node with the fetch buffer pulls REF through
# its peermirror (upstream stopped); prints the storm nodes' served bytes / SIZE.
chunked_one() {
    local name="$1" ref="$2" digest="$3" size="$4" i before=0 after=0 t0 t1 ok=yes
    ctd_start_series "$name" 2.1 "$FETCH_BUFFER"
    pm_start "$name" "$name" dir n1
    pm_wait_ready "$name"
    hosts_dir_for "$WORK/hosts-$name" "$UP" "${PM_REG[$name]}"
    local url="http://${PM_REG[$name]}/v2/${ref#*/}" && url="${url%:v1}/blobs/$digest?ns=$UP"
    for ((i = 0; i < 300; i++)); do
        [ "$(curl -s -o /dev/null -m 5 -I -w '%{http_code}' "$url" || true)" = 200 ] && break
        sleep 0.1
    done
    for ((i = 1; i <= NODES; i++)); do before=$((before + $(pm_served "n$i"))); done
    t0="$(date +%s.%N)"
    # Today each 4 MiB chunk costs a fetch from byte 0 (quadratic): a 1 GB layer would take
    # ~130 GB of serving, so the pull is cut at CHUNKED_TIMEOUT s and the ratio is a lower bound.
    local rc=0
    CTR_TIMEOUT="$CHUNKED_TIMEOUT" ctd_ctr "$name" images pull --snapshotter native --plain-http \
        --hosts-dir "$WORK/hosts-$name" "$ref" >"$WORK/chunked.log.$name" 2>&1 || rc=$?
    if [ "$rc" = 124 ]; then
        ok="cut after ${CHUNKED_TIMEOUT} s (ratio: lower bound)"
    elif [ "$rc" != 0 ]; then
        ok="NO ($(tail -n 1 "$WORK/chunked.log.$name"))"
    fi
    t1="$(date +%s.%N)"
    for ((i = 1; i <= NODES; i++)); do after=$((after + $(pm_served "n$i"))); done
    local served=$((after - before)) ranged
    ranged="$(curl -s -m 5 "http://${PM_MET[$name]}/metrics" | awk 'index($0, "peermirror_requests_total{") == 1 && index($0, "status=\"206\"") { s += $NF } END { printf "%.0f\n", s }')"
    echo "| $ref | $size | $ranged | $served | $(calc "$served / $size") | $(calc "$t1 - $t0") | $ok |" >>"$WORK/chunked.rows"
    log "chunked $ref: providers served $served bytes for a $size-byte blob ($(calc "$served / $size")x), $ranged ranged answers, pull ok: $ok"
    pm_stop "$name"
    ctd_stop "$name"
}

part_chunked() {
    [ -x "$BENCH_ROOT/target/containerd/2.1/usr/bin/containerd" ] || {
        log "chunked: containerd 2.1 missing (scripts/fetch-containerd.sh 2.1): skipped"
        return 0
    }
    [ -n "${PM_PID[n1]:-}" ] || die "chunked needs the storm part first (the providers)"
    local big_ref="$UP/test/big:v1" big_layer big_size
    read -r big_layer big_size < <(big_layer)
    # Node 1 gets `big` too (through its mirror: a miss, from the upstream).
    fetch n1 "$big_ref" || die "n1: fetch of big failed"
    registry_stop
    : >"$WORK/chunked.rows"
    chunked_one cbig "$big_ref" "$big_layer" "$big_size"
    chunked_one cstorm "$REF" "$LAYER" "$LAYER_SIZE"
    cat >>"$SUMMARY" <<EOF

### chunked: containerd 2.1, concurrent_layer_fetch_buffer = $FETCH_BUFFER, \`ctr images pull\` through peers, upstream stopped
| image | blob bytes | ranged (206) answers | bytes the providing nodes served | served / blob (target <= 1.1) | pull s | pull ok |
|---|---|---|---|---|---|---|
$(cat "$WORK/chunked.rows")
EOF
}

for part in $PARTS; do
    case "$part" in
        storm) part_storm ;;
        chunked) part_chunked ;;
        *) die "unknown part $part" ;;
    esac
done

cat <<EOF

== bench/storm.sh summary ($(date -u +%Y-%m-%dT%H:%MZ)) ==
machine: $(machine_notes); load at start $LOAD_START
peermirror: $PEERMIRROR
$(cat "$SUMMARY")
EOF
