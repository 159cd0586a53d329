#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for FUZZ_SECONDS each (default 30), one after another.
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh            # all targets, 10 minutes each
#   bash scripts/fuzz.sh route range                 # only these targets
#   bash scripts/fuzz.sh --check                     # exit 0 iff nightly and cargo-fuzz are installed
# Needs a nightly toolchain and cargo-fuzz already installed (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`); this script never installs them. Each run starts from the
# committed seeds (fuzz/corpus/TARGET, read only) plus a working corpus kept under fuzz/target,
# so the seeds stay small. A crash is saved under fuzz/artifacts/TARGET and fails the run.
# Runs under `nice` (FUZZ_NICE, default 10): the machine is usually shared.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec </dev/null

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

have_tools() {
    command -v rustup >/dev/null 2>&1 &&
        rustup toolchain list 2>/dev/null | grep -q '^nightly' &&
        command -v cargo-fuzz >/dev/null 2>&1
}

if [ "${1:-}" = "--check" ]; then
    have_tools
    exit
fi
if ! have_tools; then
    echo "fuzz.sh: needs a nightly toolchain and cargo-fuzz (rustup toolchain install nightly;" \
        "cargo install cargo-fuzz)" >&2
    exit 2
fi

seconds="${FUZZ_SECONDS:-30}"
nice_level="${FUZZ_NICE:-10}"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

echo "fuzz.sh: building ${#targets[@]} targets"
nice -n "$nice_level" cargo +nightly fuzz build --fuzz-dir fuzz

logs=fuzz/target/logs
mkdir -p "$logs"
failed=()
for t in "${targets[@]}"; do
    work="fuzz/target/corpus/$t"
    mkdir -p "$work"
    echo "fuzz.sh: $t for ${seconds}s (log: $logs/$t.log)"
    # rss_limit_mb: the targets hold nothing big; a leak or blow-up shows as a failure.
    if nice -n "$nice_level" cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024 -print_final_stats=1 >"$logs/$t.log" 2>&1; then
        runs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$logs/$t.log" | tail -1 || true)
        echo "fuzz.sh: $t ok: ${runs:-no summary}"
    else
        echo "fuzz.sh: $t FAILED; last lines of $logs/$t.log:" >&2
        tail -n 30 "$logs/$t.log" >&2
        failed+=("$t")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: all ${#targets[@]} targets ran ${seconds}s without a failure"
