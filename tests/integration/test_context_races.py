"""A build context file replaced while builds run (an editor's save, `git checkout`) never
leaves a cache record whose key names one content and whose layer holds another (issue 11,
item 8).

A writer process keeps replacing a context file atomically (temp file + rename), alternating
two contents, while builds run in this process. Each build has a key of its own (a build arg
in ENV), so every one copies the file. Afterwards every record of the store must hold, in its
layer, the bytes its key's selection digest names: a build may rehash and retry, or fail with
one clear error, but never record the wrong bytes.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from stepbuild.cli.main import main
from stepbuild.sources.context import BuildContext
from stepbuild.store.store import Store
from tests.integration.builds import EPOCH, Stepbuild, base_image, write_context

pytestmark = pytest.mark.root

ROUNDS = 12
CONTENTS = (b"AAAA\n", b"BBBB\n")

# Replace NAME in DIR by each of the given files' bytes in turn, forever: write a temp file
# (mode 0644, as the reference contexts have), rename it over NAME.
WRITER = r"""
import os, sys, time
directory, name, *sources = sys.argv[1:]
datas = [open(s, "rb").read() for s in sources]
print("ready", flush=True)
i = 0
while True:
    tmp = os.path.join(directory, f".{name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, datas[i % len(datas)])
    os.fchmod(fd, 0o644)
    os.close(fd)
    os.rename(tmp, os.path.join(directory, name))
    i += 1
    time.sleep(0.002)
"""


def _tar_holding(content: bytes) -> bytes:
    """A tar with one file, `f`, holding `content`."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f")
        info.size, info.mode, info.mtime = len(content), 0o644, 1700000000
        tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


CASES = {
    # name in the context, its two versions, the instruction, where the layer holds them
    "copy": ("f", CONTENTS, "COPY f /f\n", "f"),
    "run-bind": ("f", CONTENTS,
                 "RUN --mount=type=bind,source=f,target=/mnt/f cat /mnt/f > /copied\n",
                 "copied"),
    "add-tar": ("t.tar", tuple(_tar_holding(c) for c in CONTENTS), "ADD t.tar /x/\n", "x/f"),
}


@contextmanager
def replacing_forever(directory: Path, name: str, versions: tuple[bytes, ...],
                      scratch: Path) -> Iterator[None]:
    """A writer process replacing directory/name by each version in turn, for the block."""
    sources = []
    for index, data in enumerate(versions):
        source = scratch / f"version-{index}"
        source.write_bytes(data)
        sources.append(str(source))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(directory), name, *sources],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "ready\n"
        yield
    finally:
        writer.kill()
        writer.wait()


def selection_digests(name: str, versions: tuple[bytes, ...], scratch: Path) -> dict[str, bytes]:
    """The selection digest of `name` holding each version (mode 0644) → that version."""
    found = {}
    for index, data in enumerate(versions):
        reference = scratch / f"reference-{index}"
        reference.mkdir()
        (reference / name).write_bytes(data)
        (reference / name).chmod(0o644)
        found[BuildContext(reference).select([name]).digest()] = data
    return found


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the base image's context (the busybox tarball) is made, once."""
    return tmp_path_factory.mktemp("races")


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_file_replaced_during_builds_never_gives_a_record_of_other_bytes(
        case: str, work: Path, tmp_path: Path, private_mount_ns: None,
        capfd: pytest.CaptureFixture[str]) -> None:
    name, versions, instruction, in_layer = CASES[case]
    root = tmp_path / "store"
    base_image(Stepbuild(root), work, *EPOCH)
    context = write_context(tmp_path / "ctx", f"FROM base\nARG N\nENV N=$N\n{instruction}")
    (context / name).write_bytes(versions[0])
    (context / name).chmod(0o644)
    expected = selection_digests(name, versions, tmp_path)
    if case == "add-tar":  # the tar's own digest is what the key holds; the layer its member
        expected = {d: CONTENTS[versions.index(v)] for d, v in expected.items()}
    built = 0
    with replacing_forever(context, name, versions, tmp_path):
        for round_ in range(ROUNDS):
            capfd.readouterr()
            status = main(["--root", str(root), "build", "-q", "--build-arg", f"N={round_}",
                           *EPOCH, str(context)])
            err = capfd.readouterr().err
            if status == 0:
                built += 1
            else:  # giving up is allowed, with one clear error naming the file
                assert status == 1, err
                assert "Traceback" not in err
                assert "Stepfile:4:1: build context changed while it was read" in err, err
                assert name in err, err
    assert built > 0, "no build got through: the test proves nothing"
    store = Store(root)
    checked = 0
    for path, record in store.cache_records.scan():
        assert record is not None, path
        inputs = json.dumps(record.inputs)
        named = [data for digest, data in expected.items() if digest in inputs]
        if not named:
            continue  # the base image's steps
        assert record.diff_id is not None
        holds = (store.layer_dir(record.diff_id) / in_layer).read_bytes()
        assert named == [holds], f"record {path.name}: key names {named}, layer holds {holds!r}"
        checked += 1
    assert checked == built
