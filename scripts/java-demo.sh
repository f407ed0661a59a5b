#!/usr/bin/env bash
# The team-cache story end to end (issue #6), for real: `make java-demo` (as root; needs the
# network to Debian's mirrors).
#
#  1. debootstrap a minimal bookworm rootfs, pack it as a deterministic tar, build the
#     `debian-bookworm` image from it (store A) and push it to the registry;
#  2. start a docker-registry on 127.0.0.1 (storage in the work dir; stopped at exit);
#  3. builder A builds `java-base` (apt-get install openjdk-17-jdk-headless) with
#     --cache-to type=registry,mode=max and pushes it — timed;
#  4. builder B — a fresh, empty store, the contexts copied to another path — builds the app
#     FROM the pushed java-base with --cache-from (it is pulled; no Java install runs), rebuilds
#     the java-base Stepfile itself with --cache-from (its apt step must be CACHED and give
#     builder A's image config), then runs the app (its output is checked).
# Exits non-zero when an expectation fails. Work dir: $JAVA_DEMO_WORK (default build/java-demo);
# the packed rootfs.tar there is reused by later runs unless JAVA_DEMO_FRESH=1.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SB="$REPO/.venv/bin/stepbuild"
WORK=$(realpath -m "${JAVA_DEMO_WORK:-build/java-demo}")
SUITE=bookworm
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}   # deterministic layers and configs

say() { printf '\n==> %s\n' "$*"; }
fail() { printf '\njava-demo: FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

[ "$(id -u)" -eq 0 ] || fail "run as root (mounts, namespaces, debootstrap)"
[ -x "$SB" ] || fail "no $SB: run make setup first"
for tool in debootstrap docker-registry; do
  if ! command -v "$tool" >/dev/null; then
    say "apt-get install $tool"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
  fi
done

# The mirror this machine's apt uses (deb822 URIs: or one-line deb entries), else Debian's CDN.
mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
           /etc/apt/sources.list.d/*.sources 2>/dev/null \
         | grep -oE 'https?://[^ ]*/debian/?( |$)' | head -n1 | tr -d ' ' || true)
MIRROR=${JAVA_DEMO_MIRROR:-${mirror:-http://deb.debian.org/debian}}

mkdir -p "$WORK"
rm -rf "$WORK/store-a" "$WORK/store-b" "$WORK/registry" "$WORK/colleague"
export STEPBUILD_ROOT="$WORK/store-a"

# --- 1. the Debian rootfs --------------------------------------------------------------------
CTX_ROOTFS="$WORK/rootfs-context"
mkdir -p "$CTX_ROOTFS"
cp samples/java/rootfs/Stepfile "$CTX_ROOTFS/Stepfile"
t0=$(now)
if [ -s "$CTX_ROOTFS/rootfs.tar" ] && [ "${JAVA_DEMO_FRESH:-0}" != 1 ]; then
  say "reusing $CTX_ROOTFS/rootfs.tar (JAVA_DEMO_FRESH=1 to debootstrap again)"
else
  say "debootstrap --variant=minbase $SUITE from $MIRROR"
  rootfs="$WORK/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log"; fail "debootstrap"; }
  # What does not belong in an image: device nodes, kernel filesystems, apt's caches, logs.
  rm -rf "${rootfs:?}"/dev/* "$rootfs"/proc/* "$rootfs"/sys/* "$rootfs"/run/* "$rootfs"/tmp/* \
         "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
         "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* \
         "$rootfs"/debootstrap
  # RUN steps share the host's network; name resolution comes from the image's resolv.conf.
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  echo "deb $MIRROR $SUITE main" > "$rootfs/etc/apt/sources.list"
  tar --sort=name --numeric-owner --owner=0 --group=0 --mtime="@$SOURCE_DATE_EPOCH" \
      --clamp-mtime --format=pax --pax-option=delete=atime,delete=ctime \
      -C "$rootfs" -cf "$CTX_ROOTFS/rootfs.tar.tmp" .
  mv "$CTX_ROOTFS/rootfs.tar.tmp" "$CTX_ROOTFS/rootfs.tar"
  rm -rf "$rootfs"
fi
t_rootfs=$(secs "$t0" "$(now)")
say "build debian-bookworm (FROM scratch + ADD rootfs.tar /) into store A"
"$SB" build -t debian-bookworm "$CTX_ROOTFS"

# --- 2. the registry -------------------------------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REG="127.0.0.1:$port"
mkdir -p "$WORK/registry"
cat > "$WORK/registry/config.yml" <<YAML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/registry/storage}, delete: {enabled: true}}
http: {addr: "$REG", secret: "java-demo-$$"}
YAML
say "docker-registry on $REG (storage $WORK/registry/storage)"
docker-registry serve "$WORK/registry/config.yml" > "$WORK/registry/registry.log" 2>&1 &
REGISTRY_PID=$!
trap 'kill "$REGISTRY_PID" 2>/dev/null; wait "$REGISTRY_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do
  curl -fsS "http://$REG/v2/" >/dev/null 2>&1 && break
  kill -0 "$REGISTRY_PID" 2>/dev/null || { cat "$WORK/registry/registry.log"; fail "registry died"; }
  sleep 0.1
done
curl -fsS "http://$REG/v2/" >/dev/null || fail "registry did not answer on $REG"
"$SB" push -q debian-bookworm "$REG/debian:$SUITE" >/dev/null

# --- 3. builder A: java-base, cache exported, image pushed -----------------------------------
CACHE="$REG/cache/java:base"
say "builder A: build java-base --cache-to type=registry,ref=$CACHE,mode=max"
t0=$(now)
"$SB" build -t java-base:1 --cache-to "type=registry,ref=$CACHE,mode=max" samples/java/base \
  2>&1 | tee "$WORK/build-a.log"
t_base=$(secs "$t0" "$(now)")
t0=$(now)
"$SB" push java-base:1 "$REG/java-base:1"
t_push=$(secs "$t0" "$(now)")

# --- 4. builder B: a fresh, empty store, the contexts at another path ------------------------
export STEPBUILD_ROOT="$WORK/store-b"
mkdir -p "$WORK/colleague"
cp -r samples/java/base samples/java/app "$WORK/colleague/"
say "builder B (empty store $STEPBUILD_ROOT): build the app FROM $REG/java-base:1 --cache-from $CACHE"
t0=$(now)
"$SB" build -t app:1 --build-arg "JAVA_BASE=$REG/java-base:1" \
  --cache-from "type=registry,ref=$CACHE" "$WORK/colleague/app" 2>&1 | tee "$WORK/build-b-app.log"
t_app=$(secs "$t0" "$(now)")
grep -qE 'apt-get|Setting up openjdk' "$WORK/build-b-app.log" && fail "the app build installed Java"

say "builder B: rebuild java-base --cache-from $CACHE"
t0=$(now)
"$SB" build -t java-base:1 --build-arg "BASE=$REG/debian:$SUITE" \
  --cache-from "type=registry,ref=$CACHE" "$WORK/colleague/base" 2>&1 | tee "$WORK/build-b-base.log"
t_base_cached=$(secs "$t0" "$(now)")
# The progress output puts a step's status on the line after the step: "     CACHED".
awk '/^#[0-9]+ +RUN apt-get update/ {getline status; print status}' "$WORK/build-b-base.log" \
  | grep -qx ' *CACHED' || fail "the apt step of java-base was not CACHED in the fresh store"
grep -q 'Setting up openjdk' "$WORK/build-b-base.log" && fail "apt ran again in builder B"
# Same content: B's java-base has A's config (hence A's layers, by diff_id). The manifest
# digests may differ: A's base layer is the local one, B's was pulled (compressed) from the registry.
config_of() { STEPBUILD_ROOT="$1" "$SB" inspect java-base:1 \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifest"]["config"]["digest"])'; }
config_a=$(config_of "$WORK/store-a"); config_b=$(config_of "$WORK/store-b")
echo "java-base config: builder A $config_a, builder B $config_b"
[ "$config_a" = "$config_b" ] || fail "builder B's java-base differs from builder A's"

say "builder B: stepbuild run app:1"
out=$("$SB" run app:1)
echo "$out"
case "$out" in
  "Hello from Java 17."*" on Linux, built by stepbuild") ;;
  *) fail "unexpected output from the app: $out" ;;
esac

say "times (seconds)"
printf '  %-62s %6s\n' \
  "debootstrap + pack rootfs.tar" "$t_rootfs" \
  "builder A: java-base, apt install of the JDK (+ cache export)" "$t_base" \
  "builder A: push java-base" "$t_push" \
  "builder B: java-base from --cache-from (apt step CACHED)" "$t_base_cached" \
  "builder B: app FROM the pushed java-base (javac, no apt)" "$t_app"
echo "  saved on java-base: $(secs "$t_base_cached" "$t_base") s"
echo
echo "java-demo: OK"
