"""The suite's own flattener (images.py): whiteouts, opaque dirs, hard links, replacements.

It is the independent reader both images of a comparison go through, so it is checked here on
layers written by hand."""

from __future__ import annotations

import io
import tarfile

from tests.compat.images import Flattener


def layer(*members: tuple[str, str, str]) -> bytes:
    """A tar of (name, kind, data or link target): kind is file, dir, symlink or hardlink."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, text in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = text
            info.size = len(text) if kind == "file" else 0
            archive.addfile(info, io.BytesIO(text.encode()) if kind == "file" else None)
    return buffer.getvalue()


def flatten(*layers: bytes) -> dict[str, str]:
    flat = Flattener()
    for data in layers:
        flat.apply(data)
    return flat.described()


def test_whiteouts_and_opaque_dirs_hide_only_the_layers_below() -> None:
    tree = flatten(
        layer(("a", "dir", ""), ("a/gone", "file", "x"), ("a/kept", "file", "y"),
              ("o", "dir", ""), ("o/old", "file", "old")),
        # the opaque marker after the layer's own o/new: it still hides only o/old
        layer(("a/.wh.gone", "file", ""), ("o", "dir", ""), ("o/new", "file", "new"),
              ("o/.wh..wh..opq", "file", "")))
    assert sorted(tree) == ["/a", "/a/kept", "/o", "/o/new"]


def test_hard_links_share_a_group_and_a_replaced_dir_loses_its_children() -> None:
    tree = flatten(
        layer(("d", "dir", ""), ("d/inner", "file", "i"), ("f", "file", "body"),
              ("g", "hardlink", "f"), ("s", "symlink", "f")),
        layer(("d", "file", "now a file")))
    assert tree["/f"] == tree["/g"] == "file 0644 0:0 sha256:230d8358dc8e8890 hardlinks=/f"
    assert tree["/s"] == "symlink 0644 0:0 -> f"
    assert "/d/inner" not in tree and tree["/d"].startswith("file ")
