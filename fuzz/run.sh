#!/usr/bin/env bash
# Fuzzes ingestd's HTTP parser (parse_head, ChunkedDecoder) for SECONDS (default 60).
#
#   fuzz/run.sh [SECONDS]
#
# Installs cargo-fuzz once into ~/.cache/ingestd/cargo-fuzz (reused afterwards) and uses
# the stable toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags; no nightly is
# needed). The kept corpus fuzz/corpus/parse is read, never written: new inputs go to
# fuzz/target/corpus-work. A crash leaves its input in fuzz/artifacts/parse/ and makes
# this script exit non-zero. To keep what a long run found, copy fuzz/target/corpus-work/*
# into fuzz/corpus/parse and shrink it again (keep it well under 2 MB):
#   fuzz/run.sh --cmin
# The kept corpus was seeded from every case of tests/hostile.rs:
#   HOSTILE_SEEDS_DIR=dir cargo test --test hostile -- --ignored seeds
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

if [ "${1:-}" = "--cmin" ]; then
    fuzz cmin parse corpus/parse -- -max_len=8192
    exit
fi

SECONDS_TO_RUN=${1:-60}
WORK=target/corpus-work
mkdir -p "$WORK"
fuzz build parse
# -max_len: room for a 4 KiB chunk line or a head at the default limits.
fuzz run parse "$WORK" corpus/parse -- \
    -dict=parse.dict \
    -max_len=8192 \
    -max_total_time="$SECONDS_TO_RUN" \
    -timeout=10 \
    -rss_limit_mb=2048 \
    -print_final_stats=1
