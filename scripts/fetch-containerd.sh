#!/usr/bin/env bash
# Fetches containerd 1.7 (Debian trixie) and 2.1 (Debian sid) without touching the system:
# a private apt sources list and state dir, `apt-get download`, `dpkg-deb -x` into
# target/containerd/<series>/. Never `apt-get install` from those suites: it would upgrade libc.
# Cached: a series already extracted is not fetched again. Prints nothing else on success.
#
#   bash scripts/fetch-containerd.sh            # both
#   bash scripts/fetch-containerd.sh 2.1        # one
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD/target/containerd"
work="$root/.apt"
mkdir -p "$root" "$work/lists/partial" "$work/cache/archives/partial"

# The Debian mirror the system's own sources use (never hard-code another host).
mirror=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
    mirror=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "fetch-containerd: ERROR: cannot find the system's Debian mirror in /etc/apt" >&2; exit 1; }

want=("$@")
[ "${#want[@]}" -gt 0 ] || want=(1.7 2.1)

suite_of() {
    case "$1" in
        1.7) echo trixie ;;
        2.1) echo sid ;;
        *) echo "fetch-containerd: ERROR: unknown series $1 (1.7 or 2.1)" >&2; exit 2 ;;
    esac
}

updated=""
for series in "${want[@]}"; do
    dest="$root/$series"
    if [ -x "$dest/usr/bin/containerd" ]; then
        continue
    fi
    suite=$(suite_of "$series")
    list="$work/$suite.list"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" >"$list"
    apt_opts=(-o "Dir::Etc::sourcelist=$list" -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$work/lists-$suite" -o "Dir::Cache=$work/cache-$suite"
        -o "Dir::State::status=/var/lib/dpkg/status" -o "APT::Get::List-Cleanup=0"
        -o "APT::Sandbox::User=root")
    mkdir -p "$work/lists-$suite/partial" "$work/cache-$suite/archives/partial"
    case " $updated " in
        *" $suite "*) ;;
        *)
            apt-get "${apt_opts[@]}" -qq update </dev/null >"$work/update-$suite.log" 2>&1 ||
                { cat "$work/update-$suite.log" >&2; echo "fetch-containerd: ERROR: apt-get update ($suite) failed" >&2; exit 1; }
            updated="$updated $suite"
            ;;
    esac
    (cd "$work" && rm -f containerd_*.deb && apt-get "${apt_opts[@]}" -qq download containerd </dev/null) ||
        { echo "fetch-containerd: ERROR: apt-get download containerd ($suite) failed" >&2; exit 1; }
    deb=$(ls "$work"/containerd_*.deb | head -n 1)
    tmp="$dest.tmp"
    rm -rf "$tmp"
    dpkg-deb -x "$deb" "$tmp"
    rm -f "$deb"
    mv "$tmp" "$dest"
    "$dest/usr/bin/containerd" --version
done
