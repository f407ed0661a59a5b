"""layers/fuse_upper.py: fuse-overlayfs's upper dir forms → the kernel overlay's.

The trees are made by hand in the forms fuse-overlayfs 1.10 writes in a user namespace (seen
on this machine: `user.fuseoverlayfs.opaque` plus a `.wh..wh..opq` file and a `.wh..opq`
whiteout in every dir it makes, `user.fuseoverlayfs.origin` on copied-up files, whiteouts
with nothing below, copied-up dirs with the time of the copy-up), and beside them the upper
dir the kernel's overlay leaves for the same changes: after `normalise`, both capture to the
same layer. The real program is exercised in tests/integration/test_rootless.py.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from stepbuild.layers.capture import capture
from stepbuild.layers.fuse_upper import normalise
from tests.tars import needs_root

LOWER_TIME = 1_600_000_000_123_456_789
KERNEL_OPAQUE = "trusted.overlay.opaque"  # what opaque_xattr() gives outside a user namespace


def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def fuse_dir(path: Path) -> None:
    """A dir as fuse-overlayfs makes one: opaque, with its two markers."""
    path.mkdir()
    os.setxattr(path, "user.fuseoverlayfs.opaque", b"y")
    (path / ".wh..wh..opq").touch(mode=0o700)
    os.mknod(path / ".wh..opq", stat.S_IFCHR | 0o700, os.makedev(0, 0))


def lower(tmp: Path) -> Path:
    """/d (x), /e (y), /g (z), /a, each dir with an old mtime."""
    low = tmp / "lower"
    for name, file in (("d", "x"), ("e", "y"), ("g", "z")):
        (low / name).mkdir(parents=True)
        (low / name / file).write_text(file)
    (low / "a").write_text("a")
    for name in ("d", "e", "g"):
        os.utime(low / name, ns=(LOWER_TIME, LOWER_TIME))
    return low


def fuse_upper(tmp: Path) -> Path:
    """`rm -rf /d && mkdir /d && echo n > /d/n; mkdir /new && echo q > /new/q; rm /e/y;
    echo z2 > /g/z; mkdir /stub && rmdir /stub; setfattr -n user.k /a` through fuse-overlayfs."""
    up = tmp / "fuse"
    up.mkdir()
    fuse_dir(up / "d")
    (up / "d" / "n").write_text("n")
    fuse_dir(up / "new")
    (up / "new" / "q").write_text("q")
    (up / "e").mkdir()
    whiteout(up / "e" / "y")
    (up / "g").mkdir()  # copied up, with the time of the copy-up
    (up / "g" / "z").write_text("z2")
    os.setxattr(up / "g" / "z", "user.fuseoverlayfs.origin", b"g/z\0")
    whiteout(up / "stub")  # left by the rmdir: nothing below to hide
    (up / "a").write_text("a")
    os.setxattr(up / "a", "user.fuseoverlayfs.origin", b"a\0")
    os.setxattr(up / "a", "user.k", b"v")
    return up


def kernel_upper(tmp: Path) -> Path:
    """The same changes as the kernel's overlay leaves them."""
    up = tmp / "kernel"
    up.mkdir()
    (up / "d").mkdir()
    os.setxattr(up / "d", KERNEL_OPAQUE, b"y")
    (up / "d" / "n").write_text("n")
    (up / "new").mkdir()
    (up / "new" / "q").write_text("q")
    (up / "e").mkdir()
    whiteout(up / "e" / "y")
    (up / "g").mkdir()
    (up / "g" / "z").write_text("z2")
    os.utime(up / "g", ns=(LOWER_TIME, LOWER_TIME))  # copy-up keeps the lower dir's time
    (up / "a").write_text("a")
    os.setxattr(up / "a", "user.k", b"v")
    return up


def same_times(fuse: Path, kernel: Path) -> None:
    """Give the entries the step made the same times in both trees (they were made at other
    moments here); the copied-up /g keeps what each tree has."""
    for rel in ("d", "d/n", "new", "new/q", "e", "e/y", "g/z", "a"):
        st = os.lstat(kernel / rel)
        os.utime(fuse / rel, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


@needs_root
def test_after_normalise_the_fuse_upper_captures_as_the_kernels(tmp_path: Path) -> None:
    low = lower(tmp_path)
    fuse, kernel = fuse_upper(tmp_path), kernel_upper(tmp_path)
    normalise(fuse, [low])
    same_times(fuse, kernel)
    blobs = [capture(up, [low], tmp_path / f"{up.name}.tar") for up in (fuse, kernel)]
    assert blobs[0] is not None and blobs[1] is not None
    assert (tmp_path / "fuse.tar").read_bytes() == (tmp_path / "kernel.tar").read_bytes()
    assert blobs[0].diff_id == blobs[1].diff_id


@needs_root
def test_normalise_leaves_the_kernels_forms(tmp_path: Path) -> None:
    low = lower(tmp_path)
    fuse = fuse_upper(tmp_path)
    made_at = os.lstat(fuse / "d").st_mtime_ns
    normalise(fuse, [low])
    assert sorted(os.listdir(fuse)) == ["a", "d", "e", "g", "new"]  # the stray whiteout went
    assert sorted(os.listdir(fuse / "d")) == ["n"]
    assert os.listxattr(fuse / "d") == [KERNEL_OPAQUE]  # it hides the lower /d
    assert os.lstat(fuse / "d").st_mtime_ns == made_at  # removing the markers kept it
    assert os.listxattr(fuse / "new") == []  # nothing below: not opaque
    assert sorted(os.listdir(fuse / "new")) == ["q"]
    assert os.lstat(fuse / "g").st_mtime_ns == LOWER_TIME  # only its file's content changed
    assert os.lstat(fuse / "e").st_mtime_ns != LOWER_TIME  # a name was removed there
    assert os.listxattr(fuse / "a") == ["user.k"]
    assert os.listxattr(fuse / "g" / "z") == []


@needs_root
def test_normalise_without_lowers_and_twice_changes_nothing_more(tmp_path: Path) -> None:
    """An image with no layers (FROM scratch: no lowers): every fuse-made dir loses its
    opaque state and markers; a second pass finds nothing to do."""
    up = tmp_path / "up"
    up.mkdir()
    fuse_dir(up / "app")
    fuse_dir(up / "app" / "deep")
    (up / "app" / "deep" / "f").write_text("f")
    normalise(up, [])
    first = [(p, os.lstat(p).st_mtime_ns, os.listxattr(p)) for p in sorted(up.rglob("*"))]
    assert [p.relative_to(up).as_posix() for p, _, _ in first] == [
        "app", "app/deep", "app/deep/f"]
    assert all(not xattrs for _, _, xattrs in first)
    normalise(up, [])
    assert [(p, os.lstat(p).st_mtime_ns, os.listxattr(p)) for p in sorted(up.rglob("*"))] == first
