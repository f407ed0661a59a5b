"""Where everything lives under the store root: every folder and file name, in one place.

    oci-layout, index.json      the OCI image layout header and its index (tags)
    overlay-xattrs              "trusted" or "user": where layer dirs keep overlay's state
    blobs/sha256/<hex>          blobs, named by digest
    layers/<hex>/diff/          a layer unpacked (an overlay lower dir); <hex> of its diff_id
    cache/<key>.json            step cache records (records.py); cache/corrupt/ for bad ones
    compressed/<hex>.<c>.json   compressed-blob records (records.py)
    remote-blobs/<hex>.json     remote-blob records (records.py)
    import-cache/<key>.json     import records of FROM archives (records.py)
    pushed/<hex>.json           push records: registry digests of local manifests (records.py)
    tmp/                        every write starts here, then rename(2)s
    lock, index.lock            flock(2) files: the store lock and the index.json lock
    parse-cache/                parsed Stepfiles (frontend/cache.py)
    context-cache/              stat caches of build contexts (sources/context.py)
    cache-mounts/<name>/        RUN --mount=type=cache dirs (build/mounts/cache.py), named by
                                `cache_mount_name` of the cache's identity
    fingerprints/               whole-build fingerprints of no-op rebuilds (cli/noop.py)
    cache-writer-id, cache-writer.lock   this store as a team cache writer (teamcache/registry.py)

`store_root` says where the root itself is by default. Only names live here, no formats:
those belong to store.py (blobs, layers, index.json), records.py (the records) and the
modules named above. Cheap to import (pathlib only), because `cli/noop.py` reads the store
through it before anything heavy is imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def store_root(option: str | os.PathLike[str] | None) -> Path:
    """Where the store is: `option` (--root, `BuildRequest.root`), else $STEPBUILD_ROOT,
    else /var/lib/stepbuild (root) or the XDG data dir.

    A rootless command asks as the user, before it enters its user namespace (where its
    euid is 0), and keeps the answer in `options.root` (cli/rootless.py)."""
    if option:
        return Path(option)
    if os.environ.get("STEPBUILD_ROOT"):
        return Path(os.environ["STEPBUILD_ROOT"])
    if os.geteuid() == 0:
        return Path("/var/lib/stepbuild")
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "stepbuild"


class StoreLayout:
    """The paths of a store rooted at `root`. Pure: nothing is created or read here.

    A plain class, not a frozen dataclass: generating the dataclass's methods costs ~0.8 ms
    at import (measured), on the no-op rebuild's path; this class costs ~0.25 ms.
    """

    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = root

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoreLayout) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"StoreLayout({self.root!r})"

    @property
    def oci_layout(self) -> Path:
        return self.root / "oci-layout"

    @property
    def index(self) -> Path:
        return self.root / "index.json"

    @property
    def overlay_xattrs(self) -> Path:
        return self.root / "overlay-xattrs"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def layers(self) -> Path:
        return self.root / "layers"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def corrupt(self) -> Path:
        return self.cache / "corrupt"

    @property
    def compressed(self) -> Path:
        return self.root / "compressed"

    @property
    def remote_blobs(self) -> Path:
        return self.root / "remote-blobs"

    @property
    def import_cache(self) -> Path:
        return self.root / "import-cache"

    @property
    def pushed(self) -> Path:
        return self.root / "pushed"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def index_lock(self) -> Path:
        return self.root / "index.lock"

    @property
    def parse_cache(self) -> Path:
        return self.root / "parse-cache"

    @property
    def context_cache(self) -> Path:
        return self.root / "context-cache"

    @property
    def cache_mounts(self) -> Path:
        return self.root / "cache-mounts"

    def cache_mount(self, identity: Mapping[str, Any]) -> Path:
        """The dir of the cache mount with this identity: `cache-mounts/<its name>`."""
        return self.cache_mounts / cache_mount_name(identity)

    @property
    def fingerprints(self) -> Path:
        return self.root / "fingerprints"

    @property
    def explain(self) -> Path:
        return self.root / "explain"  # explanation material per key (store/explain.py)

    @property
    def builds(self) -> Path:
        return self.root / "builds"  # the last build of each tag (store/explain.py)

    def top_dirs(self) -> tuple[Path, ...]:
        """Every dir directly under the root (and blobs/sha256, cache/corrupt): the dirs the
        store refuses to use unless they are its own (store.check_owned)."""
        return (self.root / "blobs", self.blobs, self.layers, self.cache, self.corrupt,
                self.compressed, self.remote_blobs, self.import_cache, self.pushed, self.tmp,
                self.parse_cache, self.context_cache, self.cache_mounts, self.fingerprints,
                self.explain, self.builds)

    @property
    def writer_id(self) -> Path:
        return self.root / "cache-writer-id"

    @property
    def writer_lock(self) -> Path:
        return self.root / "cache-writer.lock"


def cache_mount_name(identity: Mapping[str, Any]) -> str:
    """The name of a cache mount's dir (and of its team cache record): xxh3-128 of its
    identity's canonical JSON. The same bytes as every earlier version's names, so existing
    caches and shared records keep matching."""
    import xxhash  # not at the top: the no-op path imports this module for names only

    from stepbuild.oci.documents import canonical_json

    return xxhash.xxh3_128_hexdigest(canonical_json(dict(identity)))
