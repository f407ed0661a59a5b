"""RUN --mount (cache, secret, bind, tmpfs, ssh) and executed heredocs, in real builds.

Every test has its own store. Concurrency tests are timing-free: they wait for observable
states (a file in a cache, a blocked flock in /proc/locks) with a generous deadline that only
a broken build ever reaches.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stepbuild.store.layout import cache_mount_name
from tests.integration.builds import PROJECT, Stepbuild, base_image, step_lines, write_context

DEADLINE = 30.0  # seconds; reached only when something is broken


@pytest.fixture()
def sb(tmp_path: Path) -> Stepbuild:
    stepbuild = Stepbuild(tmp_path / "store")
    base_image(stepbuild, tmp_path)
    return stepbuild


def build(sb: Stepbuild, context: Path, *args: str, check: bool = True
          ) -> subprocess.CompletedProcess[str]:
    return sb.build(context, *args, check=check)


def layers(sb: Stepbuild, image: str) -> list[str]:
    return [d["digest"] for d in json.loads(sb("inspect", image).stdout)["manifest"]["layers"]]


def layer_members(sb: Stepbuild, image: str) -> list[tarfile.TarInfo]:
    """The entries of the layers `image` has on top of the base image."""
    base = set(layers(sb, "base"))
    members = []
    for digest in layers(sb, image):
        if digest not in base:
            with tarfile.open(sb.root / "blobs" / "sha256" / digest.split(":")[1]) as tar:
                members += tar.getmembers()
    return members


def added_layers(sb: Stepbuild, image: str) -> int:
    return len(layers(sb, image)) - len(layers(sb, "base"))


def cache_dir(sb: Stepbuild, cache_id: str) -> Path:
    return sb.root / "cache-mounts" / cache_mount_name({"id": cache_id})


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def start_build(sb: Stepbuild, context: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "STEPBUILD_ROOT": str(sb.root), "PYTHONPATH": str(PROJECT)}
    return subprocess.Popen([sys.executable, "-m", "stepbuild", "build", *args, str(context)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 0, f"build failed:\n{out}\n{err}"
    return err


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


# --- type=cache ------------------------------------------------------------------------------


def test_cache_mount_survives_builds_and_never_reaches_a_layer(sb: Stepbuild,
                                                              tmp_path: Path) -> None:
    marker = "CACHE-MARKER-7f3a"
    first = write_context(tmp_path / "one", (
        "FROM base\n"
        # The shell joins the marker: it is in the cache, not in the Stepfile or history.
        "RUN --mount=type=cache,target=/root/.cache/app"
        " echo CACHE-MARK''ER-7f3a >> /root/.cache/app/log\n"))
    build(sb, first, "-t", "one")
    assert added_layers(sb, "one") == 0, "a step that only wrote into its cache made a layer"
    second = write_context(tmp_path / "two", (
        "FROM base\n"
        "RUN --mount=type=cache,target=/root/.cache/app "
        "grep -c CACHE-MARKE[R]-7f3a /root/.cache/app/log > /count\n"))
    build(sb, second, "-t", "two")
    assert sb.run("two", "cat", "/count") == "1\n"
    names = [m.name for m in layer_members(sb, "two")]
    assert names == ["count"], names  # no /root, no /root/.cache stub
    for blob in (sb.root / "blobs" / "sha256").iterdir():
        assert marker.encode() not in blob.read_bytes()
    assert marker in read(cache_dir(sb, "/root/.cache/app") / "data" / "log")


def test_cache_mount_is_not_part_of_the_key_but_its_declaration_is(sb: Stepbuild,
                                                                  tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\nRUN --mount=type=cache,id=c,target=/c date >> /c/runs\n"))
    build(sb, context)
    (cache_dir(sb, "c") / "data" / "runs").write_text("changed by someone else\n")
    assert step_lines(build(sb, context).stderr) == ["CACHED"]
    (context / "Stepfile").write_text(
        "FROM base\nRUN --mount=type=cache,id=c,target=/c,sharing=locked date >> /c/runs\n")
    assert step_lines(build(sb, context).stderr) == ["DONE"]


def test_cache_mount_options_id_source_mode_and_uid(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\n"
        "ARG CACHE=shared-id\n"
        "RUN --mount=type=cache,id=$CACHE,target=/a,source=sub/dir touch /a/in-sub\n"
        "RUN --mount=type=cache,id=owned,target=/o,uid=1234,gid=99,mode=0710"
        " stat -c '%u %g %a' /o > /owner\n"
        "RUN --mount=type=cache,id=$CACHE,target=/b,ro sh -c"
        " 'ls /b/sub/dir > /listing; ! touch /b/x'\n"))
    build(sb, context, "-t", "opts")
    assert sb.run("opts", "cat", "/owner") == "1234 99 710\n"
    assert sb.run("opts", "cat", "/listing") == "in-sub\n"
    assert (cache_dir(sb, "shared-id") / "data" / "sub" / "dir" / "in-sub").exists()


def test_cache_mount_seeded_from_a_stage(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base AS seed\nRUN mkdir -p /deps && echo seeded > /deps/x\n"
        "FROM base\n"
        "RUN --mount=type=cache,id=deps,from=seed,source=/deps,target=/d"
        " sh -c 'cat /d/x > /got; echo more >> /d/x'\n"
        "RUN --mount=type=cache,id=deps,from=seed,source=/deps,target=/d cat /d/x > /again\n"))
    build(sb, context, "-t", "seeded")
    assert sb.run("seeded", "cat", "/got") == "seeded\n"
    assert sb.run("seeded", "cat", "/again") == "seeded\nmore\n"  # same cache, not re-seeded


def test_locked_cache_serialises_two_builds(sb: Stepbuild, tmp_path: Path) -> None:
    mount = "--mount=type=cache,id=c,target=/c,sharing=locked"
    holder = write_context(tmp_path / "a", (
        f"FROM base\nRUN {mount} sh -c 'echo A-in >> /c/log;"
        " while [ ! -e /c/release ]; do sleep 0.02; done; echo A-out >> /c/log'\n"))
    waiter = write_context(tmp_path / "b", f"FROM base\nRUN {mount} echo B-in >> /c/log\n")
    data = cache_dir(sb, "c") / "data"
    a = start_build(sb, holder)
    wait_for(lambda: "A-in" in read(data / "log"), "build A to hold the cache")
    b = start_build(sb, waiter, "-v")
    inode = (data.parent / "data.lock").stat().st_ino
    wait_for(lambda: _blocked_on(inode), "build B to block on the cache lock")
    assert "B-in" not in read(data / "log")
    (data / "release").touch()
    finish(a)
    assert "waiting for its lock" in finish(b)
    assert read(data / "log").split() == ["A-in", "A-out", "B-in"]


def _blocked_on(inode: int) -> bool:
    """A flock request waiting on the file with this inode (`->` lines of /proc/locks)."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and any(f.endswith(f":{inode}") for f in fields):
            return True
    return False


def test_shared_cache_is_used_by_two_builds_at_once(sb: Stepbuild, tmp_path: Path) -> None:
    def stepfile(me: str, other: str) -> str:
        # Each waits for the other's mark: only possible if both hold the cache at once.
        return (f"FROM base\nRUN --mount=type=cache,id=s,target=/c sh -c 'touch /c/{me}; i=0;"
                f" while [ ! -e /c/{other} ]; do i=$((i+1)); [ $i -lt 1000 ] || exit 1;"
                f" sleep 0.02; done'\n")
    a = start_build(sb, write_context(tmp_path / "a", stepfile("A", "B")))
    b = start_build(sb, write_context(tmp_path / "b", stepfile("B", "A")))
    finish(a)
    finish(b)


def test_private_cache_gives_a_busy_cache_a_new_instance(sb: Stepbuild, tmp_path: Path) -> None:
    mount = "--mount=type=cache,id=p,target=/c,sharing=private"
    holder = write_context(tmp_path / "a", (
        f"FROM base\nRUN {mount} sh -c 'touch /c/A;"
        " while [ ! -e /c/release ]; do sleep 0.02; done'\n"))
    other = write_context(tmp_path / "b", f"FROM base\nRUN {mount} sh -c 'ls /c > /c/seen'\n")
    base = cache_dir(sb, "p")
    a = start_build(sb, holder)
    wait_for(lambda: (base / "data" / "A").exists(), "build A to hold the cache")
    finish(start_build(sb, other))  # does not wait for A
    assert read(base / "data.1" / "seen") == "seen\n"  # a fresh instance, without A's file
    (base / "data" / "release").touch()
    finish(a)


def test_prune_cache_mounts_deletes_them(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\nRUN --mount=type=cache,id=k,target=/k sh -c 'ls /k; touch /k/f'\n"))
    build(sb, context)
    assert (cache_dir(sb, "k") / "data" / "f").exists()
    dry = sb("prune", "--dry-run", "--cache-mounts").stdout
    assert dry.endswith("would remove 1 cache mounts\n")
    assert (cache_dir(sb, "k") / "data" / "f").exists()
    result = sb("prune", "-f", "--cache-mounts")
    assert "removed 1 cache mounts" in result.stdout
    assert not (sb.root / "cache-mounts").exists() or not any(
        (sb.root / "cache-mounts").iterdir())
    assert sb("check").returncode == 0


# --- type=secret -----------------------------------------------------------------------------

SECRET = b"s3cr3t-V4LUE-never-stored-9c1d"


def test_secret_is_mounted_and_never_stored(sb: Stepbuild, tmp_path: Path) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_bytes(SECRET)
    context = write_context(tmp_path / "ctx", (
        "FROM base\n"
        "RUN --mount=type=secret,id=tok sh -c"
        " 'md5sum < /run/secrets/tok > /file.md5; stat -c %a-%u /run/secrets/tok > /perm'\n"
        "RUN --mount=type=secret,id=tok,env=TOK,target=/etc/tok.txt,mode=0440,gid=7 sh -c"
        " 'printf %s \"$TOK\" | md5sum > /env.md5; stat -c %a-%g /etc/tok.txt > /perm2'\n"
        "RUN --mount=type=secret,id=absent sh -c '[ ! -e /run/secrets/absent ]'\n"))
    result = build(sb, context, "--secret", f"id=tok,src={secret_file}", "-t", "sec", "-v")
    digest = hashlib.md5(SECRET).hexdigest()
    assert sb.run("sec", "cat", "/file.md5").split()[0] == digest
    assert sb.run("sec", "cat", "/env.md5").split()[0] == digest
    assert sb.run("sec", "cat", "/perm") == "400-0\n"
    assert sb.run("sec", "cat", "/perm2") == "440-7\n"
    assert not any(m.name.startswith("run") for m in layer_members(sb, "sec"))
    assert "tok.txt" not in " ".join(m.name for m in layer_members(sb, "sec"))
    assert SECRET.decode() not in result.stdout + result.stderr
    assert SECRET.decode() not in (sb("history", "--no-trunc", "sec").stdout
                                   + sb("inspect", "sec").stdout)
    for path in sb.root.rglob("*"):  # blobs, cache records, layer dirs, parse cache, tmp
        if path.is_file() and not path.is_symlink():
            assert SECRET not in path.read_bytes(), path
    # The key covers the secret's id and target, not its value.
    secret_file.write_bytes(b"another value")
    again = build(sb, context, "--secret", f"id=tok,src={secret_file}")
    assert step_lines(again.stderr) == ["CACHED", "CACHED", "CACHED"]


def test_secret_from_an_environment_variable(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\nRUN --mount=type=secret,id=API_TOKEN,required=true"
        " md5sum < /run/secrets/API_TOKEN > /md5\n"))
    result = sb("build", "--secret", "id=API_TOKEN", "-t", "envsec", str(context),
                env={"API_TOKEN": SECRET.decode()})
    assert sb.run("envsec", "cat", "/md5").split()[0] == hashlib.md5(SECRET).hexdigest()
    assert SECRET.decode() not in result.stderr


def test_required_secret_missing_is_an_error_naming_the_line(sb: Stepbuild,
                                                            tmp_path: Path) -> None:
    records = set((sb.root / "cache").glob("*.json"))
    context = write_context(tmp_path / "ctx", (
        "FROM base\nRUN echo before > /before\n"
        "RUN --mount=type=secret,id=tok,required=true cat /run/secrets/tok\n"))
    result = build(sb, context, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Stepfile:3:" in result.stderr and "secret 'tok' is required" in result.stderr
    assert len(set((sb.root / "cache").glob("*.json")) - records) == 1  # only `echo before`


# --- type=bind -------------------------------------------------------------------------------


def test_bind_context_read_only_and_in_the_key(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\n"
        "RUN --mount=type=bind,source=src,target=/src sh -c"
        " 'cat /src/a.txt > /copied; ! touch /src/new 2>/dev/null; stat -c %u /src/a.txt > /uid;"
        " ls /src > /ls'\n"
    ), {"src/a.txt": "one\n", "src/ignored.log": "no\n", "other.txt": "x\n",
        ".dockerignore": "**/*.log\n"})
    os.chown(context / "src" / "a.txt", 1000, 1000)
    build(sb, context, "-t", "b1")
    assert sb.run("b1", "cat", "/copied") == "one\n"
    assert sb.run("b1", "cat", "/uid") == "0\n"  # as BuildKit's context transfer gives them
    assert sb.run("b1", "cat", "/ls") == "a.txt\n"  # ignored files are not in the mount
    (context / "src" / "ignored.log").write_text("changed, and ignored\n")
    assert step_lines(build(sb, context).stderr) == ["CACHED"]
    assert not any(m.name.startswith("src") for m in layer_members(sb, "b1"))
    (context / "other.txt").write_text("not selected\n")
    assert step_lines(build(sb, context).stderr) == ["CACHED"]
    (context / "src" / "a.txt").write_text("two\n")
    build(sb, context, "-t", "b2")
    assert sb.run("b2", "cat", "/copied") == "two\n"


def test_bind_rw_writes_are_discarded(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base AS stage\nRUN mkdir /out && echo built > /out/f\n"
        "FROM base\n"
        "RUN --mount=type=bind,target=/w,rw sh -c 'echo changed > /w/a.txt; rm /w/b.txt;"
        " touch /w/new'\n"
        "RUN --mount=type=bind,target=/w sh -c 'cat /w/a.txt /w/b.txt > /seen; ls /w > /ls'\n"
        "RUN --mount=type=bind,from=stage,source=/out,target=/s,rw sh -c"
        " 'cat /s/f > /from-stage; echo x >> /s/f'\n"
        "RUN --mount=type=bind,from=stage,source=/out/f,target=/f cat /f > /again\n"),
        {"a.txt": "a\n", "b.txt": "b\n"})
    build(sb, context, "-t", "rw")
    assert sb.run("rw", "cat", "/seen") == "a\nb\n"
    assert "new" not in sb.run("rw", "cat", "/ls").split()
    assert (context / "a.txt").read_text() == "a\n" and (context / "b.txt").exists()
    assert sb.run("rw", "cat", "/from-stage") == "built\n"
    assert sb.run("rw", "cat", "/again") == "built\n"
    names = {m.name for m in layer_members(sb, "rw")}
    assert names == {"seen", "ls", "from-stage", "again"}, names


@pytest.mark.parametrize(("mount", "message", "status"), [
    ("type=bind,from=nosuch,target=/x", "no stage or image", 2),
    ("type=cache,from=nosuch,target=/x", "no stage or image", 2),
    ("type=bind,from=base,source=/no/such/dir,target=/x", "/no/such/dir not found", 1),
    ("type=bind,source=not-in-context,target=/x", "not-in-context", 2),
])
def test_bad_mount_sources_are_errors_naming_the_line(sb: Stepbuild, tmp_path: Path,
                                                      mount: str, message: str,
                                                      status: int) -> None:
    records = set((sb.root / "cache").glob("*.json"))
    context = write_context(tmp_path / "ctx", f"FROM base\nRUN --mount={mount} true\n")
    result = build(sb, context, check=False)
    assert result.returncode == status and "Traceback" not in result.stderr
    assert "Stepfile:2" in result.stderr and message in result.stderr, result.stderr
    assert set((sb.root / "cache").glob("*.json")) == records


def test_bad_sharing_value_is_an_error_naming_the_line(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\nRUN true\nRUN --mount=type=cache,target=/c,sharing=sometimes true\n"))
    result = build(sb, context, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Stepfile:3:" in result.stderr and "sharing" in result.stderr
    assert not (sb.root / "cache-mounts").exists()


# --- type=tmpfs and type=ssh -----------------------------------------------------------------


def test_tmpfs_mount_has_its_size_and_leaves_nothing(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\nRUN --mount=type=tmpfs,target=/scratch/t,size=1m sh -c"
        " 'df -k /scratch/t | tail -1 > /df; echo x > /scratch/t/x'\n"))
    build(sb, context, "-t", "tmpfs")
    assert sb.run("tmpfs", "cat", "/df").split()[:2] == ["tmpfs", "1024"]
    assert [m.name for m in layer_members(sb, "tmpfs")] == ["df"]


@pytest.fixture()
def agent(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    """A unix socket server standing in for ssh-agent: records what each connection sends."""
    path = tmp_path / "agent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    received: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                chunks = []
                while data := conn.recv(4096):
                    chunks.append(data)
                received.append(b"".join(chunks))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, received
    server.shutdown(socket.SHUT_RDWR)
    server.close()


def test_ssh_socket_is_forwarded(sb: Stepbuild, tmp_path: Path,
                                 agent: tuple[Path, list[bytes]]) -> None:
    path, received = agent
    context = write_context(tmp_path / "ctx", (
        "FROM base\n"
        "RUN --mount=type=ssh sh -c 'test -S \"$SSH_AUTH_SOCK\" && echo $SSH_AUTH_SOCK > /sock'\n"
        # busybox logger (glibc syslog) falls back to a stream socket: a real client
        "RUN --mount=type=ssh,id=other,target=/dev/log,required=true"
        " logger -t step hello-through-the-proxy\n"
        "RUN --mount=type=ssh,id=unknown sh -c '[ -z \"$SSH_AUTH_SOCK\" ]'\n"))
    build(sb, context, "--ssh", f"default={path}", "--ssh", f"other={path}", "-t", "ssh")
    assert sb.run("ssh", "cat", "/sock") == "/run/buildkit/ssh_agent.0\n"
    assert any(b"hello-through-the-proxy" in r for r in received), received
    assert [m.name for m in layer_members(sb, "ssh")] == ["sock"]
    missing = write_context(tmp_path / "missing", (
        "FROM base\nRUN --mount=type=ssh,required=true true\n"))
    result = build(sb, missing, check=False)
    assert result.returncode == 2 and "Stepfile:2:" in result.stderr
    assert "ssh agent 'default' is required" in result.stderr


# --- heredocs --------------------------------------------------------------------------------


def test_shebang_heredoc_is_run_as_a_file_unexpanded(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\nARG WHO=world\n"
        "RUN <<EOF\n#!/bin/sh\necho \"$0 $WHO\" > /ran\nEOF\n"
        "RUN <<'EOF'\n#!/bin/cat\nliteral $WHO ${WHO}\nEOF\n"))
    result = build(sb, context, "-t", "script")
    assert sb.run("script", "cat", "/ran") == "/dev/pipes/EOF world\n"
    assert "| literal $WHO ${WHO}" in result.stderr  # the kernel ran cat on the file
    assert [m.name for m in layer_members(sb, "script")] == ["ran"]
    assert step_lines(build(sb, context).stderr) == ["CACHED", "CACHED"]
    (context / "Stepfile").write_text((context / "Stepfile").read_text().replace(
        "literal", "changed"))
    assert step_lines(build(sb, context).stderr) == ["CACHED", "DONE"]


def test_heredocs_feeding_commands(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\nARG WHO=world\n"
        "RUN cat <<A > /a && cat <<'B' > /b\n$WHO\nA\n$WHO\nB\n"
        "RUN <<-EOF\n\techo stripped > /tabs\n\tEOF\n"
        "RUN cat <<-EOF > /chomped\n\t\tindented\n\tEOF\n"
        # BuildKit: a lone non-#! heredoc is the shell's text, quoted delimiter or not
        "RUN <<'EOF'\necho $WHO > /single\nEOF\n"))
    build(sb, context, "-t", "docs")
    assert sb.run("docs", "cat", "/a") == "world\n"  # the shell expands it
    assert sb.run("docs", "cat", "/b") == "$WHO\n"  # quoted delimiter: it does not
    assert sb.run("docs", "cat", "/tabs") == "stripped\n"
    assert sb.run("docs", "cat", "/chomped") == "indented\n"
    assert sb.run("docs", "cat", "/single") == "world\n"
    assert step_lines(build(sb, context).stderr) == ["CACHED"] * 4
    (context / "Stepfile").write_text((context / "Stepfile").read_text().replace(
        "$WHO\nB", "$WHO.\nB"))
    assert step_lines(build(sb, context).stderr)[0] == "DONE"  # the body is in the key
