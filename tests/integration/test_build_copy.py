"""COPY and ADD through the real CLI: Docker's semantics, metadata, escapes, ADD of archives and
URLs, and the build cache (docs/security.md family H).

Every test builds into a store of its own (`sb`, a copy of a store where the busybox base
image was built once per module). Results are checked from inside the image
(`stepbuild run`) and, for what `run` cannot show (xattrs, exact tar entries), in the layer
blob itself. Failing builds must exit with a short error, no traceback, and leave the store
consistent with nothing new in it; escapes also check a sentinel beside the context.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import struct
import subprocess
import tarfile
import urllib.parse
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import zstandard

from tests.integration.builds import (
    Stepbuild,
    assert_clear_error,
    base_image,
    step_lines,
    write_context,
)
from tests.local_http import LocalHTTPServer

pytestmark = pytest.mark.root

OLD = 1_234_567_890  # a fixed mtime, far from "now"


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding only the busybox base tagged `base`, built once per module: each test
    starts from a `cp -a` of it (~30 ms, where building the base costs ~0.3 s)."""
    workdir = tmp_path_factory.mktemp("base")
    base_image(Stepbuild(workdir / "store"), workdir)
    return workdir / "store"


@pytest.fixture
def sb(tmp_path: Path, base_store: Path) -> Iterator[Stepbuild]:
    """A store of this test's own, holding the busybox base tagged `base`.

    Afterwards (docs/security.md rule 11): a sentinel directory beside the context is untouched
    and the store passes its consistency check, whatever the test built or failed to build.
    """
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep").write_text("sentinel")
    subprocess.run(["cp", "-a", str(base_store), str(tmp_path / "store")], check=True)
    stepbuild = Stepbuild(tmp_path / "store")
    yield stepbuild
    assert [p.name for p in sentinel.iterdir()] == ["keep"]
    assert (sentinel / "keep").read_text() == "sentinel"
    checked = stepbuild("check", check=False)
    assert checked.returncode == 0 and "store is consistent" in checked.stdout, checked


def build(sb: Stepbuild, ctx: Path, tag: str = "img", check: bool = True):
    return sb("build", "-t", tag, str(ctx), check=check,
              env={"no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"})


def sh(sb: Stepbuild, script: str, image: str = "img") -> str:
    return sb.run(image, "sh", "-c", script)


def store_snapshot(sb: Stepbuild) -> dict[str, set[str]]:
    """The names under the store's content directories (what a commit would add to)."""
    snap = {}
    for sub in ("blobs/sha256", "layers", "cache"):
        top = sb.root / sub
        snap[sub] = {str(p.relative_to(top)) for p in top.rglob("*")} if top.exists() else set()
    snap["index.json"] = {(sb.root / "index.json").read_text()}
    return snap


def assert_clean_failure(sb: Stepbuild, result, *needles: str, before=None) -> str:
    """A failed build: status 1, one `stepbuild: error:` line (plus hints), no traceback, the
    store consistent and (given a snapshot) unchanged. Returns the error line."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("stepbuild: error:")]
    assert len(errors) == 1, result.stderr
    tail = result.stderr.split(errors[0], 1)[1].strip().splitlines()
    assert all(line.startswith("hint:") for line in tail), result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, result.stderr)
    checked = sb("check", check=False)
    assert checked.returncode == 0 and "store is consistent" in checked.stdout, checked
    if before is not None:
        assert store_snapshot(sb) == before
    tmp = sb.root / "tmp"
    assert not tmp.exists() or not list(tmp.iterdir()), list(tmp.iterdir())
    return errors[0]


def inspect(sb: Stepbuild, image: str = "img") -> dict:
    return json.loads(sb("inspect", image).stdout)


def last_layer(sb: Stepbuild, image: str = "img", index: int = -1) -> tarfile.TarFile:
    """A layer blob of the image, opened with tarfile (the blobs are uncompressed tars)."""
    digest = inspect(sb, image)["manifest"]["layers"][index]["digest"]
    blob = sb.root / "blobs" / "sha256" / digest.removeprefix("sha256:")
    return tarfile.open(blob, "r:")


def layer_names(sb: Stepbuild, image: str = "img", index: int = -1) -> set[str]:
    with last_layer(sb, image, index) as tar:
        return {m.name.rstrip("/") for m in tar.getmembers()}


# --- COPY: where things land ------------------------------------------------------------------


def test_copy_file_to_a_file_path_and_into_a_dir(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY a.txt /renamed\nCOPY a.txt /into/\n",
                        {"a.txt": "alpha\n"})
    build(sb, ctx)
    out = sh(sb, "cat /renamed; cat /into/a.txt; stat -c '%F' /renamed /into /into/a.txt")
    assert out.splitlines() == ["alpha", "alpha", "regular file", "directory", "regular file"]


def test_copy_directory_copies_its_contents(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY src /dst\nCOPY src/ /dst2/\n",
                        {"src/top.txt": "t", "src/sub/deep.txt": "d"})
    build(sb, ctx)
    out = sh(sb, "cd /dst && find . | sort; cd /dst2 && find . | sort")
    expected = [".", "./sub", "./sub/deep.txt", "./top.txt"]
    assert out.splitlines() == expected * 2  # no /dst/src: the directory itself is not copied


def test_several_sources_into_a_dir(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY a.txt b.txt d /many/\n",
                        {"a.txt": "a", "b.txt": "b", "d/c.txt": "c"})
    build(sb, ctx)
    assert sh(sb, "cd /many && find . -type f | sort").split() == [
        "./a.txt", "./b.txt", "./c.txt"]


def test_several_sources_need_a_trailing_slash(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY a.txt b.txt /many\n",
                        {"a.txt": "a", "b.txt": "b"})
    before = store_snapshot(sb)
    result = build(sb, ctx, check=False)
    assert_clean_failure(sb, result, "must be a directory and end with a /", before=before)


def test_wildcard_matching_several_needs_a_trailing_slash(sb: Stepbuild, tmp_path: Path
                                                          ) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY *.txt /many\n",
                        {"a.txt": "a", "b.txt": "b"})
    result = build(sb, ctx, check=False)
    assert_clean_failure(sb, result, "end with a /")


def test_wildcards(sb: Stepbuild, tmp_path: Path) -> None:
    files = {"a.txt": "a", "b.txt": "b", "c.md": "c", "apple": "1", "banana": "2",
             "cherry": "3", "sub/d.txt": "not matched: * does not cross /"}
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY *.txt /txt/\nCOPY [ab]* /ab/\n"
                        "COPY nomatch* /none/\n", files)
    build(sb, ctx)
    out = sh(sb, "ls /txt; echo --; ls /ab")
    assert out.split() == ["a.txt", "b.txt", "--", "a.txt", "apple", "b.txt", "banana"]


def test_relative_dest_is_relative_to_workdir(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nWORKDIR /w/x\nCOPY a.txt rel/\n"
                        "COPY a.txt ./named\nCOPY a.txt .\nCOPY a.txt ../up.txt\n",
                        {"a.txt": "a"})
    build(sb, ctx)
    assert sh(sb, "cd /w && find . -type f | sort").split() == [
        "./up.txt", "./x/a.txt", "./x/named", "./x/rel/a.txt"]


def test_dest_without_slash_is_a_file_unless_an_existing_dir(sb: Stepbuild, tmp_path: Path
                                                             ) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY a.txt /newname\n"
                        "COPY a.txt /etc\nCOPY a.txt /slash/\n", {"a.txt": "a"})
    build(sb, ctx)
    out = sh(sb, "stat -c '%n %F' /newname /etc/a.txt /slash /slash/a.txt")
    assert out.splitlines() == ["/newname regular file", "/etc/a.txt regular file",
                                "/slash directory", "/slash/a.txt regular file"]


def test_missing_parent_dirs_are_created(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY a.txt /p/q/r/\nCOPY a.txt /s/t/u\n",
                        {"a.txt": "a"})
    build(sb, ctx)
    out = sh(sb, "stat -c '%n %F %a %u:%g' /p /p/q /p/q/r /p/q/r/a.txt /s/t /s/t/u")
    assert out.splitlines() == [
        "/p directory 755 0:0", "/p/q directory 755 0:0", "/p/q/r directory 755 0:0",
        "/p/q/r/a.txt regular file 644 0:0", "/s/t directory 755 0:0",
        "/s/t/u regular file 644 0:0"]


def test_copy_onto_an_existing_dir_of_the_base_merges(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY etc/ /etc/\n",
                        {"etc/extra.conf": "x"})
    build(sb, ctx)
    out = sh(sb, "cat /etc/extra.conf; echo; grep -c '^root:' /etc/passwd; ls /bin/sh")
    assert out.split() == ["x", "1", "/bin/sh"]
    # The layer holds the new file (and its parent), not a copy of the base's /etc.
    assert layer_names(sb) == {"etc", "etc/extra.conf"}


def test_copy_through_a_symlinked_dir_of_the_image_stays_inside(sb: Stepbuild, tmp_path: Path
                                                                ) -> None:
    name = f"stepbuild-escape-{uuid.uuid4().hex}"
    host_srv = Path("/srv")
    before_host = sorted(os.listdir(host_srv)) if host_srv.is_dir() else None
    ctx = write_context(tmp_path / "ctx",
                        "FROM base\nRUN mkdir -p /srv /deep/er && ln -s /srv /app"
                        " && ln -s ../../../../../srv /deep/er/rel\n"
                        f"COPY {name} /app/\nCOPY {name} /deep/er/rel/second\n",
                        {name: "inside"})
    build(sb, ctx)
    out = sh(sb, f"readlink /app; cat /srv/{name}; echo; cat /srv/second")
    assert out.split() == ["/srv", "inside", "inside"]
    # The links are unchanged, the files are in /srv; nothing reached the host's /srv or /app.
    assert layer_names(sb, index=-2) == {"srv", f"srv/{name}"}
    assert layer_names(sb) == {"srv", "srv/second"}
    assert not os.path.lexists(f"/app/{name}") and not os.path.lexists(f"/srv/{name}")
    assert (sorted(os.listdir(host_srv)) if host_srv.is_dir() else None) == before_host


# --- metadata ---------------------------------------------------------------------------------


def test_modes_are_preserved(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY d /d/\n",
                        {"d/run.sh": "#!/bin/sh\n", "d/secret": "s", "d/priv/x": "x"})
    (ctx / "d" / "run.sh").chmod(0o755)
    (ctx / "d" / "secret").chmod(0o600)
    (ctx / "d" / "priv").chmod(0o750)
    (ctx / "d").chmod(0o711)
    build(sb, ctx)
    out = sh(sb, "stat -c '%n %a' /d /d/run.sh /d/secret /d/priv /d/priv/x")
    assert out.splitlines() == ["/d 711", "/d/run.sh 755", "/d/secret 600", "/d/priv 750",
                                "/d/priv/x 644"]


def test_chmod_applies_to_files_and_dirs(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY --chmod=0640 d /d/\n"
                        "COPY --chmod=0640 a.sh /bin/tool\n",
                        {"d/f": "f", "d/sub/g": "g", "a.sh": "#!/bin/sh\n"})
    (ctx / "a.sh").chmod(0o755)
    build(sb, ctx)
    out = sh(sb, "stat -c '%n %a' /d/f /d/sub /d/sub/g /bin/tool")
    assert out.splitlines() == ["/d/f 640", "/d/sub 640", "/d/sub/g 640", "/bin/tool 640"]


def test_chmod_and_chown_leave_an_existing_destination_dir_alone(sb: Stepbuild, tmp_path: Path
                                                                 ) -> None:
    # BuildKit (fsutil copy): the destination directory itself keeps its metadata when it
    # exists; only what the COPY creates gets --chmod/--chown.
    ctx = write_context(tmp_path / "ctx",
                        "FROM base\nCOPY --chmod=0640 --chown=1000:1000 cfg/ /etc/\n"
                        "COPY --chmod=0600 cfg/ /\n", {"cfg/app.conf": "c"})
    build(sb, ctx)
    out = sh(sb, "stat -c '%n %a %u:%g' /etc /etc/app.conf / /app.conf")
    assert out.splitlines() == ["/etc 755 0:0", "/etc/app.conf 640 1000:1000", "/ 755 0:0",
                                "/app.conf 600 0:0"]


def test_chmod_with_a_variable(sb: Stepbuild, tmp_path: Path) -> None:
    # BuildKit expands variables in --chmod (moby/buildkit#2676, v0.16).
    ctx = write_context(tmp_path / "ctx",
                        "FROM base\nARG MODE=0640\nCOPY --chmod=$MODE a.txt /a\n", {"a.txt": "a"})
    result = build(sb, ctx, check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert sh(sb, "stat -c %a /a") == "640\n"


def test_chmod_modes_follow_buildkits_test_copy_chmod(sb: Stepbuild, tmp_path: Path) -> None:
    # BuildKit's testCopyChmod (frontend/dockerfile/dockerfile_copy_test.go): the directories a
    # COPY --chmod makes on the way get its mode (/parent 0777, then /parent/sub 0770, /parent
    # left alone). Issue 11 item 6. Symbolic modes apply to each source's own mode; the
    # directories they make are 0755; an octal mode's set-id bit is not given to them.
    ctx = write_context(tmp_path / "ctx", (
        "FROM base\nCOPY --chmod=0644 foo /\nCOPY --chmod=777 bar /baz\n"
        "COPY --chmod=0 foo /foobis\nCOPY --chmod=777 foo /parent/foo\n"
        "COPY --chmod=770 foo /parent/sub/foo\nARG mode=755\nCOPY --chmod=${mode} foo /footer\n"
        "COPY --chmod=u+x,g=u foo /sym/a/foo\nCOPY --chmod=a+X d /tree/new/\n"
        "COPY --chmod=2750 d /sgid/d/\n"),
        {"foo": "foo-contents", "bar": "bar-contents", "d/f": "f", "d/sub/g": "g"})
    (ctx / "foo").chmod(0o600)
    (ctx / "bar").chmod(0o700)
    (ctx / "d" / "sub").chmod(0o700)
    build(sb, ctx)
    out = sh(sb, "stat -c '%n %04a' /foo /baz /foobis /parent /parent/sub /footer /sym /sym/a"
                 " /sym/a/foo /tree /tree/new /tree/new/f /tree/new/sub /sgid /sgid/d"
                 " /sgid/d/f /sgid/d/sub")
    assert out.splitlines() == [
        "/foo 0644", "/baz 0777", "/foobis 0000", "/parent 0777", "/parent/sub 0770",
        "/footer 0755", "/sym 0755", "/sym/a 0755", "/sym/a/foo 0770", "/tree 0755",
        "/tree/new 0755", "/tree/new/f 0644", "/tree/new/sub 0711", "/sgid 0750",
        "/sgid/d 0750", "/sgid/d/f 2750", "/sgid/d/sub 2750"]
    with last_layer(sb, index=-5) as tar:  # COPY --chmod=770 foo /parent/sub/foo
        modes = {m.name.rstrip("/"): oct(m.mode) for m in tar.getmembers()}
    assert (modes["parent/sub"], modes["parent/sub/foo"]) == ("0o770", "0o770")


@pytest.mark.parametrize(("stepfile", "where", "value"), [
    ("COPY --chmod=64a a /a\n", "Stepfile:2:6", "64a"),
    ("COPY --chmod=10000 a /a\n", "Stepfile:2:6", "10000"),
    ("COPY --chmod=u+z a /a\n", "Stepfile:2:6", "u+z"),
    ("ARG M=8\nCOPY --chmod=$M a /a\n", "Stepfile:3:", "8"),  # checked once expanded
])
def test_invalid_chmod_is_a_located_error(sb: Stepbuild, tmp_path: Path, stepfile: str,
                                          where: str, value: str) -> None:
    ctx = write_context(tmp_path / "ctx", f"FROM base\n{stepfile}", {"a": "a"})
    result = build(sb, ctx, check=False)
    assert_clear_error(result, 2, where, f"invalid chmod '{value}': expected an octal")


def test_chown_numeric(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY --chown=1000:1000 d /opt/new/d/\n",
                        {"d/f": "f", "d/sub/g": "g"})
    build(sb, ctx)
    out = sh(sb, "stat -c '%n %u:%g' /opt/new/d /opt/new/d/f /opt/new/d/sub /opt/new/d/sub/g")
    assert out.splitlines() == ["/opt/new/d 1000:1000", "/opt/new/d/f 1000:1000",
                                "/opt/new/d/sub 1000:1000", "/opt/new/d/sub/g 1000:1000"]
    with last_layer(sb) as tar:
        f = tar.getmember("opt/new/d/f")
        assert (f.uid, f.gid, f.uname, f.gname) == (1000, 1000, "", "")


def test_chown_by_name_from_the_images_passwd(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx",
                        "FROM base\nRUN echo 'app:x:1234:2345::/home/app:/bin/sh' >> /etc/passwd"
                        " && echo 'grp:x:3456:' >> /etc/group\n"
                        "COPY --chown=app a.txt /a\nCOPY --chown=app:grp a.txt /b\n",
                        {"a.txt": "a"})
    build(sb, ctx)
    assert sh(sb, "stat -c '%u:%g' /a /b").split() == ["1234:2345", "1234:3456"]


def test_chown_unknown_user_is_a_clean_error(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY --chown=nosuchuser a.txt /a\n",
                        {"a.txt": "a"})
    before = store_snapshot(sb)
    result = build(sb, ctx, check=False)
    assert_clean_failure(sb, result, "nosuchuser", before=before)


def test_chown_creates_the_destination_dir_owned(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY --chown=42:43 d /new/\n"
                        "COPY --chown=42:43 a.txt /p/q/\n", {"d/f": "f", "a.txt": "a"})
    build(sb, ctx)
    assert sh(sb, "stat -c '%u:%g' /new /new/f /p /p/q /p/q/a.txt").split() == ["42:43"] * 5


def test_nested_existing_dir_takes_the_source_metadata(sb: Stepbuild, tmp_path: Path) -> None:
    # Docker/BuildKit: inside a copied tree, an existing directory gets the source's metadata
    # (fsutil copy overwriteTargetMetadata).
    ctx = write_context(tmp_path / "ctx",
                        "FROM base\nRUN mkdir -p /tree/home && chmod 755 /tree/home\n"
                        "COPY tree/ /tree/\n", {"tree/home/x": "x"})
    (ctx / "tree" / "home").chmod(0o700)
    os.utime(ctx / "tree" / "home", (OLD, OLD))
    build(sb, ctx)
    assert sh(sb, "stat -c '%a %Y' /tree/home").split() == ["700", str(OLD)]


def test_symlinks_in_a_copied_dir_stay_links(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY d /d/\n", {"d/real.txt": "r"})
    (ctx / "d" / "rel").symlink_to("real.txt")
    (ctx / "d" / "abs").symlink_to("/etc/passwd")
    (ctx / "d" / "dangling").symlink_to("../../nowhere")
    build(sb, ctx)
    out = sh(sb, "for f in rel abs dangling; do stat -c '%F' /d/$f; readlink /d/$f; done;"
                 " cat /d/rel")
    assert out.splitlines() == ["symbolic link", "real.txt", "symbolic link", "/etc/passwd",
                                "symbolic link", "../../nowhere", "r"]


def test_hard_links_stay_hard_links(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY d /d/\n", {"d/one": "same"})
    os.link(ctx / "d" / "one", ctx / "d" / "two")
    (ctx / "d" / "sub").mkdir()
    os.link(ctx / "d" / "one", ctx / "d" / "sub" / "three")
    build(sb, ctx)
    out = sh(sb, "stat -c '%i %h' /d/one /d/two /d/sub/three").splitlines()
    assert len({line.split()[0] for line in out}) == 1, out
    assert {line.split()[1] for line in out} == {"3"}
    with last_layer(sb) as tar:
        links = {m.name: m.linkname for m in tar.getmembers() if m.islnk()}
    assert len(links) == 2 and set(links.values()) <= {"d/one", "d/two", "d/sub/three"}


def test_xattrs_are_copied_into_the_layer(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY x.bin d /x/\n",
                        {"x.bin": "x", "d/y.bin": "y"})
    os.setxattr(ctx / "x.bin", "user.x", b"hello")
    os.setxattr(ctx / "d" / "y.bin", "user.deep", b"\x00\xffbin")
    build(sb, ctx)
    with last_layer(sb) as tar:
        x = tar.getmember("x/x.bin").pax_headers
        y = tar.getmember("x/y.bin").pax_headers
    assert x.get("SCHILY.xattr.user.x") == "hello"
    assert "SCHILY.xattr.user.deep" in y


def test_file_capabilities_survive_the_copy(sb: Stepbuild, tmp_path: Path) -> None:
    # chown removes security.capability (kernel killpriv): it must be set after the chown.
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY ping /bin/cap-ping\n"
                        "COPY --chown=1000:1000 ping /bin/cap-ping2\n", {"ping": "#!/bin/sh\n"})
    cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # v2, effective, cap_net_raw
    os.setxattr(ctx / "ping", "security.capability", cap)
    build(sb, ctx)
    for index in (-2, -1):
        with last_layer(sb, index=index) as tar:
            member = next(m for m in tar.getmembers() if m.name.startswith("bin/cap-ping"))
        value = member.pax_headers.get("SCHILY.xattr.security.capability")
        assert value is not None, member.pax_headers
        assert value.encode("utf-8", "surrogateescape") == cap


def test_mtimes_are_preserved(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY d /d/\nCOPY f /f\n",
                        {"d/sub/inner": "i", "f": "f"})
    for path in (ctx / "d" / "sub" / "inner", ctx / "d" / "sub", ctx / "d", ctx / "f"):
        os.utime(path, (OLD, OLD))
    build(sb, ctx)
    assert sh(sb, "stat -c %Y /d /d/sub /d/sub/inner /f").split() == [str(OLD)] * 4


def test_exclude_leaves_matches_out(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx",
                        "FROM base\nCOPY --exclude=*.log d /d/\nCOPY --exclude=*.log *.txt x.log"
                        " /w/\n",
                        {"d/keep.txt": "k", "d/drop.log": "l", "d/sub/deeper.log": "l",
                         "d/sub/ok": "o", "a.txt": "a", "x.log": "x"})
    build(sb, ctx)
    assert sh(sb, "cd /d && find . -type f | sort").split() == [
        "./keep.txt", "./sub/deeper.log", "./sub/ok"]  # *.log is matched from the top only
    # A literal source named by the user is still copied; wildcard matches are filtered.
    assert sh(sb, "ls /w").split() == ["a.txt", "x.log"]


def test_exclude_double_star(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY --exclude=**/*.log d /d/\n",
                        {"d/keep.txt": "k", "d/drop.log": "l", "d/sub/deeper.log": "l"})
    build(sb, ctx)
    assert sh(sb, "cd /d && find . -type f | sort").split() == ["./keep.txt"]


# --- escapes and errors -------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A sentinel directory beside the context, with a secret in it."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret").write_text("TOP SECRET")
    return directory


@pytest.mark.parametrize("source", ["../outside/secret", "sub/../../outside/secret", "../"])
def test_dotdot_source_is_refused(sb: Stepbuild, tmp_path: Path, outside: Path,
                                  source: str) -> None:
    ctx = write_context(tmp_path / "ctx", f"FROM base\nCOPY {source} /stolen\n",
                        {"sub/x": "x"})
    before = store_snapshot(sb)
    result = build(sb, ctx, check=False)
    assert_clean_failure(sb, result, "outside the build context", before=before)
    assert sorted(os.listdir(outside)) == ["secret"]


@pytest.mark.parametrize("target", ["abs", "rel", "relchain"])
def test_context_symlink_leading_out_is_refused(sb: Stepbuild, tmp_path: Path, outside: Path,
                                                target: str) -> None:
    ctx = write_context(tmp_path / "ctx", f"FROM base\nCOPY {target} /stolen\n", {})
    (ctx / "abs").symlink_to(outside / "secret")
    (ctx / "rel").symlink_to("../outside/secret")
    (ctx / "mid").mkdir()
    (ctx / "mid" / "up").symlink_to("..")
    (ctx / "relchain").symlink_to("mid/up/mid/up/../outside")
    before = store_snapshot(sb)
    result = build(sb, ctx, check=False)
    assert_clean_failure(sb, result, "leads outside the build context", before=before)
    assert sorted(os.listdir(outside)) == ["secret"]


def test_symlink_to_outside_inside_a_copied_dir_is_copied_as_a_link(
        sb: Stepbuild, tmp_path: Path, outside: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY d /d/\n", {"d/ok": "ok"})
    (ctx / "d" / "leak").symlink_to(outside / "secret")
    build(sb, ctx)
    assert sh(sb, "readlink /d/leak; cat /d/leak 2>/dev/null || echo unreadable").split() == [
        str(outside / "secret"), "unreadable"]
    with last_layer(sb) as tar:
        assert all(b"TOP SECRET" not in (tar.extractfile(m) or io.BytesIO()).read()
                   for m in tar.getmembers() if m.isfile())


def test_missing_source_is_a_one_line_error(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY nothere.txt /x\n", {})
    before = store_snapshot(sb)
    result = build(sb, ctx, check=False)
    assert_clean_failure(sb, result, "nothere.txt", before=before)


def test_copy_fifo_in_context_is_refused(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY d /d/\n", {"d/a": "a"})
    os.mkfifo(ctx / "d" / "pipe")
    result = build(sb, ctx, check=False)
    assert_clean_failure(sb, result, "fifo")


def test_dir_onto_an_existing_file_fails(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY d /etc/passwd\n", {"d/a": "a"})
    result = build(sb, ctx, check=False)
    assert_clean_failure(sb, result, "/etc/passwd")


@pytest.mark.parametrize("stepfile", [
    "COPY a.txt /etc/passwd/x\n",                     # a component is a file
    "COPY a.txt /etc/passwd/\n",
    "COPY <<EOF /etc/passwd/x\nhi\nEOF\n",
    "COPY d /bin/sh\n",                               # a symlink to a file, as a dir
    "RUN ln -s /loop /loop\nCOPY a.txt /loop/x\n",   # a symlink loop
    "COPY a.txt /" + "x" * 300 + "\n",                # a name too long
])
def test_impossible_destinations_are_clean_errors(sb: Stepbuild, tmp_path: Path,
                                                  stepfile: str) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\n" + stepfile, {"a.txt": "a", "d/x": "x"})
    result = build(sb, ctx, check=False)
    assert_clean_failure(sb, result, "cannot copy")


def test_copy_into_the_root(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY d/ /\nWORKDIR /\nCOPY a.txt .\n",
                        {"a.txt": "a", "d/new-top": "n"})
    build(sb, ctx)
    assert sh(sb, "cat /new-top /a.txt; stat -c %a /") == "na755\n"


def test_dest_symlinks_to_host_paths_stay_in_the_image(sb: Stepbuild, tmp_path: Path) -> None:
    """Absolute links in the image that name real host paths: the copy lands inside."""
    host = tmp_path / "host-sentinel"
    host.mkdir()
    ctx = write_context(tmp_path / "ctx",
                        f"FROM base\nRUN ln -s {host} /hostdir && ln -s {host}/file /hostfile\n"
                        "COPY a.txt /hostdir/\nCOPY a.txt /hostfile\nCOPY d /hostdir/sub/\n",
                        {"a.txt": "a", "d/x": "x"})
    build(sb, ctx)
    assert list(host.iterdir()) == []
    assert sh(sb, f"cat {host}/a.txt {host}/sub/x /hostfile") == "axa"
    assert sb("check").stdout.strip() == "store is consistent"


def test_chown_numeric_uid_alone_uses_it_as_gid(sb: Stepbuild, tmp_path: Path) -> None:
    # Dockerfile reference (COPY --chown): "Providing a username without groupname or a UID
    # without GID will use the same numeric UID as the GID" (BuildKit: UserOpt_ByID -> gid=uid,
    # whether or not the uid is in /etc/passwd).
    ctx = write_context(tmp_path / "ctx",
                        "FROM base\nRUN echo 'svc:x:1500:2500::/:/bin/sh' >> /etc/passwd\n"
                        "COPY --chown=1000 a.txt /a\nCOPY --chown=1500 a.txt /b\n",
                        {"a.txt": "a"})
    build(sb, ctx)
    assert sh(sb, "stat -c '%u:%g' /a /b").split() == ["1000:1000", "1500:1500"]


# --- heredocs -----------------------------------------------------------------------------------


def test_copy_heredoc_expands_variables(sb: Stepbuild, tmp_path: Path) -> None:
    stepfile = ("FROM base\nARG WHO=world\nENV GREETING=hello\n"
                "COPY <<EOF /etc/motd\n$GREETING ${WHO}!\nEOF\n"
                "COPY <<'EOF' /etc/raw\n$GREETING ${WHO}!\nEOF\n"
                "COPY <<EOF <<EOT2 /docs/\none $WHO\nEOF\ntwo\nEOT2\n")
    ctx = write_context(tmp_path / "ctx", stepfile)
    build(sb, ctx)
    assert sh(sb, "cat /etc/motd").splitlines() == ["hello world!"]
    assert sh(sb, "cat /etc/raw").splitlines() == ["$GREETING ${WHO}!"]
    assert sh(sb, "cat /docs/EOF /docs/EOT2").splitlines() == ["one world", "two"]
    assert sh(sb, "stat -c '%a %u:%g' /etc/motd").split() == ["644", "0:0"]


# --- ADD: archives -----------------------------------------------------------------------------


def make_tar(compress: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in (("top.txt", b"top\n", 0o644), ("pkg/bin/tool", b"#!\n", 0o755)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uid, info.gid = len(data), mode, OLD, 7, 8
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("pkg/link")
        link.type, link.linkname = tarfile.SYMTYPE, "bin/tool"
        tar.addfile(link)
    raw = buf.getvalue()
    return {"plain": lambda b: b, "gzip": gzip.compress, "bzip2": bz2.compress,
            "xz": lzma.compress, "zstd": zstandard.ZstdCompressor().compress}[compress](raw)


@pytest.mark.parametrize("compress", ["plain", "gzip", "bzip2", "xz", "zstd"])
def test_add_local_archive_is_unpacked(sb: Stepbuild, tmp_path: Path, compress: str) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nADD archive.bin /unpacked/\n"
                        "ADD archive.bin /unpacked-noslash\n")
    (ctx / "archive.bin").write_bytes(make_tar(compress))  # detected by content, not name
    build(sb, ctx)
    for dest in ("/unpacked", "/unpacked-noslash"):
        out = sh(sb, f"cd {dest} && cat top.txt && stat -c '%n %a %u:%g %Y' top.txt pkg/bin/tool"
                     " && readlink pkg/link")
        assert out.splitlines() == ["top", f"top.txt 644 7:8 {OLD}",
                                    f"pkg/bin/tool 755 7:8 {OLD}", "bin/tool"]


def test_add_archive_with_chown(sb: Stepbuild, tmp_path: Path) -> None:
    # BuildKit applies --chown to every unpacked entry (file backend unpack: ownerMapper),
    # --chown=0:0 included.
    ctx = write_context(tmp_path / "ctx", "FROM base\nADD --chown=1000:1001 a.tar /u/\n"
                        "ADD --chown=0:0 a.tar /r/\n")
    (ctx / "a.tar").write_bytes(make_tar("plain"))
    build(sb, ctx)
    out = sh(sb, "stat -c '%n %u:%g' /u/top.txt /u/pkg/bin/tool /r/top.txt /r/pkg/bin/tool")
    assert out.splitlines() == ["/u/top.txt 1000:1001", "/u/pkg/bin/tool 1000:1001",
                                "/r/top.txt 0:0", "/r/pkg/bin/tool 0:0"]


def test_add_non_archives_are_copied_as_they_are(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nADD notes.txt fake.tar.gz empty.tar /c/\n")
    (ctx / "notes.txt").write_text("plain text\n")
    (ctx / "fake.tar.gz").write_bytes(gzip.compress(b"not a tar at all"))
    (ctx / "empty.tar").write_bytes(b"\0" * 1024)
    build(sb, ctx)
    assert sh(sb, "ls /c; cat /c/notes.txt").split() == [
        "empty.tar", "fake.tar.gz", "notes.txt", "plain", "text"]
    assert sh(sb, "gzip -dc /c/fake.tar.gz") == "not a tar at all"


def test_add_archive_cannot_write_outside_the_root(sb: Stepbuild, tmp_path: Path) -> None:
    sentinel = tmp_path / "host-sentinel"
    sentinel.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, target in (("out", tarfile.SYMTYPE, str(sentinel)),
                                   ("up", tarfile.SYMTYPE, "../../../../../../" + str(sentinel))):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
        for name in ("out/pwned", "up/pwned2", "../../../../pwned3"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"x\n"))
    ctx = write_context(tmp_path / "ctx", "FROM base\nADD evil.tar /x/\n")
    (ctx / "evil.tar").write_bytes(buf.getvalue())
    build(sb, ctx)
    assert list(sentinel.iterdir()) == []
    inside = sh(sb, f"ls {sentinel}; ls /x").split()
    assert {"pwned", "pwned2", "pwned3"} <= set(inside)
    assert sb("check").stdout.strip() == "store is consistent"


# --- ADD: URLs ----------------------------------------------------------------------------------


class _Server:
    """A local HTTP server on a free port: `files` maps a path to (body, Last-Modified)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str | None]] = {}
        self.redirects: dict[str, str] = {}  # path -> Location (302)
        self.truncated: dict[str, tuple[bytes, int]] = {}  # path -> (body, Content-Length)
        self.hits: list[str] = []
        files, hits, redirects, truncated = self.files, self.hits, self.redirects, self.truncated

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                hits.append(self.path)
                path = self.path.split("?", 1)[0]
                if path in redirects:
                    self.send_response(302)
                    self.send_header("Location", redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path in truncated:
                    body, length = truncated[path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(length))
                    self.end_headers()
                    self.wfile.write(body)
                    self.close_connection = True
                    return
                entry = files.get(urllib.parse.unquote(path))
                if entry is None:
                    self.send_error(404, "Not Found")
                    return
                body, modified = entry
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                if modified:
                    self.send_header("Last-Modified", modified)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.http = LocalHTTPServer(Handler)
        self.url = self.http.url

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    yield srv
    srv.close()


def test_add_url_into_a_dir_gets_mode_600_and_the_url_name(sb: Stepbuild, tmp_path: Path,
                                                          server: _Server) -> None:
    server.files["/dl/tool-1.0.sh"] = (b"#!/bin/sh\necho tool\n", "Fri, 13 Feb 2009 23:31:30 GMT")
    server.files["/plain"] = (b"p", None)
    ctx = write_context(tmp_path / "ctx",
                        f"FROM base\nADD {server.url}/dl/tool-1.0.sh /opt/\n"
                        f"ADD {server.url}/plain?x=1 /named\n")
    build(sb, ctx)
    out = sh(sb, "stat -c '%n %a %u:%g %Y' /opt/tool-1.0.sh /named; cat /named")
    assert out.splitlines() == [f"/opt/tool-1.0.sh 600 0:0 {OLD}", "/named 600 0:0 0", "p"]


def test_add_url_tar_is_not_unpacked(sb: Stepbuild, tmp_path: Path, server: _Server) -> None:
    server.files["/a.tar.gz"] = (make_tar("gzip"), None)
    ctx = write_context(tmp_path / "ctx", f"FROM base\nADD {server.url}/a.tar.gz /d/\n")
    build(sb, ctx)
    assert sh(sb, "ls /d").split() == ["a.tar.gz"]


def test_add_url_checksum(sb: Stepbuild, tmp_path: Path, server: _Server) -> None:
    body = b"verified content\n"
    server.files["/f"] = (body, None)
    right = hashlib.sha256(body).hexdigest()
    ctx = write_context(tmp_path / "ok", f"FROM base\nADD --checksum=sha256:{right}"
                        f" {server.url}/f /f\n")
    build(sb, ctx)
    assert sh(sb, "cat /f") == body.decode()

    wrong = hashlib.sha256(b"something else").hexdigest()
    bad = write_context(tmp_path / "bad", f"FROM base\nADD --checksum=sha256:{wrong}"
                        f" {server.url}/f /f\n")
    before = store_snapshot(sb)
    result = build(sb, bad, tag="bad", check=False)
    assert_clean_failure(sb, result, "checksum", wrong, before=before)


def test_add_url_404_is_a_clean_error(sb: Stepbuild, tmp_path: Path, server: _Server) -> None:
    ctx = write_context(tmp_path / "ctx", f"FROM base\nADD {server.url}/missing /m\n")
    before = store_snapshot(sb)
    result = build(sb, ctx, check=False)
    assert_clean_failure(sb, result, "404", f"{server.url}/missing", before=before)


def test_add_url_unreachable_is_a_clean_error(sb: Stepbuild, tmp_path: Path,
                                             server: _Server) -> None:
    url = server.url
    server.close()
    ctx = write_context(tmp_path / "ctx", f"FROM base\nADD {url}/gone /m\n")
    result = build(sb, ctx, check=False)
    assert_clean_failure(sb, result, url)


def test_add_url_names(sb: Stepbuild, tmp_path: Path, server: _Server) -> None:
    server.files["/"] = (b"root page", None)
    server.files["/dir/a b.txt"] = (b"spaced", None)
    ctx = write_context(tmp_path / "ctx", f"FROM base\nADD {server.url}/ /r/\n"
                        f"ADD {server.url}/dir/a%20b.txt /s/\n")
    build(sb, ctx)
    assert sh(sb, "ls /r; ls /s").splitlines() == ["index", "a b.txt"]


def test_add_url_checksum_from_a_variable_is_checked(sb: Stepbuild, tmp_path: Path,
                                                    server: _Server) -> None:
    server.files["/f"] = (b"x", None)
    digest = hashlib.md5(b"x").hexdigest()
    ctx = write_context(tmp_path / "ctx", f"FROM base\nARG SUM=md5:{digest}\n"
                        f"ADD --checksum=$SUM {server.url}/f /f\n")
    result = build(sb, ctx, check=False)
    assert_clean_failure(sb, result, "checksum")
    assert server.hits == []  # refused before anything was fetched


def test_add_checksum_on_a_local_source_is_an_error(sb: Stepbuild, tmp_path: Path) -> None:
    # BuildKit: "checksum can't be specified for non-HTTP(S) sources".
    digest = hashlib.sha256(b"a").hexdigest()
    ctx = write_context(tmp_path / "ctx",
                        f"FROM base\nADD --checksum=sha256:{digest} a.txt /a\n", {"a.txt": "a"})
    result = build(sb, ctx, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "checksum" in result.stderr


def test_add_url_truncated_body_is_a_clean_error(sb: Stepbuild, tmp_path: Path,
                                                server: _Server) -> None:
    server.truncated["/short"] = (b"only this", 1000)
    ctx = write_context(tmp_path / "ctx", f"FROM base\nADD {server.url}/short /s\n")
    before = store_snapshot(sb)
    result = build(sb, ctx, check=False)
    assert_clean_failure(sb, result, f"{server.url}/short", before=before)


def test_add_url_redirects(sb: Stepbuild, tmp_path: Path, server: _Server) -> None:
    server.files["/real/target.bin"] = (b"moved", None)
    server.redirects["/old.bin"] = f"{server.url}/real/target.bin"
    server.redirects["/ftp.bin"] = "ftp://127.0.0.1:1/x"
    ctx = write_context(tmp_path / "ok", f"FROM base\nADD {server.url}/old.bin /d/\n")
    build(sb, ctx)
    assert sh(sb, "ls /d; cat /d/*").split() == ["old.bin", "moved"]
    bad = write_context(tmp_path / "bad", f"FROM base\nADD {server.url}/ftp.bin /d/\n")
    result = build(sb, bad, check=False)
    assert_clean_failure(sb, result, "ftp://127.0.0.1:1/x")


def test_add_url_with_a_bad_port_is_a_clean_error(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nADD http://127.0.0.1:99999/x /x\n")
    result = build(sb, ctx, check=False)
    assert_clean_failure(sb, result, "http://127.0.0.1:99999/x")


def test_add_url_cache_follows_the_content(sb: Stepbuild, tmp_path: Path,
                                          server: _Server) -> None:
    server.files["/data"] = (b"v1", None)
    ctx = write_context(tmp_path / "ctx",
                        f"FROM base\nADD {server.url}/data /data\nRUN cat /data > /copy\n")
    assert step_lines(build(sb, ctx).stderr) == ["DONE", "DONE"]
    assert step_lines(build(sb, ctx).stderr) == ["CACHED", "CACHED"]
    server.files["/data"] = (b"v2", None)
    assert step_lines(build(sb, ctx).stderr) == ["DONE", "DONE"]
    assert sh(sb, "cat /copy") == "v2"
    assert server.hits == ["/data"] * 3  # downloaded once per build


# --- the cache ----------------------------------------------------------------------------------


def test_cache_edit_touch_and_chmod(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY app/ /app/\nRUN ls -l /app > /list\n"
                        "COPY other.txt /\n",
                        {"app/main.py": "print(1)\n", "app/lib.py": "x\n", "other.txt": "o"})
    main = ctx / "app" / "main.py"
    assert step_lines(build(sb, ctx).stderr) == ["DONE"] * 3
    assert step_lines(build(sb, ctx).stderr) == ["CACHED"] * 3

    main.write_text("print(2)\n")  # same size: content changed
    assert step_lines(build(sb, ctx).stderr) == ["DONE"] * 3
    assert sh(sb, "cat /app/main.py") == "print(2)\n"

    os.utime(main, (OLD, OLD))  # touch: only the mtime changes
    assert step_lines(build(sb, ctx).stderr) == ["CACHED"] * 3

    main.chmod(0o700)
    assert step_lines(build(sb, ctx).stderr) == ["DONE"] * 3
    assert sh(sb, "stat -c %a /app/main.py") == "700\n"


def test_cache_of_a_later_unrelated_copy_is_kept(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY a.txt /a\nCOPY b.txt /b\n",
                        {"a.txt": "a", "b.txt": "b"})
    build(sb, ctx)
    (ctx / "b.txt").write_text("B")
    assert step_lines(build(sb, ctx).stderr) == ["CACHED", "DONE"]


def test_cache_covers_dest_chown_chmod_and_excludes(sb: Stepbuild, tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM base\nCOPY d /d/\n", {"d/a": "a", "d/b.log": "b"})
    build(sb, ctx)
    for stepfile in ("FROM base\nCOPY d /e/\n", "FROM base\nCOPY --chown=1:1 d /d/\n",
                     "FROM base\nCOPY --chmod=600 d /d/\n",
                     "FROM base\nCOPY --exclude=*.log d /d/\n"):
        (ctx / "Stepfile").write_text(stepfile)
        assert step_lines(build(sb, ctx).stderr) == ["DONE"], stepfile
