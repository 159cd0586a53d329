#!/usr/bin/env bash
# Benchmark "big blob between peers" with real containerd and the release binary (issue 9).
#
#   cargo build --release && sudo bash bench/bigblob.sh
#
# A random SIZE_MB blob (default 4096: AES-256-CTR of zeros, made here, removed on exit) is
# imported into node 1's containerd as the only layer of an image; node 2 (empty containerd)
# fetches it through its peermirror, i.e. from node 1 over the peer path, verified.
# Reported: time to first byte at node 2 (cold: node 1 has never hashed the blob), total time
# and MB/s, the CPU-seconds per GB and peak RSS of the relaying node (node 2: fetch, verify,
# spool, serve; issue 13's figure) and of the serving node (node 1), and whether the bytes
# hashed to the digest. Target: first byte under 1 s. PERF=1 profiles node 2 (perf record).
# CLIENT=null: curl discards the bytes (a client faster than the relay; the digest is then
# node 2's own check: a mismatch breaks the body and curl fails).
#
# Root; needs containerd, ctr, curl, openssl (scripts/install-deps.sh). Only 127.0.0.1; every
# process is stopped by PID on exit; the temp dir (with the blob) is removed.

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZE_MB="${SIZE_MB:-4096}"
REF="bench.local/bench/big:v1"

bench_init bigblob
command -v openssl >/dev/null || die "openssl not found"

# --- the blob, as an OCI layout imported into node 1's containerd ---------------------------
layout="$WORK/layout"
mkdir -p "$layout/blobs/sha256"
log "making a ${SIZE_MB} MB random blob"
random_file "$WORK/blob" "$SIZE_MB" peermirror-bigblob
size="$(stat -c %s "$WORK/blob")"
hex="$(sha256sum "$WORK/blob" | cut -d' ' -f1)"
mv "$WORK/blob" "$layout/blobs/sha256/$hex"
oci_layout_image "$layout" "$hex" "$size" \
    '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' "$REF"

ctd_start n1
ctd_start n2
log "importing into node 1's containerd"
tar -C "$layout" -cf - . | ctd_ctr n1 images import --no-unpack --all-platforms --index-name "$REF" - >/dev/null
rm -rf "$layout"
ctd_ctr n1 images ls -q | grep -q "bench/big" || die "import did not create the image"

pm_start n1 n1 dir none
pm_wait_ready n1
pm_start n2 n2 dir n1
pm_wait_ready n2
# Let node 1 index and advertise; no HEAD through node 2 (it would make node 1 hash the blob
# today and warm the GET).
sleep 5

url="http://${PM_REG[n2]}/v2/bench/big/blobs/sha256:$hex?ns=bench.local"
cpu0="$(cpu_ticks "${PM_PID[n1]}")"
relay0="$(cpu_ticks "${PM_PID[n2]}")"
perf_pid=""
if [ "${PERF:-0}" = 1 ] && command -v perf >/dev/null 2>&1; then
    # Profile of the relaying node (node 2) during the GET (PERF=1).
    perf record -q -F "${PERF_FREQ:-499}" -g -o "$WORK/perf.n2.data" -p "${PM_PID[n2]}" >/dev/null 2>&1 &
    perf_pid=$!
    track "$perf_pid"
    sleep 0.5
fi
LOAD_START="$(loadavg)"
log "GET through node 2: $url (load $LOAD_START)"
if [ "${CLIENT:-}" = null ]; then
    # A fast client: the bytes are dropped, and node 2's own check stands for the digest (a
    # mismatch breaks the body before its last byte, and curl fails).
    curl -s -f -o /dev/null -w '%{http_code} %{time_starttransfer} %{time_total} %{size_download}\n' \
        "$url" >"$WORK/timing" && echo "$hex" >"$WORK/got" || true
else
    curl -s -f -o >(sha256sum | cut -d' ' -f1 >"$WORK/got") \
        -w '%{http_code} %{time_starttransfer} %{time_total} %{size_download}\n' \
        "$url" >"$WORK/timing" || true
fi
for ((i = 0; i < 100; i++)); do
    [ -s "$WORK/got" ] && break
    sleep 0.1
done
cpu1="$(cpu_ticks "${PM_PID[n1]}")"
relay1="$(cpu_ticks "${PM_PID[n2]}")"
LOAD_END="$(loadavg)"
if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    untrack "$perf_pid"
    perf report -i "$WORK/perf.n2.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
        grep -E '^ +[0-9]' | head -n 30 >"$WORK/perf.n2.top" || true
    log "perf top symbols of node 2 while relaying:"
    cut -c1-120 "$WORK/perf.n2.top" >&2
fi
read -r code ttfb total bytes <"$WORK/timing"
got="$(cat "$WORK/got")"
hwm="$(vm_hwm_kb "${PM_PID[n1]}")"
cpu_s="$(calc "($cpu1 - $cpu0) / $CLK_TCK")"
echo "size_bytes=$size status=$code bytes=$bytes"
echo "ttfb_s=$ttfb total_s=$total mb_per_s=$(calc "$bytes / $total / 1e6")"
relay_s="$(calc "($relay1 - $relay0) / $CLK_TCK")"
echo "load_start=\"$LOAD_START\" load_end=\"$LOAD_END\""
echo "relaying_cpu_s=$relay_s relaying_cpu_s_per_gb=$(calc "$relay_s / ($size / 1e9)") relaying_peak_rss_mb=$(calc "$(vm_hwm_kb "${PM_PID[n2]}") / 1024")"
echo "serving_cpu_s=$cpu_s serving_cpu_s_per_gb=$(calc "$cpu_s / ($size / 1e9)") serving_peak_rss_mb=$(calc "$hwm / 1024")"
if [ "$got" = "$hex" ] && [ "$bytes" = "$size" ]; then
    echo "verified=yes"
else
    echo "verified=NO (got sha256:$got, want sha256:$hex)"
    exit 1
fi
