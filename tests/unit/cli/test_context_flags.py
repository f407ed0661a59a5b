"""cli/context_flags.py: what is refused before anything is fetched, and a directory build's
named contexts (a fetched context is tested end to end in tests/integration/test_contexts.py)."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pytest

from stepbuild.cli.context_flags import add_arguments, fetched
from stepbuild.errors import UsageError
from stepbuild.sources.named import NamedContext


def options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("-f", "--file")
    parser.add_argument("context")
    add_arguments(parser)
    return parser.parse_args(argv)


def no_store() -> object:
    raise AssertionError("no store is opened for this")


class Terminal(io.BytesIO):
    def isatty(self) -> bool:
        return True


def test_stdin_twice_is_refused() -> None:
    with pytest.raises(UsageError, match="cannot both come from standard input"), \
            fetched(options("-f", "-", "-"), no_store):  # type: ignore[arg-type]
        pass


def test_a_terminal_is_no_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal())
    with pytest.raises(UsageError, match="standard input is a terminal"), \
            fetched(options("-"), no_store):  # type: ignore[arg-type]
        pass


def test_a_directory_build_parses_its_named_contexts(tmp_path: Path) -> None:
    given = options(str(tmp_path), "--build-context", f"lib={tmp_path}",
                    "--build-context", "alpine=docker-image://busybox:1")
    with fetched(given, no_store):  # type: ignore[arg-type]
        assert given.named_contexts == {
            "lib": NamedContext("lib", "path", str(tmp_path)),
            "alpine": NamedContext("alpine", "image", "busybox:1")}
        assert given.context == str(tmp_path)
        assert not hasattr(given, "fetched_context")


def test_a_named_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a directory"), \
            fetched(options(".", "--build-context", f"x={tmp_path / 'no'}"),
                    no_store):  # type: ignore[arg-type]
        pass
