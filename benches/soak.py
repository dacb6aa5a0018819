#!/usr/bin/env python3
"""Soak: ingestd at 80% of its own maximum for 10 minutes, against tansu (issue 5 target:
zero errors, RSS flat within 10%, every answered record in the broker).

    benches/run.sh --soak                    # 10 minutes, 80%, 1 executor, 256 B
    benches/run.sh --soak --minutes 2 --target 0.8 --executors 1

Steps: measure the maximum (wrk -c64, best of three 5 s runs), then find the smallest
connection count whose rate reaches the target share of it (wrk is closed-loop: at a few
connections the rate is paced by their number; wrk's Lua delay() pacing was tried and
holds the rate less steadily), then run wrk with that many connections for the soak while
sampling ingestd's RSS and /metrics every 10 s. After a SIGTERM flush, the topic is counted
with kcount and must hold at least every 2xx answer of every run. Writes
benches/results/soak/soak.json; exits 1 when a check fails.
"""
import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (benches/run.py: processes, wrk, broker check)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS"))
    return round(kb / 1024, 1)


def point(conns, body):
    return dict(body=body, conns=conns, mode="keepalive", executors=None, ack="queued")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--target", type=float, default=0.8, help="share of the maximum")
    p.add_argument("--executors", type=int, default=1)
    p.add_argument("--body", type=int, default=256)
    p.add_argument("--out", type=Path, default=bench.BENCHES / "results" / "soak")
    a = p.parse_args()
    atexit.register(bench.cleanup)
    tmp = Path(tempfile.mkdtemp(prefix="ingestd-soak."))
    binary = tmp / "ingestd"
    shutil.copy2(bench.REPO / "target/release/ingestd", binary)
    broker, tansu_pid = bench.start_tansu(tmp)
    subprocess.run([str(bench.TANSU_SH), "topic", broker, "soak", "4"], check=True)
    ing = bench.Ingestd(tmp, binary, broker, "soak", a.executors, "queued")
    rows = []

    def short(conns, seconds):
        r = bench.run_wrk(ing, point(conns, a.body), seconds, tansu_pid, "soak")
        r.update(server="ingestd", executors=a.executors)
        rows.append(r)
        return r

    # The best of three: a run that shared the CPU with something else would set the
    # bar too low.
    peak = max(short(64, 5)["ok_rps"] for _ in range(3))
    want = a.target * peak
    bench.log(f"maximum: {peak:.0f} 2xx/s at 64 connections; target {want:.0f}/s")
    conns, lo, hi = None, 1, 64
    while lo <= hi:  # smallest connection count reaching the target (rate grows with it)
        mid = (lo + hi) // 2
        r = short(mid, 5)["ok_rps"]
        bench.log(f"  calibrate: {mid} connections -> {r:.0f} 2xx/s ({r / peak:.2f} of max)")
        if r >= want:
            conns, hi = mid, mid - 1
        else:
            lo = mid + 1
    conns = conns or 64

    seconds = int(a.minutes * 60)
    bench.log(f"soak: {conns} connections for {seconds} s")
    base, path = ing.url("soak")
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s",
           "-s", str(bench.BENCHES / "post.lua"), base, "--", str(a.body), path]
    t0 = time.monotonic()
    c0 = bench.cpu_ticks(ing.pids)
    wrk = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples, last = [], (t0, ing.answered())
    while wrk.poll() is None:
        time.sleep(10)
        now, n = time.monotonic(), ing.answered()
        s = dict(t=round(now - t0), rss_mib=rss_mib(ing.proc.pid),
                 rps=round((n - last[1]) / (now - last[0])))
        samples.append(s)
        last = (now, n)
        bench.log(f"  t={s['t']:4d}s  {s['rps']:7d} answers/s  RSS {s['rss_mib']} MiB")
    out = wrk.stdout.read()
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if wrk.returncode != 0 or line is None:
        sys.exit(f"wrk failed ({wrk.returncode}):\n{out}")
    w = json.loads(line[len("WRKJSON "):])
    ing.settle()
    cpu_s = (bench.cpu_ticks(ing.pids) - c0) / bench.CLK_TCK
    socket_errors = w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["timeouts"]
    soak_row = dict(point(conns, a.body), server="ingestd", executors=a.executors,
                    requests=w["requests"], non_2xx=w["non_2xx"])
    rows.append(soak_row)
    rate = (w["requests"] - w["non_2xx"]) / (w["duration_us"] / 1e6)
    # RSS from the end of the first minute (buffers, librdkafka queues and the lz4
    # contexts are allocated by then) to the end.
    steady = [s["rss_mib"] for s in samples if s["t"] >= 60] or [s["rss_mib"] for s in samples]
    rss_spread = (max(steady) - min(steady)) / min(steady)
    before_stop = ing.metrics()
    check = bench.verify(ing, "queued", rows, broker, before_stop)
    result = dict(
        minutes=a.minutes, executors=a.executors, body=a.body, connections=conns,
        max_2xx_per_s=peak, soak_2xx_per_s=round(rate), share_of_max=round(rate / peak, 3),
        p50_ms=w["lat_p50_us"] / 1000, p99_ms=w["lat_p99_us"] / 1000,
        max_ms=w["lat_max_us"] / 1000, non_2xx=w["non_2xx"], socket_errors=socket_errors,
        cpu_us_per_req=round(cpu_s * 1e6 / max(w["requests"], 1), 2),
        rss_first_min_mib=steady[0], rss_last_mib=steady[-1], rss_min_mib=min(steady),
        rss_max_mib=max(steady), rss_spread=round(rss_spread, 3), samples=samples,
        broker_check=check, commit=bench.environment().get("commit"),
    )
    checks = {
        "zero errors": w["non_2xx"] == 0 and socket_errors == 0,
        # Closed-loop pacing is coarse (one connection is ~5% of the rate here).
        f"rate within 5 points of {a.target:.0%} of max or above": rate >= (a.target - 0.05) * peak,
        "RSS flat within 10%": rss_spread <= 0.10,
        "broker holds every 2xx": check["ok"],
    }
    result["checks"] = checks
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    bench.log(f"\nsoak: {rate:.0f} 2xx/s for {a.minutes} min = {rate / peak:.2f} of the "
              f"{peak:.0f}/s maximum, {conns} connections; p50 {result['p50_ms']} ms, "
              f"p99 {result['p99_ms']} ms, max {result['max_ms']} ms; non-2xx {w['non_2xx']}, "
              f"socket errors {socket_errors}; {result['cpu_us_per_req']} us CPU/request")
    bench.log(f"RSS {min(steady)}-{max(steady)} MiB after the first minute "
              f"(spread {rss_spread:.1%}); wrote {a.out / 'soak.json'}")
    for name, ok in checks.items():
        bench.log(f"  {'ok ' if ok else 'FAILED'} {name}")
    bench.stop_tansu(tansu_pid)
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
