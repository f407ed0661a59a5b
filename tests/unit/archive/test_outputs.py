"""outputs.py and the stdout/annotation paths of export.py, without a build: `--output` specs
(`-`, dest=-, type=image, type=registry), the checks on outputs to standard output, archives
streamed to a file object byte for byte as the file form, and index.json annotations.

The real builds (`-o -` read from a pipe, skopeo on a streamed archive, type=registry against
a real registry) are in tests/integration/test_outputs.py.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from stepbuild.archive.export import export_image
from stepbuild.archive.outputs import STDOUT, Output, check_outputs, parse_output
from stepbuild.errors import UsageError
from stepbuild.layers.tar import DIRTYPE, END_OF_ARCHIVE, REGTYPE, Header, encode_header
from stepbuild.layers.tar import padding as tar_padding
from stepbuild.oci.annotations import Annotations
from stepbuild.oci.documents import MEDIA_TYPE_LAYER, ContainerConfig, ImageConfig
from stepbuild.store.store import Store

# --- specs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("-", Output("tar", STDOUT)),
    ("type=tar,dest=-", Output("tar", STDOUT)),
    ("type=oci,dest=-", Output("oci", STDOUT)),
    ("type=oci,dest=-,compression=zstd", Output("oci", STDOUT, "zstd")),
    ("type=docker,dest=-,name=app:1", Output("docker", STDOUT, None, ("app:1",))),
    ("type=image", Output("image", None)),
    ("type=image,name=r.example/a:1,push=true",
     Output("image", None, None, ("r.example/a:1",), push=True)),
    ("type=image,name=a,push=false", Output("image", None, None, ("a",))),
    ("type=registry,name=127.0.0.1:5000/a:1,name=127.0.0.1:5000/a:2",
     Output("registry", None, None, ("127.0.0.1:5000/a:1", "127.0.0.1:5000/a:2"), push=True)),
    ("type=registry,name=r/a,push=true", Output("registry", None, None, ("r/a",), push=True)),
])
def test_specs(text: str, expected: Output) -> None:
    assert parse_output(text) == expected


def test_what_goes_to_stdout() -> None:
    assert parse_output("-").to_stdout and parse_output("type=oci,dest=-").to_stdout
    assert not parse_output("type=oci,dest=./-").to_stdout  # a file named "-", asked for so
    assert not parse_output("type=image,name=a").to_stdout
    assert parse_output("type=registry,name=r/a").where == "r/a"


@pytest.mark.parametrize("bad", [
    "type=local,dest=-", "type=oci-layout,dest=-",  # directories cannot be streamed
    "type=image,dest=x", "type=registry,name=r/a,dest=x", "type=image,compression=zstd",
    "type=registry,name=r/a,push=false", "type=image,push=maybe", "type=oci,dest=x,push=true",
    "type=image,name=A B", "type=registry,name=r/a,push=true,push=true",
])
def test_bad_specs(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_output(bad)


def test_one_output_to_stdout_and_never_to_a_terminal() -> None:
    one, file = parse_output("-"), parse_output("type=oci,dest=x.tar")
    check_outputs([one, file], stdout_is_terminal=False)
    check_outputs([file], stdout_is_terminal=True)  # nothing goes to the terminal
    with pytest.raises(UsageError, match="two outputs"):
        check_outputs([one, parse_output("type=oci,dest=-")], stdout_is_terminal=False)
    with pytest.raises(UsageError, match="refusing to write a tar to a terminal"):
        check_outputs([one], stdout_is_terminal=True)


# --- streaming -----------------------------------------------------------------------------


def _entry(name: str, data: bytes = b"", kind: bytes = REGTYPE) -> bytes:
    header = Header(name=name.encode(), type=kind, mode=0o755 if kind == DIRTYPE else 0o644,
                    size=len(data), mtime_ns=1_600_000_000 * 10**9)
    return encode_header(header) + data + tar_padding(len(data))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A store with `app:1`: two layers (a dir and files), as a build would leave them."""
    store = Store(tmp_path / "store")
    layers = [_entry("etc/", kind=DIRTYPE) + _entry("etc/motd", b"hello\n") + END_OF_ARCHIVE,
              _entry("bin/", kind=DIRTYPE) + _entry("bin/tool", b"x" * 5000) + END_OF_ARCHIVE]
    descs = [store.descriptor(store.put_blob(data)[0], MEDIA_TYPE_LAYER) for data in layers]
    config = ImageConfig("amd64", "linux", ContainerConfig(env=("A=1",)),
                         diff_ids=tuple(d.digest for d in descs))
    store.tag("app:1", store.put_image(config, descs))
    return store


@pytest.mark.parametrize("kind", ["tar", "oci", "docker"])
def test_a_streamed_archive_is_the_file_form(store: Store, tmp_path: Path, kind: str) -> None:
    stream = io.BytesIO()
    (streamed,) = export_image(store, "app:1", [Output(kind, STDOUT)], stdout=stream)
    (written,) = export_image(store, "app:1", [Output(kind, tmp_path / "f.tar")])
    assert stream.getvalue() == (tmp_path / "f.tar").read_bytes()
    assert streamed.digest == written.digest
    with tarfile.open(fileobj=io.BytesIO(stream.getvalue())) as tar:
        names = tar.getnames()
    if kind == "tar":
        assert names == ["bin", "bin/tool", "etc", "etc/motd"]
    assert list((store.root / "tmp").iterdir()) == []  # the flattened tree is gone


def test_stdout_is_needed_for_dest_dash(store: Store) -> None:
    with pytest.raises(UsageError):
        export_image(store, "app:1", [Output("tar", STDOUT)])
    with pytest.raises(UsageError, match="two outputs"):
        export_image(store, "app:1", [Output("tar", STDOUT), Output("oci", STDOUT)],
                     stdout=io.BytesIO())


# --- index.json annotations -------------------------------------------------------------------


def test_index_and_descriptor_annotations(store: Store, tmp_path: Path) -> None:
    notes = Annotations(manifest_descriptor={"d": "1", "org.opencontainers.image.ref.name": "x"},
                        index={"i": "2"})
    layout = tmp_path / "layout"
    export_image(store, "app:1", [Output("oci-layout", layout), Output("oci", tmp_path / "a.tar")],
                 annotations=notes)
    index = json.loads((layout / "index.json").read_bytes())
    assert index["annotations"] == {"i": "2"}
    # The entry's name stays the image's: an annotation cannot rename it.
    assert index["manifests"][0]["annotations"] == {
        "d": "1", "org.opencontainers.image.ref.name": "app:1"}
    with tarfile.open(tmp_path / "a.tar") as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        assert json.loads(member.read()) == index
    # Adding to that layout later keeps its index annotations, and adds new ones.
    export_image(store, "app:1", [Output("oci-layout", layout, names=("b",))],
                 annotations=Annotations(index={"j": "3"}))
    again = json.loads((layout / "index.json").read_bytes())
    assert again["annotations"] == {"i": "2", "j": "3"}
    assert [m["annotations"] for m in again["manifests"]] == [
        {"d": "1", "org.opencontainers.image.ref.name": "app:1"},
        {"org.opencontainers.image.ref.name": "b"}]


def test_without_annotations_nothing_changes(store: Store, tmp_path: Path) -> None:
    export_image(store, "app:1", [Output("oci", tmp_path / "a.tar")])
    export_image(store, "app:1", [Output("oci", tmp_path / "b.tar")], annotations=Annotations())
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
