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

echo "== build"
cargo build --all-targets

echo "== test (unit, integration and end-to-end)"
cargo test --all-targets --no-fail-fast -- --include-ignored
