#!/bin/sh
# Make a tiny linux/arm64 busybox rootfs tarball from Debian's busybox-static:arm64 (the base
# of the emulation tests and of foreign-platform samples): bin/busybox, a relative symlink per
# applet, /etc/passwd and /etc/group, the usual empty dirs — made by make-busybox-rootfs.sh,
# as for this machine's own. The applets are listed by the arm64 busybox itself, run by
# qemu-aarch64-static directly (no binfmt_misc needed). Deterministic: sorted, numeric owners
# 0:0, fixed mtimes, so the same package gives the same bytes.
# Needs: dpkg --add-architecture arm64 and apt-get update (scripts/setup.sh does both), and
# qemu-user-static. BUSYBOX_ARM64_DEB=path/to/busybox-static_*_arm64.deb uses that package
# instead of downloading it.
# usage: make-arm64-busybox-rootfs.sh OUT.tar
set -eu
out=$(realpath -m "${1:?usage: make-arm64-busybox-rootfs.sh OUT.tar}")
qemu=/usr/bin/qemu-aarch64-static
[ -x "$qemu" ] || { echo "need Debian's qemu-user-static ($qemu)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
deb=${BUSYBOX_ARM64_DEB:-}
if [ -z "$deb" ]; then
  # as root into a private dir: apt's _apt user could not write there (and needs not)
  (cd "$work" && apt-get download -q -o APT::Sandbox::User=root busybox-static:arm64 >/dev/null) || {
    echo "cannot download busybox-static:arm64: run dpkg --add-architecture arm64 and apt-get update" >&2
    exit 1
  }
  deb=$(echo "$work"/busybox-static_*_arm64.deb)
fi
dpkg-deb -x "$deb" "$work/pkg"
# the same tree and tar as this machine's rootfs, with the arm64 busybox listed under QEMU
BUSYBOX="$work/pkg/bin/busybox" BUSYBOX_RUNNER="$qemu" \
  sh "$(dirname "$0")/make-busybox-rootfs.sh" "$out"
