#!/usr/bin/env bash
# Fuzzes ingestd's parsers for SECONDS in all (default 60): half of it the HTTP parser
# (target `parse`: parse_head, ChunkedDecoder), a quarter the PROXY protocol header parser
# (target `proxy`: http::proxy::parse), a quarter the one-pass schema judge against the
# full one (target `schema`: schema::flat), one after the other.
#
#   fuzz/run.sh [SECONDS]
#
# Installs cargo-fuzz once into ~/.cache/ingestd/cargo-fuzz (reused afterwards) and uses
# the stable toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags; no nightly is
# needed). The kept corpora fuzz/corpus/<target> are read, never written: new inputs go to
# fuzz/target/corpus-work (parse), fuzz/target/corpus-work-proxy and -schema. A crash
# leaves its input in fuzz/artifacts/<target>/ and makes this script exit non-zero (the
# later targets do not run then). To keep what a long run found, copy the work directory into
# the kept corpus and shrink both again (keep each well under 2 MB):
#   fuzz/run.sh --cmin
# The kept `parse` corpus was seeded from every case of tests/hostile.rs:
#   HOSTILE_SEEDS_DIR=dir cargo test --test hostile -- --ignored seeds
# The `proxy` corpus from valid v1/v2 headers (with TLVs, a CRC32C, LOCAL, UNKNOWN) with an
# HTTP request or a ClientHello after them, and both of those bare.
set -euo pipefail
cd "$(dirname "$0")"

VERSION=0.13.2
ROOT=${CARGO_FUZZ_ROOT:-$HOME/.cache/ingestd/cargo-fuzz}
CARGO_FUZZ=$ROOT/bin/cargo-fuzz
if ! "$CARGO_FUZZ" --version 2>/dev/null | grep -q "$VERSION"; then
    echo "fuzz: installing cargo-fuzz $VERSION into $ROOT (first run only)" >&2
    cargo install cargo-fuzz --version "$VERSION" --locked --root "$ROOT" >&2
fi

export RUSTC_BOOTSTRAP=1
# The C libraries behind ingestd's Kafka client (zstd, librdkafka) are linked but never
# run here; cc would instrument them for ASan and librdkafka's configure then fails.
export CFLAGS="${CFLAGS:-} -fno-sanitize=address"
export CXXFLAGS="${CXXFLAGS:-} -fno-sanitize=address"

fuzz() { "$CARGO_FUZZ" "$@"; }

# -max_len: parse: room for a 4 KiB chunk line or a head at the default limits; proxy:
# past the longest header (2064 bytes), so the "always decided by then" check runs.
PARSE_MAX_LEN=8192
PROXY_MAX_LEN=4096
SCHEMA_MAX_LEN=1024

if [ "${1:-}" = "--cmin" ]; then
    fuzz cmin parse corpus/parse -- -max_len=$PARSE_MAX_LEN
    fuzz cmin proxy corpus/proxy -- -max_len=$PROXY_MAX_LEN
    fuzz cmin schema corpus/schema -- -max_len=$SCHEMA_MAX_LEN
    exit
fi

SECONDS_TO_RUN=${1:-60}
PARSE_SECONDS=$(( SECONDS_TO_RUN / 2 ))
[ "$PARSE_SECONDS" -ge 1 ] || PARSE_SECONDS=1
PROXY_SECONDS=$(( SECONDS_TO_RUN / 4 ))
[ "$PROXY_SECONDS" -ge 1 ] || PROXY_SECONDS=1
SCHEMA_SECONDS=$(( SECONDS_TO_RUN - PARSE_SECONDS - PROXY_SECONDS ))
[ "$SCHEMA_SECONDS" -ge 1 ] || SCHEMA_SECONDS=1
WORK=target/corpus-work
WORK_PROXY=target/corpus-work-proxy
WORK_SCHEMA=target/corpus-work-schema
mkdir -p "$WORK" "$WORK_PROXY" "$WORK_SCHEMA"
fuzz build parse
fuzz build proxy
fuzz build schema
echo "fuzz: parse for ${PARSE_SECONDS} s, proxy for ${PROXY_SECONDS} s, schema for ${SCHEMA_SECONDS} s" >&2
# One target: NAME WORK_DIR MAX_LEN SECONDS (its corpus and dictionary by its name).
run() {
    fuzz run "$1" "$2" "corpus/$1" -- \
        -dict="$1.dict" \
        -max_len="$3" \
        -max_total_time="$4" \
        -timeout=10 \
        -rss_limit_mb=2048 \
        -print_final_stats=1
}
run parse "$WORK" $PARSE_MAX_LEN "$PARSE_SECONDS"
run proxy "$WORK_PROXY" $PROXY_MAX_LEN "$PROXY_SECONDS"
run schema "$WORK_SCHEMA" $SCHEMA_MAX_LEN "$SCHEMA_SECONDS"
