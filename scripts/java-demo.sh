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
# Exits non-zero when an expectation fails; tests/integration/test_java_demo.py runs it.
#
# Environment:
#   JAVA_DEMO_WORK    work dir (default build/java-demo, relative to the repo). About 2.8 GB
#                     while it runs; removed at exit.
#   JAVA_DEMO_KEEP=1  keep the work dir at exit (the stores, the registry storage, the logs);
#                     a later run then reuses its rootfs.tar instead of debootstrapping again.
#   JAVA_DEMO_FRESH=1 debootstrap again even if a kept work dir has a rootfs.tar.
#   JAVA_DEMO_MIRROR  the Debian mirror (default: the one this machine's apt uses).
#
# Why the work dir is a fixed path under the repo's build/ and not a fresh dir under $TMPDIR:
# a run killed with SIGKILL (no exit trap) then leaves at most one work dir, which the next run
# reclaims, instead of one 2.8 GB orphan per killed run; build/ is gitignored and `make clean`
# removes it; and it sits on the checkout's filesystem, where the stores' overlay mounts are
# known to work, rather than on a $TMPDIR that may be a RAM-backed tmpfs. A lock file beside it
# (<work>.lock) makes two runs with the same work dir take turns.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SB="$REPO/.venv/bin/stepbuild"
PY="$REPO/.venv/bin/python"
WORK=$(realpath -m "${JAVA_DEMO_WORK:-build/java-demo}")
MARK="$WORK/.java-demo-work"   # says "this dir is ours to delete"
SUITE=bookworm
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}   # deterministic layers and configs

say() { printf '\n==> %s\n' "$*"; }
fail() { printf '\njava-demo: FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
T_START=$(now)

# retry TRIES DELAY CMD...: run CMD until it succeeds, at most TRIES times, sleeping DELAY
# seconds (doubled each time) in between. For the steps that need the network.
retry() {
  local tries=$1 delay=$2 n=1
  shift 2
  until "$@"; do
    [ "$n" -lt "$tries" ] || return 1
    printf 'java-demo: attempt %d/%d failed: %s; retrying in %d s\n' "$n" "$tries" "$*" "$delay" >&2
    sleep "$delay"
    delay=$((delay * 2)) n=$((n + 1))
  done
}

# http_ok URL: does a GET of URL answer 2xx within 10 s? (Python, so curl is not a dependency.)
# On failure, the reason is on stderr.
http_ok() {
  "$PY" -c 'import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=10).close()
except Exception as e:
    sys.exit(f"{sys.argv[1]}: {e}")' "$1"
}

# Mounts at or under the work dir in this mount namespace (there should never be any: stepbuild
# and debootstrap mount only inside private namespaces). rm -rf must never run through one.
mounts_under_work() { awk -v w="$WORK" '$5 == w || index($5, w "/") == 1 { print $5 }' /proc/self/mountinfo; }

[ "$(id -u)" -eq 0 ] || fail "run as root (mounts, namespaces, debootstrap)"
[ -x "$SB" ] || fail "no $SB: run make setup first"
case "$WORK" in
  / | "$REPO" | "$HOME" | /root | /tmp | /var | /var/tmp) fail "refusing JAVA_DEMO_WORK=$WORK (it is removed at exit)" ;;
esac
for tool in debootstrap docker-registry; do
  if ! command -v "$tool" >/dev/null; then
    say "apt-get install $tool (scripts/setup.sh normally does it)"
    retry 3 5 sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                     apt-get install -y -qq --no-install-recommends $tool >/dev/null" \
      || fail "could not install $tool"
  fi
done

# --- the work dir: one run at a time, stale state from a killed run reclaimed ----------------
mkdir -p "$(dirname "$WORK")"
exec 9>"$WORK.lock"
if ! flock -n 9; then
  say "another java-demo is using $WORK; waiting for it (at most 20 min)"
  flock -w 1200 9 || fail "timed out waiting for the lock $WORK.lock"
fi
if [ -d "$WORK" ] && [ ! -e "$MARK" ] && [ -n "$(ls -A "$WORK")" ] && [ ! -d "$WORK/rootfs-context" ]; then
  fail "$WORK is not empty and not a java-demo work dir; refusing to use it (it is removed at exit)"
fi
[ -z "$(mounts_under_work)" ] || fail "mounts under $WORK (unmount them first): $(mounts_under_work)"
# A registry left running by a run that was killed with SIGKILL: ours if its command line
# names this work dir's config.
if [ -s "$WORK/registry/pid" ]; then
  stale=$(cat "$WORK/registry/pid")
  if tr '\0' ' ' < "/proc/$stale/cmdline" 2>/dev/null | grep -qF "$WORK/registry/config.yml"; then
    say "stopping the registry a killed run left behind (pid $stale)"
    kill "$stale" 2>/dev/null || true
  fi
fi
mkdir -p "$WORK"
touch "$MARK"
rm -rf "$WORK/store-a" "$WORK/store-b" "$WORK/registry" "$WORK/colleague" "$WORK/rootfs"

REGISTRY_PID=
# On every exit (success, failure, Ctrl-C, SIGTERM): stop the registry, then remove the work
# dir unless JAVA_DEMO_KEEP=1. A failed cleanup turns a success into a failure.
cleanup() {
  local rc=$? i
  trap - EXIT INT TERM HUP
  if [ -n "$REGISTRY_PID" ] && kill -0 "$REGISTRY_PID" 2>/dev/null; then
    kill "$REGISTRY_PID" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$REGISTRY_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$REGISTRY_PID" 2>/dev/null || true
    wait "$REGISTRY_PID" 2>/dev/null || true
    echo "java-demo: stopped docker-registry (pid $REGISTRY_PID)"
  fi
  if [ "${JAVA_DEMO_KEEP:-0}" = 1 ]; then
    echo "java-demo: kept $WORK ($(du -sh "$WORK" 2>/dev/null | cut -f1); JAVA_DEMO_KEEP=1)"
  elif [ -n "$(mounts_under_work)" ]; then
    echo "java-demo: NOT removing $WORK: mounts under it: $(mounts_under_work)" >&2
    rc=1
  elif rm -rf "$WORK"; then
    echo "java-demo: removed $WORK (JAVA_DEMO_KEEP=1 keeps it)"
  else
    echo "java-demo: could not remove $WORK" >&2
    [ "$rc" -ne 0 ] || rc=1
  fi
  exit "$rc"
}
trap cleanup EXIT
# Signals become exits, so the EXIT trap runs for them too (128 + the signal's number).
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- 0. the mirror ---------------------------------------------------------------------------
# The mirror this machine's apt uses (deb822 URIs: or one-line deb entries), else Debian's CDN.
mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
           /etc/apt/sources.list.d/*.sources 2>/dev/null \
         | grep -oE 'https?://[^ ]*/debian/?( |$)' | head -n1 | tr -d ' ' || true)
MIRROR=${JAVA_DEMO_MIRROR:-${mirror:-http://deb.debian.org/debian}}
MIRROR=${MIRROR%/}
# Checked first, even when rootfs.tar is reused: java-base's apt-get needs the mirror too, and
# "mirror unreachable" is a clearer failure than a debootstrap or apt log.
say "checking the Debian mirror $MIRROR"
retry 3 5 http_ok "$MIRROR/dists/$SUITE/InRelease" \
  || fail "the Debian mirror $MIRROR is unreachable (tried 3 times; the reason is above).
The demo needs it for debootstrap and for apt-get inside java-base. Check the network or
set JAVA_DEMO_MIRROR to a reachable Debian mirror."

# --- 1. the Debian rootfs --------------------------------------------------------------------
CTX_ROOTFS="$WORK/rootfs-context"
mkdir -p "$CTX_ROOTFS"
cp samples/java/rootfs/Stepfile "$CTX_ROOTFS/Stepfile"
# wget (debootstrap's downloader) waits 900 s on a stalled read by default; fail after 60 s
# instead, so debootstrap's own per-file retries (up to 10) get a chance.
printf 'timeout = 60\n' > "$WORK/wgetrc"
export WGETRC="$WORK/wgetrc"

# One debootstrap attempt into a fresh dir. In a private mount namespace (unshare -m): the
# /proc and /sys debootstrap mounts inside the target vanish when it exits, even if it is killed
# or fails half-way, so no mount is ever left under the work dir.
debootstrap_once() {
  rm -rf "$WORK/rootfs" || return 1
  unshare --mount --propagation private \
    debootstrap --variant=minbase "$SUITE" "$WORK/rootfs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; return 1; }
}

t0=$(now)
if [ -s "$CTX_ROOTFS/rootfs.tar" ] && [ "${JAVA_DEMO_FRESH:-0}" != 1 ]; then
  say "reusing $CTX_ROOTFS/rootfs.tar (kept by JAVA_DEMO_KEEP=1; JAVA_DEMO_FRESH=1 to debootstrap again)"
else
  say "debootstrap --variant=minbase $SUITE from $MIRROR"
  retry 3 10 debootstrap_once || fail "debootstrap failed 3 times (log: $WORK/debootstrap.log, above)"
  rootfs="$WORK/rootfs"
  # What does not belong in an image: device nodes, kernel filesystems, apt's caches, logs.
  rm -rf "${rootfs:?}"/dev/* "$rootfs"/proc/* "$rootfs"/sys/* "$rootfs"/run/* "$rootfs"/tmp/* \
         "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
         "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* \
         "$rootfs"/debootstrap
  # RUN steps share the host's network; name resolution comes from the image's resolv.conf.
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  echo "deb $MIRROR $SUITE main" > "$rootfs/etc/apt/sources.list"
  # apt-get inside java-base's RUN step retries a failed download itself before the step fails.
  echo 'Acquire::Retries "3";' > "$rootfs/etc/apt/apt.conf.d/80-retries"
  tar --sort=name --numeric-owner --owner=0 --group=0 --mtime="@$SOURCE_DATE_EPOCH" \
      --clamp-mtime --format=pax --pax-option=delete=atime,delete=ctime \
      -C "$rootfs" -cf "$CTX_ROOTFS/rootfs.tar.tmp" .
  mv "$CTX_ROOTFS/rootfs.tar.tmp" "$CTX_ROOTFS/rootfs.tar"
  rm -rf "$rootfs"
fi
t_rootfs=$(secs "$t0" "$(now)")
export STEPBUILD_ROOT="$WORK/store-a"
say "build debian-bookworm (FROM scratch + ADD rootfs.tar /) into store A"
"$SB" build -t debian-bookworm "$CTX_ROOTFS"

# --- 2. the registry -------------------------------------------------------------------------
port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REG="127.0.0.1:$port"
mkdir -p "$WORK/registry"
cat > "$WORK/registry/config.yml" <<YAML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/registry/storage}, delete: {enabled: true}}
http: {addr: "$REG", secret: "java-demo-$$"}
YAML
# 9>&-: the registry must not inherit the lock's descriptor, or a registry orphaned by a
# SIGKILLed run would hold the lock and the next run (which stops that registry) would wait.
docker-registry serve "$WORK/registry/config.yml" > "$WORK/registry/registry.log" 2>&1 9>&- &
REGISTRY_PID=$!
echo "$REGISTRY_PID" > "$WORK/registry/pid"
say "docker-registry on $REG (pid $REGISTRY_PID, storage $WORK/registry/storage)"
for _ in $(seq 1 150); do
  http_ok "http://$REG/v2/" 2>/dev/null && break
  kill -0 "$REGISTRY_PID" 2>/dev/null || { cat "$WORK/registry/registry.log"; fail "registry died"; }
  sleep 0.1
done
http_ok "http://$REG/v2/" || fail "registry did not answer on $REG"
"$SB" push -q debian-bookworm "$REG/debian:$SUITE" >/dev/null

# --- 3. builder A: java-base, cache exported, image pushed -----------------------------------
CACHE="$REG/cache/java:base"
build_base_a() {
  "$SB" build -t java-base:1 --cache-to "type=registry,ref=$CACHE,mode=max" samples/java/base \
    2>&1 | tee "$WORK/build-a.log"
}
say "builder A: build java-base --cache-to type=registry,ref=$CACHE,mode=max"
t0=$(now)
if ! build_base_a; then
  # The one step that needs the network is apt-get in a RUN step. Retry the whole build once
  # when its output looks like a network failure; any other failure is a real one.
  grep -qE 'Failed to fetch|Unable to fetch|Could not resolve|Temporary failure|Could not connect|Connection (failed|timed out|refused|reset)|Hash Sum mismatch' \
    "$WORK/build-a.log" || fail "builder A's java-base build failed (not a network error)"
  say "builder A: java-base failed on the network (see above); RETRYING the whole build once in 15 s"
  sleep 15
  t0=$(now)
  build_base_a || fail "builder A's java-base build failed twice"
fi
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
  | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["manifest"]["config"]["digest"])'; }
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
  "builder B: app FROM the pushed java-base (javac, no apt)" "$t_app" \
  "whole demo, before cleanup" "$(secs "$T_START" "$(now)")"
echo "  saved on java-base: $(secs "$t_base_cached" "$t_base") s"
echo "  work dir at its largest: $(du -sh "$WORK" | cut -f1)"
echo
echo "java-demo: OK"
