#!/usr/bin/env bash
# peermirror demo: three nodes on this machine share images peer-to-peer.
#
#   sudo examples/demo.sh            # debug build (what `cargo test` builds too)
#   sudo BUILD_PROFILE=release examples/demo.sh
#
# On a fresh Debian/Ubuntu machine, as root, with a Rust toolchain:
#   1. installs the system packages (scripts/install-deps.sh)
#   2. builds peermirror (cargo build; debug unless BUILD_PROFILE=release)
#   3. builds the fixture images (tests/fixtures/build-images.sh -> target/e2e-fixtures)
#   4. starts an upstream docker-registry on 127.0.0.1 and pushes the fixtures
#   5. starts three nodes, each its own containerd + peermirror on 127.0.0.1 (plain http,
#      --auth-mode none and --resolve-tags true: demo only); nodes 2 and 3 bootstrap to node 1;
#      hosts.toml by `peermirror configure`
#   6. node 1 pulls big, multi and multiarch (its mirror misses, the upstream serves)
#   7. STOPS the upstream; nodes 2 and 3 pull the same images through their peermirror
#   8. prints, per node, the pull result and the bytes served by source (from /metrics)
# Every process it started is stopped by PID on exit, and its temp dir removed.
# Exits non-zero if any step fails. Only 127.0.0.1 is used.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"
exec </dev/null

BUILD_PROFILE="${BUILD_PROFILE:-debug}"
IMAGES=(big multi multiarch)
NODES=(1 2 3)
FIXTURES="$REPO/target/e2e-fixtures"

DEMO_DIR=""
PIDS=()        # every background process we started, in start order
FAILED_STEP="" # set while a step runs; reported if the script dies in it

declare -A CTD_SOCK PM_REG PM_METRICS PM_ROUTER PULL_RESULT
REG_PORT=""
REG_PID=""

log() { printf '\n== %s\n' "$*"; }
die() {
    echo "demo: ERROR: $*" >&2
    exit 1
}

# --- cleanup -------------------------------------------------------------------

show_logs() {
    local f
    [ -n "$DEMO_DIR" ] && [ -d "$DEMO_DIR" ] || return 0
    for f in "$DEMO_DIR"/*.log; do
        [ -f "$f" ] || continue
        echo "--- last lines of $(basename "$f") ---" >&2
        tail -n 15 "$f" | sed 's/\x1b\[[0-9;]*m//g' >&2
    done
}

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    if [ "$rc" -ne 0 ]; then
        [ -n "$FAILED_STEP" ] && echo "demo: failed during: $FAILED_STEP" >&2
        show_logs
    fi
    # Stop in reverse start order, by PID: SIGTERM, a bounded wait, then SIGKILL.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid="${PIDS[$i]}"
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "$DEMO_DIR" ] && [ -d "$DEMO_DIR" ]; then
        rm -rf "$DEMO_DIR"
    fi
    [ "${#PIDS[@]}" -gt 0 ] && echo "demo: stopped ${#PIDS[@]} processes, removed ${DEMO_DIR:-nothing}"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers -------------------------------------------------------------------

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.1 s.
wait_for() {
    local seconds="$1" what="$2" i
    shift 2
    for ((i = 0; i < seconds * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$what: not within ${seconds}s"
}

# A TCP port nobody listens on (bounded tries over a random range).
free_port() {
    local port i
    for ((i = 0; i < 200; i++)); do
        port=$((20000 + RANDOM % 40000))
        if ! ss -Htan "( sport = :$port )" | grep -q .; then
            echo "$port"
            return 0
        fi
    done
    die "no free TCP port found"
}

http_status() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true; }
http_ok() { [ "$(http_status "$@")" = 200 ]; }

# metric NODE SOURCE: peermirror_response_bytes_total{source="SOURCE"} of NODE (0 if absent).
metric_bytes() {
    local node="$1" source="$2"
    curl -s --max-time 5 "http://127.0.0.1:${PM_METRICS[$node]}/metrics" |
        awk -v want="peermirror_response_bytes_total{source=\"$source\"}" \
            '$1 == want { v = $2 } END { printf "%d", v + 0 }'
}

ctr_node() {
    local node="$1"
    shift
    timeout 300 ctr --address "${CTD_SOCK[$node]}" --connect-timeout 5s -n k8s.io "$@"
}

human() { numfmt --to=iec-i --suffix=B "$1"; }

# --- steps ---------------------------------------------------------------------

step_prereqs() {
    FAILED_STEP="prerequisites"
    [ "$(id -u)" -eq 0 ] || die "run as root (containerd needs it)"
    log "installing system packages (scripts/install-deps.sh)"
    bash scripts/install-deps.sh
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install a Rust toolchain >= 1.88 with rustup)"
}

step_build() {
    FAILED_STEP="cargo build"
    local flags=()
    [ "$BUILD_PROFILE" = release ] && flags=(--release)
    [ "$BUILD_PROFILE" = release ] || [ "$BUILD_PROFILE" = debug ] ||
        die "BUILD_PROFILE must be debug or release, not $BUILD_PROFILE"
    log "building peermirror ($BUILD_PROFILE)"
    cargo build "${flags[@]}" --bin peermirror
    PEERMIRROR="$REPO/target/$BUILD_PROFILE/peermirror"
    [ -x "$PEERMIRROR" ] || die "$PEERMIRROR not built"
}

step_fixtures() {
    FAILED_STEP="building fixture images"
    log "building fixture images into $FIXTURES"
    bash tests/fixtures/build-images.sh "$FIXTURES"
}

step_registry() {
    FAILED_STEP="upstream registry"
    REG_PORT="$(free_port)"
    log "starting the upstream docker-registry on 127.0.0.1:$REG_PORT"
    mkdir -p "$DEMO_DIR/registry"
    cat >"$DEMO_DIR/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $DEMO_DIR/registry
http:
  addr: 127.0.0.1:$REG_PORT
  secret: peermirror-demo
EOF
    docker-registry serve "$DEMO_DIR/registry.yml" >"$DEMO_DIR/registry.log" 2>&1 &
    REG_PID=$!
    PIDS+=("$REG_PID")
    wait_for 15 "registry ready" http_ok "http://127.0.0.1:$REG_PORT/v2/"

    FAILED_STEP="pushing fixtures"
    local image all
    for image in "${IMAGES[@]}"; do
        all=()
        [ "$image" = multiarch ] && all=(--all)
        echo "pushing test/$image:v1"
        timeout 300 skopeo copy --quiet --dest-tls-verify=false "${all[@]}" \
            "oci:$FIXTURES/$image:v1" "docker://127.0.0.1:$REG_PORT/test/$image:v1"
    done
}

stop_registry() {
    FAILED_STEP="stopping the upstream"
    log "STOPPING the upstream registry (pid $REG_PID)"
    kill -KILL "$REG_PID"
    wait "$REG_PID" 2>/dev/null || true
    if http_ok "http://127.0.0.1:$REG_PORT/v2/"; then
        die "the registry still answers after it was stopped"
    fi
    echo "upstream 127.0.0.1:$REG_PORT is down"
}

# start_node N [BOOTSTRAP_ROUTER_PORT]
start_node() {
    local n="$1" boot="${2:-}" dir="$DEMO_DIR/n$1"
    FAILED_STEP="starting node $n"
    mkdir -p "$dir"
    CTD_SOCK[$n]="$dir/c.sock"
    cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$dir/c.sock"

[ttrpc]
  address = "$dir/c.sock.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
EOF
    containerd --config "$dir/containerd.toml" >"$DEMO_DIR/node$n-containerd.log" 2>&1 &
    PIDS+=("$!")
    wait_for 30 "node $n containerd" ctr --address "$dir/c.sock" --connect-timeout 1s version

    PM_REG[$n]="$(free_port)"
    PM_METRICS[$n]="$(free_port)"
    PM_ROUTER[$n]="$(free_port)"
    local bootstrap=none
    [ -n "$boot" ] && bootstrap="static:/ip4/127.0.0.1/tcp/$boot"
    "$PEERMIRROR" run \
        --containerd-sock "$dir/c.sock" \
        --containerd-namespace k8s.io \
        --containerd-content-dir "$dir/root/io.containerd.content.v1.content" \
        --registry-addr "127.0.0.1:${PM_REG[$n]}" \
        --metrics-addr "127.0.0.1:${PM_METRICS[$n]}" \
        --router-addr "127.0.0.1:${PM_ROUTER[$n]}" \
        --bootstrap "$bootstrap" \
        --data-dir "$dir/pm-data" \
        --auth-mode none --insecure-no-auth \
        --resolve-tags true \
        --log-level info \
        >"$DEMO_DIR/node$n-peermirror.log" 2>&1 &
    PIDS+=("$!")
    wait_for 30 "node $n peermirror /readyz" http_ok "http://127.0.0.1:${PM_METRICS[$n]}/readyz"

    "$PEERMIRROR" configure --config-path "$dir/hosts" \
        --mirror "http://127.0.0.1:${PM_REG[$n]}" \
        --registry "http://127.0.0.1:$REG_PORT" >/dev/null
    [ -f "$dir/hosts/127.0.0.1:$REG_PORT/hosts.toml" ] || die "node $n: no hosts.toml written"
    echo "node $n: containerd $dir/c.sock, peermirror 127.0.0.1:${PM_REG[$n]}" \
        "(metrics :${PM_METRICS[$n]}, router :${PM_ROUTER[$n]}, bootstrap $bootstrap)"
}

# pull_images N: pulls every image on node N through its hosts.toml; records the result.
pull_images() {
    local n="$1" image ok=yes start end
    FAILED_STEP="node $n pulls"
    log "node $n pulls ${IMAGES[*]} through its peermirror"
    start=$(date +%s%N)
    for image in "${IMAGES[@]}"; do
        if ctr_node "$n" images pull --snapshotter native \
            --hosts-dir "$DEMO_DIR/n$n/hosts" \
            "127.0.0.1:$REG_PORT/test/$image:v1" >"$DEMO_DIR/node$n-pull-$image.out" 2>&1; then
            echo "node $n: pulled test/$image:v1"
        else
            echo "node $n: FAILED to pull test/$image:v1:" >&2
            tail -n 5 "$DEMO_DIR/node$n-pull-$image.out" >&2
            ok=no
        fi
    done
    end=$(date +%s%N)
    if [ "$ok" = yes ] && ! verify_blobs "$n"; then
        ok=no
    fi
    local ms=$(((end - start) / 1000000))
    PULL_RESULT[$n]="$ok ($((ms / 1000)).$(((ms % 1000) / 100))s)"
}

# verify_blobs N: every blob file in node N's content store hashes to its name.
verify_blobs() {
    local n="$1" f count=0
    for f in "$DEMO_DIR/n$n/root/io.containerd.content.v1.content/blobs/sha256"/*; do
        if [ "$(sha256sum "$f" | cut -d' ' -f1)" != "$(basename "$f")" ]; then
            echo "node $n: blob $(basename "$f") has wrong content" >&2
            return 1
        fi
        count=$((count + 1))
    done
    echo "node $n: $count blobs verified (sha256)"
}

wait_until_visible() {
    local layer url n
    FAILED_STEP="waiting for the DHT"
    layer="$(jq -r '.layers[0].digest' "$FIXTURES/big/blobs/sha256/$(jq -r \
        '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "v1") | .digest' \
        "$FIXTURES/big/index.json" | cut -d: -f2)")"
    for n in 2 3; do
        url="http://127.0.0.1:${PM_REG[$n]}/v2/test/big/blobs/$layer?ns=127.0.0.1:$REG_PORT"
        wait_for 30 "node $n seeing node 1's big layer" http_ok -I "$url"
        echo "node $n sees node 1's big layer ($layer) through the DHT"
    done
}

summary() {
    local n failed=0
    FAILED_STEP="summary"
    log "summary (bytes each node's peermirror served, by where they came from)"
    printf '%-6s %-16s %12s %12s %12s\n' node "pull ok" local peer miss
    for n in "${NODES[@]}"; do
        printf '%-6s %-16s %12s %12s %12s\n' "node$n" "${PULL_RESULT[$n]:-not run}" \
            "$(human "$(metric_bytes "$n" local)")" \
            "$(human "$(metric_bytes "$n" peer)")" \
            "$(human "$(metric_bytes "$n" miss)")"
        case "${PULL_RESULT[$n]:-no}" in yes*) ;; *) failed=1 ;; esac
    done
    echo "(node 1 pulled with the upstream up; nodes 2 and 3 with it down)"
    [ "$failed" -eq 0 ] || die "some pulls failed"
}

main() {
    step_prereqs
    step_build
    step_fixtures
    for tool in containerd ctr docker-registry skopeo curl jq ss numfmt; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
    done
    DEMO_DIR="$(mktemp -d "${TMPDIR:-/tmp}/peermirror-demo.XXXXXX")"
    step_registry
    log "starting three nodes"
    start_node 1
    start_node 2 "${PM_ROUTER[1]}"
    start_node 3 "${PM_ROUTER[1]}"
    pull_images 1
    case "${PULL_RESULT[1]}" in yes*) ;; *) die "node 1 could not pull from the upstream" ;; esac
    wait_until_visible
    stop_registry
    pull_images 2
    pull_images 3
    summary
    FAILED_STEP=""
}

main "$@"
