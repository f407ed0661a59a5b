#!/bin/sh
# Writes the `hello` program of one target architecture (what a cross compiler would make in
# a real project): a shell script that knows, from the build, what it was built for. Runs on
# the build machine; the target architecture is its only argument ($TARGETARCH).
set -eu
arch=${1:?usage: make-hello.sh TARGETARCH}
case "$arch" in
  amd64) cpu="x86-64" ;;
  arm64) cpu="AArch64" ;;
  arm) cpu="32-bit ARM" ;;
  *) echo "make-hello.sh: no target $arch" >&2; exit 1 ;;
esac
built_on=$(uname -m)
cat <<SCRIPT
#!/bin/sh
echo "hello from a $cpu build ($arch), made on $built_on, running on \$(uname -m)"
SCRIPT
