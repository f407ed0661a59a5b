"""The team cache in a shared directory (`type=local,dest=DIR` / `src=DIR`).

An OCI layout: `blobs/sha256/<hex>` holds the gzip-compressed layers, `keys/<key>.json` one
small record per step key, `cache-mounts/<hash>.json` one per exported cache mount. Every file
is written to a temp name in DIR, fsynced and renamed into place; a blob that exists is done;
no shared index is ever rewritten, so several builders may export into one DIR at once.

Tidying (`stepbuild cache prune`, `inventory` and `delete` below): an export holds a shared
flock on DIR itself from `prepare` to `finish`, a prune an exclusive one, so a prune never
runs between an export's blob and the record that names it. (An export by a stepbuild older
than the lock takes none: a blob no record names yet is therefore deleted only once it is
older than `ORPHAN_GRACE`; a dropped key such an export writes again at that very moment
may be left without its blob, which readers take as a miss with a warning.)

The directory is shared by a team, so it is read as untrusted (`fs/untrusted.py`): a record or
blob that is a FIFO, a device or a symlink, or a record over `MAX_RECORD`, is a `CacheError`
(a warning and a miss), never an open that waits forever or a read of everything into memory.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepbuild.fs.durable import replacing
from stepbuild.fs.locks import flocked
from stepbuild.fs.untrusted import UntrustedFileError, copy_regular, read_regular
from stepbuild.teamcache.prune import Entry, Plan
from stepbuild.teamcache.records import (
    MOUNT_PREFIX,
    CacheError,
    check_mount_record,
    check_record,
    used_at,
)

if TYPE_CHECKING:
    from stepbuild.oci.documents import Descriptor
    from stepbuild.store.store import Store

CHUNK = 1 << 20
# A record is one small JSON object: a key, a layer descriptor and the step's created_by text
# (a few hundred bytes; a RUN with a long heredoc some KiB). 1 MiB is far above any real one and
# still cheap to hold in memory and parse.
MAX_RECORD = 1 << 20
# A blob no record names is an export in progress (by a stepbuild without the lock) or the
# leftover of one that died; an hour is far longer than any export takes from a blob to its
# record.
ORPHAN_GRACE = 3600.0


class LocalDir:
    """An OCI layout directory with keys/<key>.json records (a `backend.CacheBackend`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._held = ExitStack()  # the export's shared lock, from prepare to finish

    def _blob(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    # import
    def record(self, key: str) -> dict[str, Any] | None:
        data = self._read_json(self.root / "keys" / f"{key}.json", "cache record")
        return None if data is None else check_record(key, data)

    def keys(self) -> list[str]:
        try:
            names = os.listdir(self.root / "keys")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CacheError(f"cannot list {self.root}/keys: {exc.strerror or exc}") from None
        return sorted(n.removesuffix(".json") for n in names if n.endswith(".json"))

    def mount_record(self, name: str) -> dict[str, Any] | None:
        data = self._read_json(self.root / "cache-mounts" / f"{name}.json",
                               "cache mount record")
        return None if data is None else check_mount_record(name, data)

    @staticmethod
    def _read_json(path: Path, what: str) -> Any:
        """A record file's JSON, None when absent; CacheError when unreadable or malformed."""
        try:
            data = read_regular(path, MAX_RECORD)
        except FileNotFoundError:
            return None
        except UntrustedFileError as exc:
            raise CacheError(f"{what} {exc}") from None
        except OSError as exc:
            raise CacheError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise CacheError(f"{what} {path} does not parse") from None

    def fetch_blob(self, layer: dict[str, Any], dest: Path) -> None:
        # At most the record's size is copied: the caller checks the digest and size of what
        # was copied (docs/security.md rule 4).
        try:
            copy_regular(self._blob(layer["digest"]), dest, layer["size"])
        except UntrustedFileError as exc:
            raise CacheError(f"blob {layer['digest']} in {self.root}: {exc}") from None
        except OSError as exc:
            raise CacheError(f"cannot read blob {layer['digest']} in {self.root}: "
                             f"{exc.strerror or exc}") from None

    def remember(self, store: Store, diff_id: str, desc: Descriptor) -> None:
        pass  # a push never reads a shared dir: nothing to remember

    # export
    def prepare(self) -> None:
        for sub in ("blobs/sha256", "keys", "cache-mounts", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._held.close()
        # A lock that cannot be taken never fails an export: it is then as unlocked as an
        # older stepbuild's, which ORPHAN_GRACE covers.
        with suppress(OSError):
            self._held.enter_context(flocked(self.root, exclusive=False, directory=True))
        layout = self.root / "oci-layout"
        if not layout.exists():
            self._write(layout, b'{"imageLayoutVersion":"1.0.0"}')

    def _write(self, final: Path, data: bytes | None = None, source: Path | None = None) -> None:
        with replacing(final, 0o644, tmp_dir=self.root / "tmp") as out:
            if source is not None:
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, out, CHUNK)
            else:
                out.write(data or b"")

    def put_blob(self, store: Store, diff_id: str, desc: Descriptor) -> None:
        digest, size, source = desc.digest, desc.size, store.blob_path(desc.digest)
        final = self._blob(digest)
        with suppress(FileNotFoundError):
            if final.stat().st_size == size:
                return  # existing = done (content-addressed)
        self._write(final, source=source)

    def put_record(self, key: str, record: dict[str, Any]) -> None:
        self._write(self.root / "keys" / f"{key}.json",
                    json.dumps(record, sort_keys=True, separators=(",", ":")).encode())

    def put_file(self, digest: str, size: int, path: Path) -> None:
        final = self._blob(digest)
        with suppress(FileNotFoundError):
            if final.stat().st_size == size:
                return
        self._write(final, source=path)

    def put_mount_record(self, name: str, record: dict[str, Any]) -> None:
        (self.root / "cache-mounts").mkdir(exist_ok=True)
        self._write(self.root / "cache-mounts" / f"{name}.json",
                    json.dumps(record, sort_keys=True, separators=(",", ":")).encode())

    def finish(self) -> None:
        self._held.close()  # every file was renamed into place as it was written

    def close(self) -> None:
        self._held.close()  # a failed export lets a prune go on

    # tidying (`stepbuild cache ls|du|prune`)
    @contextmanager
    def locked(self, *, exclusive: bool) -> Iterator[None]:
        """Hold DIR's lock: exclusive to delete (no export is between a blob and its
        record), shared to list."""
        if not self.root.is_dir():
            raise CacheError(f"no team cache directory {self.root}")
        with ExitStack() as held:
            try:
                held.enter_context(flocked(self.root, exclusive=exclusive, directory=True))
            except OSError as exc:
                # e.g. NFS, where flock is a POSIX lock and an exclusive one needs a fd
                # open for writing
                raise CacheError(f"cannot lock the team cache directory {self.root}:"
                                 f" {exc.strerror or exc}") from None
            yield

    def inventory(self) -> list[Entry]:
        """Every record as a prune `Entry` (a malformed one is left out: a reader ignores it,
        and its blob is then an orphan)."""
        records = []
        for sub, check in (("keys", check_record), ("cache-mounts", check_mount_record)):
            for path in sorted((self.root / sub).glob("*.json")):
                with suppress(CacheError, OSError):
                    data = self._read_json(path, "cache record")
                    records.append((path, check(path.stem, data)))
        newest: dict[str, float] = {}
        for path, record in records:
            writer = record.get("writer")
            if isinstance(writer, str):
                newest[writer] = max(newest.get(writer, 0.0), _used(path, record))
        return [_entry(path, record, newest) for path, record in records]

    def delete(self, plan: Plan, now: float) -> int:
        """Remove the records `plan` drops, then the blobs it frees and the orphans
        (`orphans`); return the bytes removed. Call under `locked(exclusive=True)`."""
        for entry in plan.drop:
            prefix, _, name = entry.name.rpartition("/")
            (self.root / ("cache-mounts" if prefix else "keys") / f"{name}.json").unlink(
                missing_ok=True)
        doomed = {**self.orphans([*plan.keep, *plan.drop], now),
                  **{d: s for e in plan.drop for d, s in e.blobs if d in plan.freed_blobs}}
        freed = 0
        for digest in sorted(doomed):
            with suppress(FileNotFoundError):
                path = self._blob(digest)
                size = path.lstat().st_size
                path.unlink()
                freed += size
        return freed

    def orphans(self, entries: Iterable[Entry], now: float) -> dict[str, int]:
        """digest → size of each blob no entry names, older than ORPHAN_GRACE."""
        named = {d for e in entries for d, _ in e.blobs}
        found = {}
        with suppress(FileNotFoundError):
            for blob in (self.root / "blobs" / "sha256").iterdir():
                info = blob.lstat()
                digest = f"sha256:{blob.name}"
                if digest not in named and now - info.st_mtime > ORPHAN_GRACE:
                    found[digest] = info.st_size
        return found

def _used(path: Path, record: dict[str, Any]) -> float:
    """A record's last export: its `used` stamp, else its file's mtime (each export rewrites
    the file)."""
    if isinstance(record.get("used"), str):
        when = used_at(record)
        if when is not None:
            return when
    return os.lstat(path).st_mtime


def _entry(path: Path, record: dict[str, Any], newest: dict[str, float]) -> Entry:
    used = _used(path, record)
    blobs: tuple[tuple[str, int], ...]
    if "identity" in record:  # a cache-mount record
        name, blobs = MOUNT_PREFIX + path.stem, ((record["digest"], record["size"]),)
        created_by = f"cache mount {record['id']}"
    else:
        layer = record["layer"]
        name, created_by = path.stem, record["created_by"]
        blobs = ((layer["digest"], layer["size"]),) if layer else ()
    writer = record.get("writer")
    latest = isinstance(writer, str) and newest.get(writer) == used
    return Entry(name, used, blobs, latest, (writer,) if isinstance(writer, str) else (),
                 created_by)
