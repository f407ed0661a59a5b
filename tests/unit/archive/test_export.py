"""export.py, archives.py and flatten.py without a build: --output parsing, destination
rules, the OCI and docker archives of a small store image, and flattening hand-made layers
(whiteouts in any order, opaque dirs, containment, deterministic directory times, damaged
blobs).

The real-tool proofs (skopeo, umoci, podman, tar) are in tests/integration/test_export.py.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from stepbuild.archive.export import (
    OUTPUT_TYPES,
    Output,
    check_destination,
    export_image,
    parse_output,
)
from stepbuild.errors import DigestMismatch, LayerError, StepbuildError, UsageError
from stepbuild.layers.flatten import flatten
from stepbuild.layers.tar import DIRTYPE, END_OF_ARCHIVE, REGTYPE, SYMTYPE, Header, encode_header
from stepbuild.layers.tar import padding as tar_padding
from stepbuild.oci.documents import (
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    ContainerConfig,
    Descriptor,
    ImageConfig,
    validate_layout,
)
from stepbuild.store.gc import check
from stepbuild.store.store import Store

UID, GID = os.getuid(), os.getgid()
T = 1_600_000_000 * 10**9


# --- --output ----------------------------------------------------------------------------------


def test_parse_output() -> None:
    assert parse_output("type=oci,dest=a.tar") == Output("oci", Path("a.tar"))
    assert parse_output("out") == Output("local", Path("out"))
    assert parse_output("type=oci-layout,dest=d,compression=zstd,name=a:1,name=b") == Output(
        "oci-layout", Path("d"), "zstd", ("a:1", "b"))


@pytest.mark.parametrize("bad", ["", "type=zip,dest=x", "type=oci", "type=oci,dest=x,dest=y",
                                 "type=oci,dest=x,color=red", "type=oci,dest=x,junk",
                                 "type=docker,dest=x,compression=gzip",
                                 "type=oci,dest=x,compression=xz", "type=oci,dest=x,name=A B"])
def test_bad_outputs(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_output(bad)


def test_destinations(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to("nowhere")
    ok = [("oci", "new.tar"), ("oci", "file"), ("local", "empty"), ("local", "new"),
          ("oci-layout", "empty"), ("tar", "file"), ("oci", "missing/x.tar"),
          ("local", "missing/a/b")]
    bad = [("oci", "full"), ("local", "full"), ("local", "file"), ("oci-layout", "full"),
           ("oci", "file/x.tar"), ("local", "file/a/b"), ("tar", "dangling/a/r.tar")]
    for kind, name in ok:
        check_destination(Output(kind, tmp_path / name))
    for kind, name in bad:
        with pytest.raises(UsageError):
            check_destination(Output(kind, tmp_path / name))


def test_missing_parents_are_created(tmp_path: Path) -> None:
    """Every output type makes the missing parents of its dest as `mkdir -p` does (0777 less
    the umask), like `docker buildx build -o type=local,dest=a/b/c`; checking makes none."""
    store = Store(tmp_path / "store")
    _image(store, _dir("etc") + _entry("etc/x", data=b"x") + END_OF_ARCHIVE)
    outputs = [Output(kind, tmp_path / "out" / kind / "deeper" / name)
               for kind, name in (("oci", "a.tar"), ("oci-layout", "layout"),
                                  ("docker", "d.tar"), ("local", "rootfs"), ("tar", "r.tar"))]
    for output in outputs:
        check_destination(output)
    assert not (tmp_path / "out").exists()
    old = os.umask(0o027)
    try:
        export_image(store, "app:1", outputs)
    finally:
        os.umask(old)
    for output in outputs:
        assert os.path.lexists(output.dest)
        for parent in (output.dest.parent, output.dest.parent.parent):
            assert parent.stat().st_mode & 0o7777 == 0o750
    assert (tmp_path / "out").stat().st_mode & 0o7777 == 0o750
    assert (tmp_path / "out" / "local" / "deeper" / "rootfs" / "etc" / "x").read_text() == "x"
    assert sorted(os.listdir(tmp_path / "out" / "oci" / "deeper")) == ["a.tar"]  # no temp left


def test_a_file_on_the_way_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _image(store, b"x")
    (tmp_path / "file").write_text("x")
    for kind in OUTPUT_TYPES:
        with pytest.raises(UsageError, match="file is not a directory"):
            export_image(store, "app:1", [Output(kind, tmp_path / "file" / "sub" / "dest")])
    assert (tmp_path / "file").read_text() == "x"


# --- OCI and docker archives of a store image (layers need not be real tars here) ---------------


def _image(store: Store, *layers: bytes, name: str = "app:1") -> str:
    descs = [store.descriptor(store.put_blob(data)[0], MEDIA_TYPE_LAYER) for data in layers]
    config = ImageConfig("amd64", "linux", ContainerConfig(env=("A=1",)),
                         diff_ids=tuple(d.digest for d in descs))
    store.tag(name, store.put_image(config, descs))
    return name


def test_oci_outputs(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _image(store, b"one" * 1000, b"two" * 1000)
    out = tmp_path / "out"
    out.mkdir()
    results = export_image(store, "app:1", [Output("oci", out / "a.tar"),
                                            Output("oci-layout", out / "layout"),
                                            Output("oci", out / "z.tar", "zstd")])
    assert results[0].digest == results[1].digest != results[2].digest
    assert validate_layout(out / "layout") == []
    with tarfile.open(out / "a.tar") as tar:
        assert tar.getnames()[:4] == ["oci-layout", "index.json", "blobs", "blobs/sha256"]
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
        tar.extractall(out / "x", filter="data")
    assert validate_layout(out / "x") == []
    assert _files(out / "x") == _files(out / "layout")
    index = json.loads((out / "layout" / "index.json").read_bytes())
    assert index["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "app:1"}
    again = export_image(store, "app:1", [Output("oci", out / "b.tar")])
    assert (out / "b.tar").read_bytes() == (out / "a.tar").read_bytes()
    assert again[0].digest == results[0].digest
    assert sorted(os.listdir(out)) == ["a.tar", "b.tar", "layout", "x", "z.tar"]
    assert check(store) == []


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_names(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _image(store, b"x")
    digest = store.resolve("app:1")
    assert digest is not None
    export_image(store, digest.digest, [Output("oci-layout", tmp_path / "untagged"),
                                        Output("docker", tmp_path / "d.tar")])
    (entry,) = json.loads((tmp_path / "untagged" / "index.json").read_bytes())["manifests"]
    assert "annotations" not in entry
    with tarfile.open(tmp_path / "d.tar") as tar:
        assert "repositories" not in tar.getnames()
        assert json.loads(tar.extractfile("manifest.json").read())[0]["RepoTags"] is None  # type: ignore[union-attr]
    export_image(store, "app:1", [Output("docker", tmp_path / "d.tar", names=("a", "r/b:2"))])
    with tarfile.open(tmp_path / "d.tar") as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        repositories = json.loads(tar.extractfile("repositories").read())  # type: ignore[union-attr]
    assert manifest[0]["RepoTags"] == ["a:latest", "r/b:2"]
    assert set(repositories) == {"a", "r/b"}


def test_docker_archive_layout(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _image(store, b"base", b"top", b"base")  # the same layer twice
    export_image(store, "app:1", [Output("docker", tmp_path / "d.tar")])
    with tarfile.open(tmp_path / "d.tar") as tar:
        names = tar.getnames()
        (entry,) = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        layers = [tar.extractfile(n).read() for n in entry["Layers"]]  # type: ignore[union-attr]
        links = [m for m in tar.getmembers() if m.issym()]
    assert layers == [b"base", b"top", b"base"]
    assert len(set(entry["Layers"])) == 2 and len(links) == 3  # one file, three legacy ids
    assert names.count(entry["Layers"][0]) == 1
    assert names[-2:] == ["manifest.json", "repositories"]


def test_a_layer_stored_only_compressed(tmp_path: Path) -> None:
    """A foreign image whose layer the store has only as gzip: exported as it is, or not."""
    import gzip

    store = Store(tmp_path / "store")
    tar_bytes = b"pretend tar"
    blob, size = store.put_blob(gzip.compress(tar_bytes, mtime=0))
    diff_id = "sha256:" + __import__("hashlib").sha256(tar_bytes).hexdigest()
    config = ImageConfig("amd64", "linux", diff_ids=(diff_id,))
    store.tag("foreign", store.put_image(config, [Descriptor(MEDIA_TYPE_LAYER_GZIP, blob, size)]))
    (result,) = export_image(store, "foreign", [Output("oci-layout", tmp_path / "l")])
    assert validate_layout(tmp_path / "l") == []
    assert (tmp_path / "l" / "blobs" / "sha256" / blob[7:]).exists()
    with pytest.raises(StepbuildError, match="stored only as"):
        export_image(store, "foreign", [Output("oci", tmp_path / "z.tar", "zstd")])
    with pytest.raises(StepbuildError, match="uncompressed"):
        export_image(store, "foreign", [Output("docker", tmp_path / "d.tar")])
    assert not (tmp_path / "z.tar").exists() and not (tmp_path / "d.tar").exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_a_damaged_blob_is_not_exported(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _image(store, b"layer" * 100)
    (tmp_path / "a.tar").write_bytes(b"previous")
    layer = next(p for p in (tmp_path / "store" / "blobs" / "sha256").iterdir()
                 if p.stat().st_size == 500)
    layer.chmod(0o644)
    layer.write_bytes(b"LAYER" * 100)
    for output in (Output("oci", tmp_path / "a.tar", "none"), Output("docker", tmp_path / "a.tar"),
                   Output("oci", tmp_path / "a.tar")):
        with pytest.raises(DigestMismatch):
            export_image(store, "app:1", [output])
        assert (tmp_path / "a.tar").read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["a.tar", "store"]


def test_unknown_image(tmp_path: Path) -> None:
    with pytest.raises(StepbuildError, match="not found"):
        export_image(Store(tmp_path), "nope", [Output("oci", tmp_path / "x.tar")])


# --- flatten -------------------------------------------------------------------------------------


def _entry(name: str, kind: bytes = REGTYPE, data: bytes = b"", **kw: object) -> bytes:
    header = Header(name=name.encode(), type=kind, mode=kw.pop("mode", 0o644),  # type: ignore[arg-type]
                    uid=UID, gid=GID, size=len(data), mtime_ns=kw.pop("mtime", T),  # type: ignore[arg-type]
                    **kw)  # type: ignore[arg-type]
    return encode_header(header) + data + tar_padding(len(data))


def _dir(name: str, mtime: int = T) -> bytes:
    return _entry(name + "/", DIRTYPE, mode=0o755, mtime=mtime)


def _layer(store: Store, *entries: bytes) -> str:
    return store.put_blob(b"".join(entries) + END_OF_ARCHIVE)[0]


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = path.read_text()
    return out


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def _flatten(store: Store, tmp_path: Path, *layers: str) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    flatten(store, layers, root)
    return root


def test_whiteouts_and_opaque_dirs_in_any_order(store: Store, tmp_path: Path) -> None:
    lower = _layer(store, _dir("a"), _entry("a/old", data=b"old"), _entry("a/keep", data=b"k"),
                   _dir("d"), _entry("d/x", data=b"x"), _dir("d/sub"), _entry("d/sub/y", data=b"y"),
                   _entry("f", data=b"file"))
    # children first, then the opaque marker and a whiteout: only the lower content goes
    upper = _layer(store, _dir("d"), _entry("d/new", data=b"new"), _entry("d/.wh..wh..opq"),
                   _entry("a/.wh.old"), _dir("f"), _entry("f/in", data=b"in"),
                   _entry(".wh.f"), _entry("a/.wh..wh.plnk"))
    root = _flatten(store, tmp_path, lower, upper)
    assert _tree(root) == {"a": "dir", "a/keep": "k", "d": "dir", "d/new": "new", "f": "dir",
                           "f/in": "in"}


def test_a_path_through_a_whiteout_is_refused(store: Store, tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="through a whiteout"):
        _flatten(store, tmp_path, _layer(store, _entry("a/.wh.b/c")))


@pytest.mark.parametrize("name", ["a/.wh..", "a/.wh.", ".wh..", "a/b/../.wh.."])
def test_whiteouts_that_cannot_be(store: Store, tmp_path: Path, name: str) -> None:
    layer = _layer(store, _dir("a"), _entry("a/x"), _entry(name))
    with pytest.raises(LayerError, match="whiteout"):
        _flatten(store, tmp_path, layer)


def test_whiteouts_stay_inside_the_root(store: Store, tmp_path: Path) -> None:
    beside = tmp_path / "beside"
    beside.mkdir()
    (beside / "victim").write_text("sentinel")
    lower = _layer(store, _entry("out", SYMTYPE, linkname=str(beside).encode(), mode=0o777),
                   _entry("up", SYMTYPE, linkname=b"../../../../beside", mode=0o777))
    upper = _layer(store, _entry("out/.wh.victim"), _entry("up/.wh.victim"),
                   _entry("../beside/.wh.victim"), _entry("out/.wh..wh..opq"))
    root = _flatten(store, tmp_path, lower, upper)
    assert (beside / "victim").read_text() == "sentinel"
    # as the overlay of the applied layers shows it: the upper layer's directories (made to
    # hold its whiteouts) hide the lower symlinks; nothing was followed
    assert _tree(root) == {"beside": "dir", "out": "dir", "up": "dir"}


def _link(name: str, target: str) -> bytes:
    return _entry(name, SYMTYPE, linkname=target.encode(), mode=0o777)


def test_a_lower_non_directory_on_a_path_is_hidden_not_followed(store: Store,
                                                                 tmp_path: Path) -> None:
    """As the overlay of the applied layer dirs shows it (what RUN sees): the upper layer's
    `lk/` (made for `lk/Xfile`) hides the lower symlink `lk`, and its `f/` the lower file."""
    lower = _layer(store, _link("lk", "/abs/path"), _dir("abs"), _dir("abs/path"),
                   _entry("abs/path/old", data=b"old"), _entry("f", data=b"file"),
                   _link("gone", "abs"))
    upper = _layer(store, _entry("lk/Xfile", data=b"x"), _entry("f/in", data=b"in"),
                   _entry("gone/.wh.path"), _link("own", "abs/path"),
                   _entry("own/y", data=b"y"))
    root = _flatten(store, tmp_path, lower, upper)
    assert _tree(root) == {"abs": "dir", "abs/path": "dir", "abs/path/old": "old",
                           "abs/path/y": "y", "f": "dir", "f/in": "in", "gone": "dir",
                           "lk": "dir", "lk/Xfile": "x", "own": "-> abs/path"}
    assert (root / "lk").stat().st_mtime_ns == 0  # made, not named: as every implicit dir


def test_a_whiteout_of_a_dir_the_layers_own_whiteouts_need(store: Store,
                                                           tmp_path: Path) -> None:
    """`a/.wh.b` then `.wh.a` over a lower file `a`: the layer dir holds an opaque `a/`
    (made for the first, kept by the second), so the tree has an empty `a/`, in either
    order of the two whiteouts."""
    lower = _layer(store, _entry("a", data=b"file"), _dir("d"), _entry("d/x", data=b"x"))
    upper = _layer(store, _entry("a/.wh.b"), _entry(".wh.a"), _entry("d/sub/.wh.y"),
                   _entry(".wh.d"))
    assert _tree(_flatten(store, tmp_path, lower, upper)) == {"a": "dir", "d": "dir",
                                                              "d/sub": "dir"}


def test_a_path_through_an_own_symlink_to_a_whiteout_name_is_refused(store: Store,
                                                                      tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="reserves for whiteouts"):
        _flatten(store, tmp_path, _layer(store, _link("b", ".wh.a"), _entry("b/a")))
    below = _layer(store, _link("b", ".wh.a"))  # a link below is hidden, never followed
    (tmp_path / "2").mkdir()
    root = _flatten(store, tmp_path / "2", below, _layer(store, _entry("b/a", data=b"a")))
    assert _tree(root) == {"b": "dir", "b/a": "a"}


def test_directory_times_are_fixed(store: Store, tmp_path: Path) -> None:
    lower = _layer(store, _dir("d", mtime=T), _entry("d/x"), _entry("d/y"),
                   _entry("implicit/deep/f"))
    upper = _layer(store, _entry("d/.wh.x"), _entry("d/z"))  # d changed, but not named
    root = _flatten(store, tmp_path, lower, upper)
    assert (root / "d").stat().st_mtime_ns == T
    assert (root / "implicit").stat().st_mtime_ns == 0
    assert (root / "implicit" / "deep").stat().st_mtime_ns == 0
    assert root.stat().st_mtime_ns == 0 and (root.stat().st_mode & 0o777) == 0o755


def test_a_damaged_layer_blob_is_refused(store: Store, tmp_path: Path) -> None:
    layer = _layer(store, _entry("f", data=b"data"))
    path = store.blob_path(layer)
    path.chmod(0o644)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"data", b"DATA"))
    with pytest.raises(DigestMismatch):
        _flatten(store, tmp_path, layer)


def test_tar_of_a_flattened_tree_is_deterministic(store: Store, tmp_path: Path) -> None:
    lower = _layer(store, _dir("d"), _entry("d/x", data=b"x"), _entry("implicit/f", data=b"f"))
    upper = _layer(store, _entry("d/.wh.x"), _entry("d/y", data=b"y"))
    config = ImageConfig("amd64", "linux", diff_ids=(lower, upper))
    descs = [store.descriptor(d, MEDIA_TYPE_LAYER) for d in (lower, upper)]
    store.tag("img", store.put_image(config, descs))
    first = export_image(store, "img", [Output("tar", tmp_path / "a.tar")])
    os.utime(store.blob_path(lower))  # time passes
    second = export_image(store, "img", [Output("tar", tmp_path / "b.tar")])
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert first[0].digest == second[0].digest
    with tarfile.open(fileobj=io.BytesIO((tmp_path / "a.tar").read_bytes())) as tar:
        assert tar.getnames() == ["d", "d/y", "implicit", "implicit/f"]
    assert os.listdir(store.root / "tmp") == []


def test_adding_to_another_tools_layout_keeps_what_we_do_not_model(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _image(store, b"x")
    layout = tmp_path / "layout"
    export_image(store, "app:1", [Output("oci-layout", layout)])
    index = json.loads((layout / "index.json").read_bytes())
    other = {**index["manifests"][0], "artifactType": "application/x.thing",
             "annotations": {"org.opencontainers.image.ref.name": "other"}}
    index["manifests"].append(other)
    index["annotations"] = {"made.by": "someone else"}
    (layout / "index.json").write_text(json.dumps(index))
    _image(store, b"y", name="app:2")
    (result,) = export_image(store, "app:2", [Output("oci-layout", layout, names=("app:1",))])
    after = json.loads((layout / "index.json").read_bytes())
    assert after["annotations"] == {"made.by": "someone else"}
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in after["manifests"]] \
        == ["other", "app:1"]
    assert after["manifests"][0]["artifactType"] == "application/x.thing"
    assert after["manifests"][1]["digest"] == result.digest
    assert validate_layout(layout) == []
    (layout / "index.json").write_text("{")
    with pytest.raises(UsageError, match="cannot add"):
        export_image(store, "app:2", [Output("oci-layout", layout)])


def test_a_layout_made_meanwhile_is_added_to(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Two exports racing to create one layout: the second one adds to the first's."""
    from stepbuild.archive import export
    from stepbuild.archive.write import load_image, oci_image

    store = Store(tmp_path / "store")
    _image(store, b"x")
    _image(store, b"y", name="app:2")
    layout = tmp_path / "layout"
    export_image(store, "app:1", [Output("oci-layout", layout)])
    states = iter(["absent"])  # what the second export saw when it looked, before the first
    real = export._layout_state
    monkeypatch.setattr(export, "_layout_state", lambda d: next(states, None) or real(d))
    image = oci_image(store, load_image(store, "app:2"), "gzip")
    export._write_oci_layout(layout, store, image, ["app:2"])
    index = json.loads((layout / "index.json").read_bytes())
    assert len(index["manifests"]) == 2 and validate_layout(layout) == []
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def _dead_owner_tag() -> str:
    """The owner tag of a process that has exited (fs/owner.py)."""
    import subprocess
    import sys

    code = "from stepbuild.fs.owner import owner_tag; print(owner_tag())"
    project = Path(__file__).resolve().parents[3]
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": str(project)}
                          ).stdout.strip()


def test_an_export_removes_what_killed_exports_left(tmp_path: Path) -> None:
    from stepbuild.fs.owner import owner_tag

    store = Store(tmp_path / "store")
    _image(store, b"one" * 1000)
    out = tmp_path / "out"
    export_image(store, "app:1", [Output("oci-layout", out / "layout")])
    dead, live = _dead_owner_tag(), owner_tag()
    blobs = out / "layout" / "blobs" / "sha256"
    leftovers = [out / f".a.tar.{dead}-0123456789ab.tmp", out / f".layout.{dead}-x1.tmp",
                 out / "layout" / f".index.json.{dead}-0123456789ab.tmp",
                 blobs / f".{'0' * 64}.{dead}-0123456789ab.tmp"]
    kept = [out / f".a.tar.{live}-0123456789ab.tmp", out / ".a.tar.0123456789ab.tmp",
            out / "notes.tmp"]
    for path in leftovers + kept:
        path.write_bytes(b"partial")
    export_image(store, "app:1", [Output("oci", out / "a.tar"),
                                  Output("oci-layout", out / "layout")])
    assert [p for p in leftovers if p.exists()] == []
    assert [p for p in kept if p.exists()] == kept  # live, or not ours: left alone
    assert validate_layout(out / "layout") == []
