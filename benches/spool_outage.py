#!/usr/bin/env python3
"""The durable spool absorbing a broker outage (issue 12), via `benches/run.sh --outage`.

Starts tansu, a topic and ingestd with a spool (ack=queued), runs wrk (64 keep-alive
connections, 256 B) for --before s with the broker up, then SIGSTOPs the broker for
--outage s under the same load, SIGCONTs it and keeps the load on for --after s. Prints
req/s and status codes per phase, how long the spool took to drain after the outage, the
spool's peak size, and checks the topic holds at least every 2xx answered (kcount).
Everything it starts is stopped by PID when it exits.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TANSU_SH = REPO / "tests/tansu.sh"
STARTED = []


def log(*a):
    print(*a, flush=True)


def metrics(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, value = line.rsplit(" ", 1)
        name = name_labels.split("{")[0]
        code = re.search(r'code="([^"]+)"', name_labels)
        if code:
            name += f"[{code.group(1)}]"
        m[name] = m.get(name, 0) + float(value)
    return m


def codes(m):
    return {k[len("ingestd_http_requests_total["):-1]: int(v) for k, v in m.items()
            if k.startswith("ingestd_http_requests_total[")}


def wrk(port, seconds, topic):
    out = subprocess.run(
        ["wrk", "-t1", "-c64", f"-d{seconds}s", "--latency", "-s", str(REPO / "benches/post.lua"),
         f"http://127.0.0.1:{port}", "--", "256", f"/topics/{topic}"],
        capture_output=True, text=True)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out.stdout)
    p99_ms = None
    if p99:
        p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
    return float(rps.group(1)) if rps else 0.0, p99_ms


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", type=int, default=10)
    p.add_argument("--outage", type=int, default=60)
    p.add_argument("--after", type=int, default=10)
    p.add_argument("--executors", type=int, default=1)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ingestd-outage."))
    out = subprocess.run([str(TANSU_SH), "start"], capture_output=True, text=True, check=True)
    broker, tansu_pid = out.stdout.split()
    tansu_pid = int(tansu_pid)
    STARTED.append(tansu_pid)
    topic = "outage"
    subprocess.run([str(TANSU_SH), "topic", broker, topic, "4"], check=True)
    port = 18000 + os.getpid() % 1000
    ing = subprocess.Popen(
        [str(REPO / "target/release/ingestd"), "--brokers", broker, "--default-topic", topic,
         "--listen", f"127.0.0.1:{port}", "--executors", str(args.executors),
         "--spool-dir", str(tmp / "spool")],
        stdout=subprocess.DEVNULL, stderr=open(tmp / "ingestd.log", "w"))
    STARTED.append(ing.pid)
    try:
        for _ in range(300):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        res = {}
        m0 = metrics(port)
        res["before_rps"], res["before_p99_ms"] = wrk(port, args.before, topic)
        m1 = metrics(port)
        os.kill(tansu_pid, signal.SIGSTOP)
        log(f"broker stopped for {args.outage} s under load")
        res["outage_rps"], res["outage_p99_ms"] = wrk(port, args.outage, topic)
        m2 = metrics(port)
        res["spool_bytes_at_end_of_outage"] = int(m2.get("ingestd_spool_bytes", 0))
        res["queue_records_at_end_of_outage"] = int(m2.get("ingestd_queue_records", 0))
        os.kill(tansu_pid, signal.SIGCONT)
        t_back = time.time()
        res["after_rps"], res["after_p99_ms"] = wrk(port, args.after, topic)
        # Drained: everything accepted is in Kafka and nothing waits on disk.
        while time.time() - t_back < 900:
            m = metrics(port)
            if (m.get("ingestd_queue_records", 0) == 0
                    and m.get("ingestd_records_delivered_total", 0)
                    >= m.get("ingestd_records_enqueued_total", 0)):
                break
            time.sleep(0.2)
        res["drain_s_after_broker_back"] = round(time.time() - t_back, 1)
        m3 = metrics(port)
        def delta(a, b):
            return {k: v - codes(a).get(k, 0) for k, v in codes(b).items() if k != "200"}
        res["codes_before"] = delta(m0, m1)
        res["codes_outage"] = delta(m1, m2)
        res["replayed_from_disk"] = int(m3.get("ingestd_spool_records_replayed_total", 0))
        # Produce answers only (our own GETs are 200s).
        ok_2xx = sum(v for k, v in codes(m3).items() if k in ("201", "202"))
        ing.send_signal(signal.SIGTERM)
        ing.wait(120)
        count = json.loads(subprocess.run(
            [str(REPO / "target/release/examples/kcount"), broker, topic, "3000"],
            capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        res["answered_2xx"] = ok_2xx
        res["topic_records"] = count["records"]
        res["broker_check"] = "OK" if count["records"] >= ok_2xx else "FAILED"
        log(json.dumps(res, indent=1))
        return 0 if res["broker_check"] == "OK" else 1
    finally:
        for pid in reversed(STARTED):
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    sys.exit(main())
