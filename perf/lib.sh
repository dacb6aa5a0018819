# Shared by perf/profile.sh and perf/syscalls.sh (sourced, not run): options, the server
# under wrk load (a private tansu + ingestd, or the nginx reference), and cleanup of
# everything started here, by PID.
#
# Options (both scripts):
#   --ack queued|kafka|durable (with a spool)   --executors N   --conns N   --body BYTES   --seconds N
#   --mode keepalive|pipeline|close|rate --out DIR (default perf/results)
#   --delay MS           with --mode rate: each connection waits MS after every answer
#                        (benches/rate.lua), so --conns N offer about N x 1000 / MS req/s
#   --config FILE        ingestd TOML (e.g. a [kafka] table with librdkafka settings)
#   --spool              a fresh spool directory for this run whatever --ack (durable has one)
#   --nginx              measure the reference instead: nginx `return 204;`, 2 workers

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVER=ingestd ACK=queued EXECUTORS=2 CONNS=64 BODY=256 SECONDS_=10 MODE=keepalive DELAY_MS=10 SPOOL=
OUT=$REPO/perf/results
EXTRA_ARGS=()
CONFIG=()

parse_common() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --ack) ACK=$2; shift 2 ;;
            --executors) EXECUTORS=$2; shift 2 ;;
            --conns) CONNS=$2; shift 2 ;;
            --body) BODY=$2; shift 2 ;;
            --seconds) SECONDS_=$2; shift 2 ;;
            --mode) MODE=$2; shift 2 ;;
            --delay) DELAY_MS=$2; shift 2 ;;
            --out) OUT=$2; shift 2 ;;
            --config) CONFIG=(--config "$(realpath "$2")"); shift 2 ;;
            --nginx) SERVER=nginx; shift ;;
            --spool) SPOOL=1; shift ;;
            -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
            *) EXTRA_ARGS+=("$1"); shift ;;
        esac
    done
    NAME="e${EXECUTORS}-${ACK}-c${CONNS}-${BODY}B-${MODE}"
    if [ "$MODE" = rate ]; then NAME+="-d${DELAY_MS}"; fi
    if [ ${#CONFIG[@]} -gt 0 ]; then NAME+="-$(basename "${CONFIG[1]}" .toml)"; fi
    if [ -n "$SPOOL" ] && [ "$ACK" != durable ]; then NAME+="-spool"; fi
    if [ $SERVER = nginx ]; then NAME="nginx-c${CONNS}-${BODY}B-${MODE}"; fi
    mkdir -p "$OUT"
}

PIDS=()
TANSU_PID=""
NGINX_PID=""
TMP=$(mktemp -d /tmp/ingestd-perf.XXXXXX)

cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "$TANSU_PID" ]; then "$REPO/tests/tansu.sh" stop "$TANSU_PID"; fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import random, socket
for _ in range(200):
    p = random.randint(19000, 19999); s = socket.socket()
    try: s.bind(("127.0.0.1", p)); print(p); break
    except OSError: pass'
}

ensure_perf() {
    if ! command -v perf >/dev/null || ! perf version >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf
    fi
}

# Debian's wrk (the load) and nginx-light (the reference), installed where missing.
ensure_load_tools() {
    local need=()
    command -v wrk >/dev/null || need+=(wrk)
    if [ $SERVER = nginx ] && [ ! -x /usr/sbin/nginx ]; then need+=(nginx-light); fi
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    fi
}

# Starts the server under test; sets PORT and SERVER_PIDS (comma-separated, for perf -p).
start_server() {
    ensure_load_tools
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    if [ $SERVER = nginx ]; then start_nginx; else start_ingestd; fi
}

# The same nginx as benches/run.py, plus stub_status to count requests.
start_nginx() {
    PORT=$(free_port)
    mkdir -p "$TMP/nginx"
    printf '%s\n' \
        "worker_processes 2;" \
        "pid $TMP/nginx/nginx.pid;" \
        "error_log $TMP/nginx/error.log;" \
        "events { worker_connections 8192; }" \
        "http {" \
        "    access_log off;" \
        "    keepalive_requests 10000000;" \
        "    client_body_temp_path $TMP/nginx/body;" \
        "    server {" \
        "        listen 127.0.0.1:$PORT;" \
        "        location = /nginx_status { stub_status; }" \
        "        location / { return 204; }" \
        "    }" \
        "}" >"$TMP/nginx/nginx.conf"
    /usr/sbin/nginx -c "$TMP/nginx/nginx.conf" -g 'daemon off;' &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    for _ in $(seq 1 100); do
        if curl -fsS "http://127.0.0.1:$PORT/nginx_status" >/dev/null 2>&1; then break; fi
        sleep 0.05
    done
    sleep 0.2 # workers
    SERVER_PIDS="$NGINX_PID,$(pgrep -d, -P "$NGINX_PID")"
    echo "nginx pids $SERVER_PIDS on $PORT"
}

# Builds, starts tansu and ingestd; sets BROKER, PORT, SERVER_PIDS.
start_ingestd() {
    ulimit -l unlimited 2>/dev/null || true # io_uring rings need locked memory
    if [ -n "${INGESTD_BIN:-}" ]; then # a given binary (perf/ab.sh)
        cp "$INGESTD_BIN" "$TMP/ingestd"
    else
        (cd "$REPO" && cargo build --release --bin ingestd)
        cp "$REPO/target/release/ingestd" "$TMP/ingestd" # immune to rebuilds meanwhile
    fi
    "$REPO/tests/tansu.sh" install
    local out
    out=$(TANSU_RUN_DIR=$TMP "$REPO/tests/tansu.sh" start "$(free_port)" --watch $$)
    read -r BROKER TANSU_PID <<<"$out"
    "$REPO/tests/tansu.sh" topic "$BROKER" perf 4
    PORT=$(free_port)
    # ack=durable answers once the spool synced: it needs one (a fresh one per run).
    local spool=()
    if [ "$ACK" = durable ] || [ -n "$SPOOL" ]; then spool=(--spool-dir "$TMP/spool"); fi
    "$TMP/ingestd" --brokers "$BROKER" --default-topic perf --listen "127.0.0.1:$PORT" \
        --executors "$EXECUTORS" --ack "$ACK" "${spool[@]}" "${CONFIG[@]}" \
        >"$TMP/ingestd.out" 2>"$TMP/ingestd.log" &
    SERVER_PIDS=$!
    PIDS+=("$SERVER_PIDS")
    for _ in $(seq 1 300); do
        if curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then
            echo "ingestd pid $SERVER_PIDS on $PORT ($EXECUTORS executors, ack=$ACK), tansu $BROKER"
            return 0
        fi
        sleep 0.1
    done
    echo "ingestd not ready; log:" >&2
    cat "$TMP/ingestd.log" >&2
    exit 1
}

# Starts wrk in the background for N seconds; sets WRK_PID, output in $TMP/wrk.txt.
start_wrk() {
    local script=post.lua extra=()
    case "$MODE" in
        pipeline) script=pipeline.lua extra=(16) ;;
        close) script=close.lua ;;
        rate) script=rate.lua extra=("$DELAY_MS") ;;
    esac
    wrk -t1 -c"$CONNS" -d"$1"s -s "$REPO/benches/$script" "http://127.0.0.1:$PORT" \
        -- "$BODY" /topics/perf "${extra[@]}" >"$TMP/wrk.txt" 2>&1 &
    WRK_PID=$!
    PIDS+=("$WRK_PID")
}

# Answered requests so far (every status): ingestd's /metrics or nginx's stub_status.
answered() {
    if [ $SERVER = nginx ]; then
        curl -fsS "http://127.0.0.1:$PORT/nginx_status" | awk 'NR == 3 { print $3 }'
    else
        curl -fsS "http://127.0.0.1:$PORT/metrics" |
            awk '/^ingestd_http_requests_total/ { n += $NF } END { printf "%d\n", n }'
    fi
}

# utime+stime of the server's processes (all their threads), in clock ticks.
cpu_ticks() {
    local p t=0
    for p in ${SERVER_PIDS//,/ }; do
        t=$((t + $(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$p/stat")))
    done
    echo $t
}
