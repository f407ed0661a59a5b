"""`--build-context NAME=VALUE`: named contexts for `FROM NAME` and `COPY --from=NAME` (buildx's).

VALUE is one of:

- a local directory (`PATH`): read as a build context of its own, without ignore files;
- `docker-image://REF`: an image, found or pulled as a FROM of REF would be;
- `oci-layout://DIR[:TAG]` or `oci-layout://DIR@sha256:…`: an image of an OCI layout on
  disk, imported into the store (blobs verified) as `FROM oci-layout:DIR:TAG` is;
- a git or http(s) URL: fetched as the main context would be (`sources/remote.py`), then a
  local directory.

NAME overrides, as in buildx, a stage of that name (its FROM and instructions are not used)
and an image name used in FROM or `COPY --from`: `--build-context alpine=docker-image://
busybox:1` makes `FROM alpine` (or `alpine:latest`, `docker.io/library/alpine`) use busybox.
Pure parsing here; `build/named.py` resolves them during a build.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from stepbuild.errors import UsageError

__all__ = ["NamedContext", "canonical_name", "lookup", "parse_named"]

_FORMS = "NAME=PATH, NAME=docker-image://REF or NAME=oci-layout://DIR[:TAG|@sha256:DIGEST]"
# A stage name or image reference, as FROM takes them (lower case after canonical_name).
_NAME = re.compile(r"[a-z0-9][a-z0-9._/:@-]*")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class NamedContext:
    """One --build-context. `kind` is "path" (`value` a directory), "image" (`value` a
    reference) or "oci-layout" (`value` the `oci-layout:DIR[:REF]` name `archive/load.py`
    imports); "git" and "url" are fetched into a "path" one before the build."""

    name: str
    kind: str
    value: str


def parse_named(text: str) -> NamedContext:
    """One `--build-context` value. UsageError naming the forms for anything else."""
    name, eq, value = text.partition("=")
    if not eq or not name or not value:
        raise UsageError(f"invalid --build-context {text!r}: expected NAME=VALUE",
                         hint=_FORMS)
    key = canonical_name(name)
    if not _NAME.fullmatch(key):
        raise UsageError(f"invalid --build-context name {name!r}",
                         hint="a stage name or an image name, as FROM takes them")
    if value.startswith("docker-image://"):
        ref = value.removeprefix("docker-image://")
        if not ref:
            raise UsageError(f"--build-context {text!r}: no image after docker-image://")
        return NamedContext(key, "image", ref)
    if value.startswith("oci-layout://"):
        return NamedContext(key, "oci-layout", _layout_name(text, value))
    from stepbuild.sources import remote

    kind = remote.kind(value)
    if kind in ("git", "url"):
        return NamedContext(key, kind, value)
    if "://" in value:
        raise UsageError(f"invalid --build-context {text!r}: unknown form"
                         f" {value.partition('://')[0]}://", hint=_FORMS)
    return NamedContext(key, "path", value)


def _layout_name(text: str, value: str) -> str:
    """`oci-layout://DIR[:TAG]` or `oci-layout://DIR@sha256:…` as archive/load.py's name."""
    rest = value.removeprefix("oci-layout://")
    path, at, digest = rest.rpartition("@")
    if at:
        if not _DIGEST.fullmatch(digest) or not path:
            raise UsageError(f"--build-context {text!r}: expected oci-layout://DIR@sha256:"
                             "<64 hex digits>")
        return f"oci-layout:{path}:{digest}"
    if not rest or rest.startswith(":"):
        raise UsageError(f"--build-context {text!r}: no directory after oci-layout://")
    return f"oci-layout:{rest}"


def parse_all(values: Iterable[str]) -> dict[str, NamedContext]:
    """Every --build-context, by canonical name; UsageError for a name given twice."""
    found: dict[str, NamedContext] = {}
    for value in values:
        named = parse_named(value)
        if named.name in found:
            raise UsageError(f"--build-context {named.name} is given twice")
        found[named.name] = named
    return found


def canonical_name(name: str) -> str:
    """The name as FROM and --build-context are matched (BuildKit's dockerui NamedContext:
    docker's familiar form without `:latest`): lower case, `docker.io/library/` and
    `docker.io/` dropped, `:latest` dropped."""
    key = name.lower()
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/",
                   "index.docker.io/"):
        if key.startswith(prefix):
            key = key.removeprefix(prefix)
            break
    return key.removesuffix(":latest")


def lookup(contexts: Mapping[str, NamedContext], name: str) -> NamedContext | None:
    """The named context `name` (a stage name, or an image name as written in FROM) means."""
    if not contexts:
        return None
    return contexts.get(canonical_name(name))
