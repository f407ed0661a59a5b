"""A layer's paths through the non-directories of the layers below: RUN and the exports agree.

A layer may write `lk/Xfile` where a lower layer has a symlink (or a file) `lk`. The store
keeps each layer unpacked in a dir of its own (`apply`), so the overlay a RUN sees shows the
layer's real directory `lk/` in place of the lower symlink, as Docker's overlay2, containerd's
overlayfs snapshotter and podman's overlay driver do; `flatten` (`type=local`, `type=tar`)
must give that same tree. First in-process: each stack of layers applied into layer dirs and
mounted read-only, against `flatten` of the same blobs. Then for real: an imported base with
such layers, what `RUN` lists against the `type=local` export of the image; and a layer whose
own symlink `b -> .wh.a` would make a real `/.wh.a/a` is refused with a clear error. Last, a
property: any stack of small random layers that apply accepts flattens to the overlay's tree.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stepbuild.errors import LayerError
from stepbuild.layers.apply import apply_layer
from stepbuild.layers.flatten import flatten
from stepbuild.layers.tar import DIRTYPE, SYMTYPE
from stepbuild.sandbox import host
from stepbuild.store.store import Store
from tests.badtars import ent, reg, tar
from tests.integration.builds import Stepbuild, assert_clear_error, rootfs_tarball, write_context
from tests.integration.test_import import oci_files, pack

pytestmark = pytest.mark.root

LOWER_LINK = tar(ent(SYMTYPE, "lk", "/abs/path"), ent(DIRTYPE, "abs/"), ent(DIRTYPE, "abs/path/"),
                 reg("abs/path/old", b"old\n"))
X_UNDER_LINK = tar(reg("lk/Xfile", b"x\n"))

STACKS = {
    "file under a lower symlink": [LOWER_LINK, X_UNDER_LINK],
    "merged /usr": [tar(ent(SYMTYPE, "lib", "usr/lib"), reg("usr/lib/libc.so", b"c")),
                    tar(reg("lib/libnew.so", b"n"))],
    "file under a lower file": [tar(reg("f", b"file")), tar(reg("f/in", b"in"))],
    "whiteouts under a lower symlink": [LOWER_LINK, tar(reg("lk/.wh.old"), reg("lk/.wh.x"))],
    "opaque dir under a lower symlink": [LOWER_LINK, tar(reg("lk/sub/.wh..wh..opq"))],
    "whiteout in a missing dir": [LOWER_LINK, tar(reg("new/deep/.wh.gone"))],
    "the layer's own symlink": [LOWER_LINK, tar(ent(SYMTYPE, "own", "abs/path"),
                                                reg("own/y", b"y"))],
    "own symlink through a lower one": [LOWER_LINK, tar(ent(SYMTYPE, "s", "lk/sub"),
                                                        reg("s/z", b"z"))],
    "lower symlink to a whiteout name": [tar(ent(SYMTYPE, "b", ".wh.a")), tar(reg("b/a", b"a"))],
    "lower symlink made a dir, then used": [LOWER_LINK, tar(ent(DIRTYPE, "lk/")), X_UNDER_LINK],
}


def view(root: Path) -> dict[str, tuple[object, ...]]:
    """What RUN and an export can both be asked about: names, types, contents, link
    targets, modes and owners (not directory times: apply's made dirs carry the time of
    the apply, flatten's 0)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            try:
                st = path.lstat()
            except FileNotFoundError:
                # overlay lists the whiteouts of a directory only one layer has (they hide
                # nothing) but no lookup finds them: not a file of the view
                continue
            if stat.S_ISLNK(st.st_mode):
                what: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = path.read_bytes()
            else:
                what = stat.S_IFMT(st.st_mode)
            out[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, what)
    return out


@pytest.mark.parametrize("case", list(STACKS))
def test_flatten_is_the_overlay_of_the_applied_layers(tmp_path: Path, case: str,
                                                       private_mount_ns: None) -> None:
    store = Store(tmp_path / "store")
    diff_ids, lowers = [], []  # lowers: the applied layer dirs, top first
    for n, layer in enumerate(STACKS[case]):
        diff_ids.append(store.put_blob(layer)[0])
        layer_dir = tmp_path / f"layer{n}"
        layer_dir.mkdir()
        apply_layer(io.BytesIO(layer), layer_dir, lowers=lowers)
        lowers.insert(0, layer_dir)
    flat = tmp_path / "flat"
    flat.mkdir()
    flatten(store, diff_ids, flat)
    with host.mounted_readonly(tmp_path / "merged", lowers) as merged:
        assert view(flat) == view(merged)
    for dirpath, dirnames, filenames in os.walk(flat):
        assert not [n for n in dirnames + filenames if n.startswith(".wh.")], dirpath


# --- for real: an imported base, RUN against the type=local export ---------------------------

# What a RUN step and the export are both asked: every path under /lk and /abs, sorted
LISTING = ('find /lk /abs | sort | while read -r p; do if [ -L "$p" ]; then'
           ' echo "$p -> $(readlink "$p")"; elif [ -d "$p" ]; then echo "$p/";'
           ' else echo "$p: $(cat "$p")"; fi; done')


def host_listing(root: Path) -> str:
    """`LISTING`, of a directory on the host (the type=local export)."""
    lines = []
    for top in ("lk", "abs"):
        paths = [root / top]
        if (root / top).is_dir() and not (root / top).is_symlink():
            paths += [Path(d, n) for d, ds, fs in os.walk(root / top) for n in ds + fs]
        for path in paths:
            shown = "/" + str(path.relative_to(root))
            if path.is_symlink():
                lines.append(f"{shown} -> {os.readlink(path)}")
            elif path.is_dir():
                lines.append(f"{shown}/")
            else:
                lines.append(f"{shown}: {path.read_text().strip()}")
    return "".join(line + "\n" for line in sorted(lines, key=lambda s: s.split()[0]))


def base_archive(tmp_path: Path, *layers: bytes) -> Path:
    """An oci-archive: the busybox rootfs as its first layer, then `layers`."""
    rootfs = rootfs_tarball(tmp_path).read_bytes()
    files, _ = oci_files([rootfs, *layers], kind="gzip", ref="v1")
    archive = tmp_path / "base.tar"
    archive.write_bytes(pack(files))
    return archive


def test_run_sees_the_tree_the_local_export_holds(tmp_path: Path) -> None:
    archive = base_archive(tmp_path, LOWER_LINK, X_UNDER_LINK)
    sb = Stepbuild(tmp_path / "store")
    context = write_context(tmp_path / "app", f"FROM oci-archive:{archive}:v1\n"
                            f"RUN ls -l /lk /abs/path && ({LISTING}) > /seen-by-run\n")
    out = tmp_path / "out"
    sb.build(context, "-t", "app", "-o", f"type=local,dest={out}")
    seen_by_run = (out / "seen-by-run").read_text()
    assert seen_by_run == host_listing(out)
    assert seen_by_run == ("/abs/\n/abs/path/\n/abs/path/old: old\n/lk/\n/lk/Xfile: x\n")
    assert sb.run("app", "sh", "-c", LISTING) == seen_by_run  # and `stepbuild run`
    assert sb("check").returncode == 0


def test_a_symlink_to_a_whiteout_name_on_a_path_is_a_clear_error(tmp_path: Path) -> None:
    archive = base_archive(tmp_path, tar(ent(SYMTYPE, "b", ".wh.a"), reg("b/a", b"a")))
    sb = Stepbuild(tmp_path / "store")
    context = write_context(tmp_path / "app", f"FROM oci-archive:{archive}:v1\nRUN true\n")
    result = sb.build(context, check=False)
    assert_clear_error(result, 1, "stepbuild: error:", "'b' -> '.wh.a'", "reserves for whiteouts")
    assert sb("images").stdout.splitlines()[1:] == []
    assert sb("check").returncode == 0


# --- property: for any two layers apply accepts, flatten gives the overlay's tree -----------

NAMES = st.sampled_from(["a", "b", "a/b", "b/a", "a/b/c", "c", ".wh.a", "a/.wh.b",
                         "a/.wh..wh..opq", "b/.wh.c"])
ENTRIES = st.one_of(
    st.tuples(st.just("file"), NAMES),
    st.tuples(st.just("dir"), NAMES),
    st.tuples(st.just("symlink"), NAMES,
              st.sampled_from(["a", "b", "/a/b", "c", "..", "a/b", "/", "nowhere"])),
)


def layer_tar(entries: list[tuple[str, ...]]) -> bytes:
    """The entries as a tar, each name once: where a layer lists a name twice, flatten
    writes both and so loses what lies below a directory made a file and then a directory
    again, which the layer dir keeps (not a question of paths; left to another day)."""
    made, seen = [], set()
    for kind, name, *target in entries:
        if name in seen:
            continue
        seen.add(name)
        if kind == "file":
            made.append(reg(name, name.encode()))
        elif kind == "dir":
            made.append(ent(DIRTYPE, name + "/"))
        else:
            made.append(ent(SYMTYPE, name, target[0]))
    return tar(*made)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(layers=st.lists(st.lists(ENTRIES, min_size=1, max_size=6), min_size=2, max_size=3))
def test_property_flatten_is_the_overlay(tmp_path: Path, private_mount_ns: None,
                                         layers: list[list[tuple[str, ...]]]) -> None:
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    store = Store(work / "store")
    diff_ids, lowers = [], []
    for n, entries in enumerate(layers):
        data = layer_tar(entries)
        diff_ids.append(store.put_blob(data)[0])
        layer_dir = work / f"layer{n}"
        layer_dir.mkdir()
        try:
            apply_layer(io.BytesIO(data), layer_dir, lowers=lowers)
        except LayerError:
            assume(False)  # refused at import: no image has it
        lowers.insert(0, layer_dir)
    flat = work / "flat"
    flat.mkdir()
    flatten(store, diff_ids, flat)
    with host.mounted_readonly(work / "merged", lowers) as merged:
        assert view(flat) == view(merged)
