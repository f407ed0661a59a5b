"""The team cache in a shared directory (`type=local,dest=DIR` / `src=DIR`).

An OCI layout: `blobs/sha256/<hex>` holds the gzip-compressed layers, `keys/<key>.json` one
small record per step key, `cache-mounts/<hash>.json` one per exported cache mount. Every file
is written to a temp name in DIR, fsynced and renamed into place; a blob that exists is done;
no shared index is ever rewritten, so several builders may export into one DIR at once.

The directory is shared by a team, so it is read as untrusted (`fs/untrusted.py`): a record or
blob that is a FIFO, a device or a symlink, or a record over `MAX_RECORD`, is a `CacheError`
(a warning and a miss), never an open that waits forever or a read of everything into memory.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepbuild.fs.durable import replacing
from stepbuild.fs.untrusted import UntrustedFileError, copy_regular, read_regular
from stepbuild.teamcache.records import CacheError, check_mount_record, check_record

if TYPE_CHECKING:
    from stepbuild.oci.documents import Descriptor
    from stepbuild.store.store import Store

CHUNK = 1 << 20
# A record is one small JSON object: a key, a layer descriptor and the step's created_by text
# (a few hundred bytes; a RUN with a long heredoc some KiB). 1 MiB is far above any real one and
# still cheap to hold in memory and parse.
MAX_RECORD = 1 << 20


class LocalDir:
    """An OCI layout directory with keys/<key>.json records (a `backend.CacheBackend`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

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
        pass  # every file was renamed into place as it was written

    def close(self) -> None:
        pass  # nothing is held open between calls
