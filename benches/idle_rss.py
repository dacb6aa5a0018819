#!/usr/bin/env python3
"""RSS of ingestd holding N idle keep-alive connections (issue target: <= 100 MB at 10k).

    benches/idle_rss.py [N]        (needs target/release/ingestd: cargo build --release)

Starts ingestd (embedded mock cluster, 2 executors) on a free port, opens N connections,
sends one request on each so every per-connection buffer exists, leaves them idle, and
prints the RSS before and after. Exits non-zero above 100 MiB for 10k connections.
"""
import os, resource, socket, subprocess, sys, time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
if hard < n + 100:
    sys.exit(f"need {n + 100} fds, hard limit is {hard}")
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
srv = subprocess.Popen([f"{root}/target/release/ingestd", "--brokers", "embedded",
                        "--listen", "127.0.0.1:0", "--executors", "2"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
try:
    port = int(srv.stdout.readline().rsplit(":", 1)[1])
    time.sleep(1)
    rss = lambda: int(next(l for l in open(f"/proc/{srv.pid}/status") if l.startswith("VmRSS")).split()[1]) // 1024
    before = rss()
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    for s in conns:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    for s in conns:
        assert s.recv(200).startswith(b"HTTP/1.1 200")
    time.sleep(1)
    after = rss()
    print(f"ingestd RSS: {before} MiB idle, {after} MiB with {n} idle keep-alive connections "
          f"({(after - before) * 1024 // n} KiB per connection)")
    sys.exit(1 if n >= 10000 and after > 100 else 0)
finally:
    srv.terminate()
    srv.wait()
