#!/usr/bin/env bash
# Builds the Debian package: target/debian/ingestd_<version>-1_<arch>.deb, plus
# ingestd-dbgsym_<version>-1_<arch>.ddeb with the debug info for gdb/perf/coredumpctl.
#
#   packaging/build-deb.sh            release build + .deb; prints the .deb's path last
#
# Installs cargo-deb once into $CARGO_DEB_CACHE (default ~/.cache/ingestd/cargo-deb) and
# reuses it afterwards. Needs dpkg-dev (dpkg-shlibdeps for the $auto dependencies), which
# Debian's build machines and this project's machine image have.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
CACHE=${CARGO_DEB_CACHE:-$HOME/.cache/ingestd/cargo-deb}
BIN=$CACHE/bin/cargo-deb

if ! [ -x "$BIN" ] || ! "$BIN" --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
    echo "build-deb: installing cargo-deb $CARGO_DEB_VERSION into $CACHE (first run only)" >&2
    mkdir -p "$CACHE"
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --root "$CACHE" >&2
fi

# cargo-deb runs `cargo build --release` itself (same target dir as every other build).
# It prints the paths it wrote: the .deb, and the -dbgsym .ddeb with the debug info.
out=$("$BIN" --locked "$@" | grep '\.deb$' | tail -n 1)
[ -f "$out" ] || { echo "build-deb: cargo-deb did not report a .deb (got: $out)" >&2; exit 1; }
echo "$out"
