"""A REST v3 streaming client (tests/restv3.rs), on a raw socket: requests and httpx send
the whole body before they read any of the answer, so they cannot show reports arriving
while the stream is still being sent.

    python3 v3_stream.py live HOST PORT PATH N BAD
        Sends N records, one chunk each; record BAD is of an unsupported type. After the
        first 100 it waits (up to 30 s) until a report has arrived, so the run fails unless
        reports come while the stream is still open. Reads every report, prints a JSON
        summary.
    python3 v3_stream.py slow HOST PORT PATH N
        Sends up to N records and reads nothing until sending stalls for 3 s (ingestd stopped
        reading), prints how many were sent, waits for a line on stdin (the test measures
        ingestd meanwhile), then finishes the body, reads every report and prints a summary.
"""
import json
import socket
import sys
import threading
import time


def record(i, bad):
    kind = "AVRO" if i == bad else "STRING"
    return json.dumps({"value": {"type": kind, "data": f"r{i}"}}).encode()


def chunk(data):
    return b"%x\r\n" % len(data) + data + b"\r\n"


class Reports:
    """Reads the chunked answer as it comes: its status, then JSON objects."""

    def __init__(self, sock):
        self.f = sock.makefile("rb")
        self.status = None
        self.objects = []
        self.first = threading.Event()
        self.done = threading.Event()
        self.error = None

    def run(self):
        try:
            line = self.f.readline()
            self.status = int(line.split()[1])
            headers = {}
            while True:
                line = self.f.readline().rstrip(b"\r\n")
                if not line:
                    break
                k, v = line.split(b":", 1)
                headers[k.strip().lower()] = v.strip().lower()
            assert headers.get(b"transfer-encoding") == b"chunked", headers
            dec = json.JSONDecoder()
            buf = ""
            while True:
                size = int(self.f.readline().split(b";")[0], 16)
                if size == 0:
                    self.f.readline()
                    break
                buf += self.f.read(size).decode()
                self.f.read(2)
                while True:
                    buf = buf.lstrip()
                    if not buf:
                        break
                    try:
                        obj, end = dec.raw_decode(buf)
                    except ValueError:
                        break
                    self.objects.append(obj)
                    self.first.set()
                    buf = buf[end:]
        except Exception as e:  # reported by the main thread
            self.error = repr(e)
        finally:
            self.first.set()
            self.done.set()


def head(path):
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()


def summary(r, **more):
    codes = {}
    for o in r.objects:
        codes[str(o.get("error_code"))] = codes.get(str(o.get("error_code")), 0) + 1
    out = {"status": r.status, "reports": len(r.objects), "codes": codes, "error": r.error}
    out.update(more)
    return out


def live(host, port, path, n, bad):
    s = socket.create_connection((host, port))
    r = Reports(s)
    threading.Thread(target=r.run, daemon=True).start()
    s.sendall(head(path))
    sent_when_first = None
    for i in range(n):
        s.sendall(chunk(record(i, bad)))
        if i == 99:
            if not r.first.wait(30):
                print(json.dumps({"error": "no report within 30 s of the first 100 records"}))
                return
            sent_when_first = i + 1
    s.sendall(b"0\r\n\r\n")
    r.done.wait(120)
    bad_report = r.objects[bad] if len(r.objects) > bad else None
    offsets = [o.get("offset") for o in r.objects]
    print(json.dumps(summary(r, sent_when_first=sent_when_first, bad=bad_report,
                             offsets=offsets)))


def slow(host, port, path, n):
    s = socket.create_connection((host, port))
    s.sendall(head(path))
    s.settimeout(3)
    sent = 0
    pending = b""
    while sent < n:
        if not pending:
            pending = chunk(record(sent, -1))
        try:
            k = s.send(pending)
        except socket.timeout:
            break  # stalled: ingestd stopped reading
        pending = pending[k:]
        if not pending:
            sent += 1
    print(json.dumps({"sent": sent, "stalled": sent < n}), flush=True)
    sys.stdin.readline()
    s.settimeout(None)
    r = Reports(s)
    t = threading.Thread(target=r.run, daemon=True)
    t.start()
    if pending:
        s.sendall(pending)
        sent += 1
    s.sendall(b"0\r\n\r\n")
    r.done.wait(120)
    print(json.dumps(summary(r, sent=sent)), flush=True)


if __name__ == "__main__":
    mode, host, port, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    if mode == "live":
        live(host, port, path, n, int(sys.argv[6]))
    else:
        slow(host, port, path, n)
