#!/usr/bin/env bash
# Issue 33's benchmark rows: CPU per request at 64 connections with 100 tenants (static
# tokens, budgets) and with a JWT, each against no authentication, interleaved A/B
# (perf/ab.sh) with the same binary and the same request bytes (every request carries
# the Authorization header; a server without authentication ignores it).
#
#   perf/tenants.sh [BINARY] [--rounds N] [other perf/ab.sh options]
#
# BINARY defaults to target/release/ingestd (built first). The JWT is EdDSA, signed with
# the test key tests/data/jwt/ed25519-a (openssl), verified once per connection (cached).
set -euo pipefail
source "$(dirname "$0")/wrap.sh"

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

# 100 tenants, each with a token, the perf topic, and budgets far above the load (the
# budget path runs, nothing is refused).
tenants() {
    for i in $(seq 1 100); do
        printf '[tenants.t%d]\ntokens = ["token-%d-%s"]\ntopics = ["perf"]\n' "$i" "$i" "$(printf '%032d' "$i")"
        printf 'requests_per_sec = 1e9\nbytes_per_sec = 1e12\nburst_secs = 1.0\n\n'
    done
}
tenants >"$W/t100.toml"
{
    tenants
    printf '[jwt]\njwks_file = "%s"\n[[jwt.issuers]]\nissuer = "https://bench"\naudiences = ["ingestd"]\ntenant = "t57"\n' \
        "$REPO/tests/data/jwt/jwks.json"
} >"$W/jwt.toml"

H=$(printf '{"alg":"EdDSA","kid":"ed25519-a","typ":"JWT"}' | b64url)
P=$(printf '{"iss":"https://bench","aud":"ingestd","exp":4102444800}' | b64url)
printf '%s.%s' "$H" "$P" >"$W/signing-input" # Ed25519 signs a file, not a pipe
S=$(openssl pkeyutl -sign -rawin -in "$W/signing-input" -keyform DER \
    -inkey "$REPO/tests/data/jwt/ed25519-a.key.der" | b64url)
JWT="$H.$P.$S"

: >"$W/none.toml"
wrapper none --config "$W/none.toml"
wrapper tenants100 --config "$W/t100.toml"
{ printf 'tenant_header = ""\n'; tenants; } >"$W/t100-nohdr.toml"
wrapper tenants100-noheader --config "$W/t100-nohdr.toml"
wrapper jwt --config "$W/jwt.toml"

WHICH=${TENANTS_BENCH:-tenants,noheader,jwt}
if [[ $WHICH == *tenants* ]]; then
echo "=== no authentication against 100 tenants with static tokens and budgets"
BENCH_AUTH="token-57-$(printf '%032d' 57)" "$REPO/perf/ab.sh" "$W/none" "$W/tenants100" "$@"
fi
if [[ $WHICH == *noheader* ]]; then
echo "=== no authentication against 100 tenants, tenant_header = \"\" (no record header)"
BENCH_AUTH="token-57-$(printf '%032d' 57)" "$REPO/perf/ab.sh" "$W/none" "$W/tenants100-noheader" "$@"
fi
if [[ $WHICH == *jwt* ]]; then
echo "=== no authentication against a JWT (EdDSA, verified once per connection)"
BENCH_AUTH=$JWT "$REPO/perf/ab.sh" "$W/none" "$W/jwt" "$@"
fi
