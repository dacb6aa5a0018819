#!/usr/bin/env bash
# Issue 34's benchmark rows: CPU per record with a JSON Schema on the topic against none,
# at 64 connections, interleaved A/B (perf/ab.sh) with the same binary and the same
# request bytes: a 256 B JSON object against a 5-property schema, and NDJSON of 100 such
# lines per request (ab.sh's us/request is then per 100 records: the ratio is per record).
#
#   perf/schemas.sh [BINARY] [--rounds N] [other perf/ab.sh options]
#
# BINARY defaults to target/release/ingestd (built first). SCHEMAS_BENCH=one,ndjson picks.
set -euo pipefail
source "$(dirname "$0")/wrap.sh"

cat >"$W/order.json" <<'JSON'
{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["id", "customer", "price", "qty", "note"],
  "properties": {
    "id": {"type": "string", "maxLength": 64},
    "customer": {"type": "string", "minLength": 1},
    "price": {"type": "number", "minimum": 0},
    "qty": {"type": "integer", "minimum": 1},
    "note": {"type": "string"}
  }
}
JSON
python3 - "$W" <<'PY'
import json, sys
w = sys.argv[1]
def order(i):
    o = {"id": f"order-{i:08d}", "customer": "customer-00042", "price": 1234.5, "qty": 3, "note": ""}
    pad = 256 - len(json.dumps(o, separators=(",", ":")))
    o["note"] = "n" * pad
    s = json.dumps(o, separators=(",", ":"))
    assert len(s) == 256, len(s)
    return s
open(f"{w}/one.json", "w").write(order(1))
open(f"{w}/lines.ndjson", "w").write("\n".join(order(i) for i in range(100)) + "\n")
PY
printf '[topic.perf]\nschema = "%s"\n' "$W/order.json" >"$W/schema.toml"
: >"$W/none.toml"
wrapper noschema --config "$W/none.toml"
wrapper schema --config "$W/schema.toml"

WHICH=${SCHEMAS_BENCH:-one,ndjson}
if [[ $WHICH == *one* ]]; then
    echo "=== a 256 B JSON object per request: no schema against a 5-property schema"
    BENCH_BODY_FILE=$W/one.json BENCH_CONTENT_TYPE=application/json \
        "$REPO/perf/ab.sh" "$W/noschema" "$W/schema" "$@"
fi
if [[ $WHICH == *ndjson* ]]; then
    echo "=== NDJSON, 100 such lines per request (us/request = 100 records)"
    BENCH_BODY_FILE=$W/lines.ndjson BENCH_CONTENT_TYPE=application/x-ndjson \
        "$REPO/perf/ab.sh" "$W/noschema" "$W/schema" "$@"
fi
