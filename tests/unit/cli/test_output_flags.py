"""cli/output_flags.py: a build's --output/--push/--label/--annotation, read into one plan
before the build starts; every bad combination is a `UsageError` naming what is wrong."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from stepbuild.archive.outputs import STDOUT, Output
from stepbuild.cli.main import _argument_parser
from stepbuild.cli.output_flags import file_outputs, plan
from stepbuild.errors import StepbuildError, UsageError
from stepbuild.oci.annotations import Annotations


def _options(*argv: str) -> argparse.Namespace:
    return _argument_parser().parse_args(["build", *argv, "."])


@pytest.fixture(autouse=True)
def _not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)  # pytest may run on a terminal


def test_outputs_tags_and_pushes(tmp_path: Path) -> None:
    built = plan(_options("-t", "app", "-t", "r.example/app:1", "--push",
                          "-o", "-", "-o", f"type=oci,dest={tmp_path}/a.tar",
                          "-o", "type=image,name=local:2",
                          "-o", "type=image,name=r.example/app:2,push=true",
                          "-o", "type=registry,name=127.0.0.1:5000/x:1,name=r.example/app:1"))
    assert built.files == [Output("tar", STDOUT), Output("oci", tmp_path / "a.tar")]
    assert built.stdout
    assert built.tags == ("app", "r.example/app:1", "local:2", "r.example/app:2",
                          "127.0.0.1:5000/x:1")
    assert built.pushes == ["app", "r.example/app:1", "r.example/app:2", "127.0.0.1:5000/x:1"]


def test_image_outputs_default_to_the_tags() -> None:
    built = plan(_options("-t", "r.example/a:1", "-o", "type=registry"))
    assert built.pushes == ["r.example/a:1"] and built.tags == ("r.example/a:1",)
    assert not built.stdout and built.files == []
    with pytest.raises(UsageError, match="needs a name"):
        plan(_options("-o", "type=registry"))


def test_labels_and_annotations(tmp_path: Path) -> None:
    built = plan(_options("--label", "a=1", "--label", "a=2", "--annotation", "k=v",
                          "--annotation", "index:i=j", "-o", f"type=oci-layout,dest={tmp_path}"))
    assert built.labels == {"a": "2"}
    assert built.annotations == Annotations(manifest={"k": "v"}, index={"i": "j"})


@pytest.mark.parametrize("argv", [
    ("--annotation", "index:i=j"),  # nothing writes an index.json
    ("--annotation", "manifest-descriptor:i=j", "-o", "type=docker,dest=d.tar"),
    ("--annotation", "bad"), ("--label", "bad"),
    ("-o", "-", "-o", "type=oci,dest=-"),
    ("--push",),  # no name
    ("-o", "type=registry,name=r.example/a:b:c"),  # not a registry reference
])
def test_bad_plans(argv: tuple[str, ...]) -> None:
    with pytest.raises(StepbuildError) as caught:
        plan(_options(*argv))
    assert caught.value.exit_code == 2  # usage: the build never starts


def test_a_terminal_gets_no_archive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    with pytest.raises(UsageError, match="terminal"):
        plan(_options("-o", "-"))
    plan(_options("-o", "type=image,name=a"))  # nothing on stdout: fine


def test_export_takes_files_only() -> None:
    parser = _argument_parser()
    assert file_outputs(parser.parse_args(["export", "img", "-o", "-"])) == [
        Output("tar", STDOUT)]
    with pytest.raises(UsageError, match="build output"):
        file_outputs(parser.parse_args(["export", "img", "-o", "type=registry,name=r/a"]))
