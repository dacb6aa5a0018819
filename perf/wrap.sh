# Sourced by the comparison wrappers (perf/tenants.sh, perf/schemas.sh, perf/restv3.sh):
# REPO; BIN, the binary named by the first argument (shifted off) or else
# target/release/ingestd, built first; W, a work directory removed at exit; and
# `wrapper NAME [ARGS...]`, which writes $W/NAME: the binary with those arguments, for
# perf/ab.sh to run under that name.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-}
if [ -z "$BIN" ] || [ "${BIN#--}" != "$BIN" ]; then
    (cd "$REPO" && cargo build --release --bin ingestd)
    BIN=$REPO/target/release/ingestd
else
    shift
fi
BIN=$(realpath "$BIN")
W=$(mktemp -d "/tmp/ingestd-$(basename "$0" .sh)-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT

wrapper() {
    local name=$1
    shift
    printf '#!/bin/sh\nexec %s %s "$@"\n' "$BIN" "$*" >"$W/$name"
    chmod +x "$W/$name"
}
