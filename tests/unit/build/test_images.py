"""build/images.py: an image named by an archive (`oci-archive:` …) is imported for FROM and
COPY --from alike, and every error of the import is located at the instruction that named it.
Layerless images only: the layer checks are tests/integration/test_import.py's."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepbuild.build.images import import_archive, is_archive_name, load_state
from stepbuild.errors import BaseImageError, PlanError
from stepbuild.frontend import instructions as ins
from stepbuild.frontend.parse import parse
from stepbuild.store.store import Store
from tests.unit.archive.test_load import _oci_archive


def copy_at_line_2(source: str) -> ins.Instruction:
    return parse(f"FROM scratch\nCOPY --from={source} /a /b\n").instructions[1]


@pytest.mark.parametrize(("name", "expected"), [
    ("oci-archive:x.tar", True), ("oci-layout:dir:v1", True), ("docker-archive:d.tar", True),
    ("alpine", False), ("build", False), ("docker.io/oci-archive:1", False),
])
def test_archive_names(name: str, expected: bool) -> None:
    assert is_archive_name(name) is expected


def test_an_archive_image_is_imported_and_loads_as_a_state(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    archive = tmp_path / "x.tar"
    archive.write_bytes(_oci_archive("v1", "v2"))
    name = f"oci-archive:{archive}:v2"
    digest = import_archive(store, name, "Stepfile", copy_at_line_2(name))
    state = load_state(store, digest)
    assert state is not None and state.env == ("N=1",)  # the second image of the archive
    assert import_archive(store, name, "Stepfile", copy_at_line_2(name)) == digest  # once


@pytest.mark.parametrize(("name", "kind", "words"), [
    ("oci-archive:{dir}/missing.tar", PlanError, "cannot read"),
    ("oci-archive:{dir}/two.tar", PlanError, "2 images in"),
    ("oci-archive:{dir}/two.tar:v3", PlanError, "v3"),
    ("oci-layout:", PlanError, "no path after oci-layout:"),
    ("oci-archive:{dir}/junk.tar", BaseImageError, "not a tar archive"),
])
def test_import_errors_are_located_at_the_instruction(tmp_path: Path, name: str,
                                                       kind: type[PlanError],
                                                       words: str) -> None:
    (tmp_path / "two.tar").write_bytes(_oci_archive("v1", "v2"))
    (tmp_path / "junk.tar").write_bytes(b"not an archive" * 100)
    name = name.format(dir=tmp_path)
    with pytest.raises(PlanError) as caught:
        import_archive(Store(tmp_path / "store"), name, "Stepfile", copy_at_line_2(name))
    error = caught.value
    assert type(error) is kind and error.exit_code == (1 if kind is BaseImageError else 2)
    assert error.position is not None and (error.position.line, error.position.column) == (2, 1)
    assert words in error.message
