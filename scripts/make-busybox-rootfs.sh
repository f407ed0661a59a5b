#!/bin/sh
# Make a tiny busybox rootfs tarball from Debian's busybox-static: bin/busybox, a relative
# symlink per applet, /etc/passwd and /etc/group, the usual empty dirs. Deterministic: sorted,
# numeric owners 0:0, fixed mtimes, so the same busybox gives the same bytes.
# BUSYBOX=FILE takes another busybox binary (make-arm64-busybox-rootfs.sh passes an arm64 one)
# and BUSYBOX_RUNNER=PROGRAM runs it to list its applets (there: qemu-aarch64-static).
# usage: make-busybox-rootfs.sh OUT.tar
set -eu
out=$(realpath -m "${1:?usage: make-busybox-rootfs.sh OUT.tar}")
bb=${BUSYBOX:-/bin/busybox}
[ -x "$bb" ] || { echo "need Debian's busybox-static ($bb)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root"
cd "$root"
mkdir -p bin sbin usr/bin usr/sbin etc root tmp proc sys dev var/tmp home
chmod 1777 tmp var/tmp
chmod 700 root
cp "$bb" bin/busybox
chmod 755 bin/busybox
# shellcheck disable=SC2086 # BUSYBOX_RUNNER is a command word, or nothing
for applet in $(${BUSYBOX_RUNNER:-} "$bb" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > etc/passwd
printf 'root:x:0:\nnogroup:x:65534:\n' > etc/group
: > etc/hosts
: > etc/resolv.conf
find . -exec touch -h -d '2020-01-01 00:00:00 UTC' {} +
tmp_out="$out.tmp.$$"
tar --sort=name --numeric-owner --owner=0 --group=0 --mtime='2020-01-01 00:00:00 UTC' \
    --format=pax --pax-option=delete=atime,delete=ctime -C "$root" -cf "$tmp_out" .
mv "$tmp_out" "$out"
