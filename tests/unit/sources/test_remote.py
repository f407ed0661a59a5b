"""sources/remote.py: `-`, git and http(s) contexts made local directories.

Downloads are served by a real HTTP server on 127.0.0.1 (tests/local_http.py). Git
contexts are tested end to end in tests/integration/test_contexts.py.
"""

from __future__ import annotations

import functools
import gzip
import io
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest

from stepbuild.errors import BuildError, ContextError, UsageError
from stepbuild.layers.tar import DIRTYPE
from stepbuild.sources.remote import fetch, kind
from tests.local_http import LocalHTTPServer
from tests.tars import entry, make_tar, reg

CONTEXT = make_tar(entry(DIRTYPE, "./"), reg("Stepfile", b"FROM scratch\nCOPY a /\n"),
                   reg("a", b"a file\n"))


@pytest.mark.parametrize(("context", "expected"), [
    ("-", "stdin"),
    (".", "dir"),
    ("some/dir", "dir"),
    ("https://example.com/repo.git", "git"),
    ("https://example.com/repo.git#v1:sub", "git"),
    ("http://example.com/repo.git#main", "git"),
    ("git@example.com:team/repo.git", "git"),
    ("git://example.com/repo.git", "git"),
    ("ssh://git@example.com/repo.git", "git"),
    ("https://example.com/ctx.tar.gz", "url"),
    ("http://example.com/Stepfile", "url"),
])
def test_kind(context: str, expected: str) -> None:
    assert kind(context) == expected


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def test_a_tar_on_stdin_is_the_context(work: Path) -> None:
    fetched = fetch("-", work, stdin=io.BytesIO(gzip.compress(CONTEXT)))
    assert fetched.stepfile is None
    assert fetched.root == work / "context"
    assert sorted(p.name for p in fetched.root.iterdir()) == ["Stepfile", "a"]
    assert (fetched.root / "a").read_text() == "a file\n"
    assert sorted(p.name for p in work.iterdir()) == ["context"]  # the input is gone
    assert fetched.label == "the context on standard input"


def test_text_on_stdin_is_the_stepfile_with_an_empty_context(work: Path) -> None:
    fetched = fetch("-", work, stdin=io.BytesIO(b"FROM scratch\n"))
    assert fetched.stepfile is not None
    assert fetched.stepfile.read_text() == "FROM scratch\n"
    assert list(fetched.root.iterdir()) == []
    assert fetched.stepfile.parent != fetched.root  # the Stepfile is not part of the context


def test_no_stdin_is_a_usage_error(work: Path) -> None:
    with pytest.raises(UsageError, match="no standard input"):
        fetch("-", work, stdin=None)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(url, directory): a static file server of `directory`."""
    directory = tmp_path / "served"
    directory.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    with LocalHTTPServer(handler) as http:
        yield http.url, directory


def test_a_tarball_url_is_downloaded_and_unpacked(work: Path, served: tuple[str, Path]
                                                  ) -> None:
    url, directory = served
    (directory / "ctx.tar.xz").write_bytes(__import__("lzma").compress(CONTEXT))
    fetched = fetch(f"{url}/ctx.tar.xz", work)
    assert (fetched.root / "Stepfile").read_text() == "FROM scratch\nCOPY a /\n"
    assert fetched.label == f"the context {url}/ctx.tar.xz"


def test_a_text_url_is_the_stepfile(work: Path, served: tuple[str, Path]) -> None:
    url, directory = served
    (directory / "Stepfile").write_text("FROM scratch\n")
    fetched = fetch(f"{url}/Stepfile", work)
    assert fetched.stepfile is not None and fetched.stepfile.read_text() == "FROM scratch\n"


def test_404_names_the_url(work: Path, served: tuple[str, Path]) -> None:
    url, _ = served
    with pytest.raises(BuildError) as raised:
        fetch(f"{url}/missing.tar", work)
    assert raised.value.message == (f"cannot download the build context {url}/missing.tar:"
                                    " HTTP 404 File not found")


def test_a_download_over_the_limit_is_refused(work: Path, served: tuple[str, Path]) -> None:
    url, directory = served
    (directory / "big.tar").write_bytes(CONTEXT)
    with pytest.raises(BuildError, match="larger than the limit of 1024 bytes"):
        fetch(f"{url}/big.tar", work, max_download=1024)


def test_a_hostile_tarball_is_refused_naming_the_url(work: Path, served: tuple[str, Path]
                                                     ) -> None:
    url, directory = served
    (directory / "evil.tar.gz").write_bytes(gzip.compress(make_tar(reg("../../x", b"x"))))
    with pytest.raises(ContextError) as raised:
        fetch(f"{url}/evil.tar.gz", work)
    assert raised.value.message.startswith(f"the context {url}/evil.tar.gz: entry '../../x'")
    assert not (work.parent / "x").exists()


def test_git_contexts_allow_more_transports_than_add() -> None:
    from stepbuild.sources import git
    from stepbuild.sources.remote import CONTEXT_PROTOCOLS

    source = git.parse("git@example.com:team/repo.git#v1:sub/dir", CONTEXT_PROTOCOLS)
    assert (source.remote, source.ref, source.subdir) == ("git@example.com:team/repo.git",
                                                         "v1", "sub/dir")
    assert source.protocols == "http:https:git:ssh"
    assert git.parse("https://example.com/r.git#main").protocols == "http:https"  # ADD's
    assert not git.is_git_url("git@example.com:team/repo.git")  # ADD takes http(s) only
