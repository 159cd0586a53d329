#!/usr/bin/env bash
# Benchmark "the cost of mTLS": one containerd holding the big fixture image
# (a ~52 MiB incompressible layer) and two peermirror processes reading it from
# the same content dir, one plain HTTP (--auth-mode none), one mTLS
# (--auth-mode mtls, certificates made by `peermirror certs`, CRL loaded):
#   1. throughput: the layer fetched with curl from each (`--cacert --cert --key`
#      for mTLS), RUNS rounds interleaved; medians in MB/s and the ratio mTLS/plain;
#      curl's defaults (HTTP/2 by ALPN, AES-256-GCM) and what containerd
#      negotiates (HTTP/1.1, AES-128-GCM); CPU per GB of server and client.
#      Then the same downloads with examples/bench_tls.rs (MODE=get) as the client, plain and
#      mTLS as containerd negotiates: a lean rustls client whose own decryption does not
#      crowd the server off the two cores as curl's does (curl spends 1-2 CPU-s/GB).
#   2. `ctr images pull` of the image into a fresh containerd through each
#      mirror, PULLS rounds interleaved (what a node actually waits for).
#   3. connection rate on one core: a fresh peermirror pinned to core 0
#      (`taskset`), driven from core 1 by examples/bench_tls.rs: CONNS new
#      connections, CONC at a time, each one `GET /v2/` then close; full mTLS
#      handshakes (no resumption), then with resumption, then plain TCP.
#
#   cargo build --release --bins --example bench_tls && sudo bash bench/tls.sh
#   (RUNS=7 PULLS=5 CONNS=3000 CONC=16 HS_RUNS=3)
#   PERF_DIR=DIR: also `perf record -g` each server during PERF_N (20) lean downloads and
#   leave the top of `perf report` in DIR/{plain,mtls}.txt.
#
# Root; needs containerd, ctr, docker-registry, skopeo, umoci, taskset.
# Only 127.0.0.1; every process is stopped by PID on exit; the temp dir is removed.

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS="${RUNS:-7}"
CONNS="${CONNS:-3000}"
CONC="${CONC:-16}"
HS_RUNS="${HS_RUNS:-3}"
PULLS="${PULLS:-5}"
WARMUP=100
DRIVER="${DRIVER:-$BENCH_ROOT/target/release/examples/bench_tls}"
[ -x "$DRIVER" ] || die "$DRIVER missing: cargo build --release --example bench_tls"
command -v taskset >/dev/null || die "taskset not found (util-linux)"
[ "$(nproc)" -ge 2 ] || die "needs 2 cores (server on core 0, driver on core 1)"

bench_init tls
LOAD_START="$(loadavg)"
log "load before: $LOAD_START"
read -r LAYER SIZE < <(big_layer)
log "big layer $LAYER ($SIZE bytes)"

# Certificates with the real CLI.
PKI="$WORK/pki"
"$PEERMIRROR" certs --dir "$PKI" init-ca >/dev/null
"$PEERMIRROR" certs --dir "$PKI" issue --name node1 --ip 127.0.0.1 >/dev/null
"$PEERMIRROR" certs --dir "$PKI" issue --name client >/dev/null
MTLS_ARGS="--auth-mode mtls --tls-cert $PKI/node1.crt --tls-key $PKI/node1.key --tls-client-ca $PKI/ca.crt --tls-crl $PKI/crl.pem"
CURL_TLS=(--cacert "$PKI/ca.crt" --cert "$PKI/client.crt" --key "$PKI/client.key")

registry_setup
registry_start
registry_push big
ctd_start n1
ctd_pull n1 "127.0.0.1:$REGISTRY_PORT/test/big:v1"

pm_start plain n1 dir none
PM_AUTH_ARGS="$MTLS_ARGS" pm_start mtls n1 dir none
pm_wait_ready plain
pm_wait_ready mtls

NSQ="ns=127.0.0.1:$REGISTRY_PORT"
declare -A URL=(
    [plain]="http://${PM_REG[plain]}/v2/test/big/blobs/$LAYER?$NSQ"
    [mtls]="https://${PM_REG[mtls]}/v2/test/big/blobs/$LAYER?$NSQ"
    [mtls11]="https://${PM_REG[mtls]}/v2/test/big/blobs/$LAYER?$NSQ"
)
MODES=(plain mtls mtls11 plainr mtlsr)
BLOB_PATH="/v2/test/big/blobs/$LAYER?$NSQ"
# fetch MODE [curl args...]: one curl download of the layer.
#   plain:  HTTP/1.1, no TLS
#   mtls:   curl's defaults against the TLS endpoint: ALPN picks HTTP/2, OpenSSL
#           prefers TLS_AES_256_GCM_SHA384
#   mtls11: HTTP/1.1 and TLS_AES_128_GCM_SHA256, what containerd (ctr) negotiated
#           with peermirror in tests/e2e_security.rs (rustls logs the suite)
#   plainr: examples/bench_tls.rs (MODE=get) over plain HTTP/1.1
#   mtlsr:  examples/bench_tls.rs over mTLS, HTTP/1.1 and TLS_AES_128_GCM_SHA256 only
# (with -o FILE for the correctness check; the timed rounds print "bytes secs").
fetch() {
    local m="$1"
    shift
    case "$m" in
    plainr | mtlsr)
        local env_args=(MODE=get ADDR="${PM_REG[plain]}" REQ_PATH="$BLOB_PATH")
        [ "$m" = mtlsr ] && env_args=(MODE=get ADDR="${PM_REG[mtls]}" REQ_PATH="$BLOB_PATH"
            CA="$PKI/ca.crt" CERT="$PKI/client.crt" KEY="$PKI/client.key")
        # "-o FILE" keeps the body (checked below); the timed rounds pass -o /dev/null.
        if [ "${1:-}" = -o ] && [ "$2" != /dev/null ]; then
            env "${env_args[@]}" OUT="$2" "$DRIVER" >/dev/null
        else
            env "${env_args[@]}" "$DRIVER"
        fi
        return
        ;;
    esac
    local extra=()
    [ "$m" = mtls ] && extra=("${CURL_TLS[@]}")
    [ "$m" = mtls11 ] && extra=("${CURL_TLS[@]}" --http1.1 --tls13-ciphers TLS_AES_128_GCM_SHA256)
    curl -s -f -m 120 "${extra[@]}" "$@" "${URL[$m]}"
}

# Correctness first (and warms the page cache).
for m in "${MODES[@]}"; do
    fetch "$m" -o "$WORK/blob" || die "$m: download failed"
    got="sha256:$(sha256sum "$WORK/blob" | cut -d' ' -f1)"
    [ "$got" = "$LAYER" ] || die "$m: wrong digest $got"
    rm -f "$WORK/blob"
done
# And mTLS really is required: no client certificate, no blob.
if curl -s -f -m 10 --cacert "$PKI/ca.crt" -o /dev/null "${URL[mtls]}"; then
    die "the mTLS endpoint served a client without a certificate"
fi
log "both endpoints return the verified blob; the mTLS one refuses certificate-less clients"

# Per download: MB/s, and CPU of the serving peermirror (clock ticks, summed per
# mode) and of curl (user + sys from bash's `time`, summed per mode).
declare -A SRV_TICKS=() CLI_CPU=()
for m in "${MODES[@]}"; do SRV_TICKS[$m]=0 CLI_CPU[$m]=0; done
TIMEFORMAT='%3U %3S'
for ((r = 1; r <= RUNS; r++)); do
    for m in "${MODES[@]}"; do
        pid="${PM_PID[plain]}"
        case "$m" in mtls*) pid="${PM_PID[mtls]}" ;; esac
        c0="$(cpu_ticks "$pid")"
        { time fetch "$m" -o /dev/null -w '%{size_download} %{time_total}\n' >"$WORK/fetch.out"; } 2>"$WORK/fetch.time"
        c1="$(cpu_ticks "$pid")"
        read -r bytes secs <"$WORK/fetch.out"
        read -r cu cs <"$WORK/fetch.time"
        [ "$bytes" = "$SIZE" ] || die "$m: got $bytes bytes, want $SIZE"
        rate="$(calc "$bytes / $secs / 1e6")"
        echo "$rate" >>"$WORK/rate.$m"
        SRV_TICKS[$m]=$((SRV_TICKS[$m] + c1 - c0))
        CLI_CPU[$m]="$(calc "${CLI_CPU[$m]} + $cu + $cs")"
        log "round $r $m: $secs s, $rate MB/s (curl CPU $cu+$cs s)"
    done
done
GB_SERVED="$(calc "$RUNS * $SIZE / 1e9")"
declare -A MED SRV_GB CLI_GB
for m in "${MODES[@]}"; do
    MED[$m]="$(median <"$WORK/rate.$m")"
    SRV_GB[$m]="$(calc "${SRV_TICKS[$m]} / $CLK_TCK / $GB_SERVED")"
    CLI_GB[$m]="$(calc "${CLI_CPU[$m]} / $GB_SERVED")"
done
RATIO="$(calc "${MED[mtls]} / ${MED[plain]}")"
RATIO11="$(calc "${MED[mtls11]} / ${MED[plain]}")"
RATIO_R="$(calc "${MED[mtlsr]} / ${MED[plainr]}")"
LOAD_MID="$(loadavg)"

# Profiles: each server recorded while it serves PERF_N lean downloads.
if [ -n "${PERF_DIR:-}" ]; then
    command -v perf >/dev/null || die "perf not found"
    mkdir -p "$PERF_DIR"
    for m in plain mtls; do
        perf record -q -g -o "$WORK/perf.$m.data" -p "${PM_PID[$m]}" 2>/dev/null &
        perf_pid=$!
        sleep 0.5
        for ((i = 0; i < ${PERF_N:-20}; i++)); do fetch "${m}r" >/dev/null; done
        kill -INT "$perf_pid"
        wait "$perf_pid" || true
        perf report -i "$WORK/perf.$m.data" --no-children --percent-limit 1 --stdio -g none \
            --sort symbol 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40 >"$PERF_DIR/$m.txt"
        log "profile of the $m server: $PERF_DIR/$m.txt"
    done
fi

# What containerd sees: `ctr images pull` of the image into a fresh containerd
# through each mirror (hosts.toml by `peermirror configure`; the upstream stays
# up and must serve nothing of the layer), PULLS rounds interleaved.
"$PEERMIRROR" configure --config-path "$WORK/hosts-plain" --mirror "http://${PM_REG[plain]}" \
    --registry "http://127.0.0.1:$REGISTRY_PORT" >/dev/null
"$PEERMIRROR" configure --config-path "$WORK/hosts-mtls" --mirror "https://${PM_REG[mtls]}" \
    --registry "http://127.0.0.1:$REGISTRY_PORT" --ca-file "$PKI/ca.crt" \
    --client-cert "$PKI/client.crt" --client-key "$PKI/client.key" >/dev/null
EGRESS0="$(registry_egress_bytes)"
for ((r = 1; r <= PULLS; r++)); do
    for m in plain mtls; do
        ctd_start "pull-$m-$r"
        t0="$(date +%s.%N)"
        ctd_ctr "pull-$m-$r" images pull --snapshotter native --hosts-dir "$WORK/hosts-$m" \
            "127.0.0.1:$REGISTRY_PORT/test/big:v1" >/dev/null || die "pull through $m failed"
        t1="$(date +%s.%N)"
        calc "$t1 - $t0" >>"$WORK/pull.$m"
        log "pull round $r $m: $(calc "$t1 - $t0") s"
        ctd_stop "pull-$m-$r"
    done
done
EGRESS="$(($(registry_egress_bytes) - EGRESS0))"
[ "$EGRESS" -lt "$SIZE" ] || die "the upstream served the layer during the pulls ($EGRESS bytes)"
PULL_PLAIN="$(median <"$WORK/pull.plain")"
PULL_MTLS="$(median <"$WORK/pull.mtls")"
pm_stop plain
pm_stop mtls

# Connection rate: a fresh peermirror per mode, every thread pinned to core 0;
# the driver pinned to core 1. The server's CPU use is measured over the timed part.
# hs_run NAME MODE: appends "rate p50 p99 cpu_util" to $WORK/hs.NAME
hs_run() {
    local name="$1" mode="$2" pid line cpu0 cpu1 t0 t1 env_args=()
    case "$mode" in
    mtls | resume) PM_AUTH_ARGS="$MTLS_ARGS" pm_start "hs-$name" n1 dir none ;;
    plain) pm_start "hs-$name" n1 dir none ;;
    esac
    pm_wait_ready "hs-$name"
    pid="${PM_PID[hs-$name]}"
    taskset -a -p -c 0 "$pid" >/dev/null
    env_args=(ADDR="${PM_REG[hs-$name]}" CONNS="$CONNS" CONC="$CONC" WARMUP="$WARMUP")
    if [ "$mode" != plain ]; then
        env_args+=(CA="$PKI/ca.crt" CERT="$PKI/client.crt" KEY="$PKI/client.key")
    fi
    [ "$mode" = resume ] && env_args+=(RESUME=1)
    cpu0="$(cpu_ticks "$pid")"
    t0="$(date +%s.%N)"
    line="$(env "${env_args[@]}" taskset -c 1 "$DRIVER")" || die "driver failed ($name)"
    t1="$(date +%s.%N)"
    cpu1="$(cpu_ticks "$pid")"
    log "connections $name: $line (server CPU $(calc "($cpu1 - $cpu0) / $CLK_TCK") s in $(calc "$t1 - $t0") s)"
    case "$line" in *" failed=0 "*) ;; *) die "connections failed: $line" ;; esac
    # The driver's own figures, how busy the server's core was, and the server's
    # capacity: connections (warm-up included) per CPU-second it spent on them.
    awk -v util="$(calc "($cpu1 - $cpu0) / $CLK_TCK / ($t1 - $t0)")" \
        -v cap="$(calc "($CONNS + $WARMUP) / (($cpu1 - $cpu0) / $CLK_TCK)")" '{
        for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        print v["rate"], v["p50_ms"], v["p99_ms"], util, cap }' <<<"$line" >>"$WORK/hs.$name"
    pm_stop "hs-$name"
}
for ((r = 1; r <= HS_RUNS; r++)); do
    hs_run mtls mtls
    hs_run resume resume
    hs_run plain plain
done
declare -A HS_RATE HS_P50 HS_P99 HS_UTIL HS_CAP
for n in mtls resume plain; do
    HS_RATE[$n]="$(awk '{ print $1 }' "$WORK/hs.$n" | median)"
    HS_P50[$n]="$(awk '{ print $2 }' "$WORK/hs.$n" | median)"
    HS_P99[$n]="$(awk '{ print $3 }' "$WORK/hs.$n" | median)"
    HS_UTIL[$n]="$(awk '{ print $4 }' "$WORK/hs.$n" | median)"
    HS_CAP[$n]="$(awk '{ print $5 }' "$WORK/hs.$n" | median)"
done
LOAD_END="$(loadavg)"

met() { if awk "BEGIN { exit !($1) }"; then echo yes; else echo NO; fi; }

cat <<EOF

== bench/tls.sh summary ($(date -u +%Y-%m-%dT%H:%MZ)) ==
machine: $(machine_notes)   (load before: $LOAD_START; mid-run: $LOAD_MID; end: $LOAD_END)
blob: $LAYER, $SIZE bytes; $RUNS interleaved rounds; MB = 10^6 bytes
connections: $CONNS per run, $CONC concurrent, $HS_RUNS runs per mode; server on core 0, driver on core 1

| figure | value | target | met? |
|---|---|---|---|
| plain HTTP, median | ${MED[plain]} MB/s | | |
| mTLS, curl defaults (HTTP/2, AES-256-GCM), median | ${MED[mtls]} MB/s | | |
| mTLS (curl defaults) / plain | $RATIO | >= 0.7 | $(met "$RATIO >= 0.7") |
| mTLS, HTTP/1.1 + AES-128-GCM (as containerd), median | ${MED[mtls11]} MB/s | | |
| mTLS (as containerd) / plain | $RATIO11 | >= 0.7 | $(met "$RATIO11 >= 0.7") |
| peermirror CPU per GB served: plain / mTLS defaults / mTLS as containerd | ${SRV_GB[plain]} / ${SRV_GB[mtls]} / ${SRV_GB[mtls11]} s | | |
| curl (the client) CPU per GB: plain / mTLS defaults / mTLS as containerd | ${CLI_GB[plain]} / ${CLI_GB[mtls]} / ${CLI_GB[mtls11]} s | | |
| lean client (bench_tls MODE=get): plain, median | ${MED[plainr]} MB/s | | |
| lean client: mTLS as containerd, median | ${MED[mtlsr]} MB/s | | |
| lean client: mTLS / plain | $RATIO_R | >= 0.7 | $(met "$RATIO_R >= 0.7") |
| peermirror CPU per GB served to the lean client: plain / mTLS | ${SRV_GB[plainr]} / ${SRV_GB[mtlsr]} s | mTLS <= 0.6 | $(met "${SRV_GB[mtlsr]} <= 0.6") |
| lean client CPU per GB: plain / mTLS | ${CLI_GB[plainr]} / ${CLI_GB[mtlsr]} s | | |
| \`ctr images pull\` through the mirror, plain / mTLS, median | $PULL_PLAIN / $PULL_MTLS s (ratio $(calc "$PULL_MTLS / $PULL_PLAIN")) | | |
| new mTLS connections/s (full handshake + GET /v2/), server on one core, driven from the other | ${HS_RATE[mtls]} (p50 ${HS_P50[mtls]} ms, p99 ${HS_P99[mtls]} ms; server core busy ${HS_UTIL[mtls]}) | | |
| server capacity: full mTLS connections per CPU-second | ${HS_CAP[mtls]} | | |
| same with TLS 1.3 session resumption: rate / capacity | ${HS_RATE[resume]} / ${HS_CAP[resume]} (p50 ${HS_P50[resume]} ms; busy ${HS_UTIL[resume]}) | | |
| plain TCP connection + GET /v2/: rate / capacity | ${HS_RATE[plain]} / ${HS_CAP[plain]} (p50 ${HS_P50[plain]} ms; busy ${HS_UTIL[plain]}) | | |

raw MB/s plain: $(paste -sd' ' "$WORK/rate.plain")
raw MB/s mTLS (curl defaults): $(paste -sd' ' "$WORK/rate.mtls")
raw MB/s mTLS (as containerd): $(paste -sd' ' "$WORK/rate.mtls11")
raw MB/s lean client plain: $(paste -sd' ' "$WORK/rate.plainr")
raw MB/s lean client mTLS: $(paste -sd' ' "$WORK/rate.mtlsr")
raw pull s plain: $(paste -sd' ' "$WORK/pull.plain")
raw pull s mTLS:  $(paste -sd' ' "$WORK/pull.mtls")
raw conn/s mTLS (full): $(awk '{ print $1 }' "$WORK/hs.mtls" | paste -sd' ')
raw conn/s mTLS (resumed): $(awk '{ print $1 }' "$WORK/hs.resume" | paste -sd' ')
raw conn/s plain: $(awk '{ print $1 }' "$WORK/hs.plain" | paste -sd' ')
EOF
