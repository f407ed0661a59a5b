"""What explains a cache miss, kept in the store next to the cache records.

    explain/<key>.json     the explanation material of the step that made cache record <key>
                           (build/explain.py says what it holds: paths and digests, no file
                           contents, no secret values)
    builds/<hex>.json      the last build of a tag (or, untagged, of a Stepfile and target):
                           its steps in order, each with its key, whether it hit, and why it
                           ran — what the next build compares with, and what `stepbuild why`
                           prints

Kept apart from `cache/<key>.json` so that a cache hit, which reads its record, never reads
or parses a COPY's per-file list. Both kinds are hints (docs/security.md rule 7): written
atomically (temp file, rename) but not fsynced; a file that does not parse reads as absent.
Material is pruned with its cache record (`prune_orphans`, called by gc.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepbuild.store.records import CACHE_KEY

if TYPE_CHECKING:
    from stepbuild.store.store import Store

LAST = "last"  # builds/last.json: the store's last build, whatever its tag (`why` alone)


class ExplainRecords:
    """`explain/<key>.json` and `builds/<hex>.json` of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store  # nothing read until asked: a team cache makes one per build

    @property
    def material_dir(self) -> Path:
        return self.store.layout.explain

    @property
    def builds_dir(self) -> Path:
        return self.store.layout.builds

    # --- material, per key ----------------------------------------------------------------

    def material(self, key: str) -> dict[str, Any] | None:
        """The material saved for `key`, or None (none, unreadable, or a bad key)."""
        if not CACHE_KEY.fullmatch(key):
            return None
        return _read(self.material_dir / f"{key}.json")

    def put_material(self, key: str, material: dict[str, Any]) -> None:
        """Save `material` for `key` (after its cache record). Best effort."""
        if CACHE_KEY.fullmatch(key):
            self._write(self.material_dir, f"{key}.json", material)

    def scan_material(self) -> Iterator[tuple[str, dict[str, Any], float]]:
        """Every saved material: its key, the material and when it was written (mtime)."""
        with suppress(FileNotFoundError), os.scandir(self.material_dir) as entries:
            for entry in list(entries):
                key = entry.name.removesuffix(".json")
                if not CACHE_KEY.fullmatch(key):
                    continue
                found = _read(Path(entry.path))
                if found is not None:
                    with suppress(FileNotFoundError):
                        yield key, found, entry.stat().st_mtime

    def prune_orphans(self) -> int:
        """Remove the material of every key that has no cache record any more; return how
        many files went. Called by gc.py after it swept cache records."""
        removed = 0
        with suppress(FileNotFoundError), os.scandir(self.material_dir) as entries:
            for entry in list(entries):
                key = entry.name.removesuffix(".json")
                if CACHE_KEY.fullmatch(key) and (self.store.layout.cache / entry.name).exists():
                    continue
                with suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    # --- builds, per tag --------------------------------------------------------------------

    def last_build(self, name: str) -> dict[str, Any] | None:
        """The last build saved under `name` (a tag, `LAST`, or a Stepfile's name)."""
        return _read(self.builds_dir / _build_file(name))

    def put_build(self, names: list[str], build: dict[str, Any]) -> None:
        """Save `build` as the last build of each of `names` and as the store's last."""
        for name in [*names, LAST]:
            self._write(self.builds_dir, _build_file(name), build)

    def _write(self, directory: Path, name: str, value: dict[str, Any]) -> None:
        data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        final = directory / name
        with suppress(OSError):
            if final.read_bytes() == data:
                return  # an unchanged rebuild writes nothing
        tmp = self.store.tmp_file("explain-")
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
            tmp.write_bytes(data)
            os.rename(tmp, final)
        except OSError:
            pass  # a hint: a build never fails for want of its explanation
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()


def _build_file(name: str) -> str:
    return f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.json"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
