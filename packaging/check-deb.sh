#!/usr/bin/env bash
# Checks a built ingestd .deb: files and modes, conffiles, dependencies, maintainer
# scripts, and that what it ships is what the repository's tests checked.
#
#   packaging/check-deb.sh [DEB]      without DEB, builds one with packaging/build-deb.sh
#
# Needs dpkg-deb (package dpkg). Prints "N passed, 0 failed" and exits 0 when all hold.
set -euo pipefail
cd "$(dirname "$0")/.."

deb=${1:-$(packaging/build-deb.sh)}
[ -f "$deb" ] || { echo "check-deb: no such file: $deb" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

passed=0 failed=0
check() { # check DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@" >/dev/null 2>&1; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: $what" >&2
    fi
}

dpkg-deb --contents "$deb" >"$work/contents"
dpkg-deb --field "$deb" >"$work/control"
dpkg-deb --control "$deb" "$work/DEBIAN"
dpkg-deb --extract "$deb" "$work/root"
echo "check-deb: $deb" >&2
cat "$work/contents" >&2

has() { grep -Eq "^$1 +[^ ]+ +[0-9]+ [0-9-]+ [0-9:]+ \\./$2\$" "$work/contents"; }
check "binary at /usr/bin/ingestd, mode 755" has '-rwxr-xr-x' usr/bin/ingestd
check "ingestd.service in /usr/lib/systemd/system" has '-rw-r--r--' usr/lib/systemd/system/ingestd.service
check "ingestd@.service in /usr/lib/systemd/system" has '-rw-r--r--' 'usr/lib/systemd/system/ingestd@\.service'
check "config at /etc/ingestd/ingestd.toml" has '-rw-r--r--' etc/ingestd/ingestd.toml
check "OPERATING.md in /usr/share/doc/ingestd" has '-rw-r--r--' usr/share/doc/ingestd/OPERATING.md
check "Prometheus alert rules in /usr/share/ingestd/prometheus" has '-rw-r--r--' usr/share/ingestd/prometheus/ingestd-alerts\.yml
check "/etc/ingestd/ingestd.toml is a conffile" grep -qx /etc/ingestd/ingestd.toml "$work/DEBIAN/conffiles"
check "Package: ingestd" grep -qx 'Package: ingestd' "$work/control"
check "Depends on adduser" grep -Eq '^Depends: .*\badduser\b' "$work/control"
check "Depends on libc6 (from \$auto)" grep -Eq '^Depends: .*\blibc6\b' "$work/control"
check "Depends on libssl3 (TLS for Kafka)" grep -Eq '^Depends: .*\blibssl3' "$work/control"

post=$work/DEBIAN/postinst
check "postinst exists and is executable" test -x "$post"
check "postinst creates the system user" grep -q 'adduser --system --group' "$post"
check "postinst got the systemd snippets (#DEBHELPER# replaced)" bash -c "! grep -q '#DEBHELPER#' '$post' && grep -q 'deb-systemd-helper' '$post'"
check "postinst reloads systemd" grep -q 'daemon-reload' "$post"
check "postinst does not start the service on install" bash -c "! grep -Eq 'deb-systemd-invoke (start|restart) ' '$post'"
check "postinst try-restarts a running service on upgrade" grep -q 'deb-systemd-invoke try-restart ingestd.service' "$post"
check "postinst does not enable the service" bash -c "! grep -q 'deb-systemd-helper enable' '$post' || grep -q 'was-enabled' '$post'"
check "postinst is valid sh" sh -n "$post"
check "prerm stops the service on remove" grep -q 'deb-systemd-invoke stop ingestd.service' "$work/DEBIAN/prerm"
check "postrm purges the user" grep -q 'deluser --system' "$work/DEBIAN/postrm"
check "postrm is valid sh" sh -n "$work/DEBIAN/postrm"

check "shipped ingestd.service = systemd/ingestd.service" cmp systemd/ingestd.service "$work/root/usr/lib/systemd/system/ingestd.service"
check "shipped ingestd@.service = systemd/ingestd@.service" cmp systemd/ingestd@.service "$work/root/usr/lib/systemd/system/ingestd@.service"
check "shipped config = packaging/ingestd.toml" cmp packaging/ingestd.toml "$work/root/etc/ingestd/ingestd.toml"
check "shipped alert rules = packaging/prometheus/ingestd-alerts.yml (tested by tests/prometheus.rs)" cmp packaging/prometheus/ingestd-alerts.yml "$work/root/usr/share/ingestd/prometheus/ingestd-alerts.yml"
check "the alert rules are not a conffile (/usr/share: copy them to change them)" bash -c "! grep -q ingestd-alerts '$work/DEBIAN/conffiles'"
check "shipped binary is stripped (debug info is in ingestd-dbgsym)" bash -c "! readelf -S '$work/root/usr/bin/ingestd' | grep -q debug_info"
check "shipped binary runs: --version" "$work/root/usr/bin/ingestd" --version
check "shipped binary accepts the shipped config" env -u INGESTD_CONFIG "$work/root/usr/bin/ingestd" --check-config --config "$work/root/etc/ingestd/ingestd.toml"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
