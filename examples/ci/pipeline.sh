#!/usr/bin/env bash
# Build, push and cache an image with stepbuild: the one script the GitLab CI job and the
# GitHub Actions workflow beside it call (examples/ci/README.md). Run it from the checkout's
# top directory, logged in to the registry (`stepbuild login --password-stdin`), as root or
# as a user stepbuild runs rootless for.
#
# It builds CONTEXT with the team cache in the registry (--cache-from and --cache-to
# REGISTRY/IMAGE:cache, mode=max: a fresh runner's store finds every step of the last build),
# pushes REGISTRY/IMAGE:REVISION and REGISTRY/IMAGE:latest, and writes
#   OUT_DIR/metadata.json  buildx's keys: containerimage.digest (the digest the registry
#                          serves), containerimage.config.digest, image.name, ...
#   OUT_DIR/iidfile        that digest alone
#   OUT_DIR/image.env      IMAGE_NAME, IMAGE_DIGEST and IMAGE_REF (name@digest) as KEY=VALUE
#                          lines: a GitLab dotenv report, or `source` it in a later step
# and, under GitHub Actions, `image`, `digest` and `ref` in $GITHUB_OUTPUT. Deploy and sign
# by IMAGE_REF: a tag moves, a digest does not.
#
# Environment (CI systems set the first ones; a test or a person sets them by hand):
#   REGISTRY      the registry host[:port]            (default: $CI_REGISTRY)
#   IMAGE         the repository in it, lowercase     (default: $CI_PROJECT_PATH, else
#                                                      $GITHUB_REPOSITORY lowercased)
#   REVISION      the tag of this build (default: $CI_COMMIT_SHA, else $GITHUB_SHA, else the
#                 commit of CONTEXT's git checkout, else "unknown")
#   CONTEXT       the build context (default: examples/ci/app beside this script)
#   BASE_IMAGE    if set, passed as --build-arg BASE=... (the sample Stepfile's FROM)
#   CACHE_REF     the team cache (default: REGISTRY/IMAGE:cache)
#   OUT_DIR       where the files above go (default: build)
#   STEPBUILD     the command to call, split on spaces (default: stepbuild)
#   STEPBUILD_TLS_VERIFY  false: --tls-verify=false (a plain-HTTP or self-signed registry)
#   STEPBUILD_NETWORK     if set, --network of RUN steps (none where the runner has no
#                         /dev/net/tun and the steps need no network)
# Exit status: stepbuild's; 2 when the environment above is wrong.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() {
    printf 'pipeline.sh: %s\n' "$*" >&2
    exit 2
}

registry=${REGISTRY:-${CI_REGISTRY:-}}
github_image=${GITHUB_REPOSITORY:-}
image=${IMAGE:-${CI_PROJECT_PATH:-${github_image,,}}}
context=${CONTEXT:-$here/app}
out_dir=${OUT_DIR:-build}
[ -n "$registry" ] || die "REGISTRY is not set (the registry host, e.g. registry.example:5000)"
[ -n "$image" ] || die "IMAGE is not set (the repository to push, e.g. team/app)"
[ -d "$context" ] || die "CONTEXT $context is not a directory"

revision=${REVISION:-${CI_COMMIT_SHA:-${GITHUB_SHA:-}}}
if [ -z "$revision" ]; then
    revision=$(git -C "$context" rev-parse HEAD 2>/dev/null) || revision=unknown
fi

read -r -a stepbuild <<<"${STEPBUILD:-stepbuild}"
[ "${#stepbuild[@]}" -gt 0 ] || die "STEPBUILD is empty (the command to call, e.g. stepbuild)"

registry_flags=()  # for every registry the build reaches: FROM, the cache, the push
case ${STEPBUILD_TLS_VERIFY:-true} in
    true) ;;
    false) registry_flags+=(--tls-verify=false) ;;
    *) die "STEPBUILD_TLS_VERIFY must be true or false, not '$STEPBUILD_TLS_VERIFY'" ;;
esac

build_flags=()
if [ -n "${BASE_IMAGE:-}" ]; then
    build_flags+=(--build-arg "BASE=$BASE_IMAGE")
fi
if [ -n "${STEPBUILD_NETWORK:-}" ]; then
    build_flags+=(--network "$STEPBUILD_NETWORK")
fi

name=$registry/$image
cache=${CACHE_REF:-$name:cache}
mkdir -p "$out_dir"
# A failed build must not leave the last run's digest behind for a later step to deploy.
rm -f "$out_dir/metadata.json" "$out_dir/iidfile" "$out_dir/image.env"

printf 'pipeline.sh: building %s at revision %s\n' "$context" "$revision" >&2
"${stepbuild[@]}" build \
    "${registry_flags[@]}" "${build_flags[@]}" \
    --cache-from "type=registry,ref=$cache" \
    --cache-to "type=registry,ref=$cache,mode=max" \
    --push -t "$name:$revision" -t "$name:latest" \
    --metadata-file "$out_dir/metadata.json" \
    --iidfile "$out_dir/iidfile" \
    "$context"

digest=$(<"$out_dir/iidfile")
printf 'IMAGE_NAME=%s\nIMAGE_DIGEST=%s\nIMAGE_REF=%s@%s\n' \
    "$name" "$digest" "$name" "$digest" >"$out_dir/image.env.tmp"
mv "$out_dir/image.env.tmp" "$out_dir/image.env"  # whole or absent
if [ -n "${GITHUB_OUTPUT:-}" ]; then
    printf 'image=%s\ndigest=%s\nref=%s@%s\n' "$name" "$digest" "$name" "$digest" \
        >>"$GITHUB_OUTPUT"
fi

echo "pushed $name:$revision and $name:latest"
echo "digest $digest"
echo "deploy by digest: $name@$digest"
