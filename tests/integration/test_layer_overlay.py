"""layer.capture on a real overlay upper dir (docs/security.md family F), checked by round trip.

A two-layer lower (overlay-native: its own whiteout and opaque dir) is mounted with a fresh
upper in a throwaway mount namespace (`unshare -m`: the mount dies with the shell, even on
kill -9); a shell changes the merged view the way RUN steps do, and `cp -a` records the merged
view before and after. The captured layer, applied to the "before" copy by a reference applier
written here from the image-spec's words (layer.md, "Applying Changesets"), must give the
"after" copy.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from stepbuild.layers.capture import capture

pytestmark = pytest.mark.root

OLD = 1_500_000_000  # lower files are old, so every change in the step shows in mtimes

# What the step does, in the merged view (cwd). Each line is one kind of change.
STEP = r"""
rm gone.txt                                              # whiteout of a lower file
rm -rf srv/data && mkdir srv/data && echo new > srv/data/n   # dir recreated: opaque
echo more >> usr/lib/deep/a/b/c/file.txt                 # deep change: parents copied up only
ln srv/data/n srv/data/n2                                # a hard link inside the layer
chmod 600 etc/app.conf                                   # metadata-only change (from l2)
ln -s ../usr/lib newlink && mkfifo fifo                  # new symlink, new fifo
mkdir -p new/dir && touch new/dir/f && rm new/dir/f      # upper-only file: no whiteout
rm opq/visible                                           # whiteout inside l2's opaque dir
rm -rf old                                               # a whole lower dir
mv usr/share/doc usr/share/doc2                          # redirect_dir=off: copy + delete
python3 -c 'import os; os.setxattr("etc/motd", "user.tag", b"v1")'
chown 1000:1000 home && touch home/.profile              # owner change on a dir
"""


def make_lowers(base: Path) -> tuple[Path, Path]:
    """l1 (bottom) and l2 (top), overlay-native like the store's layer dirs."""
    l1, l2 = base / "l1", base / "l2"
    files = {
        "gone.txt": "bye",
        "srv/data/x": "x",
        "srv/data/sub/z": "z",
        "usr/lib/deep/a/b/c/file.txt": "v1\n",
        "usr/lib/deep/a/b/c/sibling": "s",
        "usr/share/doc/README": "doc",
        "etc/app.conf": "l1 version",
        "etc/motd": "hello",
        "old/keep": "k",
        "old/gone2": "hidden by l2",
        "opq/hidden": "hidden by l2's opaque dir",
        "home/.bashrc": "rc",
    }
    for rel, text in files.items():
        (l1 / rel).parent.mkdir(parents=True, exist_ok=True)
        (l1 / rel).write_text(text)
    os.link(l1 / "etc" / "motd", l1 / "etc" / "motd.link")
    (l2 / "srv" / "data").mkdir(parents=True)
    (l2 / "srv" / "data" / "extra").write_text("from l2")
    (l2 / "etc").mkdir()
    (l2 / "etc" / "app.conf").write_text("l2 version")
    (l2 / "old").mkdir()
    os.mknod(l2 / "old" / "gone2", stat.S_IFCHR, os.makedev(0, 0))
    (l2 / "opq").mkdir()
    os.setxattr(l2 / "opq", "trusted.overlay.opaque", b"y")
    (l2 / "opq" / "visible").write_text("v")
    for lower in (l1, l2):
        for dirpath, dirnames, filenames in os.walk(lower, topdown=False):
            for name in filenames + dirnames + ["."]:
                os.utime(Path(dirpath) / name, (OLD, OLD), follow_symlinks=False)
        # both lowers must agree on shared dirs' metadata, as stacked layers would
    return l1, l2


def run_step(base: Path, l1: Path, l2: Path, step: str = STEP) -> tuple[Path, Path, Path]:
    upper, work, merged = base / "upper", base / "work", base / "merged"
    before, after = base / "before", base / "after"
    for d in (upper, work, merged, before, after):
        d.mkdir()
    opts = f"lowerdir={l2}:{l1},upperdir={upper},workdir={work}," + (
        "redirect_dir=off,metacopy=off,index=off"
    )
    q = shlex.quote
    script = "\n".join(
        [
            "set -eu",
            f"mount -t overlay overlay -o {q(opts)} {q(str(merged))}",
            f"cp -a {q(str(merged))}/. {q(str(before))}/",
            f"cd {q(str(merged))}",
            *(line.split("#")[0] for line in step.strip().splitlines()),
            "cd /",
            f"cp -a {q(str(merged))}/. {q(str(after))}/",
        ]
    )
    subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], check=True)
    return upper, before, after


# --- a reference applier: image-spec layer.md, trusting its input (test data) ---------------


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.is_symlink() or p.exists():
        p.unlink()


def _set_meta(p: Path, m: tarfile.TarInfo) -> None:
    os.chown(p, m.uid, m.gid, follow_symlinks=False)
    if not m.issym():
        os.chmod(p, m.mode)
        for key, value in m.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                os.setxattr(p, key[13:], value.encode("utf-8", "surrogateescape"))
    os.utime(p, (m.mtime, m.mtime), follow_symlinks=False)


def _create(tf: tarfile.TarFile, m: tarfile.TarInfo, p: Path, target: Path) -> None:
    if m.isdir():
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            _remove(p)
        p.mkdir(exist_ok=True)
        return
    _remove(p)
    if m.isreg():
        f = tf.extractfile(m)
        assert f is not None
        p.write_bytes(f.read())
    elif m.issym():
        p.symlink_to(m.linkname)
    elif m.islnk():
        os.link(target / m.linkname, p)
    elif m.isfifo():
        os.mkfifo(p)
    elif m.ischr() or m.isblk():
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
        os.mknod(p, kind, os.makedev(m.devmajor, m.devminor))
    _set_meta(p, m)


def apply_layer(tar: Path, target: Path) -> None:
    """Whiteouts first (they apply to lower layers only, whatever their order in the tar),
    then entries in order, then directory attributes deepest first; directories the layer
    does not name keep their mtimes (the layer did not change them)."""
    kept = {
        Path(dp) / d: (Path(dp) / d).lstat().st_mtime_ns
        for dp, dns, _ in os.walk(target)
        for d in dns
    }
    with tarfile.open(tar) as tf:
        ms = tf.getmembers()
        for m in ms:
            parent, base = posixpath.split(m.name)
            if base == ".wh..wh..opq":
                for child in (target / parent).iterdir():
                    _remove(child)
            elif base.startswith(".wh."):
                _remove(target / parent / base[4:])
        for m in ms:
            if not posixpath.basename(m.name).startswith(".wh."):
                _create(tf, m, target / m.name, target)
    dirs = sorted((m for m in ms if m.isdir()), key=lambda m: -m.name.count("/"))
    for m in dirs:
        _set_meta(target / m.name, m)
    named = {target / m.name for m in ms}
    for path, mtime in kept.items():
        if path not in named and path.is_dir():
            os.utime(path, ns=(mtime, mtime), follow_symlinks=False)


def tree(top: Path) -> tuple[dict[str, tuple[object, ...]], set[frozenset[str]]]:
    """Type, mode, owner, mtime (whole seconds: what a layer keeps), content, xattrs; and
    the hard-link groups."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(top))
            s = p.lstat()
            if stat.S_ISREG(s.st_mode):
                content: object = p.read_bytes()
                inodes.setdefault(s.st_ino, set()).add(rel)
            elif stat.S_ISLNK(s.st_mode):
                content = os.readlink(p)
            else:
                content = s.st_rdev if not stat.S_ISDIR(s.st_mode) else None
            xattrs = (
                {} if stat.S_ISLNK(s.st_mode) else {k: os.getxattr(p, k) for k in os.listxattr(p)}
            )
            out[rel] = (
                s.st_mode,
                s.st_uid,
                s.st_gid,
                s.st_mtime_ns // 10**9,
                content,
                sorted(xattrs.items()),
            )
    return out, {frozenset(g) for g in inodes.values() if len(g) > 1}


def test_capture_round_trips_through_a_real_overlay(tmp_path: Path) -> None:
    l1, l2 = make_lowers(tmp_path)
    upper, before, after = run_step(tmp_path, l1, l2)
    blob = capture(upper, [l2, l1], tmp_path / "layer.tar")
    assert blob is not None
    with tarfile.open(blob.path) as tf:
        names = [m.name for m in tf.getmembers()]

    # what the step did, as OCI entries
    for expected in [
        ".wh.gone.txt",
        "srv/data",
        "srv/data/.wh..wh..opq",
        "srv/data/n",
        "srv/data/n2",
        "usr/lib/deep/a/b/c/file.txt",
        "etc/app.conf",
        "opq/.wh.visible",
        ".wh.old",
        "usr/share/doc2/README",
        "usr/share/.wh.doc",
        "etc/motd",
        "home",
        "home/.profile",
    ]:
        assert expected in names
    # and not: the parents overlay merely copied up, upper-only deletions, overlay's xattrs
    for absent in [
        "usr",
        "usr/lib",
        "usr/lib/deep",
        "usr/lib/deep/a/b/c",
        "etc",
        "new/dir/.wh.f",
        "opq/.wh.hidden",
        "old/.wh.gone2",
    ]:
        assert absent not in names
    assert names.index("srv/data/.wh..wh..opq") < names.index("srv/data/n")

    apply_layer(blob.path, before)
    got, want = tree(before), tree(after)
    assert got[1] == want[1]  # hard-link groups
    assert set(got[0]) == set(want[0])
    for rel in want[0]:
        assert got[0][rel] == want[0][rel], rel


def test_capture_is_reproducible_across_runs(tmp_path: Path) -> None:
    """The same step on the same lowers, twice: identical layers once mtimes are clamped."""
    digests = []
    for run in ("one", "two"):
        base = tmp_path / run
        base.mkdir()
        l1, l2 = make_lowers(base)
        upper, _, _ = run_step(base, l1, l2)
        blob = capture(upper, [l2, l1], base / "layer.tar", source_date_epoch=OLD)
        assert blob is not None
        digests.append(blob.diff_id)
    assert digests[0] == digests[1]


def test_unpack_into_a_merged_overlay_then_capture(tmp_path: Path) -> None:
    """ADD of an archive into a mounted merged view: merged dirs, a lower file replaced, a
    lower dir replaced by a file, a file written through an absolute symlink; the capture
    of that step round-trips like any other."""
    from stepbuild.layers.tar import (
        DIRTYPE,
        END_OF_ARCHIVE,
        REGTYPE,
        SYMTYPE,
        Header,
        encode_header,
        padding,
    )

    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "file").write_text("host")

    def reg(name: str, data: bytes) -> bytes:
        h = Header(
            name=name.encode(), type=REGTYPE, mode=0o644, size=len(data), mtime_ns=OLD * 10**9
        )
        return encode_header(h) + data + padding(len(data))

    archive = tmp_path / "add.tar"
    archive.write_bytes(
        encode_header(Header(name=b"etc/", type=DIRTYPE, mode=0o755, mtime_ns=OLD * 10**9))
        + reg("etc/app.conf", b"from the archive")
        + encode_header(Header(name=b"cfg", type=SYMTYPE, mode=0o777, linkname=b"/etc"))
        + reg("cfg/added", b"through a symlink")
        + encode_header(Header(name=b"esc", type=SYMTYPE, linkname=str(sentinel).encode()))
        + reg("esc/pwn", b"contained")
        + reg("srv/data", b"a file now")
        + reg("usr/lib/deep/a/b/c/new", b"deep")
        + END_OF_ARCHIVE
    )
    l1, l2 = make_lowers(tmp_path)
    project = Path(__file__).resolve().parents[2]
    code = (
        f"import sys; sys.path.insert(0, {str(project)!r}); from pathlib import Path; "
        "from stepbuild.layers.unpack import unpack_archive; "
        f"unpack_archive(Path({str(archive)!r}), Path('.'), '/')"
    )
    upper, before, after = run_step(tmp_path, l1, l2, f"{sys.executable} -c {shlex.quote(code)}")
    assert (sentinel / "file").read_text() == "host" and sorted(os.listdir(sentinel)) == ["file"]
    assert (after / "etc" / "added").read_text() == "through a symlink"
    assert (after / "etc" / "app.conf").read_text() == "from the archive"
    assert (after / "etc" / "motd").read_text() == "hello"
    assert (after / "srv" / "data").read_text() == "a file now"
    assert (after / str(sentinel).lstrip("/") / "pwn").read_text() == "contained"

    blob = capture(upper, [l2, l1], tmp_path / "layer.tar")
    assert blob is not None
    with tarfile.open(blob.path) as tf:
        names = [m.name for m in tf.getmembers()]
    assert {"etc/added", "etc/app.conf", "srv/data", "usr/lib/deep/a/b/c/new"} <= set(names)
    assert "usr/lib/deep/a/b" not in names and "usr" not in names
    apply_layer(blob.path, before)
    assert tree(before) == tree(after)
