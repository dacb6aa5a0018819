#!/usr/bin/env bash
# Instructions per request under callgrind, per thread: the noise-free comparison of
# configurations (wall-clock CPU on this shared VM swings by 20% from pair to pair).
# For each configuration it starts tansu and ingestd (1 executor) under
# `valgrind --tool=callgrind --separate-threads=yes`, sends WARM requests, zeroes the
# counters, sends N keep-alive requests (256 B, with `Authorization: Bearer TOKEN`), waits
# for the Kafka thread to hand them over, dumps, and prints instructions per request for
# the executor, the Kafka thread, librdkafka's broker thread and all threads.
#
#   perf/instructions.sh BINARY TOKEN NAME=CONFIG.toml [NAME=CONFIG.toml ...]
#   (N=20000 WARM=2000 by default; set them in the environment; BENCH_BODY_FILE and
#   BENCH_CONTENT_TYPE send that body instead of 256 x's; KEEP=DIR keeps the callgrind
#   files there for callgrind_annotate)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath "$1") TOKEN=$2
shift 2
N=${N:-20000} WARM=${WARM:-2000}
W=$(mktemp -d /tmp/ingestd-cg.XXXXXX)
TANSU_PID= VG_PID=
cleanup() {
    [ -n "$VG_PID" ] && kill "$VG_PID" 2>/dev/null || true
    [ -n "$TANSU_PID" ] && "$REPO/tests/tansu.sh" stop "$TANSU_PID"
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$W"/cg.* "$KEEP"/ 2>/dev/null || true; fi
    rm -rf "$W"
}
trap cleanup EXIT
ulimit -l unlimited 2>/dev/null || true

send() { # send COUNT: keep-alive POSTs, every answer must be 2xx
    python3 - "$PORT" "$1" "$TOKEN" <<'PY'
import http.client, sys
port, n, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
import os
bf = os.environ.get("BENCH_BODY_FILE")
body = open(bf, "rb").read() if bf else b"x" * 256
ct = os.environ.get("BENCH_CONTENT_TYPE", "application/octet-stream")
h = {"Authorization": "Bearer " + token, "Content-Type": ct}
for _ in range(n):
    c.request("POST", "/topics/perf", body, h)
    r = c.getresponse(); r.read()
    assert r.status // 100 == 2, (r.status, r.read())
PY
}

printf '%-24s %12s %12s %12s %12s\n' config executor kafka broker all
for spec in "$@"; do
    name=${spec%%=*} cfg=${spec#*=}
    read -r BROKER TANSU_PID < <(TANSU_RUN_DIR=$W "$REPO/tests/tansu.sh" start)
    "$REPO/tests/tansu.sh" topic "$BROKER" perf 4
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$W/cg.$name" \
        "$BIN" --config "$cfg" --brokers "$BROKER" --default-topic perf \
        --listen "127.0.0.1:$PORT" --executors 1 >"$W/$name.out" 2>"$W/$name.log" &
    VG_PID=$!
    until grep -q "listening" "$W/$name.log" 2>/dev/null; do sleep 0.5; done
    send "$WARM"
    sleep 3
    callgrind_control -z "$VG_PID" >/dev/null
    send "$N"
    sleep 5 # the Kafka thread hands the last batches over
    callgrind_control -d "$VG_PID" >/dev/null
    kill "$VG_PID"; wait "$VG_PID" 2>/dev/null || true; VG_PID=
    "$REPO/tests/tansu.sh" stop "$TANSU_PID"; TANSU_PID=
    python3 - "$W" "$name" "$N" <<'PY'
import glob, re, sys
w, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
# The dump after zeroing: one file per thread, cg.NAME.1-<thread>. Threads are told
# apart by what they ran: the executor's connection code, the Kafka thread's loop,
# librdkafka's broker threads.
kinds = {"executor": 0, "kafka": 0, "broker": 0, "all": 0}
for f in glob.glob(f"{w}/cg.{name}.1-*"):
    text = open(f, errors="replace").read()
    ir = int(re.search(r"^summary: (\d+)", text, re.M).group(1))
    kinds["all"] += ir
    if "exec::conn" in text:
        kinds["executor"] += ir
    elif "KafkaThread" in text:
        kinds["kafka"] += ir
    elif "rd_kafka_broker" in text:
        kinds["broker"] += ir
print(f"{name:<24}" + "".join(f" {kinds[k] / n:12.0f}" for k in ("executor", "kafka", "broker", "all")))
PY
done
