#!/usr/bin/env bash
# Benchmark "serve containerd content": one node, one containerd holding the big
# fixture image (a ~52 MiB incompressible layer), the same blob fetched over
# loopback with curl from
#   (a) peermirror reading it over containerd's gRPC API (no --containerd-content-dir)
#   (b) peermirror reading containerd's content dir
#   (c) docker-registry serving the same blob (the baseline)
# interleaved a, b, c per round, RUNS rounds; medians in MB/s (1 MB = 10^6 bytes).
# Then the peak RSS (VmHWM) of a fresh peermirror per mode while serving CONC
# concurrent downloads of the blob (ROUNDS times), and CPU time per GB served.
#
#   cargo build --release && sudo bash bench/serve.sh      (RUNS=9 CONC=8 ROUNDS=3)
#
# Root; needs containerd, ctr, docker-registry, skopeo, umoci (scripts/install-deps.sh).
# Only 127.0.0.1; every process is stopped by PID on exit; the temp dir is removed.

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS="${RUNS:-9}"
CONC="${CONC:-8}"
ROUNDS="${ROUNDS:-3}"

bench_init serve
LOAD_START="$(loadavg)"
log "load before: $LOAD_START"
read -r LAYER SIZE < <(big_layer)
log "big layer $LAYER ($SIZE bytes)"

registry_setup
registry_start
registry_push big
REF="127.0.0.1:$REGISTRY_PORT/test/big:v1"
ctd_start n1
ctd_pull n1 "$REF"

pm_start grpc n1 grpc none
pm_start dir n1 dir none
pm_wait_ready grpc
pm_wait_ready dir

NSQ="ns=127.0.0.1:$REGISTRY_PORT"
declare -A URL=(
    [a]="http://${PM_REG[grpc]}/v2/test/big/blobs/$LAYER?$NSQ"
    [b]="http://${PM_REG[dir]}/v2/test/big/blobs/$LAYER?$NSQ"
    [c]="http://127.0.0.1:$REGISTRY_PORT/v2/test/big/blobs/$LAYER"
)
declare -A LABEL=([a]="peermirror, gRPC only" [b]="peermirror, content dir" [c]="docker-registry")

# Correctness first (and warms the page cache): each source returns the right bytes.
for m in a b c; do
    curl -s -f -m 120 -o "$WORK/blob" "${URL[$m]}" || die "${LABEL[$m]}: download failed"
    got="sha256:$(sha256sum "$WORK/blob" | cut -d' ' -f1)"
    [ "$got" = "$LAYER" ] || die "${LABEL[$m]}: wrong digest $got"
    rm -f "$WORK/blob"
done
log "all three sources return the verified blob"

cpu0_grpc="$(cpu_ticks "${PM_PID[grpc]}")"
cpu0_dir="$(cpu_ticks "${PM_PID[dir]}")"
# containerd works only for (a) in this loop: its Content.Read stream is (a)'s source.
cpu0_ctd="$(cpu_ticks "${CTD_PID[n1]}")"
for ((r = 1; r <= RUNS; r++)); do
    for m in a b c; do
        read -r bytes secs rate < <(fetch_rate "${URL[$m]}")
        [ "$bytes" = "$SIZE" ] || die "${LABEL[$m]}: got $bytes bytes, want $SIZE"
        echo "$rate" >>"$WORK/rate.$m"
        log "round $r ${LABEL[$m]}: $secs s, $rate MB/s"
    done
done
cpu_grpc=$(($(cpu_ticks "${PM_PID[grpc]}") - cpu0_grpc))
cpu_dir=$(($(cpu_ticks "${PM_PID[dir]}") - cpu0_dir))
cpu_ctd=$(($(cpu_ticks "${CTD_PID[n1]}") - cpu0_ctd))
GB_SERVED="$(calc "$RUNS * $SIZE / 1e9")"
declare -A MED
for m in a b c; do MED[$m]="$(median <"$WORK/rate.$m")"; done
RATIO_B="$(calc "${MED[b]} / ${MED[c]}")"
RATIO_A="$(calc "${MED[a]} / ${MED[c]}")"
CPU_GB_GRPC="$(calc "$cpu_grpc / $CLK_TCK / $GB_SERVED")"
CPU_GB_DIR="$(calc "$cpu_dir / $CLK_TCK / $GB_SERVED")"
CPU_GB_CTD="$(calc "$cpu_ctd / $CLK_TCK / $GB_SERVED")"
LOAD_MID="$(loadavg)"
pm_stop grpc
pm_stop dir

# Peak RSS: a fresh process per mode, ROUNDS rounds of CONC concurrent downloads.
# conc_round URL: prints the wall time of CONC concurrent downloads (each checked for size).
conc_round() {
    local url="$1" i pids=() t0 t1
    t0="$(date +%s.%N)"
    for ((i = 0; i < CONC; i++)); do
        curl -s -f -m 120 -o /dev/null -w '%{size_download}\n' "$url" >"$WORK/conc.$i" &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[i]}" || die "concurrent download $i failed ($url)"
        [ "$(cat "$WORK/conc.$i")" = "$SIZE" ] || die "concurrent download $i short"
    done
    t1="$(date +%s.%N)"
    calc "$t1 - $t0"
}

declare -A HWM0 HWM AGG
for mode in grpc dir; do
    pm_start "rss-$mode" n1 "$mode" none
    pm_wait_ready "rss-$mode"
    pid="${PM_PID[rss-$mode]}"
    url="http://${PM_REG[rss-$mode]}/v2/test/big/blobs/$LAYER?$NSQ"
    HWM0[$mode]="$(vm_hwm_kb "$pid")"
    for ((r = 1; r <= ROUNDS; r++)); do
        secs="$(conc_round "$url")"
        calc "$CONC * $SIZE / $secs / 1e6" >>"$WORK/agg.$mode"
        log "rss $mode round $r: $CONC x blob in $secs s, VmHWM $(vm_hwm_kb "$pid") KiB"
    done
    HWM[$mode]="$(vm_hwm_kb "$pid")"
    AGG[$mode]="$(median <"$WORK/agg.$mode")"
    pm_stop "rss-$mode"
done
for ((r = 1; r <= ROUNDS; r++)); do
    secs="$(conc_round "${URL[c]}")"
    calc "$CONC * $SIZE / $secs / 1e6" >>"$WORK/agg.registry"
done
AGG[registry]="$(median <"$WORK/agg.registry")"

met() { if awk "BEGIN { exit !($1) }"; then echo yes; else echo NO; fi; }
# KiB -> "X MB (Y MiB)"
mb() { printf '%s MB (%s MiB)' "$(calc "$1 * 1024 / 1e6")" "$(calc "$1 / 1024")"; }

cat <<EOF

== bench/serve.sh summary ($(date -u +%Y-%m-%dT%H:%MZ)) ==
machine: $(machine_notes)   (load before: $LOAD_START; mid-run: $LOAD_MID)
blob: $LAYER, $SIZE bytes; $RUNS interleaved rounds; MB = 10^6 bytes

| figure | value | target | met? |
|---|---|---|---|
| (a) peermirror gRPC only, median | ${MED[a]} MB/s | | |
| (b) peermirror content dir, median | ${MED[b]} MB/s | | |
| (c) docker-registry, median | ${MED[c]} MB/s | | |
| (b)/(c) | $RATIO_B | >= 1.0 | $(met "$RATIO_B >= 1.0") |
| (a)/(c) | $RATIO_A | >= 0.5 | $(met "$RATIO_A >= 0.5") |
| peak RSS, content dir, $CONC concurrent x $ROUNDS rounds | $(mb "${HWM[dir]}"), idle $(mb "${HWM0[dir]}") | <= 50 MB | $(met "${HWM[dir]} * 1024 <= 50e6") |
| peak RSS, gRPC only, $CONC concurrent x $ROUNDS rounds | $(mb "${HWM[grpc]}"), idle $(mb "${HWM0[grpc]}") | <= 50 MB | $(met "${HWM[grpc]} * 1024 <= 50e6") |
| aggregate, $CONC concurrent, content dir / gRPC / registry | ${AGG[dir]} / ${AGG[grpc]} / ${AGG[registry]} MB/s | | |
| peermirror CPU per GB served, content dir / gRPC | $CPU_GB_DIR / $CPU_GB_GRPC s | | |
| containerd CPU per GB read over gRPC for (a) | $CPU_GB_CTD s | | |

raw MB/s (a): $(paste -sd' ' "$WORK/rate.a")
raw MB/s (b): $(paste -sd' ' "$WORK/rate.b")
raw MB/s (c): $(paste -sd' ' "$WORK/rate.c")
EOF
