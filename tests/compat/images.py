"""Read an image the way a third party would: its config and its flattened file tree.

This is deliberately independent of stepbuild's own code (stepbuild/layers, stepbuild/oci): it
reads both images of a comparison, Buildah's and ours, with Python's tarfile alone, so a bug in
our flattener cannot hide the same bug in our layers.

Two on-disk forms are read: an OCI image layout (index.json → manifest → config and layers; what
`stepbuild build -o type=oci-layout` writes) and containers/image's `dir:` transport
(manifest.json beside blobs named by their hex digest; what `buildah push IMG dir:PATH` writes —
the one Buildah export that keeps a Docker-format config, with Shell, Healthcheck and OnBuild,
byte for byte: its `oci:` push converts the config to OCI's and drops those three).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

# What a tree entry's type is called in a diff.
TYPE_NAMES = {
    tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo",
}


@dataclass
class Entry:
    """One path of a flattened image: everything the comparison looks at but the hard-link
    group, which the tree works out at the end (it depends on the other paths)."""

    kind: str
    mode: int
    uid: int
    gid: int
    target: str = ""  # a symlink's target
    content: str = ""  # the first 16 hex digits of a file's sha256
    device: str = ""  # major,minor of a char or block device
    inode: int = 0  # files that are hard links of each other share it

    def describe(self) -> str:
        text = f"{self.kind} {self.mode:04o} {self.uid}:{self.gid}"
        if self.kind == "symlink":
            text += f" -> {self.target}"
        if self.content:
            text += f" sha256:{self.content}"
        if self.device:
            text += f" dev {self.device}"
        return text


@dataclass
class Image:
    config: dict[str, Any]  # the whole config document (its "config" key is the runtime config)
    tree: dict[str, str]  # "/path" → Entry.describe(), plus " hardlinks=/first" in a group


def read_oci_layout(layout: Path) -> Image:
    index = json.loads((layout / "index.json").read_text())
    (descriptor,) = index["manifests"]
    manifest = json.loads(_blob(layout / "blobs", descriptor["digest"]).read_bytes())
    return _read(manifest, layout / "blobs")


def read_dir_transport(directory: Path) -> Image:
    manifest = json.loads((directory / "manifest.json").read_text())
    return _read(manifest, directory)


def _blob(blobs: Path, digest: str) -> Path:
    algorithm, hex_digest = digest.split(":")
    nested = blobs / algorithm / hex_digest  # OCI layout: blobs/sha256/HEX
    return nested if nested.exists() else blobs / hex_digest  # dir: transport: HEX


def _read(manifest: dict[str, Any], blobs: Path) -> Image:
    config = json.loads(_blob(blobs, manifest["config"]["digest"]).read_bytes())
    flat = Flattener()
    for layer in manifest["layers"]:
        flat.apply(_decompressed(_blob(blobs, layer["digest"]).read_bytes()))
    return Image(config=config, tree=flat.described())


def _decompressed(data: bytes) -> bytes:
    """A layer blob's tar, whatever its compression (sniffed, as containers/image does)."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


class Flattener:
    """Applies layers in order, the OCI image spec's way: `.wh.NAME` deletes NAME of the
    layers below, `.wh..wh..opq` empties its directory of what the layers below put there,
    a hard link shares its target's inode, and a later entry replaces an earlier one."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self._next_inode = 1

    def apply(self, layer: bytes) -> None:
        with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as archive:
            members = [(self._path(m.name), m) for m in archive.getmembers()]
            # Whiteouts speak of the layers below only, so they go first, whatever their order
            # in the tar relative to the layer's own entries.
            for path, _ in members:
                self._whiteout(path)
            for path, member in members:
                if not _is_whiteout(path):
                    self._add(path, member, archive)

    @staticmethod
    def _path(name: str) -> str:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        return "/" + "/".join(parts)

    def _whiteout(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        if name == OPAQUE:
            self._remove_below(parent or "/", keep_dir=True)
        elif name.startswith(WHITEOUT):
            self._remove_below(f"{parent}/{name[len(WHITEOUT):]}", keep_dir=False)

    def _remove_below(self, path: str, keep_dir: bool) -> None:
        prefix = path.rstrip("/") + "/"
        for other in [p for p in self.entries if p.startswith(prefix)]:
            del self.entries[other]
        if not keep_dir:
            self.entries.pop(path, None)

    def _add(self, path: str, member: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
        if path == "/":
            return  # the root's own attributes are not the image's to set
        old = self.entries.get(path)
        if old is not None and old.kind == "dir" and not member.isdir():
            self._remove_below(path, keep_dir=True)
        if member.islnk():
            target = self.entries[self._path(member.linkname)]
            self.entries[path] = target  # the same object: one inode, two names
            return
        entry = Entry(kind=TYPE_NAMES[member.type], mode=member.mode & 0o7777, uid=member.uid,
                      gid=member.gid, inode=self._next_inode)
        self._next_inode += 1
        if member.issym():
            entry.target = member.linkname
        elif member.isfile():
            data = archive.extractfile(member)
            assert data is not None
            entry.content = hashlib.sha256(data.read()).hexdigest()[:16]
        elif member.ischr() or member.isblk():
            entry.device = f"{member.devmajor},{member.devminor}"
        self.entries[path] = entry

    def described(self) -> dict[str, str]:
        first_of_inode: dict[int, str] = {}
        names_of_inode: dict[int, int] = {}
        for path in sorted(self.entries):
            inode = self.entries[path].inode
            first_of_inode.setdefault(inode, path)
            names_of_inode[inode] = names_of_inode.get(inode, 0) + 1
        tree = {}
        for path, entry in sorted(self.entries.items()):
            text = entry.describe()
            if names_of_inode[entry.inode] > 1:
                text += f" hardlinks={first_of_inode[entry.inode]}"
            tree[path] = text
        return tree


def _is_whiteout(path: str) -> bool:
    return path.rpartition("/")[2].startswith(WHITEOUT)
