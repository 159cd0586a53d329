#!/usr/bin/env bash
# Installs the system packages the build and the end-to-end tests need.
# Idempotent: only missing packages are installed, and `apt-get update` runs
# at most once (and not at all when nothing is missing). Runs as root with no
# stdin (CI); uses sudo when not root and sudo exists.
set -euo pipefail

# podman, catatonit and busybox-static: scripts/build-image.sh and the pod test (tests/e2e_pod.rs).
PACKAGES=(containerd docker-registry skopeo umoci protobuf-compiler iproute2 iptables openssl curl jq chromium
    podman catatonit busybox-static)

die() {
    echo "install-deps: ERROR: $*" >&2
    exit 1
}

is_installed() {
    # dpkg's own view; a package that is only "config-files" does not count.
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script supports Debian/Ubuntu only"

missing=()
for pkg in "${PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-deps: all packages present: ${PACKAGES[*]}"
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo; cannot install: ${missing[*]}"
    SUDO=(sudo -n)
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-deps: installing: ${missing[*]}"
"${SUDO[@]}" apt-get update </dev/null ||
    die "apt-get update failed"
"${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}" </dev/null ||
    die "apt-get install failed for: ${missing[*]}"

for pkg in "${missing[@]}"; do
    is_installed "$pkg" || die "package $pkg still not installed after apt-get install"
done
echo "install-deps: done"
