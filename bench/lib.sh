# shellcheck shell=bash
# Helpers shared by the benchmark scripts in bench/. Source it; do not run it.
#
# Every process started here is recorded and killed by PID on EXIT; every wait
# is bounded; everything lives under one temp dir that is removed on EXIT.
# Only 127.0.0.1 is used.

set -euo pipefail

BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERMIRROR="${PEERMIRROR:-$BENCH_ROOT/target/release/peermirror}"
FIXTURES="${FIXTURES:-$BENCH_ROOT/target/e2e-fixtures}"
NS=k8s.io

BENCH_PIDS=()
declare -A PM_REG=() PM_MET=() PM_ROUTER=() PM_PID=() PM_LOG=()
declare -A CTD_SOCK=() CTD_ROOT=() CTD_PID=() CTD_CTR=()
REGISTRY_PORT=""
REGISTRY_PID=""
REGISTRY_DIR=""
WORK=""

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "FATAL: $*"
    exit 1
}

# Kills one PID (TERM, then KILL after 5 s) and reaps it if it is our child.
stop_pid() {
    local pid="$1" i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
    local rc=$? i
    set +e
    for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${BENCH_PIDS[i]}"
    done
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "${BENCH_KEEP:-0}" = 1 ]; then
            log "kept $WORK (BENCH_KEEP=1)"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}

# bench_init NAME: temp dir, traps, checks.
bench_init() {
    [ "$(id -u)" -eq 0 ] || die "run as root (containerd needs it)"
    for tool in containerd ctr docker-registry skopeo curl python3 sha256sum jq; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found (scripts/install-deps.sh)"
    done
    [ -x "$PEERMIRROR" ] || die "$PEERMIRROR missing: cargo build --release"
    WORK="$(mktemp -d "/tmp/pm-bench-$1.XXXXXX")"
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
    bash "$BENCH_ROOT/tests/fixtures/build-images.sh" "$FIXTURES" >&2
}

track() { BENCH_PIDS+=("$1"); }

# Removes a PID from the cleanup list after it was stopped.
untrack() {
    local pid="$1" i
    for i in "${!BENCH_PIDS[@]}"; do
        [ "${BENCH_PIDS[i]}" = "$pid" ] && unset 'BENCH_PIDS[i]'
    done
    BENCH_PIDS=("${BENCH_PIDS[@]}")
}

declare -A USED_PORTS=()
# free_port VAR: stores a TCP port that was free a moment ago on 127.0.0.1 in VAR
# (not via $(...): the set of ports already handed out must survive).
free_port() {
    local p i
    for ((i = 0; i < 50; i++)); do
        p="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
        if [ -z "${USED_PORTS[$p]:-}" ]; then
            USED_PORTS[$p]=1
            printf -v "$1" '%s' "$p"
            return 0
        fi
    done
    die "no free port"
}

# http_code URL: the status code, 000 when nothing answered.
http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" || true; }

# wait_http URL CODE SECONDS
wait_http() {
    local url="$1" want="$2" secs="$3" i
    for ((i = 0; i < secs * 10; i++)); do
        [ "$(http_code "$url")" = "$want" ] && return 0
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------------------
# docker-registry with an access log (response sizes = upstream egress).
# ---------------------------------------------------------------------------
registry_setup() {
    REGISTRY_DIR="$WORK/registry"
    free_port REGISTRY_PORT
    mkdir -p "$REGISTRY_DIR/storage"
    cat >"$REGISTRY_DIR/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/storage
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$REGISTRY_PORT
  secret: peermirror-bench-secret
health:
  storagedriver:
    enabled: false
EOF
}

registry_start() {
    env -u REGISTRY_HTTP_ADDR docker-registry serve "$REGISTRY_DIR/config.yml" \
        >>"$REGISTRY_DIR/access.log" 2>>"$REGISTRY_DIR/registry.log" &
    REGISTRY_PID=$!
    track "$REGISTRY_PID"
    wait_http "http://127.0.0.1:$REGISTRY_PORT/v2/" 200 15 || die "registry not ready"
}

registry_stop() {
    stop_pid "$REGISTRY_PID"
    untrack "$REGISTRY_PID"
    REGISTRY_PID=""
}

# registry_push NAME [SKOPEO ARGS...]: pushes fixture NAME as test/NAME:v1 (`--all` for an index).
registry_push() {
    skopeo copy --quiet --dest-tls-verify=false "${@:2}" "oci:$FIXTURES/$1:v1" \
        "docker://127.0.0.1:$REGISTRY_PORT/test/$1:v1"
}

# registry_egress_bytes: sum of response sizes of GET requests in the access
# log so far (combined log format: ... "GET path HTTP/1.1" status bytes ...).
registry_egress_bytes() {
    awk '$6 == "\"GET" && $10 ~ /^[0-9]+$/ { s += $10 } END { printf "%.0f\n", s }' \
        "$REGISTRY_DIR/access.log"
}

# ---------------------------------------------------------------------------
# containerd 1.6, CRI off, own root/state/socket.
# ---------------------------------------------------------------------------
ctd_start() {
    local name="$1" base="$WORK/ctd-$1" i
    mkdir -p "$base"
    cat >"$base/config.toml" <<EOF
version = 2
root = "$base/root"
state = "$base/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$base/c.sock"

[ttrpc]
  address = "$base/c.sock.ttrpc"

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$base/opt"
EOF
    containerd --config "$base/config.toml" >"$base/containerd.log" 2>&1 &
    CTD_PID[$name]=$!
    track "${CTD_PID[$name]}"
    CTD_SOCK[$name]="$base/c.sock"
    CTD_ROOT[$name]="$base/root"
    for ((i = 0; i < 150; i++)); do
        ctr --address "$base/c.sock" --connect-timeout 1s version >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "containerd $name not ready"
}

# ctd_start_series NAME SERIES [FETCH_BUFFER]: like ctd_start with containerd SERIES: 1.6 is the
# system's, 1.7 and 2.1 come from target/containerd/SERIES (scripts/fetch-containerd.sh). 2.x
# reads a version 3 config, pulls through the transfer service (unpacking to `native` only if
# listed) and takes concurrent_layer_fetch_buffer=FETCH_BUFFER (chunked ranged fetches).
ctd_start_series() {
    local name="$1" series="$2" buffer="${3:-}" base="$WORK/ctd-$1" bin i
    if [ "$series" = 1.6 ]; then
        ctd_start "$name"
        return
    fi
    bin="$BENCH_ROOT/target/containerd/$series/usr/bin"
    [ -x "$bin/containerd" ] || die "$bin/containerd missing: bash scripts/fetch-containerd.sh $series"
    mkdir -p "$base"
    {
        if [ "${series%%.*}" -ge 2 ]; then
            echo 'version = 3'
            echo 'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"]'
        else
            echo 'version = 2'
            echo 'disabled_plugins = ["io.containerd.grpc.v1.cri"]'
        fi
        printf 'root = "%s"\nstate = "%s"\n' "$base/root" "$base/state"
        printf '\n[grpc]\n  address = "%s"\n' "$base/c.sock"
        printf '\n[ttrpc]\n  address = "%s"\n' "$base/c.sock.ttrpc"
        printf '\n[debug]\n  address = ""\n  level = "warn"\n\n[metrics]\n  address = ""\n'
        printf '\n[plugins."io.containerd.internal.v1.opt"]\n  path = "%s"\n' "$base/opt"
        if [ "${series%%.*}" -ge 2 ]; then
            printf '\n[[plugins."io.containerd.transfer.v1.local".unpack_config]]\n'
            printf '  platform = "linux/amd64"\n  snapshotter = "native"\n'
            [ -z "$buffer" ] || printf '\n[plugins."io.containerd.transfer.v1.local"]\n  concurrent_layer_fetch_buffer = %s\n' "$buffer"
        fi
    } >"$base/config.toml"
    "$bin/containerd" --config "$base/config.toml" >"$base/containerd.log" 2>&1 &
    CTD_PID[$name]=$!
    track "${CTD_PID[$name]}"
    CTD_SOCK[$name]="$base/c.sock"
    CTD_ROOT[$name]="$base/root"
    CTD_CTR[$name]="$bin/ctr"
    for ((i = 0; i < 150; i++)); do
        "$bin/ctr" --address "$base/c.sock" --connect-timeout 1s version >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "containerd $name ($series) not ready"
}

ctd_stop() {
    local name="$1"
    stop_pid "${CTD_PID[$name]}"
    untrack "${CTD_PID[$name]}"
    rm -rf "$WORK/ctd-$name"
}

ctd_content_dir() { echo "${CTD_ROOT[$1]}/io.containerd.content.v1.content"; }

# ctd_ctr NAME ARGS...
ctd_ctr() {
    local name="$1"
    shift
    timeout "${CTR_TIMEOUT:-300}" "${CTD_CTR[$name]:-ctr}" --address "${CTD_SOCK[$name]}" --connect-timeout 5s -n "$NS" "$@"
}

# ctd_pull NAME REF [HOSTS_DIR]: ctr images pull (native snapshotter, plain http).
ctd_pull() {
    local name="$1" ref="$2" hosts="${3:-}"
    if [ -n "$hosts" ]; then
        ctd_ctr "$name" images pull --snapshotter native --plain-http --hosts-dir "$hosts" "$ref" >/dev/null
    else
        ctd_ctr "$name" images pull --snapshotter native --plain-http "$ref" >/dev/null
    fi
}

# hosts_dir DIR MIRROR_HOSTPORT: hosts.toml for the registry: the mirror, then upstream.
hosts_dir() {
    local dir="$1" mirror="$2"
    mkdir -p "$dir/127.0.0.1:$REGISTRY_PORT"
    cat >"$dir/127.0.0.1:$REGISTRY_PORT/hosts.toml" <<EOF
server = "http://127.0.0.1:$REGISTRY_PORT"

[host."http://$mirror"]
  capabilities = ["pull", "resolve"]
EOF
}

# hosts_dir_for DIR UPSTREAM_HOSTPORT MIRROR_HOSTPORT: like hosts_dir for another upstream
# (the throttle proxy in front of the registry, say).
hosts_dir_for() {
    local dir="$1" up="$2" mirror="$3"
    mkdir -p "$dir/$up"
    printf 'server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
        "$up" "$mirror" >"$dir/$up/hosts.toml"
}

# ---------------------------------------------------------------------------
# The throttled upstream: tests/tools/throttle_proxy.py in front of the registry, one token
# bucket for all connections (the upstream's total egress is capped, like a WAN link).
# ---------------------------------------------------------------------------
PROXY_PORT=""
PROXY_PID=""
# proxy_start RATE_BYTES_PER_S: in front of the registry; sets PROXY_PORT and PROXY_PID.
proxy_start() {
    local i
    rm -f "$WORK/proxy.port"
    python3 "$BENCH_ROOT/tests/tools/throttle_proxy.py" --listen 127.0.0.1:0 \
        --upstream "127.0.0.1:$REGISTRY_PORT" --rate "$1" \
        --port-file "$WORK/proxy.port" --stats-file "$WORK/proxy.json" >"$WORK/proxy.log" 2>&1 &
    PROXY_PID=$!
    track "$PROXY_PID"
    for ((i = 0; i < 100; i++)); do
        [ -s "$WORK/proxy.port" ] && break
        sleep 0.1
    done
    PROXY_PORT="$(cat "$WORK/proxy.port" 2>/dev/null)" || die "throttle proxy did not start"
}

# proxy_bytes: bytes the upstream sent through the proxy so far (its stats file is rewritten
# every 200 ms).
proxy_bytes() {
    sleep 0.3
    jq -r '.bytes_from_upstream' "$WORK/proxy.json"
}

# registry_blob_egress DIGEST: response bytes of the GETs of blob DIGEST in the access log.
registry_blob_egress() {
    awk -v p="/blobs/$1" '$6 == "\"GET" && index($7, p) && $10 ~ /^[0-9]+$/ { s += $10 } END { printf "%.0f\n", s }' \
        "$REGISTRY_DIR/access.log"
}

# pm_served NAME: every peermirror_response_bytes_total sample summed (all sources).
pm_served() {
    curl -s -m 5 "http://${PM_MET[$1]}/metrics" |
        awk 'index($0, "peermirror_response_bytes_total{") == 1 { s += $NF } END { printf "%.0f\n", s }'
}

# ---------------------------------------------------------------------------
# peermirror
# ---------------------------------------------------------------------------
# pm_start NAME CTD_NAME MODE BOOTSTRAP [EXTRA ARGS...]
#   MODE: dir (with --containerd-content-dir) or grpc (without)
#   BOOTSTRAP: none, or NAME of a running peermirror to bootstrap from
pm_start() {
    local name="$1" ctd="$2" mode="$3" boot="$4"
    shift 4
    local dir="$WORK/pm-$name" args=() auth=() p_reg p_met p_router
    mkdir -p "$dir/data"
    free_port p_reg
    free_port p_met
    free_port p_router
    PM_REG[$name]="127.0.0.1:$p_reg"
    PM_MET[$name]="127.0.0.1:$p_met"
    PM_ROUTER[$name]="$p_router"
    PM_LOG[$name]="$dir/peermirror.log"
    args=(run --containerd-sock "${CTD_SOCK[$ctd]}" --containerd-namespace "$NS"
        --registry-addr "${PM_REG[$name]}" --metrics-addr "${PM_MET[$name]}"
        --router-addr "127.0.0.1:${PM_ROUTER[$name]}" --data-dir "$dir/data"
        --log-level "${PM_LOG_LEVEL:-info}")
    # Plain HTTP on loopback, like the curl and docker-registry baselines.
    # PM_AUTH_ARGS overrides (e.g. to measure the TLS modes).
    read -r -a auth <<<"${PM_AUTH_ARGS:---auth-mode none --insecure-no-auth --resolve-tags true --trust-unconfirmed-tags true}"
    args+=("${auth[@]}")
    [ "$mode" = dir ] && args+=(--containerd-content-dir "$(ctd_content_dir "$ctd")")
    if [ "$boot" = none ]; then
        args+=(--bootstrap none)
    else
        args+=(--bootstrap "static:/ip4/127.0.0.1/tcp/${PM_ROUTER[$boot]}")
    fi
    env -u PEERMIRROR_LOG_LEVEL "$PEERMIRROR" "${args[@]}" "$@" >"${PM_LOG[$name]}" 2>&1 &
    PM_PID[$name]=$!
    track "${PM_PID[$name]}"
}

pm_wait_ready() {
    local i
    for ((i = 0; i < ${2:-30} * 10; i++)); do
        [ "$(http_code "http://${PM_MET[$1]}/readyz")" = 200 ] && return 0
        kill -0 "${PM_PID[$1]}" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "${PM_LOG[$1]}" >&2
    die "peermirror $1 not ready"
}

pm_stop() {
    stop_pid "${PM_PID[$1]}"
    untrack "${PM_PID[$1]}"
}

# pm_bytes NAME SOURCE: peermirror_response_bytes_total{source=SOURCE} (0 if absent).
pm_bytes() {
    curl -s -m 5 "http://${PM_MET[$1]}/metrics" |
        awk -v want="source=\"$2\"" 'index($0, "peermirror_response_bytes_total{") == 1 && index($0, want) { s += $NF } END { printf "%.0f\n", s }'
}

# ---------------------------------------------------------------------------
# /proc and numbers
# ---------------------------------------------------------------------------
# vm_hwm_kb PID: peak resident set size so far, KiB.
vm_hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
vm_rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# cpu_ticks PID: utime + stime, in clock ticks.
cpu_ticks() {
    # Fields after the parenthesised command name; utime/stime are 14 and 15.
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}
export CLK_TCK
CLK_TCK="$(getconf CLK_TCK)"

# median: of the numbers on stdin, one per line.
median() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else printf "%.6g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# calc EXPR: floating point arithmetic via awk.
calc() { awk "BEGIN { printf \"%.3f\n\", $1 }"; }

# random_file FILE MB PASS: MB MiB of incompressible bytes (AES-256-CTR of zeros keyed by PASS:
# the same bytes for the same PASS, much faster than /dev/urandom).
random_file() {
    head -c "$(($2 * 1024 * 1024))" /dev/zero |
        openssl enc -aes-256-ctr -nosalt -pbkdf2 -pass "pass:$3" >"$1"
}

# layout_blob LAYOUT TEXT: store TEXT as a blob of the OCI layout; prints "hex size".
layout_blob() {
    local h
    h="$(printf '%s' "$2" | sha256sum | cut -d' ' -f1)"
    printf '%s' "$2" >"$1/blobs/sha256/$h"
    echo "$h ${#2}"
}

# oci_layout_image LAYOUT LAYER_HEX LAYER_SIZE CONFIG_JSON [IMAGE_NAME]: a single-layer image
# around the uncompressed tar layer already at LAYOUT/blobs/sha256/LAYER_HEX: its config, the
# manifest, oci-layout and index.json (tag v1; IMAGE_NAME also names it for `ctr images
# import`). Sets MANIFEST_HEX MANIFEST_SIZE CONFIG_HEX CONFIG_SIZE.
oci_layout_image() {
    local layout="$1" lhex="$2" lsize="$3" config="$4" name="${5:-}" manifest annotations
    read -r CONFIG_HEX CONFIG_SIZE < <(layout_blob "$layout" "$config")
    manifest="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$CONFIG_HEX\",\"size\":$CONFIG_SIZE},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$lhex\",\"size\":$lsize}]}"
    read -r MANIFEST_HEX MANIFEST_SIZE < <(layout_blob "$layout" "$manifest")
    annotations="\"org.opencontainers.image.ref.name\":\"v1\""
    [ -n "$name" ] && annotations="\"io.containerd.image.name\":\"$name\",$annotations"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
    echo "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$MANIFEST_HEX\",\"size\":$MANIFEST_SIZE,\"annotations\":{$annotations}}]}" >"$layout/index.json"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# fetch_rate URL: one curl download to /dev/null; prints "bytes seconds MB/s".
fetch_rate() {
    curl -s -f -o /dev/null -w '%{size_download} %{time_total}\n' "$1" |
        awk '{ printf "%.0f %.6f %.1f\n", $1, $2, $1 / $2 / 1e6 }'
}

# big_layer: "digest size" of the big fixture's layer.
big_layer() {
    local manifest
    manifest="$(jq -r '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "v1") | .digest' "$FIXTURES/big/index.json")"
    jq -r '.layers[0] | "\(.digest) \(.size)"' "$FIXTURES/big/blobs/sha256/${manifest#sha256:}"
}

machine_notes() {
    printf '%s, %s cores, %s GiB RAM, load %s' \
        "$(uname -r)" "$(nproc)" "$(free -g | awk '/^Mem:/ { print $2 }')" "$(loadavg)"
}
