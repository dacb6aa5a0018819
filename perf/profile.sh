#!/usr/bin/env bash
# CPU profile of ingestd under wrk load: perf record (cpu-clock; hardware counters are not
# available here), a flame graph SVG rendered with inferno, and the top symbols.
#
#   perf/profile.sh                       # 2 executors, ack=queued, 64 conns, 256 B, 10 s
#   perf/profile.sh --ack kafka --executors 1 --seconds 5
#   perf/profile.sh --fp                  # frame-pointer call graphs (perf record -g)
#
# Options: see perf/lib.sh. Default call graphs use DWARF unwinding: the release build has
# no frame pointers, so `-g` stacks stop after one frame in Rust code (self time, and so
# the top-symbol table, is the same either way).
# Writes perf/results/NAME.svg, NAME.top.txt (symbols), NAME.threads.txt (per thread).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
CALLGRAPH=(--call-graph dwarf,16384)
parse_common "$@"
for a in "${EXTRA_ARGS[@]}"; do
    [ "$a" = --fp ] && CALLGRAPH=(-g)
done

ensure_perf
INFERNO=${INFERNO_ROOT:-$HOME/.cache/ingestd/inferno}
if [ ! -x "$INFERNO/bin/inferno-flamegraph" ]; then
    echo "installing inferno into $INFERNO (first run only)"
    cargo install inferno --locked --root "$INFERNO"
fi

start_server
start_wrk $((SECONDS_ + 3))
sleep 1 # let wrk connect and the load settle before sampling
r0=$(answered) c0=$(cpu_ticks)
# 499 Hz keeps DWARF stack copies small (16 KiB each) while giving ~5k samples per core.
perf record -e cpu-clock -F 499 "${CALLGRAPH[@]}" -p "$SERVER_PIDS" -o "$TMP/perf.data" \
    -- sleep "$SECONDS_" 2>&1 | grep -v '^\[ perf record: Woken' || true
r1=$(answered) c1=$(cpu_ticks)
wait "$WRK_PID" || true
req=$((r1 - r0))
tck=$(getconf CLK_TCK)

{
    echo "# $SERVER $NAME: $req requests in ${SECONDS_} s ($((req / SECONDS_)) req/s)," \
        "$(awk -v c=$((c1 - c0)) -v t="$tck" -v r="$req" 'BEGIN { printf "%.2f", c / t * 1e6 / r }') us CPU/request" \
        "(while profiled)"
    echo "# top symbols by self time (perf report --no-children --sort dso,sym)"
    perf report -i "$TMP/perf.data" --no-children --sort dso,sym --stdio -g none \
        --percent-limit 0.4 2>/dev/null | grep -v '^#' | grep -v '^$' | awk 'NR <= 45'
} | tee "$OUT/$NAME.top.txt"
echo
{
    echo "# inclusive time of ingestd, Glommio and rdkafka frames (perf report --children)"
    perf report -i "$TMP/perf.data" --children --sort sym --stdio -g none 2>/dev/null |
        grep -E 'ingestd::|glommio::|rdkafka::' | grep -v '{{closure}}' | awk 'NR <= 30'
} | tee -a "$OUT/$NAME.top.txt"
echo
{
    echo "# CPU by thread (perf report --sort comm)"
    perf report -i "$TMP/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null |
        grep -v '^#' | grep -v '^$' | awk 'NR <= 20'
} | tee "$OUT/$NAME.threads.txt"

perf script -i "$TMP/perf.data" 2>/dev/null |
    "$INFERNO/bin/inferno-collapse-perf" >"$TMP/folded"
"$INFERNO/bin/inferno-flamegraph" --title "$SERVER $NAME (cpu-clock)" --width 1600 \
    <"$TMP/folded" >"$OUT/$NAME.svg"
echo "flame graph: $OUT/$NAME.svg"
tail -1 "$TMP/wrk.txt"
