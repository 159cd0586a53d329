#!/usr/bin/env bash
# Soak (issue 12, part 4): three nodes (containerd 1.6 + peermirror each) in `mtls+token`
# mode under mixed load for DURATION seconds (default 30 min):
#   - pulls of the fixture images on nodes n2 and n3 through their mirrors (n1 holds every
#     image; the puller deletes the image again with `ctr images rm --sync`, so the next pull
#     goes through the peers once more);
#   - misses (unknown digests and tags) and bad requests (malformed paths and digests, wrong,
#     expired and missing tokens, bad ranges, no client certificate, revoked certificates);
#   - token rotations: the daemons mint containerd's and their peer tokens with
#     --token-ttl TOKEN_TTL (replaced at half of it) and rewrite hosts.toml; the load
#     generator's own token is re-issued every ROTATE_EVERY seconds;
#   - CRL swaps every CRL_EVERY seconds: a spare client certificate is revoked and the CRL
#     file the daemons read is replaced (new inode, like a Secret update); the spare must be
#     accepted before and refused after; once, a broken CRL is written first (the daemons
#     must keep the previous one);
#   - one containerd restart (n2's) at half time.
# Every SAMPLE seconds, per node: VmRSS and open fds of peermirror, and WARN/ERROR log lines
# counted by message. At the end: no panics, no dead daemon, no failed pull, every bad
# request refused, RSS and fds flat (the last sample within RSS_SLACK_PCT % / FD_SLACK fds of
# the sample at BASE_AT seconds), and no WARN/ERROR line outside EXPECTED below.
#
#   cargo build --release --bin peermirror && sudo bash bench/soak.sh
#   (DURATION=1800 SAMPLE=60 BASE_AT=300 TOKEN_TTL=2m CRL_EVERY=300 ROTATE_EVERY=300)
#
# Root; needs containerd, ctr, docker-registry, skopeo, umoci, curl, jq. Only 127.0.0.1; every
# process is stopped by PID on exit; every loop is bounded; the temp dir is removed
# (BENCH_KEEP=1 keeps it, with the logs and samples).

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-1800}"
SAMPLE="${SAMPLE:-60}"
BASE_AT="${BASE_AT:-300}"
TOKEN_TTL="${TOKEN_TTL:-2m}"
CRL_EVERY="${CRL_EVERY:-300}"
ROTATE_EVERY="${ROTATE_EVERY:-300}"
PAUSE="${PAUSE:-2}"
RSS_SLACK_PCT="${RSS_SLACK_PCT:-20}"
FD_SLACK="${FD_SLACK:-10}"
IMAGES=(small multi multiarch big)
NODES=(n1 n2 n3)
PULLERS=(n2 n3)
# WARN/ERROR lines the soak provokes on purpose ("NODE TARGET MESSAGE", extended regexes).
EXPECTED=(
    # no client certificate, a revoked one (the refused bad requests)
    '^n[123] audit TLS handshake refused$'
    # the broken CRL written once on purpose
    '^n[123] peermirror::tls TLS files changed but do not load; keeping the previous material$'
    # n2's containerd restart
    '^n2 peermirror::content::indexer content source not ready$'
    # n1 starts first, with no one to bootstrap from
    '^n1 libp2p_kad::behaviour Failed to trigger bootstrap: No known peers\.$'
)

[ "$BASE_AT" -lt "$DURATION" ] || die "BASE_AT ($BASE_AT) must be below DURATION ($DURATION)"
bench_init soak
log "load before: $(loadavg)"
NICE=(nice -n 10)

# --- PKI, CRL, signing key -----------------------------------------------------------
PKI="$WORK/pki"
pmc() { "$PEERMIRROR" certs --dir "$PKI" "$@" >/dev/null; }
pmc init-ca
for n in "${NODES[@]}"; do pmc issue --name "$n" --ip 127.0.0.1; done
pmc issue --name client
SPARES=$((DURATION / CRL_EVERY + 1))
for ((k = 1; k <= SPARES; k++)); do pmc issue --name "spare$k"; done
CRL="$WORK/crl/crl.pem"
mkdir -p "$WORK/crl"
cp "$PKI/crl.pem" "$CRL"
PSK="$WORK/swarm.key"
printf '/key/swarm/psk/1.0.0/\n/base16/\n%s\n' "$(head -c 32 /dev/urandom | sha256sum | cut -d' ' -f1)" >"$PSK"
KEY="$WORK/signing.key"
head -c 48 /dev/urandom >"$KEY"
chmod 600 "$KEY"
# replace FILE SRC: a new inode renamed into place, as a Secret update does.
replace() {
    cp "$2" "$1.tmp"
    mv -f "$1.tmp" "$1"
}
issue_token() { "$PEERMIRROR" token issue --key "$KEY" --ttl "$1" --subject "$2"; }
TOKEN="$(issue_token 10m soak-load)"
EXPIRED="$(issue_token 1s soak-expired)"
EXPIRED_AT="$(date +%s)" # + 1 s TTL + the 5 s leeway the daemons allow for clock skew

# --- upstream, containerd, peermirror ------------------------------------------------
registry_setup
registry_start
for i in "${IMAGES[@]}"; do registry_push "$i"; done
for n in "${NODES[@]}"; do ctd_start "$n"; done
for i in "${IMAGES[@]}"; do ctd_pull n1 "127.0.0.1:$REGISTRY_PORT/test/$i:v1"; done

pm_node() {
    local n="$1" boot="$2"
    PM_AUTH_ARGS="--auth-mode mtls+token --tls-cert $PKI/$n.crt --tls-key $PKI/$n.key
--tls-client-ca $PKI/ca.crt --tls-crl $CRL --token-signing-key $KEY --token-ttl $TOKEN_TTL
--hosts-dir $WORK/hosts-$n --p2p-psk-file $PSK"
    PM_AUTH_ARGS="${PM_AUTH_ARGS//$'\n'/ }" pm_start "$n" "$n" dir "$boot" --log-format json
}
echo "not-a-valid-token" >"$WORK/placeholder"
pm_node n1 none
pm_wait_ready n1 30
pm_node n2 n1
pm_node n3 n1
for n in "${NODES[@]}"; do
    "$PEERMIRROR" configure --config-path "$WORK/hosts-$n" --mirror "https://${PM_REG[$n]}" \
        --registry "http://127.0.0.1:$REGISTRY_PORT" --ca-file "$PKI/ca.crt" \
        --client-cert "$PKI/$n.crt" --client-key "$PKI/$n.key" \
        --token-file "$WORK/placeholder" >/dev/null
done
for n in n2 n3; do pm_wait_ready "$n" 60; done

# auth_header NODE: the Authorization header hosts.toml gives containerd.
auth_header() {
    grep -h -o '"Bearer [^"]*"' "$WORK/hosts-$1/127.0.0.1:$REGISTRY_PORT/hosts.toml" 2>/dev/null || true
}
for n in "${NODES[@]}"; do
    for ((i = 0; i < 150; i++)); do
        case "$(auth_header "$n")" in '"Bearer ey'*) break ;; esac
        sleep 0.1
    done
    case "$(auth_header "$n")" in '"Bearer ey'*) ;; *) die "$n never wrote its minted token into hosts.toml" ;; esac
done
EGRESS0="$(registry_egress_bytes)"
# On a quiet machine the nodes are up within seconds: the "expired" token must have expired.
wait_s=$((EXPIRED_AT + 8 - $(date +%s)))
[ "$wait_s" -gt 0 ] && sleep "$wait_s"
log "three nodes ready; soak for ${DURATION}s"

# --- requests --------------------------------------------------------------------------
NSQ="ns=127.0.0.1:$REGISTRY_PORT"
SMALL_LAYER="$(jq -r '.manifests[0].digest' "$FIXTURES/small/index.json")"
SMALL_LAYER="$(jq -r '.layers[0].digest' "$FIXTURES/small/blobs/sha256/${SMALL_LAYER#sha256:}")"
# req NODE CERT TOKEN PATH [curl args...]: prints the status code (000: refused in the handshake).
req() {
    local n="$1" cert="$2" tok="$3" path="$4" args=(--cacert "$PKI/ca.crt")
    shift 4
    [ "$cert" = none ] || args+=(--cert "$PKI/$cert.crt" --key "$PKI/$cert.key")
    [ "$tok" = none ] || args+=(-H "Authorization: Bearer $tok")
    "${NICE[@]}" curl -s -o /dev/null -m 10 -w '%{http_code}' "${args[@]}" "$@" \
        "https://${PM_REG[$n]}$path" || true
}
declare -A COUNT=() BAD=()
# expect LABEL CODES CODE: counts LABEL, and a failure when CODE is not one of CODES.
expect() {
    COUNT[$1]=$((${COUNT[$1]:-0} + 1))
    case " $2 " in
        *" $3 "*) ;;
        *)
            BAD[$1]=$((${BAD[$1]:-0} + 1))
            log "unexpected: $1 answered $3 (want one of: $2)"
            ;;
    esac
}
rand_digest() { echo "sha256:$(head -c 32 /dev/urandom | sha256sum | cut -d' ' -f1)"; }

# One round of misses and bad requests against NODE.
hostile_round() {
    local n="$1" blob="/v2/test/small/blobs/$SMALL_LAYER?$NSQ"
    expect ok 200 "$(req "$n" client "$TOKEN" "$blob")"
    expect miss-blob 404 "$(req "$n" client "$TOKEN" "/v2/test/small/blobs/$(rand_digest)?$NSQ")"
    expect miss-tag 404 "$(req "$n" client "$TOKEN" "/v2/test/nothing/manifests/v9?$NSQ")"
    expect bad-digest "400 404" "$(req "$n" client "$TOKEN" "/v2/test/small/blobs/sha256:zz?$NSQ")"
    expect bad-path "400 404" "$(req "$n" client "$TOKEN" "/v2/test/..%2f..%2fetc/blobs/$SMALL_LAYER?$NSQ")"
    expect bad-path "400 404" "$(req "$n" client "$TOKEN" "/v3/$(head -c 300 /dev/zero | tr '\0' a)")"
    # A blob is named by its digest: an unreadable ns= changes nothing about it.
    expect bad-ns "200 400 404" "$(req "$n" client "$TOKEN" "/v2/test/small/blobs/$SMALL_LAYER?ns=%zz")"
    expect bad-range "200 400 416" "$(req "$n" client "$TOKEN" "$blob" -H 'Range: bytes=zz-1')"
    expect bad-range 416 "$(req "$n" client "$TOKEN" "$blob" -H 'Range: bytes=999999999-')"
    expect wrong-token 401 "$(req "$n" client "$TOKEN.x" "$blob")"
    expect wrong-token 401 "$(req "$n" client "not-a-token" "$blob")"
    expect expired-token 401 "$(req "$n" client "$EXPIRED" "$blob")"
    expect no-token 401 "$(req "$n" client none "$blob")"
    expect no-cert 000 "$(req "$n" none "$TOKEN" "$blob")"
    local k
    for ((k = 1; k < SPARE_NEXT; k++)); do
        expect revoked-cert 000 "$(req "$n" "spare$k" "$TOKEN" "$blob")"
    done
}

PULL_OK=0
PULL_FAIL=0
declare -A PULL_SECS=()
pull_round() {
    local n="$1" img="$2" ref="127.0.0.1:$REGISTRY_PORT/test/$2:v1" t0 t1
    t0="$(date +%s.%N)"
    if "${NICE[@]}" timeout 120 ctr --address "${CTD_SOCK[$n]}" --connect-timeout 5s -n "$NS" \
        images pull --snapshotter native --hosts-dir "$WORK/hosts-$n" "$ref" >/dev/null 2>"$WORK/pull.err"; then
        t1="$(date +%s.%N)"
        PULL_OK=$((PULL_OK + 1))
        calc "$t1 - $t0" >>"$WORK/pull-secs.$img"
    else
        PULL_FAIL=$((PULL_FAIL + 1))
        log "pull of $img on $n failed: $(tail -n 3 "$WORK/pull.err")"
    fi
    ctd_ctr "$n" images rm --sync "$ref" >/dev/null 2>&1 || true
}

# --- CRL swaps -------------------------------------------------------------------------
SPARE_NEXT=1
CRL_SWAPS=0
BROKEN_DONE=0
crl_swap() {
    local k="$SPARE_NEXT" n i refused
    for n in "${NODES[@]}"; do
        expect spare-before 200 "$(req "$n" "spare$k" "$TOKEN" "/v2/test/small/blobs/$SMALL_LAYER?$NSQ")"
    done
    if [ "$BROKEN_DONE" = 0 ]; then
        # A half-written CRL: the daemons keep the previous one and go on serving.
        head -c 100 "$CRL" >"$WORK/broken.pem"
        replace "$CRL" "$WORK/broken.pem"
        sleep 3
        for n in "${NODES[@]}"; do
            expect broken-crl-kept 200 "$(req "$n" client "$TOKEN" "/v2/test/small/blobs/$SMALL_LAYER?$NSQ")"
        done
        BROKEN_DONE=1
    fi
    pmc revoke --name "spare$k"
    replace "$CRL" "$PKI/crl.pem"
    SPARE_NEXT=$((k + 1))
    CRL_SWAPS=$((CRL_SWAPS + 1))
    for n in "${NODES[@]}"; do
        refused=0
        for ((i = 0; i < 150; i++)); do
            [ "$(req "$n" "spare$k" "$TOKEN" "/v2/")" = 000 ] && refused=1 && break
            sleep 0.1
        done
        [ "$refused" = 1 ] || {
            BAD[crl-swap]=$((${BAD[crl-swap]:-0} + 1))
            log "$n still accepts spare$k 15 s after the CRL swap"
        }
    done
    log "CRL swap $CRL_SWAPS: spare$k revoked"
}

# --- containerd restart ------------------------------------------------------------------
CTD_RESTART_SECS=""
CTD_DOWN_SEEN=""
ctd_restart() {
    local n="$1" t0 i
    t0="$(date +%s.%N)"
    stop_pid "${CTD_PID[$n]}"
    untrack "${CTD_PID[$n]}"
    # Does the node notice? (readiness should drop while its containerd is gone)
    CTD_DOWN_SEEN="not within 5 s"
    for ((i = 0; i < 50; i++)); do
        [ "$(http_code "http://${PM_MET[$n]}/readyz")" = 200 ] || {
            CTD_DOWN_SEEN="after $(calc "$(date +%s.%N) - $t0") s"
            break
        }
        sleep 0.1
    done
    cp "$WORK/ctd-$n/containerd.log" "$WORK/ctd-$n/containerd.log.1"
    ctd_start "$n"
    for ((i = 0; i < 600; i++)); do
        [ "$(http_code "http://${PM_MET[$n]}/readyz")" = 200 ] && break
        sleep 0.1
    done
    [ "$(http_code "http://${PM_MET[$n]}/readyz")" = 200 ] || die "$n not ready 60 s after its containerd restarted"
    CTD_RESTART_SECS="$(calc "$(date +%s.%N) - $t0")"
    log "containerd of $n restarted; readiness dropped $CTD_DOWN_SEEN; ready again after ${CTD_RESTART_SECS}s"
    pull_round "$n" small
}

# --- sampling ------------------------------------------------------------------------------
SAMPLES="$WORK/samples.tsv"
printf 'sec\tnode\trss_kb\tfds\twarn\terror\trequests\trotations\tdata_kb\n' >"$SAMPLES"
declare -A LAST_HDR=() ROTATIONS=()
for n in "${NODES[@]}"; do
    LAST_HDR[$n]="$(auth_header "$n")"
    ROTATIONS[$n]=0
done
# levels NODE: "WARN-count ERROR-count audit-request-count" of its log so far.
levels() {
    jq -R -r 'fromjson? | if .target == "audit" and .fields.message == "request" then "REQ" else .level end' \
        "${PM_LOG[$1]}" | awk '$1 == "WARN" { w++ } $1 == "ERROR" { e++ } $1 == "REQ" { r++ }
            END { printf "%d %d %d\n", w, e, r }'
}
sample() {
    local sec="$1" n pid rss fds hdr
    for n in "${NODES[@]}"; do
        pid="${PM_PID[$n]}"
        kill -0 "$pid" 2>/dev/null || die "peermirror $n (pid $pid) died: $(tail -n 5 "${PM_LOG[$n]}")"
        rss="$(vm_rss_kb "$pid")"
        fds="$(ls "/proc/$pid/fd" | wc -l)"
        hdr="$(auth_header "$n")"
        if [ "$hdr" != "${LAST_HDR[$n]}" ]; then
            ROTATIONS[$n]=$((ROTATIONS[$n] + 1))
            LAST_HDR[$n]="$hdr"
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sec" "$n" "$rss" "$fds" "$(levels "$n" | tr ' ' '\t')" \
            "${ROTATIONS[$n]}" "$(du -sk "$WORK/pm-$n/data" | cut -f1)" >>"$SAMPLES"
    done
    log "t=${sec}s $(awk -v s="$sec" '$1 == s { printf "%s rss=%.1fMiB fds=%s warn=%s; ", $2, $3 / 1024, $4, $5 }' "$SAMPLES")pulls ok=$PULL_OK fail=$PULL_FAIL"
}

# --- the soak --------------------------------------------------------------------------------
START="$(date +%s)"
END=$((START + DURATION))
NEXT_SAMPLE=$START
NEXT_CRL=$((START + CRL_EVERY / 2))
NEXT_ROTATE=$((START + ROTATE_EVERY))
RESTART_AT=$((START + DURATION / 2))
RESTARTED=0
ROUND=0
MAX_ROUNDS=$((DURATION * 2))
while [ "$(date +%s)" -lt "$END" ] && [ "$ROUND" -lt "$MAX_ROUNDS" ]; do
    now="$(date +%s)"
    if [ "$now" -ge "$NEXT_SAMPLE" ]; then
        sample $((now - START))
        NEXT_SAMPLE=$((NEXT_SAMPLE + SAMPLE))
    fi
    if [ "$now" -ge "$NEXT_CRL" ] && [ "$SPARE_NEXT" -le "$SPARES" ]; then
        crl_swap
        NEXT_CRL=$((NEXT_CRL + CRL_EVERY))
    fi
    if [ "$now" -ge "$NEXT_ROTATE" ]; then
        TOKEN="$(issue_token 10m soak-load)"
        COUNT[load-token-rotation]=$((${COUNT[load-token-rotation]:-0} + 1))
        NEXT_ROTATE=$((NEXT_ROTATE + ROTATE_EVERY))
    fi
    if [ "$RESTARTED" = 0 ] && [ "$now" -ge "$RESTART_AT" ]; then
        ctd_restart n2
        RESTARTED=1
    fi
    pull_round "${PULLERS[ROUND % 2]}" "${IMAGES[(ROUND / 2) % ${#IMAGES[@]}]}"
    hostile_round "${NODES[ROUND % 3]}"
    ROUND=$((ROUND + 1))
    sleep "$PAUSE"
done
sample $(($(date +%s) - START))
ELAPSED=$(($(date +%s) - START))
EGRESS=$(($(registry_egress_bytes) - EGRESS0))

# --- verdict -----------------------------------------------------------------------------------
FAILS=()
[ "$RESTARTED" = 1 ] || FAILS+=("containerd was never restarted (DURATION too short?)")
[ "$PULL_FAIL" = 0 ] || FAILS+=("$PULL_FAIL pulls failed")
for k in "${!BAD[@]}"; do FAILS+=("$k: ${BAD[$k]} unexpected answers"); done
# The sample nearest BASE_AT (the first at or after it) is the baseline.
BASE_SEC="$(awk -v b="$BASE_AT" 'NR > 1 && $1 >= b { print $1; exit }' "$SAMPLES")"
LAST_SEC="$(tail -n 1 "$SAMPLES" | cut -f1)"
FLAT="$WORK/flat.txt"
: >"$FLAT"
for n in "${NODES[@]}"; do
    read -r rss0 fd0 < <(awk -v s="$BASE_SEC" -v n="$n" '$1 == s && $2 == n { print $3, $4 }' "$SAMPLES") || true
    read -r rss1 fd1 < <(awk -v s="$LAST_SEC" -v n="$n" '$1 == s && $2 == n { print $3, $4 }' "$SAMPLES") || true
    read -r data0 data1 < <(awk -v a="$BASE_SEC" -v b="$LAST_SEC" -v n="$n" '$2 == n && $1 == a { x = $9 }
        $2 == n && $1 == b { y = $9 } END { print x, y }' "$SAMPLES") || true
    read -r rmin rmax fmin fmax < <(awk -v n="$n" -v b="$BASE_SEC" 'NR > 1 && $2 == n && $1 >= b {
        if (!c++ || $3 < rmin) rmin = $3; if ($3 > rmax) rmax = $3
        if (c == 1 || $4 < fmin) fmin = $4; if ($4 > fmax) fmax = $4 }
        END { print rmin, rmax, fmin, fmax }' "$SAMPLES") || true
    printf '%s: RSS %.1f -> %.1f MiB (min %.1f, max %.1f from %ss on), fds %s -> %s (min %s, max %s), data dir %s -> %s KiB\n' \
        "$n" "$(calc "$rss0 / 1024")" "$(calc "$rss1 / 1024")" "$(calc "$rmin / 1024")" \
        "$(calc "$rmax / 1024")" "$BASE_SEC" "$fd0" "$fd1" "$fmin" "$fmax" "$data0" "$data1" >>"$FLAT"
    [ "$rss1" -le $((rss0 * (100 + RSS_SLACK_PCT) / 100)) ] ||
        FAILS+=("$n: RSS grew from $rss0 KiB at ${BASE_SEC}s to $rss1 KiB (> +$RSS_SLACK_PCT %)")
    [ "$fd1" -le $((fd0 + FD_SLACK)) ] ||
        FAILS+=("$n: fds grew from $fd0 at ${BASE_SEC}s to $fd1 (> +$FD_SLACK)")
done

# WARN/ERROR lines by "LEVEL count TARGET MESSAGE"; panics (JSON or not).
MSGS="$WORK/messages.txt"
: >"$MSGS"
PANICS=0
for n in "${NODES[@]}"; do
    p="$(grep -c -i 'panicked' "${PM_LOG[$n]}" || true)"
    PANICS=$((PANICS + p))
    jq -R -r 'fromjson? | select(.level == "WARN" or .level == "ERROR")
        | "\(.level)\t\(.target) \(.fields.message)"' "${PM_LOG[$n]}" |
        sort | uniq -c | sed -E "s/^ *([0-9]+) /$n\t\1\t/" >>"$MSGS"
done
[ "$PANICS" = 0 ] || FAILS+=("$PANICS log lines mention a panic")
# Minted tokens are replaced at half their life: about DURATION / (TTL / 2) hosts.toml
# rewrites per node, not one a second.
case "$TOKEN_TTL" in *m) TTL_S=$((${TOKEN_TTL%m} * 60)) ;; *s) TTL_S="${TOKEN_TTL%s}" ;; *) TTL_S=900 ;; esac
MAX_REWRITES=$((2 * ELAPSED / (TTL_S / 2) + 5))
REWRITES=""
for n in "${NODES[@]}"; do
    r="$(jq -R -r 'fromjson? | select(.fields.message == "hosts.toml token rewritten") | 1' "${PM_LOG[$n]}" | wc -l)"
    REWRITES+="$n $r "
    [ "$r" -le "$MAX_REWRITES" ] || FAILS+=("$n rewrote hosts.toml $r times in ${ELAPSED}s (want <= $MAX_REWRITES)")
done
UNEXPECTED="$WORK/unexpected.txt"
: >"$UNEXPECTED"
while IFS=$'\t' read -r n c lvl msg; do
    ok=0
    for re in "${EXPECTED[@]}"; do
        [[ "$n $msg" =~ $re ]] && ok=1 && break
    done
    [ "$ok" = 1 ] || printf '%s\t%s\t%s\t%s\n' "$n" "$c" "$lvl" "$msg" >>"$UNEXPECTED"
done <"$MSGS"
[ ! -s "$UNEXPECTED" ] || FAILS+=("unexpected WARN/ERROR lines (see below)")

# --- report ------------------------------------------------------------------------------------
{
    echo
    echo "== soak: ${ELAPSED}s, $ROUND rounds, $(machine_notes)"
    echo "pulls through peers: $PULL_OK ok, $PULL_FAIL failed (n2/n3 alternately, image deleted after each)"
    for i in "${IMAGES[@]}"; do
        [ -s "$WORK/pull-secs.$i" ] &&
            echo "  $i: $(wc -l <"$WORK/pull-secs.$i") pulls, median $(median <"$WORK/pull-secs.$i") s"
    done
    echo "upstream egress during the soak: $EGRESS bytes (tags and fallbacks)"
    printf 'peer-served bytes: n2 %s, n3 %s\n' "$(pm_bytes n2 peer)" "$(pm_bytes n3 peer)"
    echo "requests by kind (count, unexpected answers):"
    for k in $(printf '%s\n' "${!COUNT[@]}" | sort); do
        printf '  %-20s %6s %s\n' "$k" "${COUNT[$k]}" "${BAD[$k]:-0}"
    done
    echo "CRL swaps: $CRL_SWAPS (plus one broken CRL kept out); hosts.toml token changes seen at the samples:" \
        "$(for n in "${NODES[@]}"; do printf '%s %s ' "$n" "${ROTATIONS[$n]}"; done); hosts.toml rewrites logged: $REWRITES"
    echo "containerd restart (n2): readiness dropped ${CTD_DOWN_SEEN:-?}; ready again ${CTD_RESTART_SECS:-?} s after the stop; a pull on n2 right after"
    echo
    echo "per-minute samples (RSS MiB / open fds / WARN lines so far):"
    printf '| t (min) |'
    for n in "${NODES[@]}"; do printf ' %s RSS | %s fds | %s warn |' "$n" "$n" "$n"; done
    echo
    printf '|---|'
    for n in "${NODES[@]}"; do printf -- '---|---|---|'; done
    echo
    awk 'NR > 1 { k = $1; if (!(k in row)) { order[++m] = k; row[k] = sprintf("| %.1f |", k / 60) }
        row[k] = row[k] sprintf(" %.1f | %d | %d |", $3 / 1024, $4, $5) }
        END { for (i = 1; i <= m; i++) print row[order[i]] }' "$SAMPLES"
    echo
    cat "$FLAT"
    echo
    echo "WARN/ERROR lines by node and message:"
    sed 's/^/  /' "$MSGS"
    if [ -s "$UNEXPECTED" ]; then
        echo "UNEXPECTED:"
        sed 's/^/  /' "$UNEXPECTED"
    fi
    echo
    if [ "${#FAILS[@]}" = 0 ]; then
        echo "PASS: no panics, RSS and fds flat, no unexpected WARN/ERROR lines"
    else
        printf 'FAIL: %s\n' "${FAILS[@]}"
    fi
} | tee "$WORK/report.txt"
[ "${#FAILS[@]}" = 0 ]
