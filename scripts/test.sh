#!/usr/bin/env bash
# The project's single test command (CI runs it through .ci/run).
# Runs as root with no stdin from any directory: installs system packages,
# builds everything, then runs all tests including the #[ignore]d end-to-end
# ones (real containerd, docker-registry and skopeo on 127.0.0.1).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec </dev/null

echo "== install dependencies"
bash scripts/install-deps.sh

# rustup installs into ~/.cargo/bin, which a non-login shell may not have on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: ERROR: cargo not found (install a Rust toolchain >= 1.88 with rustup)" >&2
    exit 1
fi
cargo --version

if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: ERROR: the end-to-end tests start containerd and need root" >&2
    exit 1
fi

echo "== containerd 1.7 and 2.1 for the version matrix (cached in target/containerd)"
bash scripts/fetch-containerd.sh
# tests/e2e_matrix.rs runs on every version in PEERMIRROR_CONTAINERD_VERSIONS (default: all).
export PEERMIRROR_CONTAINERD_VERSIONS="${PEERMIRROR_CONTAINERD_VERSIONS:-1.6,1.7,2.1}"

# The Python tools of the chart tests go into a venv under target/, so a fresh machine needs only
# python3. Made before the Rust tests: tests/e2e_pod.rs renders the chart with them too.
echo "== chart tools (target/chart-venv)"
chart_venv=target/chart-venv
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo "test.sh: installing python3 and python3-venv for the chart tests"
    DEBIAN_FRONTEND=noninteractive apt-get update </dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv </dev/null
fi
if ! "$chart_venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$chart_venv"
    python3 -m venv "$chart_venv"
fi
"$chart_venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/chart/requirements.txt

echo "== build"
cargo build --all-targets

echo "== test (unit, integration and end-to-end)"
cargo test --all-targets --no-fail-fast -- --include-ignored

# ---- fuzz smoke (fuzz/, scripts/fuzz.sh) -------------------------------------------------
# 30 s per target with FUZZ_SMOKE=1, where a nightly toolchain and cargo-fuzz are already
# installed (this never downloads a toolchain). Off by default: on a fresh clone the
# sanitizer-instrumented fuzz crate builds from scratch, >10 min on 2 cores, which would push
# the whole run past 30 minutes. Longer runs: FUZZ_SECONDS=600 bash scripts/fuzz.sh.
if [ "${FUZZ_SMOKE:-0}" != 1 ]; then
    echo "== fuzz smoke skipped (FUZZ_SMOKE=1 runs it: 30 s per target, see scripts/fuzz.sh)"
elif bash scripts/fuzz.sh --check; then
    echo "== fuzz smoke (30 s per target)"
    FUZZ_SECONDS=30 bash scripts/fuzz.sh
else
    echo "== fuzz smoke skipped: no nightly toolchain or cargo-fuzz installed (see scripts/fuzz.sh)"
fi
# ---- end of fuzz smoke ---------------------------------------------------------------------

# ---- chart tests (charts/peermirror, tests/chart) ------------------------------------------
# Renders, lints and validates the Helm chart offline (helm-python-sdk, kubernetes-validate:
# no helm binary, no cluster) and checks its flags against the binary built above, with the
# tools installed into target/chart-venv above.
echo "== chart tests"
chart_rc=0
PYTHONDONTWRITEBYTECODE=1 PEERMIRROR_BIN=target/debug/peermirror "$chart_venv/bin/python" -m pytest -q -p no:cacheprovider \
    -c tests/chart/pytest.ini --rootdir tests/chart tests/chart || chart_rc=$?
case "$chart_rc" in
    0) ;;
    5) echo "test.sh: ERROR: pytest collected no chart tests in tests/chart" >&2; exit 1 ;;
    *) echo "test.sh: ERROR: chart tests failed (pytest exit $chart_rc)" >&2; exit "$chart_rc" ;;
esac
# ---- end of chart tests --------------------------------------------------------------------
