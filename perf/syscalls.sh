#!/usr/bin/env bash
# System calls and io_uring operations per request of ingestd under wrk load.
#
#   perf/syscalls.sh                      # 2 executors, ack=queued, 64 conns, 256 B, 10 s
#   perf/syscalls.sh --ack kafka --executors 1
#   perf/syscalls.sh --strace             # strace -c -f instead of perf trace (slower)
#
# Options: see perf/lib.sh. Counts syscalls with `perf stat` on the syscall tracepoints
# (exact, low overhead; strace's ptrace stops slow ingestd several times) and io_uring
# submissions by opcode: Glommio does part of its socket I/O through its ring, which no
# syscall count shows.
# Writes perf/results/NAME.syscalls.txt.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
parse_common "$@"
USE_STRACE=0
for a in "${EXTRA_ARGS[@]}"; do
    [ "$a" = --strace ] && USE_STRACE=1
done
ensure_perf
[ $USE_STRACE = 1 ] && ! command -v strace >/dev/null && apt-get install -y -qq strace

start_server
start_wrk $((2 * SECONDS_ + 5))
sleep 1

# Window 1: exact syscall counts per thread from kernel tracepoint counters (perf stat;
# no event is lost and the overhead stays small, unlike perf trace or strace under load).
SYSCALLS=(sendto recvfrom sendmsg recvmsg read write readv writev io_uring_enter poll ppoll
    epoll_wait epoll_pwait futex accept4 close membarrier clock_nanosleep sched_yield
    setsockopt getsockopt)
events=(-e raw_syscalls:sys_enter)
for sc in "${SYSCALLS[@]}"; do
    [ -d "/sys/kernel/tracing/events/syscalls/sys_enter_$sc" ] && events+=(-e "syscalls:sys_enter_$sc")
done
# The request counts are read inside each tracing window, by the command perf runs
# (perf attaches first), so both counts cover the same interval.
{
    declare -f answered
    echo "SERVER=$SERVER PORT=$PORT"
    echo "answered >$TMP/r0; sleep $SECONDS_; answered >$TMP/r1"
} >"$TMP/window.sh"
if [ $USE_STRACE = 1 ]; then
    pids=()
    for p in ${SERVER_PIDS//,/ }; do pids+=(-p "$p"); done
    strace -c -f "${pids[@]}" -o "$TMP/trace.txt" &
    STRACE_PID=$!
    sleep 1 # attach to every thread
    bash "$TMP/window.sh"
    kill -INT "$STRACE_PID"
    wait "$STRACE_PID" || true
else
    perf stat -x, --per-thread "${events[@]}" -p "$SERVER_PIDS" -o "$TMP/trace.txt" \
        -- bash "$TMP/window.sh" || true
fi
req1=$(($(cat "$TMP/r1") - $(cat "$TMP/r0")))
# Window 2: io_uring submissions (opcode per SQE) and completions (nginx uses epoll).
if [ $SERVER = ingestd ]; then
    perf record -q -e io_uring:io_uring_submit_req -e io_uring:io_uring_complete \
        -p "$SERVER_PIDS" -o "$TMP/uring.data" -- bash "$TMP/window.sh" >/dev/null 2>&1 || true
    req2=$(($(cat "$TMP/r1") - $(cat "$TMP/r0")))
fi
wait "$WRK_PID" || true

{
    echo "# $SERVER $NAME"
    echo "# window 1: $req1 requests answered while tracing syscalls ($SECONDS_ s)"
    if [ $USE_STRACE = 1 ]; then
        awk -v r="$req1" '$1 ~ /^[0-9.]+$/ && NF >= 5 { n[$NF] += $4 }
            END { for (s in n) printf "%-18s %10d calls %8.3f per request\n", s, n[s], n[s] / r }' \
            "$TMP/trace.txt" | sort -k4 -gr
    else
        # Lines: thread-tid,count,,event,... Totals first, then per thread.
        for by in total thread; do
            [ $by = thread ] && echo "--- by thread"
            awk -F, -v r="$req1" -v by=$by '$2 ~ /^[0-9]+$/ && $2 > 0 {
                    ev = $4; sub(/.*sys_enter_?/, "", ev); if (ev == "") ev = "ALL"
                    th = $1; sub(/-[0-9]+$/, "", th)
                    k = by == "total" ? ev : sprintf("%-15s %-16s", ev, th); n[k] += $2 }
                END { for (k in n) if (n[k] / r >= 0.001)
                        printf "  %-34s %9d calls %8.3f per request\n", k, n[k], n[k] / r }' \
                "$TMP/trace.txt" | sort -k$([ $by = total ] && echo 4 || echo 5) -gr
        done
    fi
    if [ $SERVER = ingestd ]; then
        echo
        echo "# window 2: $req2 requests answered while counting io_uring operations ($SECONDS_ s)"
        perf script -i "$TMP/uring.data" -F event,trace 2>/dev/null | awk -v r="$req2" '
            /io_uring_submit_req/ { match($0, /opcode [A-Z_0-9]+/); op = substr($0, RSTART + 7, RLENGTH - 7)
                                    n["submit " op]++; subs++ }
            /io_uring_complete/ { n["complete"]++ }
            END { printf "io_uring SQEs %8.3f per request\n", subs / r
                  for (k in n) printf "  %-24s %8.3f per request\n", k, n[k] / r }'
    fi
} | tee "$OUT/$NAME.syscalls.txt"
tail -1 "$TMP/wrk.txt"
