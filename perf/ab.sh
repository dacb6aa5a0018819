#!/usr/bin/env bash
# A/B of two ingestd binaries under the same wrk load: runs interleaved (order
# alternating), medians printed. Single runs on this shared 2-core VM spread +-10%, which
# hides changes of a few percent; ten interleaved rounds of 5 s show them.
#
#   perf/ab.sh OLD_BINARY NEW_BINARY [--rounds N] [options of perf/lib.sh]
#   perf/ab.sh /tmp/ingestd-old target/release/ingestd --rounds 10 --executors 1 --seconds 5
#
# Each run starts a fresh tansu and ingestd (perf/lib.sh), lets wrk warm up for 1 s, then
# measures --seconds: req/s, server CPU us per request (all threads) and per thread, and
# voluntary + involuntary context switches per request per thread; and wrk's p99, p99.9
# and max latency over its whole run (warm-up included).
set -euo pipefail

if [ "${1:-}" = --one ]; then
    INGESTD_BIN=$(realpath "$2")
    shift 2
    source "$(dirname "$0")/lib.sh"
    parse_common "$@"
    start_server >/dev/null
    start_wrk $((SECONDS_ + 3))
    sleep 1
    # Answers other than 2xx (503 = queue full), from /metrics; the window's difference
    # leaves out the 503s of /readyz polled before the broker was ready.
    non2xx() {
        curl -fsS "http://127.0.0.1:$PORT/metrics" | awk '/^ingestd_http_requests_total/ &&
            !/code="2/ { n += $NF } END { printf "%d\n", n }'
    }
    threads() {
        local t
        for t in /proc/$SERVER_PIDS/task/*; do
            printf '%s %s %s\n' "$(tr ' ' _ <"$t/comm")" \
                "$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "$t/stat")" \
                "$(awk '/ctxt_switches/ { n += $2 } END { print n }' "$t/status")"
        done
    }
    r0=$(answered) c0=$(cpu_ticks) b0=$(non2xx)
    threads >"$TMP/t0"
    sleep "$SECONDS_"
    r1=$(answered) c1=$(cpu_ticks) b1=$(non2xx)
    threads >"$TMP/t1"
    n=$((r1 - r0)) tck=$(getconf CLK_TCK)
    printf 'RESULT %s %d %.3f %d' "$(basename "$INGESTD_BIN")" $((n / SECONDS_)) \
        "$(awk -v c=$((c1 - c0)) -v t="$tck" -v n=$n 'BEGIN { print c * 1e6 / t / n }')" \
        $((b1 - b0))
    paste "$TMP/t0" "$TMP/t1" | awk -v n=$n -v t="$tck" '$2 != $5 {
        printf " %s=%.3f/%.4f", $1, ($5 - $2) * 1e6 / t / n, ($6 - $3) / n }'
    # wrk's whole run (a few seconds more than the window): p99, p99.9 and max in ms.
    wait "$WRK_PID" || true
    sed -n 's/^WRKJSON //p' "$TMP/wrk.txt" | python3 -c 'import json, sys
j = json.load(sys.stdin)
print("".join(" @%s=%.2f" % (k, j["lat_%s_us" % k] / 1000) for k in ("p99", "p999", "max")), end="")'
    echo
    exit 0
fi

[ $# -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
# Two binaries or more (each round starts with the next one). A file BINARY.env beside one
# (lines VAR=value) is its load's environment: the same binary under several
# names can then be measured with different request bodies (perf/restv3.sh).
BINS=()
while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do
    BINS+=("$1")
    shift
done
ROUNDS=6
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
names=$(for b in "${BINS[@]}"; do basename "$b"; done | sort | uniq -d)
[ -z "$names" ] || { echo "give the binaries different names" >&2; exit 2; }
OUT=$(mktemp /tmp/ingestd-ab.XXXXXX)
for r in $(seq 1 "$ROUNDS"); do
    n=${#BINS[@]}
    for i in $(seq 0 $((n - 1))); do
        bin=${BINS[$(((r + i) % n))]}
        vars=()
        [ -f "$bin.env" ] && mapfile -t vars <"$bin.env"
        env "${vars[@]}" "$0" --one "$bin" "${ARGS[@]}" | grep '^RESULT' | tee -a "$OUT"
    done
done
python3 - "$OUT" <<'PY'
import statistics as st, sys
runs = {}
for line in open(sys.argv[1]):
    f = line.split()
    r = runs.setdefault(f[1], {"rps": [], "us": [], "thr": {}})
    r["rps"].append(int(f[2])); r["us"].append(float(f[3]))
    r.setdefault("bad", []).append(int(f[4]))
    for kv in f[5:]:
        name, v = kv.split("=")
        if name.startswith("@"):
            r.setdefault("lat", {}).setdefault(name[1:], []).append(float(v))
            continue
        us, cs = v.split("/")
        r["thr"].setdefault(name, []).append((float(us), float(cs)))
print(f"\nmedians of {len(next(iter(runs.values()))['rps'])} runs each")
for name, r in runs.items():
    thr = "  ".join(f"{t} {st.median(u for u, _ in v):.2f}us {st.median(c for _, c in v):.3f}cs"
                    for t, v in sorted(r["thr"].items()))
    lat = ", ".join(f"{k} {st.median(v):.2f}" for k, v in r.get("lat", {}).items())
    print(f"{name}: {st.median(r['rps']):,.0f} req/s, {st.median(r['us']):.2f} us/request, "
          f"latency ms (wrk's whole run) {lat}, non-2xx per run {r['bad']}  [{thr}]")
PY
rm -f "$OUT"
