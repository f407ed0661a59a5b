"""Tidying a registry team cache (`stepbuild cache ls|du|prune --cache type=registry,ref=…`).

`RegistryInventory.read` reads TAG's map and every writer tag's (registry.py says what they
are) and lists their records as prune `Entry` values: a record's last use is the newest `used`
stamp any map has for it, and it is of a writer's newest export when it carries that writer
tag's newest stamp (or its `writer`'s newest stamp anywhere).

`fold` then writes TAG as the map of the kept records, folding in every writer tag, and
deletes the manifests of the writer tags it read and TAG's previous revision. The registry's
blobs are left to its garbage collector (`registry garbage-collect`), which frees those that no
manifest names any more. Deleting by digest is how Distribution deletes tags, and needs its
`storage.delete.enabled: true`.

Concurrent writers: a writer exporting during a prune rewrites its writer tag; the prune
deletes only the revision it read (by digest), so the new revision and every key in it stay
for readers, and the next export folds them into TAG again. A writer's fold that read TAG
before the prune may write back keys the prune dropped: their blobs are still in the registry
(the fold is refused if a GC has run since), so nothing a record needs is ever missing. The
registry's own garbage collection must run read-only or stopped, as its documentation says:
a blob an export is just reusing could otherwise go between its HEAD and its manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stepbuild.errors import RegistryError
from stepbuild.teamcache.prune import Entry, Plan
from stepbuild.teamcache.records import MOUNT_SCHEMA, CacheError, used_at
from stepbuild.teamcache.registry import RegistryCache, _valid

__all__ = ["RegistryInventory"]


@dataclass(slots=True)
class _Map:
    """One tag's map as read: its manifest digest and its well-formed records."""

    tag: str
    digest: str
    records: dict[str, Any]


@dataclass(slots=True)
class RegistryInventory:
    """The maps of one registry cache reference, read once (`read`), then folded (`fold`)."""

    cache: RegistryCache
    main: _Map | None = None
    writers: list[_Map] = field(default_factory=list)

    def read(self) -> None:
        """Read TAG and every writer tag (CacheError when TAG cannot be read)."""
        if self.cache.ref.digest:
            raise CacheError(f"{self.cache.ref} is a digest: a prune works on a tag")
        entries, _folded, digest = self.cache._read_tag(self.cache.tag, writers=True)
        self.main = _Map(self.cache.tag, digest, _valid(entries))
        self.writers = []
        for tag, _digest in self.cache._writer_tags():
            try:
                more, _, read_digest = self.cache._read_tag(tag, owner=self.cache.tag)
            except CacheError as exc:
                self.cache.warn(f"writer tag {tag}: {exc.message}; left as it is")
                continue
            self.writers.append(_Map(tag, read_digest, _valid(more)))

    @property
    def maps(self) -> list[_Map]:
        return ([self.main] if self.main and self.main.digest else []) + self.writers

    def entries(self) -> list[Entry]:
        """Every record of every map, once each (`read` first)."""
        newest = _newest_stamps(self.maps)
        found: dict[str, Entry] = {}
        for one in self.maps:
            top = max((_used(r) for r in one.records.values()), default=0.0)
            for name, record in one.records.items():
                used = _used(record)
                latest = (one is not self.main and used == top) or (
                    newest.get(str(record.get("writer")), -1.0) == used)
                entry = _entry(name, record, used, latest, one.tag)
                found[name] = _merge(found.get(name), entry)
        return list(found.values())

    def fold(self, plan: Plan) -> int:
        """TAG becomes the map of `plan.keep` (each record as last exported); then the writer
        tags read and TAG's old revision are deleted. Returns the manifests deleted."""
        assert self.main is not None, "read() first"
        keep = {e.name for e in plan.keep}
        merged: dict[str, Any] = {}
        for one in self.maps:
            for name, record in one.records.items():
                if name in keep and _used(record) >= _used(merged.get(name, {})):
                    merged[name] = record
        new = self.cache.write_main(merged, {}, "")
        stale = [m.digest for m in self.writers] + [self.main.digest]
        deleted = 0
        for digest in dict.fromkeys(d for d in stale if d and d != new):
            deleted += self._delete(digest)
        return deleted

    def _delete(self, digest: str) -> int:
        repo = self.cache.ref.repository
        try:
            return int(self.cache.registry.delete_manifest(repo, digest))
        except RegistryError as exc:
            if exc.status in (405, 403, 401):
                raise CacheError(
                    f"{self.cache.ref.registry} refuses to delete the manifest {digest} in"
                    f" {repo} ({exc.status}): the cache's keys are folded into"
                    f" {self.cache.tag}, but its writer tags stay and nothing is freed",
                    hint="a Distribution registry deletes with storage.delete.enabled: true;"
                         " a token needs the delete action") from None
            raise


def _used(record: dict[str, Any]) -> float:
    return used_at(record) or 0.0


def _newest_stamps(maps: list[_Map]) -> dict[str, float]:
    """writer id → the newest `used` stamp of its records, over every map."""
    newest: dict[str, float] = {}
    for one in maps:
        for record in one.records.values():
            writer = record.get("writer")
            if isinstance(writer, str):
                newest[writer] = max(newest.get(writer, 0.0), _used(record))
    return newest


def _entry(name: str, record: dict[str, Any], used: float, latest: bool, tag: str) -> Entry:
    blobs: tuple[tuple[str, int], ...] = ()
    if record.get("schema") == MOUNT_SCHEMA:
        blobs, what = ((record["digest"], record["size"]),), f"cache mount {record['id']}"
    else:
        layer, what = record["layer"], record["created_by"]
        if layer:
            blobs = ((layer["digest"], layer["size"]),)
    return Entry(name, used, blobs, latest, (tag,), what)


def _merge(have: Entry | None, entry: Entry) -> Entry:
    """One entry of a name found in several maps: its latest use, every tag, newest if any
    map's newest export has it."""
    if have is None:
        return entry
    later = entry if entry.used > have.used else have
    return Entry(later.name, later.used, later.blobs, have.newest or entry.newest,
                 (*have.writers, *entry.writers), later.created_by)
