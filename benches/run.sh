#!/usr/bin/env bash
# ingestd vs nginx under wrk, with the broker checked after every configuration.
#
#   benches/run.sh            # --quick: a few minutes, results in benches/results/quick/
#   benches/run.sh --full     # every scenario (about an hour), benches/results/full/
#   benches/run.sh --help     # scenario flags (bodies, connections, ack modes, ...)
#   benches/run.sh --soak     # 10 minutes at 80% of the maximum (benches/soak.py)
#   benches/run.sh --outage   # broker stopped 60 s under load, the spool absorbing it
#
# This wrapper installs what is missing, builds, and hands over to benches/run.py, which
# starts tansu, nginx and ingestd itself and stops them by PID when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v wrk >/dev/null || need+=(wrk)
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

# Glommio's io_uring rings need locked memory (where the hard limit allows);
# 1024 connections need more than the usual 1024 descriptors, in wrk and the servers.
ulimit -l unlimited 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

tests/tansu.sh install
# The server, the independent record counter (benches/tools/kcount.rs) and the tokio
# reference server (benches/tools/tokio_ref.rs).
cargo build --release --bin ingestd --example kcount --example tokio_ref

if [ "${1:-}" = --outage ]; then
    shift
    exec python3 benches/spool_outage.py "$@"
fi
if [ "${1:-}" = --soak ]; then
    shift
    exec python3 benches/soak.py "$@"
fi
exec python3 benches/run.py "$@"
