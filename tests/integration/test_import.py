"""Import: `stepbuild load` and FROM oci-archive:/oci-layout:/docker-archive:, for real.

Proofs with real tools: an image built by buildah (whiteouts in its layers) is a FROM base;
skopeo's docker and OCI archives of our images load back with the same diff_ids and run; a
build with whiteouts and opaque dirs, copied out by skopeo (zstd) and loaded into a fresh
store, shows `stepbuild run` the same tree. Then the bad-tar corpus (tests/badtars.py) as the
layer of an archive loaded in-process (docs/security.md families A-E), archives with bad
digests, sizes, media types and documents (family J), and a decompression bomb on a full disk.
After each: the store passes `check`, its tmp/ is empty, nothing refused got a tag or a layer
dir, and a sentinel dir beside the store is untouched.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from stepbuild.archive.load import import_base, load
from stepbuild.errors import (
    DigestMismatch,
    ImageNotFound,
    InvalidDocument,
    LayerError,
    StepbuildError,
)
from stepbuild.layers.tar import DIRTYPE, REGTYPE, SYMTYPE, Header, encode_header
from stepbuild.oci.digest import sha256_bytes
from stepbuild.store import gc
from stepbuild.store.images import index_platforms, resolve_image
from stepbuild.store.store import Store
from tests.badtars import case_names, corpus, ent, reg, tar
from tests.integration.builds import (
    Stepbuild,
    assert_clear_error,
    base_image,
    rootfs_tarball,
    small_tmpfs,
    step_lines,
    write_context,
)
from tests.unit.layers.test_apply import tree

pytestmark = pytest.mark.root

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA = {"none": OCI_LAYER, "gzip": OCI_LAYER + "+gzip", "zstd": OCI_LAYER + "+zstd"}
BASE_LAYER = tar(ent(DIRTYPE, "etc/"), reg("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
                 ent(DIRTYPE, "tmp/", mode=0o1777), reg("tmp/.keep"))


# --- writing archives ----------------------------------------------------------------------------


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def pack(files: dict[str, bytes]) -> bytes:
    """A tar of `files` (name → content), as an archive on disk would be."""
    return tar(*(reg(name, data) for name, data in files.items()))


def config_json(diff_ids: list[str], **extra: Any) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}, **extra}).encode()


def oci_files(layers: list[bytes], kind: str = "gzip", ref: str | None = "app:v1"
              ) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The files of an OCI layout holding one image; and its digests (for tampering)."""
    files: dict[str, bytes] = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
    blobs = [compress(layer, kind) for layer in layers]
    config = config_json([sha256_bytes(layer) for layer in layers])
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256_bytes(config), "size": len(config)},
        "layers": [{"mediaType": MEDIA[kind], "digest": sha256_bytes(b), "size": len(b)}
                   for b in blobs]}).encode()
    for blob in [config, manifest, *blobs]:
        files["blobs/sha256/" + sha256_bytes(blob)[7:]] = blob
    entry: dict[str, Any] = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                             "digest": sha256_bytes(manifest), "size": len(manifest)}
    if ref is not None:
        entry["annotations"] = {"org.opencontainers.image.ref.name": ref}
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()
    meta = {"manifest": sha256_bytes(manifest), "config": sha256_bytes(config),
            "layers": [sha256_bytes(b) for b in blobs],
            "diff_ids": [sha256_bytes(layer) for layer in layers]}
    return files, meta


def docker_files(layers: list[bytes], tags: list[str]) -> dict[str, bytes]:
    config = config_json([sha256_bytes(layer) for layer in layers])
    files = {sha256_bytes(config)[7:] + ".json": config}
    names = []
    for i, layer in enumerate(layers):
        names.append(f"{i:064x}/layer.tar")
        files[names[-1]] = layer
    files["manifest.json"] = json.dumps([{"Config": sha256_bytes(config)[7:] + ".json",
                                          "RepoTags": tags, "Layers": names}]).encode()
    return files


class Place:
    """tmp/store (a fresh store) and tmp/sentinel beside it, with the checks every test of a
    load that fails or succeeds ends with."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.store = Store(base / "store")
        self.sentinel = base / "sentinel"
        self.sentinel.mkdir(exist_ok=True)
        (self.sentinel / "file").write_text("host")
        self._before = tree(self.sentinel)

    def load(self, data: bytes) -> list[Any]:
        return load(self.store, io.BytesIO(data))

    def check(self, *, tags: int | None = None) -> None:
        assert gc.check(self.store) == []
        assert os.listdir(self.store.root / "tmp") == []
        assert tree(self.sentinel) == self._before
        assert sorted(os.listdir(self.base)) == ["sentinel", "store"]
        if tags is not None:
            assert len(self.store.images()) == tags


@pytest.fixture
def place(tmp_path: Path) -> Place:
    return Place(tmp_path)


# --- the bad-tar corpus as layers ------------------------------------------------------------


@pytest.mark.parametrize("name", case_names())
def test_corpus_as_a_layer(place: Place, name: str) -> None:
    case = next(c for c in corpus(place.sentinel) if c.name == name)
    files, meta = oci_files([BASE_LAYER, case.data], "gzip")
    if case.refused is not None:
        with pytest.raises(LayerError, match=case.refused) as info:
            place.load(pack(files))
        assert meta["layers"][1] in str(info.value)  # the layer, by its digest
        if case.entry is not None:
            assert case.entry in str(info.value)
        assert not place.store.has_layer(meta["diff_ids"][1])
        place.check(tags=0)
    else:
        [image] = place.load(pack(files))
        assert image.names == ("app:v1",)
        assert case.check is not None
        case.check(place.store.layer_dir(meta["diff_ids"][1]))
        place.check(tags=1)


# --- family J: what an archive says must be what it holds --------------------------------------


def _tamper_blob(files: dict[str, bytes], digest: str, data: bytes) -> None:
    files["blobs/sha256/" + digest[7:]] = data


def _bomb(megabytes: int) -> bytes:
    """gzip of a layer holding one file of zeros: ~1000x smaller than what it expands to."""
    size = megabytes << 20
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    out = [z.compress(encode_header(Header(name=b"zeros", type=REGTYPE, mode=0o644, size=size)))]
    chunk = bytes(1 << 20)
    out += [z.compress(chunk) for _ in range(megabytes)]
    out += [z.compress(bytes(1024)), z.flush()]
    return b"".join(out)


Tamper = Callable[[dict[str, bytes], dict[str, Any]], None]
TAMPERED: dict[str, tuple[Tamper, type[StepbuildError]]] = {}


def tampering(error: type[StepbuildError]) -> Callable[[Tamper], Tamper]:
    """Register a way to break an archive's files, and the error loading it must raise."""
    def register(fn: Tamper) -> Tamper:
        TAMPERED[fn.__name__] = (fn, error)
        return fn
    return register


@tampering(DigestMismatch)
def layer_content(f: dict[str, bytes], m: dict[str, Any]) -> None:
    _tamper_blob(f, m["layers"][1], _bomb(64))  # not the described bytes: never inflated

@tampering(DigestMismatch)
def layer_size(f: dict[str, bytes], m: dict[str, Any]) -> None:
    _tamper_blob(f, m["layers"][1], f["blobs/sha256/" + m["layers"][1][7:]] + b"\0")

@tampering(DigestMismatch)
def diff_id(f: dict[str, bytes], m: dict[str, Any]) -> None:
    # a well-described blob whose content is not the layer the config names
    other = compress(tar(reg("other", b"x")), "gzip")
    manifest = json.loads(f["blobs/sha256/" + m["manifest"][7:]])
    manifest["layers"][1] = {"mediaType": MEDIA["gzip"], "digest": sha256_bytes(other),
                             "size": len(other)}
    _replace_manifest(f, m, manifest)
    f["blobs/sha256/" + sha256_bytes(other)[7:]] = other

@tampering(DigestMismatch)
def config_content(f: dict[str, bytes], m: dict[str, Any]) -> None:
    _tamper_blob(f, m["config"], config_json([]))

@tampering(DigestMismatch)
def manifest_content(f: dict[str, bytes], m: dict[str, Any]) -> None:
    _tamper_blob(f, m["manifest"], b"{}")

@tampering(InvalidDocument)
def missing_layer(f: dict[str, bytes], m: dict[str, Any]) -> None:
    del f["blobs/sha256/" + m["layers"][1][7:]]

@tampering(InvalidDocument)
def encrypted(f: dict[str, bytes], m: dict[str, Any]) -> None:
    manifest = json.loads(f["blobs/sha256/" + m["manifest"][7:]])
    manifest["layers"][1]["mediaType"] = MEDIA["gzip"] + "+encrypted"
    _replace_manifest(f, m, manifest)

@tampering(InvalidDocument)
def too_few_diff_ids(f: dict[str, bytes], m: dict[str, Any]) -> None:
    manifest = json.loads(f["blobs/sha256/" + m["manifest"][7:]])
    config = config_json(m["diff_ids"][:1])
    manifest["config"] = {"mediaType": "application/vnd.oci.image.config.v1+json",
                          "digest": sha256_bytes(config), "size": len(config)}
    f["blobs/sha256/" + sha256_bytes(config)[7:]] = config
    _replace_manifest(f, m, manifest)

@tampering(InvalidDocument)
def duplicate_keys(f: dict[str, bytes], m: dict[str, Any]) -> None:
    f["index.json"] = b'{"schemaVersion":2,"schemaVersion":2,"manifests":[]}'

@tampering(InvalidDocument)
def layout_version(f: dict[str, bytes], m: dict[str, Any]) -> None:
    f["oci-layout"] = b'{"imageLayoutVersion":"9.9.9"}'

@tampering(InvalidDocument)
def no_layout(f: dict[str, bytes], m: dict[str, Any]) -> None:
    del f["oci-layout"]

@tampering(InvalidDocument)
def huge_manifest(f: dict[str, bytes], m: dict[str, Any]) -> None:
    index = json.loads(f["index.json"])
    index["manifests"][0]["size"] = 5 << 20
    f["index.json"] = json.dumps(index).encode()

@tampering(InvalidDocument)
def bad_digest_string(f: dict[str, bytes], m: dict[str, Any]) -> None:
    index = json.loads(f["index.json"])
    index["manifests"][0]["digest"] = "sha256:../../../etc/passwd"
    f["index.json"] = json.dumps(index).encode()


def _replace_manifest(f: dict[str, bytes], m: dict[str, Any], manifest: Any) -> None:
    data = json.dumps(manifest).encode()
    f["blobs/sha256/" + sha256_bytes(data)[7:]] = data
    index = json.loads(f["index.json"])
    index["manifests"][0].update(digest=sha256_bytes(data), size=len(data))
    f["index.json"] = json.dumps(index).encode()


@pytest.mark.parametrize("how", sorted(TAMPERED))
def test_tampered_oci_archive(place: Place, how: str) -> None:
    files, meta = oci_files([BASE_LAYER, tar(reg("app/main", b"main"))], "gzip")
    tamper, error = TAMPERED[how]
    tamper(files, meta)
    with pytest.raises(error):
        place.load(pack(files))
    assert not place.store.has_layer(meta["diff_ids"][1])
    place.check(tags=0)


def test_docker_archive_checks(place: Place) -> None:
    good = docker_files([BASE_LAYER], ["docker.io/library/ok:1"])
    bad_config = dict(good)
    name = next(n for n in good if n.endswith(".json") and n != "manifest.json")
    bad_config[name] = good[name] + b" "
    with pytest.raises(DigestMismatch):
        place.load(pack(bad_config))
    bad_layer = dict(good)
    layer_name = next(n for n in good if n.endswith("layer.tar"))
    bad_layer[layer_name] = tar(reg("evil", b"x"))
    with pytest.raises(DigestMismatch):
        place.load(pack(bad_layer))
    place.check(tags=0)
    [image] = place.load(gzip.compress(pack(good)))  # `docker save | gzip` loads too
    assert image.names == ("ok:1",)
    place.check(tags=1)


def test_docker_archive_with_blobs_named_by_digest(place: Place) -> None:
    """Docker 25+ names layers blobs/sha256/<hex>: that digest is checked too."""
    layer = tar(reg("a", b"1"))
    files = docker_files([BASE_LAYER, layer], ["new:1"])
    manifest = json.loads(files["manifest.json"])
    old_name = manifest[0]["Layers"][1]
    del files[old_name]
    wrong = "blobs/sha256/" + "e" * 64  # names a digest its content does not have
    manifest[0]["Layers"][1] = wrong
    files[wrong] = layer
    files["manifest.json"] = json.dumps(manifest).encode()
    with pytest.raises(DigestMismatch, match="e" * 64):
        place.load(pack(files))
    place.check(tags=0)
    del files[wrong]
    right = "blobs/sha256/" + sha256_bytes(layer)[7:]
    manifest[0]["Layers"][1] = right
    files[right] = layer
    files["manifest.json"] = json.dumps(manifest).encode()
    [image] = place.load(pack(files))
    assert image.names == ("new:1",)
    place.check(tags=1)


def test_empty_layer_file(place: Place) -> None:
    files, _ = oci_files([BASE_LAYER, b""], "none")  # Go's archive/tar reads it as empty
    [image] = place.load(pack(files))
    assert len(image.diff_ids) == 2
    place.check(tags=1)


def test_legacy_docker_archive_with_symlinked_layers(place: Place) -> None:
    files = docker_files([BASE_LAYER, tar(reg("a", b"1")), BASE_LAYER], ["old:1"])
    manifest = json.loads(files["manifest.json"])
    names = manifest[0]["Layers"]
    del files[names[2]]
    data = pack(files)[:-1024] + ent(SYMTYPE, names[2], "../" + names[0]) + bytes(1024)
    [image] = place.load(data)
    assert len(image.diff_ids) == 3
    place.check(tags=1)


def test_multi_image_archive_and_platform_index(place: Place) -> None:
    files, meta = oci_files([BASE_LAYER], "zstd", ref="one:1")
    files2, meta2 = oci_files([BASE_LAYER, tar(reg("two", b"2"))], "none", ref=None)
    files.update({k: v for k, v in files2.items() if k.startswith("blobs/")})
    index = json.loads(files["index.json"])
    # the second image as a multi-platform index: arm64 first, then ours
    arm = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
           "digest": "sha256:" + "0" * 64, "size": 10,
           "platform": {"architecture": "arm64", "os": "linux"}}
    ours = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": meta2["manifest"], "size": len(files2["blobs/sha256/"
                                                             + meta2["manifest"][7:]]),
            "platform": {"architecture": "amd64", "os": "linux"}}
    nested = json.dumps({"schemaVersion": 2, "manifests": [arm, ours]}).encode()
    files["blobs/sha256/" + sha256_bytes(nested)[7:]] = nested
    index["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json",
                               "digest": sha256_bytes(nested), "size": len(nested),
                               "annotations": {"org.opencontainers.image.ref.name": "two"}})
    files["index.json"] = json.dumps(index).encode()
    archive = place.base / "multi.tar"
    archive.write_bytes(pack(files))
    try:
        with pytest.raises(ImageNotFound, match="2 images"):
            import_base(place.store, f"oci-archive:{archive}")  # which one? buildah refuses
        two = import_base(place.store, f"oci-archive:{archive}:two")
        assert place.store.config(place.store.manifest(place.store.resolve(two))).diff_ids \
            == tuple(meta2["diff_ids"])
        with pytest.raises(ImageNotFound):
            import_base(place.store, f"oci-archive:{archive}:three")
        loaded = place.load(archive.read_bytes())
        # a bare tag (`two`) chooses the FROM image, but names no image: loaded untagged;
        # the index is loaded whole, without the arm64 entry the archive has no manifest of
        assert [i.names for i in loaded] == [("one:1",), ()]
        assert _platforms(place.store, loaded[1].digest) == ("linux/amd64",)
        index["manifests"][1]["digest"] = sha256_bytes(nested.replace(b"amd64", b"s390x"))
        files["blobs/sha256/" + index["manifests"][1]["digest"][7:]] = \
            nested.replace(b"amd64", b"s390x")
        files["index.json"] = json.dumps(index).encode()
        archive.write_bytes(pack(files))
        with pytest.raises(ImageNotFound, match="no linux/amd64"):  # FROM: this machine's
            import_base(place.store, f"oci-archive:{archive}:two")
        loaded = place.load(archive.read_bytes())  # load: every platform it has, the store
        # stating each as the image's config does (amd64 here, whatever the entry claimed)
        assert _platforms(place.store, loaded[1].digest) == ("linux/amd64",)
    finally:
        archive.unlink()
    place.check(tags=1)


def _platforms(store: Store, digest: str) -> tuple[str, ...]:
    return index_platforms(store.index(resolve_image(store, digest)))


def test_image_without_layers(place: Place) -> None:
    files, _ = oci_files([], "none")
    [image] = place.load(pack(files))
    assert image.names == ("app:v1",)
    place.check(tags=1)


# --- resource exhaustion: a decompression bomb on a full disk -----------------------------------


@pytest.fixture
def small_disk(tmp_path: Path, private_mount_ns: None) -> Iterator[Path]:
    """A 16 MiB tmpfs at tmp/small (in the test's private mount namespace)."""
    with small_tmpfs(tmp_path / "small", "16m") as small:
        yield small


def test_decompression_bomb_on_a_full_disk(small_disk: Path) -> None:
    place = Place(small_disk)
    files, meta = oci_files([BASE_LAYER], "gzip")
    bomb = _bomb(64)  # 64 MiB of layer in ~64 KiB of gzip, on a 16 MiB disk
    diff_id = "sha256:" + hashlib.sha256(b"whatever the config claims").hexdigest()
    config = config_json([meta["diff_ids"][0], diff_id])
    manifest = json.loads(files["blobs/sha256/" + meta["manifest"][7:]])
    manifest["config"].update(digest=sha256_bytes(config), size=len(config))
    manifest["layers"].append({"mediaType": MEDIA["gzip"], "digest": sha256_bytes(bomb),
                               "size": len(bomb)})
    files["blobs/sha256/" + sha256_bytes(config)[7:]] = config
    files["blobs/sha256/" + sha256_bytes(bomb)[7:]] = bomb
    _replace_manifest(files, meta, manifest)
    with pytest.raises(LayerError, match="No space left on device") as info:
        place.load(pack(files))
    assert sha256_bytes(bomb) in str(info.value)
    place.check(tags=0)
    # the same bomb as the archive itself (`docker save | gzip` of a huge archive)
    with pytest.raises(StepbuildError, match="No space left on device"):
        place.load(gzip.compress(pack({"big": bytes(64 << 20)}), compresslevel=1))
    place.check(tags=0)


# --- proofs with real tools ---------------------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install {name} (scripts/setup.sh)")
    return path


def test_buildah_image_as_a_from_base(tmp_path: Path) -> None:
    """buildah bud (vfs, chroot isolation) → buildah push oci-archive: → FROM oci-archive:."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    rootfs_tarball(ctx)
    (ctx / "Dockerfile").write_text(
        "FROM scratch\nADD busybox-rootfs.tar /\n"
        "RUN mkdir -p /opt/buildah /srv/opq && echo made-by-buildah > /opt/buildah/marker"
        " && touch /srv/opq/old\n"
        "RUN rm /bin/vi && rm -rf /srv/opq && mkdir /srv/opq && echo new > /srv/opq/new\n"
        "ENV BUILT_BY=buildah\nCMD [\"sh\"]\n")
    buildah = [_tool("buildah"), "--root", str(tmp_path / "b-root"), "--runroot",
               str(tmp_path / "b-run"), "--storage-driver", "vfs"]
    subprocess.run([*buildah, "bud", "--layers", "--isolation", "chroot", "-q", "-t", "x",
                    str(ctx)], check=True, capture_output=True, timeout=120)
    archive = tmp_path / "x.tar"
    subprocess.run([*buildah, "push", "-q", "x", f"oci-archive:{archive}:v1"], check=True,
                   capture_output=True, timeout=60)
    sb = Stepbuild(tmp_path / "store")
    write_context(tmp_path / "app", f"FROM oci-archive:{archive}:v1\n"
                  "RUN cat /opt/buildah/marker && test ! -e /bin/vi && test ! -e /srv/opq/old"
                  ' && cat /srv/opq/new && echo "from $BUILT_BY" > /result\n')
    out = sb.build(tmp_path / "app", "-t", "app")
    assert "made-by-buildah" in out.stderr and "new" in out.stderr
    assert sb.run("app", "cat", "/result") == "from buildah\n"
    again = sb.build(tmp_path / "app", "-t", "app")  # imported once: the step is cached
    assert "CACHED" in again.stderr
    assert sb("check").returncode == 0


def test_skopeo_archives_round_trip(tmp_path: Path) -> None:
    """Our image → skopeo docker-archive: and oci-archive: → `stepbuild load` in a fresh
    store: same diff_ids (and config), and it runs."""
    skopeo = _tool("skopeo")
    sb = Stepbuild(tmp_path / "store")
    base_image(sb, tmp_path)
    write_context(tmp_path / "app", "FROM base\nRUN echo hello > /hello && rm /bin/vi\n")
    sb.build(tmp_path / "app", "-t", "app:1")
    original = json.loads(sb("inspect", "app:1").stdout)
    docker, oci = tmp_path / "d.tar", tmp_path / "o.tar"
    for dest in (f"docker-archive:{docker}:foo:1", f"oci-archive:{oci}:bar"):
        subprocess.run([skopeo, "copy", "-q", f"oci:{sb.root}:app:1", dest], check=True,
                       timeout=60)
    fresh = Stepbuild(tmp_path / "fresh")
    assert fresh("load", "-i", str(docker)).stdout == "Loaded image: foo:1\n"
    with open(oci, "rb") as f:
        out = subprocess.run([*fresh_cmd(fresh), "load"], stdin=f, capture_output=True,
                             text=True, check=True)
    # skopeo wrote the ref name `bar`, a bare tag: no name, the image is loaded by its digest
    assert out.stdout.startswith("Loaded image ID: sha256:")
    bar = out.stdout.split()[-1]
    assert [line.split()[0] for line in fresh("images").stdout.splitlines()] == ["NAME", "foo:1"]
    for name in ("foo:1", bar):
        loaded = json.loads(fresh("inspect", name).stdout)
        assert loaded["config"]["rootfs"] == original["config"]["rootfs"]
        assert loaded["manifest"]["config"]["digest"] == original["manifest"]["config"]["digest"]
        assert fresh.run(name, "sh", "-c", "cat /hello; test ! -e /bin/vi") == "hello\n"
    assert fresh("check").stdout == "store is consistent\n"


def fresh_cmd(sb: Stepbuild) -> list[str]:
    """The CLI on `sb`'s store, for a subprocess of our own (stdin, cwd)."""
    return ["env", f"STEPBUILD_ROOT={sb.root}", f"PYTHONPATH={Path(__file__).parents[2]}",
            sys.executable, "-m", "stepbuild"]


LISTING = (
    "find / -xdev ! -path / ! -path /proc ! -path /sys ! -path /dev ! -path /etc/hosts"
    " ! -path /etc/resolv.conf ! -path /etc/hostname | sort | while read -r p; do"
    ' stat -c "%n|%f|%u|%g|%s|%Y|%N" "$p";'
    ' [ -f "$p" ] && [ ! -L "$p" ] && md5sum "$p"; done; true'
)


def test_whiteouts_and_opaque_dirs_survive_skopeo(tmp_path: Path) -> None:
    """A build with whiteouts, opaque dirs and copied-up parents → skopeo oci-archive (zstd)
    → load into a fresh store: `stepbuild run` sees the same tree (names, types, modes,
    owners, sizes, mtimes, link targets, content)."""
    skopeo = _tool("skopeo")
    sb = Stepbuild(tmp_path / "store")
    base_image(sb, tmp_path)
    write_context(tmp_path / "app", "FROM base\n"
                  "RUN mkdir -p /srv/data/sub /opt/app/lib && echo 1 > /srv/data/sub/f"
                  " && echo x > /srv/data/g && ln -s /etc/passwd /srv/pw && mkfifo /srv/fifo"
                  " && ln /srv/data/g /srv/hard && chown 33:33 /opt/app && chmod 710 /opt/app"
                  " && touch -d @1000000000 /opt/app /opt /srv/data\n"
                  "RUN rm -rf /srv/data && mkdir /srv/data && echo 2 > /srv/data/new"
                  " && rm /bin/vi /srv/pw && echo v > /opt/app/lib/new && echo t > /tmp/t\n")
    sb.build(tmp_path / "app", "-t", "wh:1")
    archive = tmp_path / "wh.tar"
    subprocess.run([skopeo, "copy", "-q", "--dest-compress", "--dest-compress-format", "zstd",
                    f"oci:{sb.root}:wh:1", f"oci-archive:{archive}:v1"], check=True, timeout=60)
    fresh = Stepbuild(tmp_path / "fresh")
    loaded = fresh("load", "-i", str(archive)).stdout
    assert loaded.startswith("Loaded image ID: sha256:")  # `v1` is a tag, not a name
    before = sb.run("wh:1", "sh", "-c", LISTING)
    after = fresh.run(loaded.split()[-1], "sh", "-c", LISTING)
    assert "/opt/app|41c8|33|33|4096|1000000000|" in after  # inherited from the layer below
    assert "/srv/data/new" in after and "/srv/data/g" not in after and "/bin/vi|" not in after
    assert after == before
    assert fresh("check").returncode == 0


def test_builder_knows_the_transports() -> None:
    from stepbuild.archive import load as imports
    from stepbuild.build import images

    assert images.IMPORT_TRANSPORTS == imports.TRANSPORTS


def test_from_transports_and_their_errors(tmp_path: Path) -> None:
    """docker-archive: relative to the current dir (buildah's rule), oci-layout:DIR:REF,
    and located errors for a missing archive or an ambiguous one."""
    skopeo = _tool("skopeo")
    sb = Stepbuild(tmp_path / "store")
    base_image(sb, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run([skopeo, "copy", "-q", f"oci:{sb.root}:base", "docker-archive:"
                    f"{work / 'd.tar'}:foo:1"], check=True, timeout=60)
    subprocess.run([skopeo, "copy", "-q", f"oci:{sb.root}:base", f"oci:{work / 'lay'}:v2"],
                   check=True, timeout=60)
    subprocess.run([skopeo, "copy", "-q", f"oci:{sb.root}:base", f"oci:{work / 'lay'}:v3"],
                   check=True, timeout=60)
    fresh = Stepbuild(tmp_path / "fresh")
    for n, base in enumerate(("docker-archive:d.tar", "docker-archive:d.tar:foo:1",
                              "docker-archive:d.tar:@0", f"oci-layout:{work / 'lay'}:v2")):
        ctx = write_context(tmp_path / f"c{n}", f"FROM {base}\nRUN echo ok-{n} > /ok\n")
        result = subprocess.run([*fresh_cmd(fresh), "build", "-t", f"t{n}", str(ctx)],
                                cwd=work, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert fresh.run(f"t{n}", "cat", "/ok") == f"ok-{n}\n"
    for base, message in ((f"oci-archive:{tmp_path / 'missing.tar'}", "cannot read"),
                          (f"oci-layout:{work / 'lay'}", "2 images in"),
                          ("docker-archive:d.tar", "cannot read")):  # not relative to ctx
        ctx = write_context(tmp_path / "bad", f"FROM {base}\nRUN true\n")
        shutil.copy(work / "d.tar", ctx / "d.tar")
        result = fresh.build(ctx, check=False)
        assert result.returncode == 2, result.stderr
        assert "Stepfile:1:" in result.stderr and message in result.stderr
    assert fresh("check").returncode == 0


def test_parallel_loads_of_one_archive(tmp_path: Path) -> None:
    """Four `stepbuild load` at once into one store: each layer committed once, all tagged,
    the store consistent (commit_layer's first-rename-wins, tags under index.lock)."""
    files, meta = oci_files([BASE_LAYER, tar(reg("app", b"1"))], "gzip")
    archive = tmp_path / "a.tar"
    archive.write_bytes(pack(files))
    sb = Stepbuild(tmp_path / "store")
    procs = [subprocess.Popen([*fresh_cmd(sb), "load", "-i", str(archive)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert all(out == "Loaded image: app:v1\n" for out, _ in outs)
    assert sorted(os.listdir(sb.root / "layers")) == sorted(d[7:] for d in meta["diff_ids"])
    assert sb("check").stdout == "store is consistent\n"
    assert os.listdir(sb.root / "tmp") == []


def test_copy_from_transports_and_their_errors(tmp_path: Path) -> None:
    """COPY --from takes what FROM takes (oci-archive:, docker-archive: relative to the current
    dir, oci-layout:DIR:REF) and copies from that image's rootfs; a changed archive is a new
    key; a missing, ambiguous or broken archive is the error FROM gives, located at the COPY."""
    skopeo = _tool("skopeo")
    sb = Stepbuild(tmp_path / "store")
    base_image(sb, tmp_path)
    work = tmp_path / "work"
    work.mkdir()

    def export(payload: str) -> None:
        write_context(tmp_path / "src", f"FROM base\nRUN echo {payload} > /payload\n")
        sb.build(tmp_path / "src", "-t", "src:1")
        for dest in (f"oci-archive:{work / 'o.tar'}:v1", f"docker-archive:{work / 'd.tar'}:foo:1",
                     f"oci:{work / 'lay'}:v2"):
            if dest.startswith("docker-archive:"):
                (work / "d.tar").unlink(missing_ok=True)  # skopeo adds to a docker archive
            subprocess.run([skopeo, "copy", "-q", f"oci:{sb.root}:src:1", dest], check=True,
                           timeout=60)

    def build(source: str, line: str = "COPY --from={} /payload /got\n"
              ) -> subprocess.CompletedProcess[str]:
        ctx = write_context(tmp_path / "app", "FROM base\n" + line.format(source))
        return subprocess.run([*fresh_cmd(sb), "build", "-t", "app", str(ctx)], cwd=work,
                              capture_output=True, text=True, timeout=120)

    export("one")
    sources = (f"oci-archive:{work / 'o.tar'}:v1", "docker-archive:d.tar:foo:1",
               f"oci-layout:{work / 'lay'}:v2")
    for source in sources:
        result = build(source)
        assert result.returncode == 0, result.stderr
        assert sb.run("app", "cat", "/got") == "one\n"
        assert step_lines(build(source).stderr) == ["CACHED"]  # the same archive: a hit
    export("two")  # the same names, another image: the COPY runs again, once, as the key
    for n, source in enumerate(sources):  # is the image's content, not where it came from
        result = build(source)
        assert result.returncode == 0, result.stderr
        assert step_lines(result.stderr) == ["CACHED" if n else "DONE"]
        assert sb.run("app", "cat", "/got") == "two\n"

    subprocess.run([skopeo, "copy", "-q", f"oci:{sb.root}:base", f"oci:{work / 'lay'}:v3"],
                   check=True, timeout=60)
    (work / "junk.tar").write_bytes(b"not an archive" * 100)
    for source, code, message in ((f"oci-archive:{tmp_path / 'missing.tar'}", 2, "cannot read"),
                                  (f"oci-layout:{work / 'lay'}", 2, "images in"),
                                  ("oci-archive:", 2, "no path after oci-archive:"),
                                  ("oci-archive:junk.tar", 1, "junk.tar")):
        for line, where in (("COPY --from={} /payload /got\n", "Stepfile:2:1: "),
                            ("FROM {}\n", "Stepfile:2:1: ")):
            result = build(source, line)
            assert_clear_error(result, code, where, message)
    assert sb("check").returncode == 0
    assert os.listdir(sb.root / "tmp") == []
