#!/bin/sh
# The "compiler" of the example: installs hello.sh as an executable into $1/bin.
set -eu
mkdir -p "$1/bin"
cp hello.sh "$1/bin/hello"
chmod 0755 "$1/bin/hello"
