"""What `TeamCache` (cache.py) needs of a team cache backend: `local.LocalDir` (a shared
directory) and `registry.RegistryCache` (a registry) each implement it.

Records are the JSON objects of records.py, checked by `check_record`/`check_mount_record`
when read: they come from a shared cache, so they stay plain `dict`s. For typing only:
the backends and cache.py import it under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from stepbuild.oci.documents import Descriptor
    from stepbuild.store.store import Store


class CacheBackend(Protocol):
    """One --cache-from source or --cache-to destination.

    Import: `record` and `mount_record` return a checked record or None when the cache has
    none; they and `fetch_blob` raise `CacheError` when the cache cannot be read.
    Export, in this order: `prepare`, then each blob (`put_blob`, `put_file`) before the
    record that names it (`put_record`, `put_mount_record`), then `finish`.
    `close` ends the build's use of it (connections are closed).
    """

    def record(self, key: str) -> dict[str, Any] | None: ...

    def mount_record(self, name: str) -> dict[str, Any] | None: ...

    def keys(self) -> list[str]:
        """The keys of every step record the cache holds (to explain a miss; CacheError
        when the cache cannot be read)."""

    def fetch_blob(self, layer: dict[str, Any], dest: Path) -> None:
        """Copy the blob `layer` (a record's `{"digest", "size", ...}`) to `dest`, unverified:
        the caller checks its digest."""

    def remember(self, store: Store, diff_id: str, desc: Descriptor) -> None:
        """The layer `diff_id` was imported from the blob `desc` of this cache (a later push
        to the same place may reuse it)."""

    def prepare(self) -> None: ...

    def put_blob(self, store: Store, diff_id: str, desc: Descriptor) -> None:
        """Copy the store's blob `desc` (layer `diff_id`, compressed) into the cache."""

    def put_file(self, digest: str, size: int, path: Path) -> None: ...

    def put_record(self, key: str, record: dict[str, Any]) -> None: ...

    def put_mount_record(self, name: str, record: dict[str, Any]) -> None: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...
