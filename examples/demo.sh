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
#      --auth-mode none, --resolve-tags true and --trust-unconfirmed-tags true: demo only); nodes 2 and 3 bootstrap to node 1;
#      hosts.toml by `peermirror configure`
#   6. node 1 pulls big, multi and multiarch (its mirror misses, the upstream serves)
#   7. STOPS the upstream; nodes 2 and 3 pull the same images through their peermirror
#   8. prints, per node, the pull result and the bytes served by source (from /metrics)
# Start-up, ports and clean-up come from bench/lib.sh: every process it started is stopped by
# PID on exit, and its temp dir removed. Exits non-zero if any step fails. Only 127.0.0.1 is used.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"
exec </dev/null

BUILD_PROFILE="${BUILD_PROFILE:-debug}"
IMAGES=(big multi multiarch)
NODES=(1 2 3)
PEERMIRROR="$REPO/target/$BUILD_PROFILE/peermirror"
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

FAILED_STEP="" # set while a step runs; reported if the script dies in it
declare -A PULL_RESULT=()

# On failure: the step and the last lines of every log, then bench/lib.sh's clean-up.
demo_cleanup() {
    local rc=$? f
    set +e
    if [ "$rc" -ne 0 ]; then
        [ -n "$FAILED_STEP" ] && echo "demo: failed during: $FAILED_STEP" >&2
        for f in "$WORK"/*/*.log "$WORK"/n*-pull-*.out; do
            [ -f "$f" ] || continue
            echo "--- last lines of ${f#"$WORK"/} ---" >&2
            tail -n 15 "$f" | sed 's/\x1b\[[0-9;]*m//g' >&2
        done
    fi
    (exit "$rc")
    bench_cleanup
}

head_ok() { [ "$(curl -s -o /dev/null -I -m 5 -w '%{http_code}' "$1" || true)" = 200 ]; }
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
}

step_registry() {
    FAILED_STEP="upstream registry"
    registry_setup
    log "starting the upstream docker-registry on 127.0.0.1:$REGISTRY_PORT"
    registry_start
    FAILED_STEP="pushing fixtures"
    local image all
    for image in "${IMAGES[@]}"; do
        all=()
        [ "$image" = multiarch ] && all=(--all)
        echo "pushing test/$image:v1"
        registry_push "$image" "${all[@]}"
    done
}

stop_registry() {
    FAILED_STEP="stopping the upstream"
    log "STOPPING the upstream registry (pid $REGISTRY_PID)"
    registry_stop
    [ "$(http_code "http://127.0.0.1:$REGISTRY_PORT/v2/")" = 000 ] ||
        die "the registry still answers after it was stopped"
    echo "upstream 127.0.0.1:$REGISTRY_PORT is down"
}

# start_node N [BOOTSTRAP_NODE]: containerd n<N> and peermirror n<N>, and its hosts.toml.
start_node() {
    local n="$1" boot="${2:-none}" hosts="$WORK/hosts-n$1"
    FAILED_STEP="starting node $n"
    ctd_start "n$n"
    pm_start "n$n" "n$n" dir "$boot"
    pm_wait_ready "n$n"
    "$PEERMIRROR" configure --config-path "$hosts" \
        --mirror "http://${PM_REG[n$n]}" \
        --registry "http://127.0.0.1:$REGISTRY_PORT" >/dev/null
    [ -f "$hosts/127.0.0.1:$REGISTRY_PORT/hosts.toml" ] || die "node $n: no hosts.toml written"
    echo "node $n: containerd ${CTD_SOCK[n$n]}, peermirror ${PM_REG[n$n]}" \
        "(metrics ${PM_MET[n$n]}, router :${PM_ROUTER[n$n]}, bootstrap $boot)"
}

# pull_images N: pulls every image on node N through its hosts.toml; records the result.
pull_images() {
    local n="$1" image ok=yes start end out
    FAILED_STEP="node $n pulls"
    log "node $n pulls ${IMAGES[*]} through its peermirror"
    start=$(date +%s%N)
    for image in "${IMAGES[@]}"; do
        out="$WORK/n$n-pull-$image.out"
        if ctd_ctr "n$n" images pull --snapshotter native --hosts-dir "$WORK/hosts-n$n" \
            "127.0.0.1:$REGISTRY_PORT/test/$image:v1" >"$out" 2>&1; then
            echo "node $n: pulled test/$image:v1"
        else
            echo "node $n: FAILED to pull test/$image:v1:" >&2
            tail -n 5 "$out" >&2
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
    for f in "$(ctd_content_dir "n$n")/blobs/sha256"/*; do
        if [ "$(sha256sum "$f" | cut -d' ' -f1)" != "$(basename "$f")" ]; then
            echo "node $n: blob $(basename "$f") has wrong content" >&2
            return 1
        fi
        count=$((count + 1))
    done
    echo "node $n: $count blobs verified (sha256)"
}

wait_until_visible() {
    local layer url n i
    FAILED_STEP="waiting for the DHT"
    read -r layer _ < <(big_layer)
    for n in 2 3; do
        url="http://${PM_REG[n$n]}/v2/test/big/blobs/$layer?ns=127.0.0.1:$REGISTRY_PORT"
        for ((i = 0; i < 300; i++)); do
            head_ok "$url" && break
            sleep 0.1
        done
        head_ok "$url" || die "node $n does not see node 1's big layer within 30s"
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
            "$(human "$(pm_bytes "n$n" local)")" \
            "$(human "$(pm_bytes "n$n" peer)")" \
            "$(human "$(pm_bytes "n$n" miss)")"
        case "${PULL_RESULT[$n]:-no}" in yes*) ;; *) failed=1 ;; esac
    done
    echo "(node 1 pulled with the upstream up; nodes 2 and 3 with it down)"
    [ "$failed" -eq 0 ] || die "some pulls failed"
}

main() {
    step_prereqs
    step_build
    FAILED_STEP="building fixture images"
    bench_init demo
    trap demo_cleanup EXIT
    command -v numfmt >/dev/null 2>&1 || die "numfmt not found"
    step_registry
    log "starting three nodes"
    start_node 1
    start_node 2 n1
    start_node 3 n1
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
