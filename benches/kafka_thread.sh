#!/usr/bin/env bash
# The single Kafka thread alone: how many records/s it sustains with no HTTP in front.
#
#   benches/kafka_thread.sh [SECONDS] [BODY]      # default 10 s, 256 B
#
# Starts tansu (tests/tansu.sh), runs benches/tools/kafka_sat.rs against it with 1 and 2
# feeder lanes, then against the in-process mock cluster (a cheap broker: closer to the
# ceiling of ingestd's own producer thread), and counts the tansu topic with kcount: it must hold
# exactly the records delivered. One JSON line per run, plus the check.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_=${1:-10}
BODY=${2:-256}

ulimit -l unlimited 2>/dev/null || true
tests/tansu.sh install
cargo build --release --example kafka_sat --example kcount

read -r BROKER TANSU_PID < <(tests/tansu.sh start --watch $$)
trap 'tests/tansu.sh stop "$TANSU_PID"' EXIT
for lanes in 1 2; do
    topic="sat-$lanes"
    tests/tansu.sh topic "$BROKER" "$topic" 4
    line=$(target/release/examples/kafka_sat "$BROKER" "$topic" "$SECONDS_" "$BODY" "$lanes")
    echo "tansu lanes=$lanes $line"
    got=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["delivered"])' "$line")
    held=$(target/release/examples/kcount "$BROKER" "$topic" 3000 |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["records"])')
    echo "broker check: $topic holds $held records, delivered $got"
    [ "$held" = "$got" ] || { echo "MISMATCH" >&2; exit 1; }
done
echo "embedded lanes=1 $(target/release/examples/kafka_sat embedded sat "$SECONDS_" "$BODY" 1)"
