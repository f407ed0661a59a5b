"""`stepbuild du`: what the store spends, by kind and per image.

`census(store)` measures everything once (sizes.py: blocks as du counts them, hard links
once): every blob and every layer dir by name, and the rest of the root by kind. gc.py plans
a prune from the same census; `image_usage` splits the tagged images' content into what each
holds alone (exclusive) and what two or more hold (shared). Reads only.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stepbuild.oci.digest import is_digest_hex
from stepbuild.store.sizes import Size, Sizer

if TYPE_CHECKING:
    from stepbuild.store.layout import StoreLayout

__all__ = ["KINDS", "Census", "ImageUsage", "census", "image_usage"]

# The kinds `du` shows, in order, and the entries of the root each is made of (layout.py).
KINDS: dict[str, tuple[str, ...]] = {
    "layers": ("layers",),
    "blobs": ("blobs",),
    "cache records": ("cache", "compressed", "remote-blobs", "import-cache", "pushed"),
    "cache mounts": ("cache-mounts",),
    "parse and context caches": ("parse-cache", "context-cache", "fingerprints"),
    "tmp": ("tmp",),
}


@dataclass(frozen=True, slots=True)
class Census:
    """The store measured: each blob (by hex name), each layer dir (by the hex of its
    diff_id), and each kind (KINDS, plus "other": index.json, lock files...)."""

    blobs: Mapping[str, Size] = field(default_factory=dict)
    layers: Mapping[str, Size] = field(default_factory=dict)
    kinds: Mapping[str, Size] = field(default_factory=dict)

    @property
    def total(self) -> Size:
        return sum(self.kinds.values(), Size())

    def content(self, hex_name: str) -> Size:
        """A blob and the layer dir of the same name (a layer's tar blob and its dir)."""
        return self.blobs.get(hex_name, Size()) + self.layers.get(hex_name, Size())


@dataclass(frozen=True, slots=True)
class ImageUsage:
    """A tag's content: what only it holds, and what it shares with another tag."""

    name: str
    exclusive: Size
    shared: Size


def census(layout: StoreLayout) -> Census:
    """Measure the store at `layout` (see the module docstring)."""
    sizer = Sizer()
    blobs, other_blobs = _each(sizer, layout.blobs)
    layers, staging = _each(sizer, layout.layers)
    kinds = {"layers": sum(layers.values(), _own(layout.layers) + staging),
             "blobs": sum(blobs.values(),
                          _own(layout.blobs) + _own(layout.blobs.parent) + other_blobs)}
    named = {"layers", "blobs"}
    for kind, names in KINDS.items():
        if kind not in kinds:
            kinds[kind] = sum((sizer.measure(layout.root / n) for n in names), Size())
            named.update(names)
    other = Size()
    with os.scandir(layout.root) as entries:
        for entry in entries:
            if entry.name not in named:
                other += sizer.measure(Path(entry.path))
    kinds["other"] = other + _own(layout.root)
    return Census(blobs, layers, kinds)


def _each(sizer: Sizer, parent: Path) -> tuple[dict[str, Size], Size]:
    """Each entry of `parent` named by a digest's hex, measured; and the other entries'
    total (layer staging dirs, stray files)."""
    with os.scandir(parent) as entries:
        names = sorted(e.name for e in entries)
    named = {name: sizer.measure(parent / name) for name in names if is_digest_hex(name)}
    rest = sum((sizer.measure(parent / n) for n in names if n not in named), Size())
    return named, rest


def _own(directory: Path) -> Size:
    """A directory's own entry (not its contents)."""
    info = os.lstat(directory)
    return Size(info.st_blocks * 512, info.st_size)


def image_usage(reached: Mapping[str, set[str]], counted: Census) -> list[ImageUsage]:
    """Per tag (`reached`: tag → hex names of its content, gc.reached_by_tag), its
    exclusive and shared bytes, by name."""
    holders = Counter(h for content in reached.values() for h in content)
    found = []
    for name in sorted(reached):
        exclusive = shared = Size()
        for hex_name in reached[name]:
            if holders[hex_name] > 1:
                shared += counted.content(hex_name)
            else:
                exclusive += counted.content(hex_name)
        found.append(ImageUsage(name, exclusive, shared))
    return found
