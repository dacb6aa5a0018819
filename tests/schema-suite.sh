#!/usr/bin/env bash
# The official JSON Schema Test Suite (json-schema-org/JSON-Schema-Test-Suite), for
# tests/schema_suite.rs. It is not vendored here: it comes from the sdist of Python's
# `jsonschema` on PyPI, which ships a copy under json/tests, fetched once into
# ~/.cache/ingestd (sha256 checked against PyPI's index). Prints the suite's directory.
#
#   tests/schema-suite.sh        fetch if missing, print the directory
set -euo pipefail
VERSION=4.26.0
CACHE=${SCHEMA_SUITE_CACHE:-$HOME/.cache/ingestd/json-schema-test-suite-$VERSION}
if [ ! -f "$CACHE/.complete" ]; then
    rm -rf "$CACHE"
    mkdir -p "$CACHE"
    python3 - "$VERSION" "$CACHE" <<'PY' >&2
import hashlib, io, re, sys, tarfile, urllib.request
version, dest = sys.argv[1], sys.argv[2]
# PyPI's simple index (what pip reads): the sdist's link carries its sha256.
index = urllib.request.urlopen("https://pypi.org/simple/jsonschema/", timeout=60).read().decode()
name = f"jsonschema-{version}.tar.gz"
link = next(l for l in re.findall(r'href="([^"]+)"', index) if f"/{name}#sha256=" in l)
url, digest = link.split("#sha256=")
data = urllib.request.urlopen(url, timeout=120).read()
if hashlib.sha256(data).hexdigest() != digest:
    sys.exit("tests/schema-suite.sh: the sdist's sha256 does not match PyPI's")
prefix = f"jsonschema-{version}/json/"
with tarfile.open(fileobj=io.BytesIO(data)) as t:
    for m in t.getmembers():
        if m.name.startswith(prefix) and m.isfile():
            m.name = m.name[len(prefix):]
            t.extract(m, dest)
print(f"JSON Schema Test Suite from jsonschema {version} in {dest}")
PY
    touch "$CACHE/.complete"
fi
echo "$CACHE"
