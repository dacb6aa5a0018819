#!/usr/bin/env bash
# Local Kafka-API broker for tests and benchmarks: tansu 0.6.0 with its in-memory store.
#
#   tests/tansu.sh install                 build tansu once into the cache (~8 min)
#   tests/tansu.sh start [PORT] [--watch PID]
#                                          start a broker (free port if none given),
#                                          print "HOST:PORT PID"; with --watch it stops
#                                          when process PID exits
#   tests/tansu.sh topic HOST:PORT NAME [PARTITIONS]   create a topic (default 4 partitions)
#   tests/tansu.sh stop PID                stop a broker started here
#
# The cache lives in $TANSU_CACHE (default ~/.cache/ingestd/tansu-0.6.0) and is reused.
set -euo pipefail

CACHE=${TANSU_CACHE:-$HOME/.cache/ingestd/tansu-0.6.0}
BIN=$CACHE/bin/tansu
RUN=${TANSU_RUN_DIR:-${TMPDIR:-/tmp}/ingestd-tansu}

install() {
    if [ -x "$BIN" ]; then
        return 0
    fi
    echo "tansu: building 0.6.0 into $CACHE (first run only, several minutes)" >&2
    mkdir -p "$CACHE"
    cargo install tansu --version 0.6.0 --locked --features dynostore --root "$CACHE" >&2
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start() {
    install
    local port="" watch=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --watch) watch=$2; shift 2 ;;
            *) port=$1; shift ;;
        esac
    done
    [ -n "$port" ] || port=$(free_port)
    mkdir -p "$RUN"
    local url="tcp://127.0.0.1:$port"
    setsid "$BIN" broker --listener-url "$url" --advertised-listener-url "$url" \
        --storage-engine memory://tansu/ >"$RUN/tansu-$port.log" 2>&1 </dev/null &
    local pid=$!
    if [ -n "$watch" ]; then
        # Stop the broker when the process that asked for it is gone (a test binary).
        # SIGCONT first: a broker a test left stopped (SIGSTOP) would never see SIGTERM.
        setsid bash -c "while kill -0 $watch 2>/dev/null && kill -0 $pid 2>/dev/null; do sleep 0.5; done; kill -CONT $pid 2>/dev/null; kill $pid 2>/dev/null" \
            >/dev/null 2>&1 </dev/null &
    fi
    for _ in $(seq 1 200); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then
            echo "127.0.0.1:$port $pid"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "tansu: exited early; log:" >&2
            cat "$RUN/tansu-$port.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "tansu: not listening on $port after 20 s" >&2
    kill "$pid" 2>/dev/null || true
    return 1
}

topic() {
    local addr=$1 name=$2 parts=${3:-4}
    "$BIN" topic create --broker "tcp://$addr" --partitions "$parts" "$name" >/dev/null
}

stop() {
    kill -CONT "$1" 2>/dev/null || true
    kill "$1" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$1" 2>/dev/null || true
}

cmd=${1:-}
shift || true
case "$cmd" in
    install) install ;;
    start) start "$@" ;;
    topic) topic "$@" ;;
    stop) stop "$@" ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
esac
