"""Build contexts from elsewhere and named contexts, through the real CLI, as root.

- `-`: a tar on stdin (every compression), or a Stepfile on stdin with an empty context;
- git URLs: bare repositories behind `git http-backend` (smart HTTP, the fixtures of
  test_copy_extras.py) and `git daemon` (git://);
- http(s) tarballs: a static file server on 127.0.0.1;
- `--build-context NAME=PATH|docker-image://REF|oci-layout://DIR`, the image pulled from
  the real test registry (registry_fixture.py).

Each image's files are read back with `stepbuild run IMG cat …`; a second build of the same
input is all CACHED. Failures are one `stepbuild: error:` line, exit status as documented,
no traceback, the store consistent, nothing left in its tmp/ (the fetched context is
removed), and (docs/security.md rule 11) a sentinel beside the context untouched.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import io
import lzma
import os
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest
import zstandard

from tests.integration import registry_fixture
from tests.integration.builds import PROJECT, Stepbuild, base_image, step_lines, write_context
from tests.integration.registry_fixture import RunningRegistry
from tests.integration.test_copy_extras import T1, T2, GitServer, Repo
from tests.local_http import LocalHTTPServer

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry

COMPRESS = {"plain": lambda data: data, "gzip": gzip.compress, "bzip2": bz2.compress,
            "xz": lzma.compress, "zstd": lambda data: zstandard.ZstdCompressor().compress(data)}


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("base")
    base_image(Stepbuild(workdir / "store"), workdir)
    return workdir / "store"


@pytest.fixture
def sb(tmp_path: Path, base_store: Path) -> Iterator[Stepbuild]:
    """A store of this test's own holding `base`; afterwards: consistent, tmp/ empty, the
    sentinel beside the test's files untouched."""
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep").write_text("sentinel")
    subprocess.run(["cp", "-a", str(base_store), str(tmp_path / "store")], check=True)
    stepbuild = Stepbuild(tmp_path / "store")
    yield stepbuild
    assert [p.name for p in sentinel.iterdir()] == ["keep"]
    checked = stepbuild("check", check=False)
    assert checked.returncode == 0 and "store is consistent" in checked.stdout, checked
    assert list((tmp_path / "store" / "tmp").iterdir()) == []  # fetched contexts removed


def cli(sb: Stepbuild, *args: str, stdin: bytes = b"", cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    """`stepbuild ARGS` with `stdin` as its (binary) standard input."""
    env = {**os.environ, "STEPBUILD_ROOT": str(sb.root), "PYTHONPATH": str(PROJECT)}
    result = subprocess.run([sys.executable, "-m", "stepbuild", *args], input=stdin, env=env,
                            capture_output=True, timeout=300, check=False, cwd=cwd)
    return subprocess.CompletedProcess(result.args, result.returncode,
                                       result.stdout.decode(), result.stderr.decode())


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def failed(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The one error line of a failed command (exit `code`), which holds each of `words`."""
    print("MSG:", result.stderr.strip().replace("\n", " | "))
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("stepbuild: error:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], (word, result.stderr)
    return errors[0]


def tar_of(directory: Path, compression: str = "gzip") -> bytes:
    """A tar of `directory`'s content, as `tar -C DIR -c .` makes it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.add(directory, arcname=".")
    return COMPRESS[compression](buffer.getvalue())


def cat(sb: Stepbuild, image: str, path: str) -> str:
    return sb.run(image, "cat", path)


# --- the context from standard input ---------------------------------------------------------


@pytest.mark.parametrize("compression", sorted(COMPRESS))
def test_tar_on_stdin_is_the_context_and_a_second_build_is_cached(
        sb: Stepbuild, tmp_path: Path, compression: str) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY app/ /app/\nRUN cat /app/a > /b\n",
                        {"app/a": "from the tar\n"})
    data = tar_of(ctx, compression)
    first = ok(cli(sb, "build", "-t", "img", "-", stdin=data))
    assert cat(sb, "img", "/app/a") == "from the tar\n"
    assert cat(sb, "img", "/b") == "from the tar\n"
    again = ok(cli(sb, "build", "-t", "img", "-", stdin=data))
    assert step_lines(again.stderr) == ["CACHED", "CACHED"]
    assert again.stdout == first.stdout


def test_f_names_a_file_inside_the_tar(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM scratch\n", {
        "sub/Other.stepfile": "FROM base\nCOPY sub/x /x\n", "sub/x": "x\n"})
    ok(cli(sb, "build", "-t", "img", "-f", "sub/Other.stepfile", "-", stdin=tar_of(ctx)))
    assert cat(sb, "img", "/x") == "x\n"
    out = cli(sb, "build", "-t", "img", "-f", "../Stepfile", "-", stdin=tar_of(ctx))
    failed(out, 2, "-f ../Stepfile: outside the context on standard input")


def test_a_tar_without_a_stepfile_says_so(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "unused")
    (ctx / "Stepfile").unlink()
    (ctx / "file").write_text("x")
    out = cli(sb, "build", "-", stdin=tar_of(ctx))
    failed(out, 2, "no Stepfile or Containerfile or Dockerfile at the top of the context on standard input")


def test_a_stepfile_on_stdin_builds_with_an_empty_context(sb: Stepbuild, tmp_path: Path
                                                          ) -> None:
    stepfile = b"FROM base\nRUN echo made > /made\n"
    ok(cli(sb, "build", "-t", "img", "-", stdin=stepfile, cwd=tmp_path))
    assert cat(sb, "img", "/made") == "made\n"
    (tmp_path / "here").write_text("not in the context")
    out = cli(sb, "build", "-", stdin=b"FROM base\nCOPY here /\n", cwd=tmp_path)
    failed(out, 1, "here")  # the empty context has no file of the current directory


def test_stdin_for_both_context_and_stepfile_is_a_usage_error(sb: Stepbuild) -> None:
    out = cli(sb, "build", "-f", "-", "-", stdin=b"FROM base\n")
    failed(out, 2, "cannot both come from standard input")


def test_bad_tar_on_stdin_is_a_clear_error(sb: Stepbuild) -> None:
    failed(cli(sb, "build", "-", stdin=gzip.compress(b"FROM base\n")), 1,
           "the context on standard input is gzip data but not a tar archive")
    failed(cli(sb, "build", "-", stdin=b"\x1f\x8b\x08" + b"broken" * 50), 1,
           "the context on standard input: corrupt gzip data")
    failed(cli(sb, "build", "-", stdin=b""), 1, "the context on standard input is empty")


def test_traversal_member_is_refused_naming_it(sb: Stepbuild, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in ("Stepfile", "../sentinel/evil"):
            data = b"FROM base\n"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    out = cli(sb, "build", "-", stdin=buffer.getvalue(), cwd=tmp_path)
    failed(out, 1, "the context on standard input: entry '../sentinel/evil' has a '..'")
    # the sb fixture checks that the sentinel and the store's tmp/ are untouched


# --- git contexts ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    server = GitServer(tmp_path_factory.mktemp("git-served"))
    yield server
    server.close()


@pytest.fixture
def repo(git_server: GitServer, tmp_path: Path, request: pytest.FixtureRequest
         ) -> tuple[Repo, str]:
    name = request.node.name.replace("[", "-").replace("]", "")
    return (Repo(git_server.root / f"{name}.git", tmp_path / "work"),
            f"{git_server.url}/{name}.git")


def test_git_tag_and_subdir(sb: Stepbuild, repo: tuple[Repo, str]) -> None:
    r, url = repo
    r.commit({"Stepfile": "FROM scratch\n", "app/Stepfile": "FROM base\nCOPY . /ctx/\n",
              "app/f": "v1\n"}, when=T1)
    r.tag("v1")
    r.commit({"app/f": "v2\n"}, when=T2)  # main moves on; the tag stays
    first = ok(cli(sb, "build", "-t", "img", f"{url}#v1:app"))
    assert cat(sb, "img", "/ctx/f") == "v1\n"
    listing = sb.run("img", "ls", "-a", "/ctx")
    assert ".git" not in listing.split() and "Stepfile" in listing.split()
    again = ok(cli(sb, "build", "-t", "img", f"{url}#v1:app"))
    assert step_lines(again.stderr) == ["CACHED"] and again.stdout == first.stdout
    ok(cli(sb, "build", "-t", "img", f"{url}#main:app"))
    assert cat(sb, "img", "/ctx/f") == "v2\n"


def test_git_commit_sha(sb: Stepbuild, repo: tuple[Repo, str]) -> None:
    r, url = repo
    old = r.commit({"Stepfile": "FROM base\nCOPY f /f\n", "f": "old\n"}, when=T1)
    r.commit({"f": "new\n"}, when=T2)
    ok(cli(sb, "build", "-t", "img", f"{url}#{old}"))
    assert cat(sb, "img", "/f") == "old\n"
    ok(cli(sb, "build", "-t", "img", url))  # no ref: the remote's HEAD
    assert cat(sb, "img", "/f") == "new\n"


def test_git_missing_ref_names_url_and_ref(sb: Stepbuild, repo: tuple[Repo, str]) -> None:
    r, url = repo
    r.commit({"Stepfile": "FROM base\n"}, when=T1)
    out = cli(sb, "build", f"{url}#no-such-ref")
    failed(out, 1, url, "'no-such-ref'")
    out = cli(sb, "build", f"{url}#main:no/such/dir")
    failed(out, 1, "no directory 'no/such/dir'")


@pytest.fixture(scope="module")
def git_daemon(git_server: GitServer) -> Iterator[str]:
    """`git daemon` serving the same repositories over git://."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all",
                               "--listen=127.0.0.1", f"--port={port}",
                               f"--base-path={git_server.root}", str(git_server.root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"git://127.0.0.1:{port}"
    finally:
        daemon.terminate()
        daemon.wait()


def test_git_protocol(sb: Stepbuild, repo: tuple[Repo, str], git_daemon: str) -> None:
    r, url = repo
    r.commit({"Stepfile": "FROM base\nCOPY f /f\n", "f": "over git://\n"}, when=T1)
    ok(cli(sb, "build", "-t", "img", f"{git_daemon}/{url.rsplit('/', 1)[1]}#main"))
    assert cat(sb, "img", "/f") == "over git://\n"


# --- http(s) tarball contexts ----------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    directory = tmp_path / "served"
    directory.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    with LocalHTTPServer(handler) as http:
        yield http.url, directory


def test_tarball_url_and_cache(sb: Stepbuild, tmp_path: Path, served: tuple[str, Path]
                               ) -> None:
    url, directory = served
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY f /f\n", {"f": "downloaded\n"})
    (directory / "ctx.tar.zst").write_bytes(tar_of(ctx, "zstd"))
    first = ok(cli(sb, "build", "-t", "img", f"{url}/ctx.tar.zst"))
    assert cat(sb, "img", "/f") == "downloaded\n"
    again = ok(cli(sb, "build", "-t", "img", f"{url}/ctx.tar.zst"))
    assert step_lines(again.stderr) == ["CACHED"] and again.stdout == first.stdout


def test_stepfile_url(sb: Stepbuild, served: tuple[str, Path]) -> None:
    url, directory = served
    (directory / "Stepfile").write_text("FROM base\nRUN echo hi > /hi\n")
    ok(cli(sb, "build", "-t", "img", f"{url}/Stepfile"))
    assert cat(sb, "img", "/hi") == "hi\n"


def test_tarball_404_names_the_url(sb: Stepbuild, served: tuple[str, Path]) -> None:
    url, _ = served
    failed(cli(sb, "build", f"{url}/missing.tar.gz"), 1,
           f"cannot download the build context {url}/missing.tar.gz: HTTP 404")


# --- --build-context -------------------------------------------------------------------------


def test_path_context_for_copy_from_hits_and_misses_by_content(sb: Stepbuild, tmp_path: Path
                                                                ) -> None:
    shared = write_context(tmp_path / "shared", "not a Stepfile here", {"lib/x": "one\n"})
    (shared / ".dockerignore").write_text("lib\n")  # a named context has no ignore file
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY --from=shared lib/x /x\n")
    flag = f"--build-context=shared={shared}"
    first = ok(cli(sb, "build", "-t", "img", flag, str(ctx)))
    assert cat(sb, "img", "/x") == "one\n"
    again = ok(cli(sb, "build", "-t", "img", flag, str(ctx)))
    assert step_lines(again.stderr) == ["CACHED"] and again.stdout == first.stdout
    (shared / "lib" / "x").write_text("two\n")
    changed = ok(cli(sb, "build", "-t", "img", flag, str(ctx)))
    assert step_lines(changed.stderr) == ["DONE"]  # not replayed by the no-op fingerprint
    assert cat(sb, "img", "/x") == "two\n"
    missing = cli(sb, "build", flag, str(write_context(
        tmp_path / "ctx2", "FROM base\nCOPY --from=shared nope /\n")))
    failed(missing, 1, "nope", "--build-context shared")


def test_path_context_overrides_a_stage_and_is_a_base(sb: Stepbuild, tmp_path: Path) -> None:
    shared = write_context(tmp_path / "shared", "x", {"data": "named\n"})
    ctx = write_context(tmp_path / "ctx",
                        "FROM base AS gen\nRUN echo stage > /data\n"
                        "FROM base\nCOPY --from=gen /data /data\n"
                        "FROM gen AS last\n")
    ok(cli(sb, "build", "-t", "img", "--target", "1", f"--build-context=gen={shared}",
           str(ctx)))
    assert cat(sb, "img", "/data") == "named\n"
    ok(cli(sb, "build", "-t", "files", f"--build-context=gen={shared}", str(ctx)))
    exported = tmp_path / "out"
    ok(cli(sb, "export", "files", "-o", f"type=local,dest={exported}"))
    assert sorted(p.name for p in exported.iterdir()) == ["Stepfile", "data"]


def test_docker_image_context_replaces_a_from_image(sb: Stepbuild, tmp_path: Path) -> None:
    ok(cli(sb, "build", "-t", "other", "-", stdin=b"FROM base\nRUN echo other > /who\n"))
    ctx = write_context(tmp_path / "ctx", "FROM alpine:latest\nRUN cat /who > /copy\n"
                                          "COPY --from=docker.io/library/alpine /who /who2\n")
    ok(cli(sb, "build", "-t", "img", "--build-context", "alpine=docker-image://other",
           str(ctx)))
    assert cat(sb, "img", "/copy") == "other\n"
    assert cat(sb, "img", "/who2") == "other\n"


def test_docker_image_context_is_pulled(sb: Stepbuild, tmp_path: Path,
                                        plain_registry: RunningRegistry) -> None:
    ok(cli(sb, "build", "-t", "pushed", "-", stdin=b"FROM base\nRUN echo remote > /who\n"))
    ref = f"{plain_registry.host}/contexts/pushed:1"
    ok(cli(sb, "push", "--tls-verify=false", "pushed", ref))
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY --from=src /who /who\n")
    ok(cli(sb, "build", "-t", "img", "--tls-verify=false",
           f"--build-context=src=docker-image://{ref}", str(ctx)))
    assert cat(sb, "img", "/who") == "remote\n"


def test_oci_layout_context_by_tag_and_by_digest(sb: Stepbuild, tmp_path: Path) -> None:
    ok(cli(sb, "build", "-t", "laid", "-", stdin=b"FROM base\nRUN echo layout > /who\n"))
    layout = tmp_path / "layout"
    ok(cli(sb, "export", "laid", "-o", f"type=oci-layout,dest={layout}"))
    index = __import__("json").loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    ctx = write_context(tmp_path / "ctx", "FROM named\nRUN cat /who > /copy\n")
    for value in (f"oci-layout://{layout}", f"oci-layout://{layout}@{digest}"):
        ok(cli(sb, "build", "-t", "img", f"--build-context=named={value}", str(ctx)))
        assert cat(sb, "img", "/copy") == "layout\n"
    wrong = "sha256:" + "0" * 64
    out = cli(sb, "build", f"--build-context=named=oci-layout://{layout}@{wrong}", str(ctx))
    failed(out, 2, f"--build-context named: oci-layout:{layout}:{wrong}: no image named")


@pytest.mark.parametrize(("value", "words"), [
    ("name=ftp://host/x", ["unknown form ftp://"]),
    ("novalue", ["expected NAME=VALUE"]),
    ("x=/no/such/dir", ["--build-context x=/no/such/dir: not a directory"]),
])
def test_bad_build_context_values_are_usage_errors(sb: Stepbuild, tmp_path: Path, value: str,
                                                   words: list[str]) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\n")
    failed(cli(sb, "build", "--build-context", value, str(ctx)), 2, *words)


# --- cleanup ---------------------------------------------------------------------------------


def _start_stdin_build(sb: Stepbuild, tmp_path: Path) -> subprocess.Popen[bytes]:
    """A build of a tar on stdin, stopped in a RUN step that prints a marker and waits."""
    ctx = write_context(tmp_path / "ctx", "FROM base\nRUN echo waiting-here && sleep 1000\n",
                        {"f": "x"})
    env = {**os.environ, "STEPBUILD_ROOT": str(sb.root), "PYTHONPATH": str(PROJECT)}
    build = subprocess.Popen([sys.executable, "-m", "stepbuild", "build", "-"], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    assert build.stdin is not None and build.stderr is not None
    build.stdin.write(tar_of(ctx))
    build.stdin.close()
    for line in build.stderr:
        if b"waiting-here" in line and b"echo" not in line:
            return build
    raise AssertionError(f"the build ended early: {build.wait()}")


def test_sigterm_removes_the_fetched_context(sb: Stepbuild, tmp_path: Path) -> None:
    build = _start_stdin_build(sb, tmp_path)
    contexts = [p for p in (sb.root / "tmp").iterdir() if p.name.startswith("context-@")]
    assert len(contexts) == 1 and (contexts[0] / "context" / "f").read_text() == "x"
    build.send_signal(__import__("signal").SIGTERM)
    assert build.wait(timeout=60) == 143
    # the sb fixture then checks that tmp/ is empty and the store consistent


def test_a_killed_builder_leaves_its_context_to_the_next_command(sb: Stepbuild,
                                                                 tmp_path: Path) -> None:
    build = _start_stdin_build(sb, tmp_path)
    build.kill()
    build.wait()
    assert any(p.name.startswith("context-@") for p in (sb.root / "tmp").iterdir())
    ok(cli(sb, "build", "-", stdin=b"FROM base\n"))  # locks the store: removes dead work


def test_run_mount_from_a_named_image_and_not_from_a_directory(sb: Stepbuild, tmp_path: Path
                                                               ) -> None:
    ok(cli(sb, "build", "-t", "other", "-", stdin=b"FROM base\nRUN echo other > /who\n"))
    ctx = write_context(tmp_path / "ctx", "FROM base\n"
                        "RUN --mount=type=bind,from=src,target=/m cat /m/who > /copy\n")
    ok(cli(sb, "build", "-t", "img", "--build-context=src=docker-image://other", str(ctx)))
    assert cat(sb, "img", "/copy") == "other\n"
    out = cli(sb, "build", f"--build-context=src={tmp_path}", str(ctx))
    failed(out, 2, "RUN --mount from=src: a directory --build-context cannot be mounted")
