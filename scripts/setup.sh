#!/usr/bin/env bash
# Set up everything stepbuild's demo and tests need on a fresh machine of this kind:
# Debian packages (as root), then a virtualenv in .venv with stepbuild and its test tools.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# busybox-static: the samples' base; skopeo, umoci: interop checks of the OCI store;
# git: ADD of git URLs (and the git server of its tests); docker-registry, apache2-utils
# (htpasswd), openssl: the real OCI registry the registry tests start on 127.0.0.1.
# podman, runc: the interop test that loads and runs our archives, and the unprivileged
# containers stepbuild is tested in (tests/integration/containers.py; crun refuses this host's
# hybrid cgroup layout, so runc).
# buildah: makes an image our import test uses as a FROM base.
# debootstrap: the Debian bookworm rootfs of the java demo (tests/integration/test_java_demo.py).
# iproute2 (ip): a TEST-NET address on lo for the off-loopback registry and network tests.
# slirp4netns: the private network of RUN steps (stepbuild/sandbox/network.py).
# golang-github-containers-common (/usr/share/containers/seccomp.json), libseccomp2: the
# seccomp filter of every RUN, and the profile the test containers run under and derive their
# no-user-namespace one from (podman brings both; named so they stay if podman goes).
# gcc, libc6-dev: the static syscall probe of tests/integration/test_seccomp.py and
# test_container_env.py.
# uidmap (newuidmap, newgidmap): rootless stepbuild maps a user's /etc/subuid ranges with them;
# python3-venv: tests/integration/test_rootless.py makes a venv its test users can run.
# fuse-overlayfs: rootless overlay where the kernel refuses one in a user namespace
# (stepbuild/sandbox/fuse_overlay.py); procps (pgrep): its tests look for a daemon left.
# shellcheck: tests/integration/test_ci_example.py lints examples/ci's shell.
# zsh, fish: the completion scripts of `stepbuild completion` are checked by each shell.
# qemu-user-static: RUN steps of foreign platforms (linux/arm64, ...), registered in binfmt_misc
# on demand by stepbuild/sandbox/binfmt.py; its qemu-aarch64-static also lists the applets of
# scripts/make-arm64-busybox-rootfs.sh, which downloads busybox-static:arm64 (so arm64 is a
# dpkg foreign architecture, below).
APT_PACKAGES=(busybox-static skopeo umoci git docker-registry apache2-utils openssl podman runc
              buildah debootstrap iproute2 golang-github-containers-common libseccomp2 gcc
              libc6-dev slirp4netns uidmap python3-venv fuse-overlayfs procps shellcheck zsh
              fish qemu-user-static)

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to $1" >&2
    exit 1
  fi
}

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  need_root "add arm64 as a dpkg foreign architecture"
  echo "setup: dpkg --add-architecture arm64"
  dpkg --add-architecture arm64
  apt-get update -qq
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  need_root "install: ${missing[*]}"
  echo "setup: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
touch .venv/.installed
