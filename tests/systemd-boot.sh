#!/usr/bin/env bash
# Boots the real systemd as PID 1 of private namespaces, for tests/systemd_boot.rs.
#
#   tests/systemd-boot.sh check        exit 1 naming the Debian package when a tool is missing
#   tests/systemd-boot.sh boot DIR     (as root) run systemd in the foreground; its host PID
#                                      goes to DIR/pid once the namespaces are set up
#   tests/systemd-boot.sh cleanup DIR  remove the cgroups a finished boot left behind
#
# What systemd gets: new PID, mount, UTS, IPC, network and cgroup namespaces (unshare);
# as `/` an overlay of the host's root file system with a tmpfs upper layer (nothing it
# writes reaches the host); a fresh /proc; /sys read-only; at /sys/fs/cgroup a read-only
# tmpfs holding only the `systemd` and `unified` hierarchies, rooted at a cgroup of its
# own (DIR's name under both host hierarchies, the cgroup namespace's root); a private
# /dev (null, zero, full, random, urandom, tty bound from the host, a new devpts, and
# DIR/console.log as /dev/console); tmpfs /run and /tmp; an empty /etc/fstab; and a tmpfs
# /etc/systemd/system, so that none of the host's enabled units start. Units that touch
# kernel-wide state or devices are masked there. `container=other` tells systemd that it
# runs in a container. Every mount lives in the new mount namespace only: it is gone when
# the namespace's last process is. `kill -s SIGRTMIN+4 <pid>` powers systemd off;
# `nsenter -t <pid> -a systemctl ...` talks to it.
set -euo pipefail

need() { # need COMMAND PACKAGE
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "systemd-boot: $1 not found: install Debian's $2 package (tests/deps.sh does)" >&2
        exit 1
    fi
}

check() {
    need unshare util-linux
    need nsenter util-linux
    need pivot_root util-linux
    need systemctl systemd
    if [ ! -x /usr/lib/systemd/systemd ]; then
        echo "systemd-boot: /usr/lib/systemd/systemd not found: install Debian's systemd package (tests/deps.sh does)" >&2
        exit 1
    fi
    if [ ! -d /sys/fs/cgroup/systemd ] && [ ! -f /sys/fs/cgroup/cgroup.controllers ] &&
        [ ! -d /sys/fs/cgroup/unified ]; then
        echo "systemd-boot: no cgroup file system under /sys/fs/cgroup" >&2
        exit 1
    fi
}

# Units masked in the booted system: kernel-wide settings, devices, the host's hardware.
MASK=(
    systemd-sysctl.service systemd-modules-load.service kmod-static-nodes.service
    systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
    systemd-udev-trigger.service systemd-udev-settle.service systemd-hwdb-update.service
    systemd-tmpfiles-setup-dev.service systemd-remount-fs.service systemd-fsck-root.service
    systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount
    sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount
    dev-hugepages.mount dev-mqueue.mount systemd-pstore.service systemd-timesyncd.service
    systemd-firstboot.service systemd-machine-id-commit.service getty.target
    console-getty.service systemd-logind.service networking.service ifupdown-pre.service
)

# The cgroup both hierarchies give this boot (its cgroup namespace's root).
cgroups() { # cgroups DIR
    local name
    name=ingestd-boot-$(basename "$1")
    for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
        [ -d "$h" ] && echo "$h/$name"
    done
    # A pure cgroup v2 host: the hierarchy is /sys/fs/cgroup itself.
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        echo "/sys/fs/cgroup/$name"
    fi
    return 0
}

boot() {
    local dir=$1
    check
    [ "$(id -u)" = 0 ] || { echo "systemd-boot: needs root" >&2; exit 1; }
    mkdir -p "$dir/root" "$dir/t"
    : >"$dir/console.log"
    # This process (then unshare and systemd) moves into a cgroup of its own.
    local cg
    for cg in $(cgroups "$dir"); do
        mkdir -p "$cg"
        echo $$ >"$cg/cgroup.procs"
    done
    export SB_DIR=$dir SB_MASK="${MASK[*]}"
    # --kill-child: if unshare dies (the test was killed), systemd gets SIGKILL, and with
    # it every process of the PID namespace.
    exec unshare --fork --pid --mount --uts --ipc --net --cgroup --propagation private \
        --kill-child=SIGKILL bash -c "$(declare -f inner); inner"
}

# Runs as PID 1 of the new namespaces until it execs systemd.
inner() {
    set -euo pipefail
    local dir=$SB_DIR R=$SB_DIR/root hostpid
    # /proc is still the host's: this is systemd's PID as the host sees it.
    read -r hostpid _ </proc/self/stat
    hostname ingestd-boot
    mount -t tmpfs -o mode=0755 tmpfs "$dir/t"
    mkdir "$dir/t/upper" "$dir/t/work"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$dir/t/upper,workdir=$dir/t/work" "$R"
    mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
    mount -t tmpfs -o mode=0755,nosuid,nodev,noexec tmpfs "$R/sys/fs/cgroup"
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
    else
        mkdir "$R/sys/fs/cgroup/systemd" "$R/sys/fs/cgroup/unified"
        mount -t cgroup -o none,name=systemd,nosuid,nodev,noexec cgroup "$R/sys/fs/cgroup/systemd"
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup/unified"
        mount -o remount,bind,ro "$R/sys/fs/cgroup"
    fi
    mount -t tmpfs -o mode=0755,nosuid tmpfs "$R/dev"
    local d
    for d in null zero full random urandom tty; do
        touch "$R/dev/$d"
        mount --bind "/dev/$d" "$R/dev/$d"
    done
    touch "$R/dev/console"
    mount --bind "$dir/console.log" "$R/dev/console"
    mkdir "$R/dev/pts" "$R/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$R/dev/pts"
    ln -s pts/ptmx "$R/dev/ptmx"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
    ln -s /proc/self/fd "$R/dev/fd"
    ln -s /proc/self/fd/0 "$R/dev/stdin"
    ln -s /proc/self/fd/1 "$R/dev/stdout"
    ln -s /proc/self/fd/2 "$R/dev/stderr"
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
    mount -t tmpfs -o mode=0755 tmpfs "$R/etc/systemd/system"
    for d in $SB_MASK; do
        ln -s /dev/null "$R/etc/systemd/system/$d"
    done
    # Written to the overlay's upper layer: the host's files stay as they are.
    echo "# ingestd-boot: no mounts" >"$R/etc/fstab"
    mkdir "$R/.oldroot"
    echo "$hostpid" >"$dir/pid"
    cd "$R"
    pivot_root . .oldroot
    umount -l /.oldroot
    rmdir /.oldroot
    exec env -i container=other PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /usr/lib/systemd/systemd --unit=basic.target --show-status=no \
        </dev/null >/dev/console 2>&1
}

cleanup() {
    local dir=$1 cg
    for cg in $(cgroups "$dir"); do
        [ -d "$cg" ] || continue
        # Children first; a cgroup with a process left in it stays (and is reported).
        find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
        if [ -d "$cg" ]; then
            echo "systemd-boot: $cg still there: $(cat "$cg/cgroup.procs" 2>/dev/null | tr '\n' ' ')" >&2
        fi
    done
}

cmd=${1:-}
shift || true
case "$cmd" in
    check) check ;;
    boot) boot "$1" ;;
    cleanup) cleanup "$1" ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
esac
