#!/usr/bin/env bash
# Issue 35's benchmark rows: records per second and CPU per record for REST v3 streaming
# mode against REST v2 and a raw NDJSON body, the same 100 records of 256 B JSON per
# request, all three answered after Kafka's ack (v3's default contract), interleaved in
# one run (perf/ab.sh, the same binary under three names), on 1 connection and on 16.
# us/request and req/s are per request of 100 records.
#
#   perf/restv3.sh [BINARY] [--rounds N] [other perf/ab.sh options, not --conns]
#
# The v3 stream is one chunked request of 10 chunks of 10 records, to tansu's cluster id
# (`tansu_cluster`, which tests/tansu.sh's broker reports); a wrong id would show as
# non-2xx answers in the output.
set -euo pipefail
source "$(dirname "$0")/wrap.sh"
python3 - "$W" <<'PY'
import json, sys
w = sys.argv[1]
def order(i):
    o = {"id": f"order-{i:08d}", "customer": "customer-00042", "price": 1234.5, "qty": 3, "note": ""}
    o["note"] = "n" * (256 - len(json.dumps(o, separators=(",", ":"))))
    return json.dumps(o, separators=(",", ":"))
rows = [order(i) for i in range(100)]
open(f"{w}/raw.ndjson", "w").write("\n".join(rows) + "\n")
open(f"{w}/v2.json", "w").write('{"records":[' + ",".join('{"value":%s}' % r for r in rows) + "]}")
objs = ['{"value":{"type":"JSON","data":%s}}' % r for r in rows]
body = b""
for c in range(10):
    data = "".join(objs[c * 10:(c + 1) * 10]).encode()
    body += b"%x\r\n" % len(data) + data + b"\r\n"
body += b"0\r\n\r\n"
head = ("POST /v3/clusters/tansu_cluster/topics/perf/records HTTP/1.1\r\nHost: bench\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
open(f"{w}/v3.req", "wb").write(head + body)
PY
for name in raw v2 v3stream; do
    wrapper "$name"
done
printf 'BENCH_BODY_FILE=%s\nBENCH_CONTENT_TYPE=application/x-ndjson\nBENCH_HEADER=Kafka-Ack: kafka\n' "$W/raw.ndjson" >"$W/raw.env"
printf 'BENCH_BODY_FILE=%s\nBENCH_CONTENT_TYPE=application/vnd.kafka.json.v2+json\nBENCH_HEADER=Kafka-Ack: kafka\n' "$W/v2.json" >"$W/v2.env"
printf 'BENCH_RAW_REQUEST=%s\n' "$W/v3.req" >"$W/v3stream.env"
for conns in 1 16; do
    echo "=== 100 records per request, ack=kafka, $conns connection(s): raw NDJSON, REST v2, REST v3 stream"
    "$REPO/perf/ab.sh" "$W/raw" "$W/v2" "$W/v3stream" --conns "$conns" "$@"
done
