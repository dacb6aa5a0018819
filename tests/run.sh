#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests against a real tansu broker,
# fault tests. Installs tansu into ~/.cache on first use (several minutes), then reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."

tests/tansu.sh install
# tests/clients.rs posts with Python's requests, as users' scripts do: Debian's package
# where we may install it (Debian's python3 refuses system-wide pip installs), else pip.
if ! python3 -c 'import requests' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        # A fresh machine may have no package lists yet.
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-requests
    else
        # Debian's python3 refuses even --user installs without the override (PEP 668);
        # a --user install leaves the system's packages alone.
        python3 -m pip install -q --user requests 2>/dev/null ||
            python3 -m pip install -q --user --break-system-packages requests
    fi
fi
# Glommio's io_uring rings need locked memory; root may raise the limit.
ulimit -l unlimited 2>/dev/null || ulimit -l 65536 2>/dev/null || true

read -r addr pid < <(tests/tansu.sh start --watch $$)
trap 'tests/tansu.sh stop "$pid"' EXIT
export INGESTD_TEST_BROKER=$addr
echo "tansu broker on $addr (pid $pid)"

cargo test --all-targets "$@"
