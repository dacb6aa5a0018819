#!/usr/bin/env bash
# What the test suite needs on the machine, and its installation: as root with apt-get,
# everything missing is installed (Debian 12 package names); otherwise the script stops
# at once and names what is missing. tests/run.sh calls it first; `tests/deps.sh --check`
# only reports (exit 1 when something is missing).
#
# Each entry: "what to test for|Debian package|why".
set -euo pipefail

check_only=false
[ "${1:-}" = "--check" ] && check_only=true

have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg -s "$1" >/dev/null 2>&1; }
have_py() { python3 -c "import $1" >/dev/null 2>&1; }

missing=()   # Debian packages
why=()
need() { # need PACKAGE WHY TEST...
    local pkg=$1 reason=$2; shift 2
    if ! "$@"; then
        missing+=("$pkg")
        why+=("$pkg: $reason")
    fi
}

# Building ingestd (librdkafka and its TLS are compiled from source).
need build-essential "C toolchain for librdkafka" have_cmd cc
need pkg-config "finding OpenSSL for librdkafka" have_cmd pkg-config
need libssl-dev "librdkafka's TLS" have_pkg libssl-dev
need zlib1g-dev "librdkafka's compression" have_pkg zlib1g-dev
need python3 "tests/tansu.sh (free ports) and tests/clients.rs" have_cmd python3
need curl "tests/clients.rs and tests/tls.rs post with curl" have_cmd curl
# tests/clients.rs posts with Python's requests, as users' scripts do.
need python3-requests "tests/clients.rs (Python requests)" have_py requests
need chromium "tests/browser.rs drives headless Chromium" have_cmd chromium
need fuse3 "tests/powerloss.rs mounts a power-loss file system (FUSE)" have_cmd fusermount3
need systemd "tests/systemd*.rs: systemd-analyze, and systemd booted in namespaces" have_cmd systemd-analyze
need prometheus "tests/prometheus.rs: promtool and a real Prometheus scrape" have_cmd promtool
need util-linux "tests/systemd_boot.rs: unshare, nsenter" have_cmd nsenter
need haproxy "tests/proxy.rs: a real load balancer sending the PROXY protocol" have_cmd haproxy

if [ ${#missing[@]} -gt 0 ]; then
    if ! $check_only && [ "$(id -u)" = 0 ] && have_cmd apt-get; then
        echo "tests/deps.sh: installing ${missing[*]}" >&2
        # A fresh machine may have no package lists yet.
        apt-get update -qq
        # --no-install-recommends: chromium's and prometheus's recommends pull in
        # desktop and exporter packages the tests do not use.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >&2
    elif ! $check_only && have_cmd python3 && [ "${missing[*]}" = python3-requests ]; then
        # Not root: Python's requests can still go to the user's site (PEP 668 needs the
        # override on Debian even for --user).
        python3 -m pip install -q --user requests 2>/dev/null ||
            python3 -m pip install -q --user --break-system-packages requests
    else
        echo "tests/deps.sh: the test suite needs these Debian packages:" >&2
        printf '  %s\n' "${why[@]}" >&2
        echo "install them (as root: apt-get install ${missing[*]}), or run tests/run.sh as root" >&2
        exit 1
    fi
fi

# The kernel side of FUSE: the device must exist (a container may not pass it in).
if [ ! -c /dev/fuse ]; then
    echo "tests/deps.sh: /dev/fuse is missing: tests/powerloss.rs needs FUSE (modprobe fuse, or pass /dev/fuse into the container)" >&2
    exit 1
fi
