#!/usr/bin/env bash
# The peer builders' own commands, for bench/build_bench.py: the tool invocations, build and
# clean commands and the content CHECK are taken from ../shared/peers/setup-and-bench.sh itself
# (its definitions, not its phases), so the benchmark runs each peer exactly as the peers'
# setup does.
#
# usage: peers.sh cmd PEER cold|cached   print PEER's build command (cold = its no-cache form)
#        peers.sh clean PEER             drop PEER's result and cached layers, keep `base`
#        peers.sh verify PEER            run $CHECK inside PEER's result (prints CONTENT-OK)
#        peers.sh ready PEER             exit 0 if PEER's tools run and its `base` is imported
#        peers.sh check                  print the peers' CHECK script
# env:   W (work dir, default /var/tmp/peers), BENCH_CTX (context dir instead of $W/ctx),
#        BENCH_CHECK (a check script instead of CHECK), BENCH_NOCD=1 (the result has no /app:
#        ch-run must not --cd there), PEERS_SCRIPT (path of setup-and-bench.sh)
set -u
here=$(cd "${BASH_SOURCE[0]%/*}" && pwd)
script=${PEERS_SCRIPT:-$here/../../shared/peers/setup-and-bench.sh}
[ -r "$script" ] || { echo "peers.sh: cannot read $script" >&2; exit 3; }
# Everything from `set -u` up to the phases: variables, bah/build_cmd/clean_cmd/CHECK/verify.
defs=$(sed -n '/^set -u$/,/^# --- phases/p' "$script")
eval "$defs"
for f in build_cmd clean_cmd verify; do
  declare -F "$f" >/dev/null || { echo "peers.sh: no $f() in $script" >&2; exit 3; }
done
CTX=${BENCH_CTX:-$CTX}
CHECK=${BENCH_CHECK:-$CHECK}

ready() {
  case $1 in
    buildah-overlay|buildah-vfs) $(bah "${1#buildah-}") inspect base >/dev/null 2>&1 ;;
    podman)                      $POD image exists base ;;
    docker-*)                    $DK image inspect base >/dev/null 2>&1 ;;
    charliecloud)                command -v ch-run >/dev/null && $CH list 2>/dev/null | grep -qx base ;;
    *)                           echo "unknown peer $1" >&2; return 1 ;;
  esac
}

cmd=${1:?usage: peers.sh cmd|clean|verify|ready|check ...}
case $cmd in
  cmd)    build_cmd "${2:?peer}" "${3:?cold|cached}" ;;
  clean)  bash -c "$(clean_cmd "${2:?peer}")" ;;
  verify)
    if [ "$2" = charliecloud ] && [ -n "${BENCH_NOCD:-}" ]; then
      ch-run --set-env "$W/ch/img/out" -- sh -c "$CHECK"
    else
      verify "$2"
    fi ;;
  ready)  ready "${2:?peer}" ;;
  check)  printf '%s\n' "$CHECK" ;;
  *)      echo "peers.sh: unknown command $cmd" >&2; exit 2 ;;
esac
