"""`--annotation [TYPE:]KEY=VALUE` and `--label KEY=VALUE`: parsed, checked, and sorted by
where each annotation goes.

Annotation types are buildx's (`docker buildx build --annotation`):

| type                  | where stepbuild puts it                                           |
|-----------------------|-------------------------------------------------------------------|
| `manifest` (default)  | the image manifest's `annotations`: the store's manifest, so every |
|                       | oci/oci-layout export and every push carries it                   |
| `manifest-descriptor` | the manifest's entries in the `index.json` of oci and oci-layout   |
|                       | outputs (a push has no descriptor to carry it)                    |
| `index`               | the `annotations` of that `index.json`                             |
| `index-descriptor`    | refused: it annotates the descriptor of a nested index, which a    |
|                       | single-platform image never has                                    |

BuildKit refuses `index` annotations for a single-platform image in every exporter ("index
annotations not supported for single platform export"): it writes no index then. stepbuild's
oci and oci-layout outputs always write an `index.json`, so `index` annotations go there; a
build with none of those outputs refuses them (`check_index_targets`), as nothing would carry
them. A platform selector (`manifest[linux/amd64]:k=v`) is refused: builds are single-platform.
As in buildx, a lower-case `word:` before the key is a type, so an unknown one is refused.

Pure: parsing only, `UsageError` naming the flag for anything malformed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from stepbuild.errors import UsageError

__all__ = ["ANNOTATION_TYPES", "Annotations", "parse_annotations", "parse_labels"]

ANNOTATION_TYPES = ("manifest", "manifest-descriptor", "index", "index-descriptor")
# buildx's form of the part before "=": an optional `type[platform]:` prefix, then the key.
_TYPED = re.compile(r"([a-z-]+)(\[[^\]]*\])?:(.*)", re.DOTALL)
_HINT = "--annotation [manifest:|manifest-descriptor:|index:]KEY=VALUE"


@dataclass(frozen=True, slots=True)
class Annotations:
    """The annotations of one build, by where they go (later flags win for the same key)."""

    manifest: Mapping[str, str] = field(default_factory=dict)
    manifest_descriptor: Mapping[str, str] = field(default_factory=dict)
    index: Mapping[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.manifest or self.manifest_descriptor or self.index)

    def for_layouts(self) -> bool:
        """Anything only an index.json (oci, oci-layout outputs) can carry."""
        return bool(self.manifest_descriptor or self.index)


def parse_annotations(values: Iterable[str]) -> Annotations:
    """The `--annotation` values, in order; `UsageError` for a bad one."""
    found: dict[str, dict[str, str]] = {kind: {} for kind in ANNOTATION_TYPES}
    for value in values:
        kind, key, text = _annotation(value)
        found[kind][key] = text
    if found["index-descriptor"]:
        raise UsageError("--annotation index-descriptor: a single-platform image has no"
                         " nested index to annotate",
                         hint="use index: for the index.json of oci/oci-layout outputs")
    return Annotations(found["manifest"], found["manifest-descriptor"], found["index"])


def _annotation(value: str) -> tuple[str, str, str]:
    """(type, key, value) of one `--annotation`."""
    name, eq, text = value.partition("=")
    if not eq:
        raise UsageError(f"invalid --annotation {value!r}: expected [TYPE:]KEY=VALUE",
                         hint=_HINT)
    kind, key = "manifest", name
    typed = _TYPED.fullmatch(name)
    if typed is not None and typed.group(1) in ANNOTATION_TYPES:
        kind, key = typed.group(1), typed.group(3)
        if typed.group(2):
            raise UsageError(f"invalid --annotation {value!r}: platform selectors are not"
                             " supported (stepbuild builds one platform)", hint=_HINT)
    elif typed is not None:  # `indx:k=v` is a typo, not a key "indx:k" (buildx refuses it)
        raise UsageError(f"invalid --annotation {value!r}: unknown type {typed.group(1)!r}",
                         hint=f"types: {', '.join(ANNOTATION_TYPES[:3])}")
    if not key or key != key.strip():
        raise UsageError(f"invalid --annotation {value!r}: empty key or key with spaces",
                         hint=_HINT)
    return kind, key, text


def parse_labels(values: Iterable[str]) -> dict[str, str]:
    """The `--label KEY=VALUE` values, in order (a later one wins); `UsageError` for one
    without `=` or with an empty key. (`docker build --label K` sets K to ""; buildx requires
    the `=`; so do we, since a bare K is more often a mistake.)"""
    labels: dict[str, str] = {}
    for value in values:
        key, eq, text = value.partition("=")
        if not eq or not key or key != key.strip():
            raise UsageError(f"invalid --label {value!r}: expected KEY=VALUE",
                             hint="--label org.opencontainers.image.revision=$(git rev-parse"
                                  " HEAD)")
        labels[key] = text
    return labels
