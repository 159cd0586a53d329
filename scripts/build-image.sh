#!/usr/bin/env bash
# Builds the peermirror container image offline, from the top-level Containerfile:
#   localhost/peermirror:<crate version>          in podman's local storage
#   target/image/peermirror-<version>.oci.tar     an OCI archive (skopeo copy oci-archive:...)
# No base image is pulled: the image is FROM scratch over a root this script prepares in
# target/image/context/root (the stripped binary, the libraries `ldd` lists, a static busybox
# for the chart's host-files containers, CA certificates, passwd/group, nsswitch.conf, /tmp).
# The image is for the machine's own architecture; on an arm64 machine the same command builds
# the arm64 image.
#
# Options:
#   --binary PATH   use this peermirror binary instead of `cargo build --release` (it is
#                   stripped on the copy; the pod test uses the debug build this way)
#   --tag TAG       image tag instead of the crate version
#   --no-archive    skip the OCI archive
# podman reads target/image/containers.conf (CONTAINERS_CONF): podman's default ulimits are
# above the hard limits of some machines, where every container fails with "error setting rlimit".
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec </dev/null

die() {
    echo "build-image: ERROR: $*" >&2
    exit 1
}

binary=""
tag=""
archive=1
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --no-archive) archive=0; shift ;;
        -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

# podman and catatonit (the pause process `podman kube play` needs), like scripts/install-deps.sh.
need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v catatonit >/dev/null 2>&1 || need+=(catatonit)
is_static() { [ -x "$1" ] && ! ldd "$1" >/dev/null 2>&1; }
is_static /bin/busybox || need+=(busybox-static)
if [ "${#need[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]} and no apt-get to install them"
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo; cannot install: ${need[*]}"
        SUDO=(sudo -n)
    fi
    echo "build-image: installing ${need[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi
is_static /bin/busybox || die "/bin/busybox is not the static one (install busybox-static)"

version=$(awk -F'"' '/^\[package\]/{p=1} p && /^version *=/{print $2; exit}' Cargo.toml)
[ -n "$version" ] || die "no version in Cargo.toml"
tag="${tag:-$version}"
image="localhost/peermirror:$tag"
out=target/image
mkdir -p "$out"

if [ -z "$binary" ]; then
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    # --examples: the same dependency features as the release builds of the benchmarks.
    cargo build --release --bins --examples
    binary=target/release/peermirror
fi
[ -x "$binary" ] || die "$binary is not an executable"

# The build context: the root filesystem of the image, nothing else.
context="$out/context"
root="$context/root"
rm -rf "$context"

mkdir -p "$root/usr/local/bin" "$root/bin" "$root/etc/ssl/certs" "$root/tmp" "$root/var/lib/peermirror"
chmod 1777 "$root/tmp"
cp "$binary" "$root/usr/local/bin/peermirror"
strip --strip-all "$root/usr/local/bin/peermirror"
# Every shared library the binary loads, at the path the dynamic loader looks for it.
while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done < <(ldd "$binary" | grep -o '/[^ ]*' | sort -u)
# The chart's host-files containers run /bin/sh with cp, cmp, mv, chmod, mkdir, grep, sleep.
cp /bin/busybox "$root/bin/busybox"
for applet in sh cp cmp mv chmod mkdir grep sleep rm rmdir cat ls; do
    ln -s busybox "$root/bin/$applet"
done
[ -f /etc/ssl/certs/ca-certificates.crt ] || die "no /etc/ssl/certs/ca-certificates.crt (install ca-certificates)"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\npeermirror:x:65532:65532:peermirror:/var/lib/peermirror:/sbin/nologin\n' \
    >"$root/etc/passwd"
printf 'root:x:0:\npeermirror:x:65532:\n' >"$root/etc/group"
# /etc/hosts before DNS, as in Debian's images (glibc's default without this file is DNS first).
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
chown 65532:65532 "$root/var/lib/peermirror"

# podman's default ulimits (nofile 1048576, nproc) can exceed the hard limits here.
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
# No more processes than PIDs: runc refused nproc 65536 under pid_max 32768 here.
pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)
[ "$nproc" = unlimited ] && nproc=$pid_max
[ "$nofile" -gt 1048576 ] && nofile=1048576
[ "$nproc" -gt "$pid_max" ] && nproc=$pid_max
cat >"$out/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
EOF
export CONTAINERS_CONF="$PWD/$out/containers.conf"

revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    revision="$revision-dirty"
fi
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
source_url=$(awk -F'"' '/^repository *=/{print $2; exit}' Cargo.toml)
source_url="${PEERMIRROR_SOURCE_URL:-${source_url:-https://github.com/peermirror/peermirror}}"

podman build --quiet --file Containerfile --tag "$image" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" \
    --build-arg CREATED="$created" --build-arg SOURCE="$source_url" \
    "$context" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$image")
echo "build-image: $image ($((size / 1000000)) MB, $(podman image inspect --format '{{.Architecture}}' "$image"))"

if [ "$archive" = 1 ]; then
    tarball="$out/peermirror-$tag.oci.tar"
    rm -f "$tarball"
    podman save --quiet --format oci-archive --output "$tarball" "$image"
    echo "build-image: $tarball ($(($(stat -c %s "$tarball") / 1000000)) MB)"
fi
