"""COPY/ADD --link, COPY --parents and ADD of a git repository, through the real CLI.

Each test builds into a store of its own (a copy of a module-wide store holding the busybox
base). Git sources are bare repositories served over git's smart HTTP protocol by
`git http-backend` (CGI) behind a tiny http.server on 127.0.0.1; the request log shows
what the builder fetched. Failures must be one `stepbuild: error:` line naming the Stepfile
line, with the store consistent and nothing new in it (and, docs/security.md rule 11, a
sentinel beside the context untouched).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.integration.builds import Stepbuild, base_image, step_lines, write_context
from tests.integration.test_build_copy import (
    assert_clean_failure,
    build,
    inspect,
    layer_names,
    sh,
    store_snapshot,
)
from tests.local_http import LocalHTTPServer

pytestmark = pytest.mark.root

T1 = 1_300_000_000  # commit times: fixed, far from "now"
T2 = 1_400_000_000
T3 = 1_500_000_000
GIT_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": os.devnull, "HOME": "/nonexistent", "LC_ALL": "C"}


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("base")
    base_image(Stepbuild(workdir / "store"), workdir)
    return workdir / "store"


@pytest.fixture
def sb(tmp_path: Path, base_store: Path) -> Iterator[Stepbuild]:
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep").write_text("sentinel")
    subprocess.run(["cp", "-a", str(base_store), str(tmp_path / "store")], check=True)
    stepbuild = Stepbuild(tmp_path / "store")
    yield stepbuild
    assert [p.name for p in sentinel.iterdir()] == ["keep"]
    checked = stepbuild("check", check=False)
    assert checked.returncode == 0 and "store is consistent" in checked.stdout, checked


def git(*args: str | Path, cwd: Path | None = None, when: int | None = None) -> str:
    env = dict(GIT_ENV)
    if when is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{when} +0000"
    result = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                             *map(str, args)], cwd=cwd, env=env, capture_output=True,
                            text=True, check=True)
    return result.stdout.strip()


class Repo:
    """A work tree whose commits are pushed to a bare repository the server serves."""

    def __init__(self, bare: Path, work: Path) -> None:
        self.bare = bare
        self.work = work
        git("init", "-q", "--bare", "-b", "main", bare)
        git("init", "-q", "-b", "main", work)

    def commit(self, files: dict[str, str], when: int, executable: tuple[str, ...] = (),
               links: dict[str, str] | None = None) -> str:
        for name, content in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            path.chmod(0o775 if name in executable else 0o664)  # umask noise git ignores
        for name, target in (links or {}).items():
            (self.work / name).symlink_to(target)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", f"at {when}", cwd=self.work, when=when)
        self.push()
        return git("rev-parse", "HEAD", cwd=self.work)

    def tag(self, name: str, annotated: bool = False) -> None:
        git("tag", *(["-a", "-m", name] if annotated else []), name, cwd=self.work, when=T3)
        self.push()

    def push(self) -> None:
        git("push", "-q", "--force", "--tags", self.bare, "main", cwd=self.work)
        git("-C", self.bare, "update-server-info")  # for the dumb protocol


class GitServer:
    """`git http-backend` behind http.server: smart HTTP (protocol v2) for bare repos under
    `root`. `commands` logs each upload-pack request's command (ls-refs, fetch)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.commands: list[str] = []
        commands = self.commands

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.cgi()

            def do_POST(self) -> None:  # noqa: N802
                self.cgi()

            def cgi(self) -> None:
                path, _, query = self.path.partition("?")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "POST":
                    commands.append("fetch" if b"command=fetch" in body else "ls-refs"
                                    if b"command=ls-refs" in body else "other")
                env = {**GIT_ENV, "GIT_PROJECT_ROOT": str(root), "GIT_HTTP_EXPORT_ALL": "1",
                       "PATH_INFO": path, "QUERY_STRING": query,
                       "REQUEST_METHOD": self.command, "REMOTE_ADDR": "127.0.0.1",
                       "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                       "CONTENT_LENGTH": str(len(body)),
                       "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                       "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", "")}
                out = subprocess.run(["git", "http-backend"], input=body, env=env,
                                     capture_output=True, check=False).stdout
                head, _, rest = out.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode().split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(rest)))
                self.end_headers()
                self.wfile.write(rest)

            def log_message(self, *args: object) -> None:
                pass

        self.http = LocalHTTPServer(Handler)
        self.url = self.http.url

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    server = GitServer(tmp_path_factory.mktemp("git-served"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def dumb_server(git_server: GitServer) -> Iterator[str]:
    """The same repositories as plain files: git's "dumb" HTTP protocol (no shallow fetch)."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(git_server.root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    with LocalHTTPServer(handler) as http:
        yield http.url


@pytest.fixture
def repo(git_server: GitServer, tmp_path: Path, request: pytest.FixtureRequest
         ) -> tuple[Repo, str]:
    """A fresh repository of this test's own, and its URL."""
    name = request.node.name
    git_server.commands.clear()
    return (Repo(git_server.root / f"{name}.git", tmp_path / "work"),
            f"{git_server.url}/{name}.git")


def history(sb: Stepbuild, image: str = "img") -> str:
    return sb("history", "--no-trunc", image).stdout


def diff_ids(sb: Stepbuild, image: str = "img") -> list[str]:
    return inspect(sb, image)["config"]["rootfs"]["diff_ids"]


# --- COPY --link / ADD --link --------------------------------------------------------------


LINK_STEPFILE = """FROM base AS tool
RUN echo tool > /tool.txt
FROM base
RUN echo {version} > /version
COPY --link app/ /app/
ADD --link extra.txt /opt/extra/
COPY --link --from=tool /tool.txt /opt/
COPY app/main.txt /plain/
"""


def test_link_layer_is_reused_when_an_earlier_step_changes(sb: Stepbuild, tmp_path: Path
                                                           ) -> None:
    files = {"app/main.txt": "main\n", "app/sub/x.txt": "x\n", "extra.txt": "extra\n"}
    ctx = write_context(tmp_path / "ctx", LINK_STEPFILE.format(version=1), files)
    assert step_lines(build(sb, ctx).stderr, "1") == ["DONE"] * 5
    first = diff_ids(sb)
    # A --link layer holds only what was copied: no parent content, no whiteouts.
    assert layer_names(sb, index=-4) == {"app", "app/main.txt", "app/sub", "app/sub/x.txt"}
    assert layer_names(sb, index=-3) == {"opt", "opt/extra", "opt/extra/extra.txt"}
    assert layer_names(sb, index=-2) == {"opt", "opt/tool.txt"}

    (ctx / "Stepfile").write_text(LINK_STEPFILE.format(version=2))
    result = build(sb, ctx)
    # RUN reruns; the --link steps hit although their parent changed; plain COPY misses.
    assert step_lines(result.stderr, "1") == ["DONE", "CACHED", "CACHED", "CACHED", "DONE"]
    second = diff_ids(sb)
    assert second[-5] != first[-5]                       # the RUN layer changed
    assert second[-4:-1] == first[-4:-1]                 # same --link layers, new parent
    assert second[:-5] == first[:-5]
    out = sh(sb, "cat /version /app/main.txt /app/sub/x.txt /opt/extra/extra.txt"
                 " /opt/tool.txt /plain/main.txt")
    assert out.split() == ["2", "main", "x", "extra", "tool", "main"]
    assert "COPY --link app/ /app/" in history(sb)


def test_link_does_not_follow_parent_symlinks_and_resolves_chown_in_the_parent(
        sb: Stepbuild, tmp_path: Path) -> None:
    # Dockerfile reference, "Incompatibilities with --link=false": the destination path is
    # never resolved through the parent's symlinks; it becomes real directories.
    ctx = write_context(tmp_path / "ctx", (
        "FROM base\n"
        "RUN mkdir /srv /srv2 && ln -s /srv /app && ln -s /srv2 /app2 &&"
        " echo 'app:x:1234:4321::/:/bin/sh' >> /etc/passwd\n"
        "COPY --link --chown=app f.txt /app/\n"
        "COPY f.txt /app2/\n"), {"f.txt": "f\n"})
    build(sb, ctx)
    out = sh(sb, "stat -c '%n %F' /app /app2; stat -c '%n %u:%g' /app/f.txt; ls -A /srv;"
                 " ls /srv2")
    assert out.splitlines() == ["/app directory", "/app2 symbolic link", "/app/f.txt 1234:4321",
                                "f.txt"]  # /srv is empty; plain COPY followed /app2 -> /srv2


def test_link_chown_name_change_in_parent_misses(sb: Stepbuild, tmp_path: Path) -> None:
    stepfile = ("FROM base\nRUN echo 'app:x:{uid}:{uid}::/:/bin/sh' >> /etc/passwd\n"
                "COPY --link --chown=app f.txt /f\n")
    ctx = write_context(tmp_path / "ctx", stepfile.format(uid=1111), {"f.txt": "f"})
    build(sb, ctx)
    (ctx / "Stepfile").write_text(stepfile.format(uid=2222))
    assert step_lines(build(sb, ctx).stderr) == ["DONE", "DONE"]  # the resolved ids are keyed
    assert sh(sb, "stat -c '%u:%g' /f").strip() == "2222:2222"


# --- COPY --parents ----------------------------------------------------------------------------


def test_parents_keep_the_directory_structure(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", (
        "FROM base\n"
        "COPY --parents a/b/c.txt x/y.txt /dest/\n"
        "COPY --parents dir1/sub /d2\n"
        "COPY a/b/c.txt x/y.txt /flat/\n"),
        {"a/b/c.txt": "c", "a/b/d.txt": "d", "x/y.txt": "y", "dir1/sub/deep.txt": "deep",
         "dir1/top.txt": "top"})
    (ctx / "a").chmod(0o700)
    (ctx / "a" / "b").chmod(0o750)
    build(sb, ctx)
    out = sh(sb, "cd /dest && find . | sort; cd /d2 && find . | sort; ls /flat;"
                 " stat -c '%n %a' /dest/a /dest/a/b")
    assert out.split() == [
        ".", "./a", "./a/b", "./a/b/c.txt", "./x", "./x/y.txt",
        ".", "./dir1", "./dir1/sub", "./dir1/sub/deep.txt",
        "c.txt", "y.txt",
        "/dest/a", "700", "/dest/a/b", "750"]
    assert "COPY --parents a/b/c.txt x/y.txt /dest/" in history(sb)


def test_parents_pivot_and_wildcards(sb: Stepbuild, tmp_path: Path) -> None:
    stepfile = ("FROM base\n"
                "COPY --parents {pivot} /p1/\n"
                "COPY --parents ./x/*/file /p2/\n"
                "COPY --parents ./x/./y/*.txt /p3/\n")
    files = {"a/b/c": "c", "x/m1/file": "1", "x/m2/file": "2", "x/m3/other": "3",
             "x/y/a.txt": "a", "x/y/b.txt": "b", "x/y/c.md": "md"}
    ctx = write_context(tmp_path / "ctx", stepfile.format(pivot="./a/./b/c"), files)
    build(sb, ctx)
    out = sh(sb, "for d in /p1 /p2 /p3; do cd $d && find . -type f | sort; done")
    assert out.split() == ["./b/c", "./x/m1/file", "./x/m2/file", "./y/a.txt", "./y/b.txt"]

    # The same files with another pivot land elsewhere: the layout is part of the key.
    (ctx / "Stepfile").write_text(stepfile.format(pivot="./a/b/./c"))
    assert step_lines(build(sb, ctx).stderr) == ["DONE", "DONE", "DONE"]
    assert sh(sb, "cd /p1 && find . | sort").split() == [".", "./c"]


def test_parents_from_an_image(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\n"
                        "COPY --from=base --parents /etc/./passwd /bin/busybox /r/\n")
    build(sb, ctx)
    assert sh(sb, "cd /r && find . | sort").split() == [
        ".", "./bin", "./bin/busybox", "./passwd"]


def test_parents_source_may_not_leave_its_pivot(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY --parents ./a/./../x/y.txt /d/\n",
                        {"a/f": "f", "x/y.txt": "y"})
    before = store_snapshot(sb)
    assert_clean_failure(sb, build(sb, ctx, check=False), "pivot", before=before)


# --- ADD of a git repository --------------------------------------------------------------------


def first_repo(repo: Repo) -> tuple[str, str]:
    """Two commits: v1 (lightweight tag) at T1, then main at T2 with an annotated tag."""
    sha1 = repo.commit({"README": "one\n", "bin/run.sh": "#!/bin/sh\necho run\n",
                        "sub/inner.txt": "inner\n"}, T1, executable=("bin/run.sh",),
                       links={"link": "README"})
    repo.tag("v1")
    sha2 = repo.commit({"README": "two\n"}, T2)
    repo.tag("rel", annotated=True)
    return sha1, sha2


def test_add_git_refs_subdir_and_metadata(sb: Stepbuild, tmp_path: Path,
                                          repo: tuple[Repo, str]) -> None:
    repository, url = repo
    sha1, _ = first_repo(repository)
    ctx = write_context(tmp_path / "ctx", (
        f"FROM base\n"
        f"ADD {url} /head/\n"
        f"ADD {url}#main /branch\n"
        f"ADD {url}#v1 /tag\n"
        f"ADD {url}#rel /atag\n"
        f"ADD {url}#{sha1} /sha\n"
        f"ADD {url}#main:sub /sub\n"
        # A git source's --checksum is a commit sha prefix (through an ARG: the parser
        # checks a literal value as a sha256 digest).
        f"ARG SUM={sha1[:7]}\n"
        f"ADD --chown=1000:2000 --checksum=$SUM {url}#v1:bin /owned/\n"))
    build(sb, ctx)
    out = sh(sb, "cat /head/README /branch/README /tag/README /atag/README /sha/README;"
                 " ls -A /sub; ls -A /head; readlink /head/link;"
                 " stat -c '%n %a %u:%g %Y' /head /head/README /head/bin /head/bin/run.sh"
                 " /head/link /owned/run.sh /tag/README")
    assert out.splitlines() == [
        "two", "two", "one", "two", "one",
        "inner.txt",
        "README", "bin", "link", "sub",      # no .git
        "README",
        f"/head 755 0:0 {T2}", f"/head/README 644 0:0 {T2}", f"/head/bin 755 0:0 {T2}",
        f"/head/bin/run.sh 755 0:0 {T2}", f"/head/link 777 0:0 {T2}",
        f"/owned/run.sh 755 1000:2000 {T1}", f"/tag/README 644 0:0 {T1}"]
    assert f"ADD {url}#main:sub /sub" in history(sb)


def test_add_git_keep_git_dir(sb: Stepbuild, tmp_path: Path, repo: tuple[Repo, str]) -> None:
    repository, url = repo
    _, sha2 = first_repo(repository)
    secret_url = url.replace("http://", "http://user:s3cr3t@")
    ctx = write_context(tmp_path / "ctx", (
        f"FROM base\n"
        f"ADD --keep-git-dir=true {secret_url}#main /kept\n"
        f"ADD --keep-git-dir=false {url}#main /dropped\n"))
    build(sb, ctx)
    out = sh(sb, "ls -A /dropped; cat /kept/.git/HEAD; grep -c s3cr3t /kept/.git/config;"
                 " grep url /kept/.git/config")
    assert out.split() == ["README", "bin", "link", "sub", sha2, "0", "url", "=", url]
    assert "s3cr3t" not in history(sb)
    assert "--keep-git-dir=true" in history(sb)
    # The kept .git is a usable repository: HEAD at the commit, a clean work tree, the
    # branch named as the ref. Checked with the host's git on a copy of the layer.
    layer = sb.root / "layers" / diff_ids(sb)[-2].removeprefix("sha256:") / "diff" / "kept"
    copy = tmp_path / "kept"
    shutil.copytree(layer, copy, symlinks=True)
    assert git("-C", copy, "rev-parse", "HEAD", "main") == f"{sha2}\n{sha2}"
    assert git("-C", copy, "status", "--porcelain") == ""
    assert git("-C", copy, "rev-list", "--count", "HEAD") == "1"  # a --depth=1 fetch


def test_add_git_cache_hits_on_the_same_commit_and_misses_on_a_new_one(
        sb: Stepbuild, tmp_path: Path, repo: tuple[Repo, str], git_server: GitServer) -> None:
    repository, url = repo
    sha1, _ = first_repo(repository)
    ctx = write_context(tmp_path / "ctx", f"FROM base\nADD {url}#{sha1} /s\n"
                                          f"ADD {url}#main /m\n")
    assert step_lines(build(sb, ctx).stderr) == ["DONE", "DONE"]
    digest = inspect(sb)["digest"]
    assert git_server.commands.count("fetch") == 2

    git_server.commands.clear()
    assert step_lines(build(sb, ctx).stderr) == ["CACHED", "CACHED"]
    assert inspect(sb)["digest"] == digest
    assert git_server.commands == ["ls-refs"]  # the branch resolved again, nothing fetched

    repository.commit({"README": "three\n"}, T3)
    assert step_lines(build(sb, ctx).stderr) == ["CACHED", "DONE"]
    assert sh(sb, "cat /s/README /m/README").split() == ["one", "three"]


def test_add_git_over_the_dumb_protocol(sb: Stepbuild, tmp_path: Path, repo: tuple[Repo, str],
                                        dumb_server: str) -> None:
    # No shallow fetch there: the fetch falls back to the whole history of the commit.
    repository, url = repo
    sha1, _ = first_repo(repository)
    dumb = url.replace(url.rpartition("/")[0], dumb_server)
    ctx = write_context(tmp_path / "ctx", f"FROM base\nADD {dumb}#v1 /v1\nADD {dumb} /head\n")
    build(sb, ctx)
    assert sh(sb, "cat /v1/README /head/README").split() == ["one", "two"]


def test_add_git_bad_input_is_a_clean_error_naming_the_line(
        sb: Stepbuild, tmp_path: Path, repo: tuple[Repo, str]) -> None:
    repository, url = repo
    first_repo(repository)
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    gone = f"http://127.0.0.1:{closed.server_address[1]}/r.git"
    closed.server_close()
    before = store_snapshot(sb)
    cases = [
        (f"ADD {url}#nope /x", ["Stepfile:2:", "no branch, tag or ref named 'nope'"]),
        (f"ADD {gone} /x", ["Stepfile:2:", "cannot read git repository", gone]),
        (f"ADD {url.removesuffix('.git')}-missing.git#main /x", ["Stepfile:2:", "missing"]),
        (f"ADD {url}#main:nosuch /x", ["Stepfile:2:", "no directory 'nosuch'"]),
        (f"ARG SUM=0000000\nADD --checksum=$SUM {url}#main /x",
         ["Stepfile:3:", "checksum mismatch"]),
    ]
    for number, (line, needles) in enumerate(cases):
        ctx = write_context(tmp_path / f"ctx{number}", f"FROM base\n{line}\n")
        assert_clean_failure(sb, build(sb, ctx, check=False), *needles, before=before)
