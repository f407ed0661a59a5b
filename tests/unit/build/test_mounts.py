"""RUN --mount planning and its unprivileged parts: --secret/--ssh options, expansion, targets,
key inputs (never a secret's value), heredoc scripts, cache-mount instances and locks, stub
removal, the agent forwarder. The mounts themselves are tested in tests/integration."""

from __future__ import annotations

import os
import socket
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stepbuild.build import run as run_step
from stepbuild.build.mounts import realise as run_mounts
from stepbuild.build.mounts.realise import (
    AgentProxy,
    PlannedMount,
    SecretSource,
    Sources,
    acquire_cache,
    cache_dir_name,
    parse_secret,
    parse_ssh,
    plan,
    prune_cache_mounts,
    with_env,
)
from stepbuild.build.plan import Scope
from stepbuild.build.state import ImageState
from stepbuild.errors import PlanError, SourcePosition, StepbuildError, UsageError
from stepbuild.frontend import instructions as ins
from stepbuild.frontend.parse import parse
from stepbuild.store.store import Store


def run_of(text: str) -> ins.Run:
    run = parse("FROM scratch\n" + text).instructions[1]
    assert isinstance(run, ins.Run)
    return run


@dataclass
class FakeSelection:
    name: str

    def digest(self) -> str:
        return "digest-of-" + self.name


@dataclass
class FakeContext:
    selected: list[str] = field(default_factory=list)

    def select(self, sources: list[str]) -> FakeSelection:
        self.selected += sources
        return FakeSelection(sources[0])


def sources(**kwargs: Any) -> Sources:
    states = {"build": ImageState(diff_ids=("sha256:" + "a" * 64,))}

    def error(message: str) -> StepbuildError:
        return PlanError(message, SourcePosition("Stepfile", 2, 1, "RUN ..."))

    return Sources(kwargs.pop("context", FakeContext()), states.get, error, **kwargs)


def planned(text: str, workdir: str = "/work", scope: Scope | None = None,
            **kwargs: Any) -> tuple[PlannedMount, ...]:
    expand = (scope or Scope()).expand
    return plan(run_of(text), expand, workdir, sources(**kwargs))


# --- --secret and --ssh ------------------------------------------------------------------------


def test_secret_option_forms(tmp_path: Path) -> None:
    token = tmp_path / "token.txt"
    token.write_text("x")
    assert parse_secret(f"id=tok,src={token}") == ("tok", SecretSource("file", str(token)))
    assert parse_secret(f"id=tok,source={token}")[1].kind == "file"
    assert parse_secret(f"src={token}")[0] == "token.txt"
    assert parse_secret("id=tok,env=MY_TOKEN") == ("tok", SecretSource("env", "MY_TOKEN"))
    assert parse_secret("id=API_TOKEN") == ("API_TOKEN", SecretSource("env", "API_TOKEN"))
    assert parse_secret("type=env,id=a,src=VAR") == ("a", SecretSource("env", "VAR"))


@pytest.mark.parametrize("value", ["", "id=", "tok", "id=a,bogus=1", "id=a,src=/no/such/file",
                                   "id=a,type=socket"])
def test_bad_secret_options_are_usage_errors(value: str) -> None:
    with pytest.raises(UsageError):
        parse_secret(value)


def test_secret_values_are_read_when_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"v1")
    source = SecretSource("file", str(path))
    path.write_bytes(b"v2")
    assert source.read() == b"v2"
    monkeypatch.setenv("SECRET_VAR", "from-env")
    assert SecretSource("env", "SECRET_VAR").read() == b"from-env"
    monkeypatch.delenv("SECRET_VAR")
    with pytest.raises(StepbuildError, match="not set"):
        SecretSource("env", "SECRET_VAR").read()
    path.write_bytes(b"x" * (run_mounts.SECRET_MAX + 1))
    with pytest.raises(StepbuildError, match="larger"):
        source.read()


def test_ssh_option_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock_path = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock_path))
        assert parse_ssh("default") == ("default", str(sock_path))
        assert parse_ssh(f"gh={sock_path}") == ("gh", str(sock_path))
        (tmp_path / "key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        with pytest.raises(UsageError, match="not a socket"):
            parse_ssh(f"gh={tmp_path / 'key'}")
        with pytest.raises(UsageError):
            parse_ssh(f"gh={sock_path},{sock_path}")
        monkeypatch.delenv("SSH_AUTH_SOCK")
        with pytest.raises(UsageError, match="SSH_AUTH_SOCK"):
            parse_ssh("default")


# --- planning ----------------------------------------------------------------------------------


def test_targets_are_resolved_against_workdir() -> None:
    mounts = planned("RUN --mount=type=cache,target=cache --mount=type=tmpfs,target=/t/../u/ x\n")
    assert [m.target for m in mounts] == ["/work/cache", "/u"]
    assert mounts[0].cache_id == "/work/cache"  # the id defaults to the target


@pytest.mark.parametrize("text, message", [
    ("RUN --mount=type=tmpfs,target=/ x\n", "invalid mount target"),
    ("RUN --mount=type=tmpfs,target=/a --mount=type=cache,target=/a/ x\n", "more than one"),
    ("RUN --mount=type=bind,from=nosuch,target=/x x\n", "no stage or image"),
    ("RUN --mount=type=cache,target=/c,sharing=$MODE x\n", "unsupported sharing"),
    ("RUN --mount=type=cache,target=/c,uid=$NOT_A_NUMBER x\n", "invalid uid"),
    ("RUN --mount=type=secret,id=tok,required x\n", "secret 'tok' is required"),
    ("RUN --mount=type=ssh,required=true x\n", "ssh agent 'default' is required"),
])
def test_bad_mounts_are_located_errors(text: str, message: str) -> None:
    scope = Scope(args={"MODE": "sometimes", "NOT_A_NUMBER": "abc"})
    with pytest.raises(PlanError, match=message) as info:
        planned(text, scope=scope)
    assert info.value.position is not None and info.value.position.line == 2


def test_options_are_expanded_then_parsed() -> None:
    scope = Scope(args={"ID": "pip", "DIR": "/root/.cache", "UID": "1000", "MODE": "locked"})
    (m,) = planned("RUN --mount=type=cache,id=$ID,target=${DIR}/pip,uid=$UID,sharing=$MODE x\n",
                   scope=scope)
    assert (m.cache_id, m.target, m.uid, m.sharing) == ("pip", "/root/.cache/pip", 1000,
                                                         "locked")


def test_cache_identity_and_key() -> None:
    (plain,) = planned("RUN --mount=type=cache,target=/c,id=x x\n")
    assert plain.identity == {"id": "x"}
    assert cache_dir_name(plain.identity) == cache_dir_name({"id": "x"})
    (seeded,) = planned("RUN --mount=type=cache,target=/c,id=x,from=build,source=deps,mode=0700"
                        " x\n")
    assert seeded.identity == {"id": "x", "from": seeded.state.key, "source": "deps",
                               "mode": 0o700}
    assert cache_dir_name(seeded.identity) != cache_dir_name(plain.identity)
    assert seeded.key["from"] == seeded.state.key and seeded.key["sharing"] == "shared"


def test_bind_key_names_the_selected_context_content_or_the_stage() -> None:
    context = FakeContext()
    bind, from_stage = planned("RUN --mount=type=bind,source=src/../go.mod,target=go.mod"
                               " --mount=type=bind,from=build,target=/b,rw x\n", context=context)
    assert context.selected == ["go.mod"]
    assert bind.key == {"type": "bind", "target": "/work/go.mod", "source": "go.mod",
                        "readonly": True, "from": None, "context": "digest-of-go.mod"}
    assert from_stage.readonly is False and from_stage.key["context"] is None
    assert from_stage.key["from"] == from_stage.state.key


def test_secret_defaults_and_key_never_hold_the_value(tmp_path: Path) -> None:
    (tmp_path / "v").write_text("the-secret-value")
    given = {"tok": SecretSource("file", str(tmp_path / "v"))}
    file_secret, env_secret, both, absent = planned(
        "RUN --mount=type=secret,id=tok --mount=type=secret,id=tok,env=TOKEN"
        " --mount=type=secret,target=/etc/tok,env=T2 --mount=type=secret,id=other x\n",
        secrets=given)
    assert (file_secret.target, file_secret.mode, file_secret.uid) == ("/run/secrets/tok",
                                                                        0o400, 0)
    assert env_secret.target == "" and env_secret.env == "TOKEN"
    assert both.cache_id == "tok" and both.target == "/etc/tok"
    assert absent.secret is None
    keys = repr(run_mounts.key_inputs([file_secret, env_secret, both, absent]))
    assert "the-secret-value" not in keys and str(tmp_path) not in keys


def test_ssh_defaults_count_the_steps_ssh_mounts() -> None:
    first, second = planned("RUN --mount=type=ssh --mount=type=ssh,id=gh,mode=0666 x\n",
                            ssh={"gh": "/tmp/gh.sock"})
    assert (first.target, first.cache_id, first.socket) == ("/run/buildkit/ssh_agent.0",
                                                            "default", "")
    assert (second.target, second.mode, second.socket) == ("/run/buildkit/ssh_agent.1", 0o666,
                                                           "/tmp/gh.sock")
    assert "/tmp/gh.sock" not in repr(second.key)


def test_with_env_replaces_same_names() -> None:
    assert with_env(("A=1", "B=2"), ("B=3", "C=4")) == ("A=1", "B=3", "C=4")


# --- heredocs and the step key -----------------------------------------------------------------


def test_shebang_heredoc_runs_as_a_file() -> None:
    run = run_of("RUN <<-EOT\n#!/usr/bin/env python3\n\tprint('$HOME')\nEOT\n")
    assert run_step.heredoc_script(run.command) == ("EOT", "#!/usr/bin/env python3\n"
                                                           "print('$HOME')\n")
    assert run_step.run_argv(run.command, ("/bin/sh", "-c")) == ["/bin/sh", "-c",
                                                                 "/dev/pipes/EOT"]


@pytest.mark.parametrize("text", [
    "RUN <<EOF\necho hi\nEOF\n",  # no #!: the body is the shell's command text
    "RUN <<-EOF\n\t#!/bin/sh\nEOF\n",  # BuildKit tests the body before stripping tabs
    "RUN cat <<EOF\n#!/bin/sh\nEOF\n",  # a heredoc feeding a command
    'RUN ["cat"]\n',
])
def test_other_runs_are_not_scripts(text: str) -> None:
    assert run_step.heredoc_script(run_of(text).command) is None


def test_several_heredocs_go_to_the_shell() -> None:
    run = run_of("RUN cat <<A > /a && cat <<'B' > /b\none\nA\ntwo\nB\n")
    assert run_step.run_argv(run.command, ("/bin/sh", "-c")) == [
        "/bin/sh", "-c", "cat <<A > /a && cat <<'B' > /b\none\nA\ntwo\nB"]


class FakeExecutor:
    build_args: dict[str, str] = {}
    network = "host"
    context = FakeContext()
    store = None
    secrets = {"tok": SecretSource("env", "NOT_READ_AT_PREPARE")}
    ssh: dict[str, str] = {}
    source_date_epoch = None


def prepared_key(text: str) -> tuple[str, dict[str, Any]]:
    step = run_step.prepare(FakeExecutor(), run_of(text), ImageState(), Scope(), object())
    return step.key, step.inputs


def test_script_body_and_mounts_are_in_the_key_secret_values_are_not() -> None:
    key1, inputs = prepared_key("RUN <<EOF\n#!/bin/sh\necho one\nEOF\n")
    key2, _ = prepared_key("RUN <<EOF\n#!/bin/sh\necho two\nEOF\n")
    assert key1 != key2 and inputs["script"] == ["EOF", "#!/bin/sh\necho one\n"]
    plain, plain_inputs = prepared_key("RUN make\n")
    assert "mounts" not in plain_inputs and "script" not in plain_inputs  # old keys unchanged
    cached, inputs = prepared_key("RUN --mount=type=cache,target=/c make\n")
    assert cached != plain and inputs["mounts"][0]["type"] == "cache"
    secret, inputs = prepared_key("RUN --mount=type=secret,id=tok make\n")
    assert "NOT_READ_AT_PREPARE" not in repr(inputs)


# --- cache-mount instances ---------------------------------------------------------------------


def cache_mount(sharing: str, **kwargs: Any) -> PlannedMount:
    identity = {"id": "c", **kwargs}
    return PlannedMount("cache", "/c", {}, cache_id="c", identity=identity, sharing=sharing,
                        **kwargs)


def notes() -> list[str]:
    return []


def test_private_cache_takes_a_free_instance(tmp_path: Path) -> None:
    seen: list[str] = []
    with ExitStack() as first, ExitStack() as second:
        one = acquire_cache(tmp_path, cache_mount("private"), first, seen.append, None)
        two = acquire_cache(tmp_path, cache_mount("private"), second, seen.append, None)
        assert (one.name, two.name) == ("data", "data.1")
        assert seen == ["cache mount c: busy, using private instance 1"]
    with ExitStack() as third:
        assert acquire_cache(tmp_path, cache_mount("private"), third, seen.append,
                             None).name == "data"


def test_locked_cache_waits_for_the_holder(tmp_path: Path) -> None:
    seen: list[str] = []
    order: list[str] = []
    with ExitStack() as holder:
        acquire_cache(tmp_path, cache_mount("locked"), holder, seen.append, None)

        def second() -> None:
            with ExitStack() as stack:
                acquire_cache(tmp_path, cache_mount("locked"), stack, seen.append, None)
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        while not seen:  # the second one says it waits before it blocks
            threading.Event().wait(0.01)
        order.append("first released")
    thread.join(timeout=10)
    assert order == ["first released", "second"]
    assert "waiting for its lock" in seen[0]


def test_shared_cache_does_not_wait(tmp_path: Path) -> None:
    with ExitStack() as a, ExitStack() as b:
        assert acquire_cache(tmp_path, cache_mount("shared"), a, notes().append, None) == \
            acquire_cache(tmp_path, cache_mount("shared"), b, notes().append, None)


def test_new_cache_gets_owner_and_mode_and_seed(tmp_path: Path) -> None:
    def seed(into: Path) -> None:
        (into / "seeded").write_text("x")

    with ExitStack() as stack:
        mount = cache_mount("shared", uid=123, gid=45, mode=0o710)
        instance = acquire_cache(tmp_path, mount, stack, notes().append, seed)
    st = instance.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (123, 45, 0o710)
    assert (instance / "seeded").exists()
    assert instance.parent.name == cache_dir_name(mount.identity)
    assert not [p for p in instance.parent.iterdir() if p.name.startswith("new-")]


def test_prune_cache_mounts(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    with ExitStack() as stack:
        instance = acquire_cache(store.root, cache_mount("shared"), stack, notes().append, None)
    (instance / "ro").mkdir()
    (instance / "ro" / "f").write_text("x")
    (instance / "ro").chmod(0o555)
    assert prune_cache_mounts(store) == 1
    assert list(run_mounts.cache_mounts_dir(store.root).iterdir()) == []
    assert prune_cache_mounts(store) == 0


# --- mount-point stubs -------------------------------------------------------------------------


def stubs_of(root: Path) -> run_mounts._Stubs:
    return run_mounts._Stubs(os.open(root, os.O_RDONLY | os.O_DIRECTORY))


def test_stubs_are_removed_and_the_parent_mtime_restored(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var").mkdir(parents=True)
    os.utime(root / "var", ns=(1_000_000_000, 2_000_000_000))
    stubs = stubs_of(root)
    stubs.make("/var/cache/apt", "dir")
    stubs.make("/var/cache/apt", "dir")  # already there now: nothing new
    stubs.make("/run/secrets/tok", "file")
    assert (root / "var" / "cache" / "apt").is_dir() and (root / "run/secrets/tok").is_file()
    stubs.remove()
    assert sorted(os.listdir(root)) == ["var"] and os.listdir(root / "var") == []
    assert (root / "var").stat().st_mtime_ns == 2_000_000_000


def test_stubs_follow_image_symlinks_inside_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (root / "link").symlink_to("/real")  # absolute: must resolve inside the root
    (root / "escape").symlink_to(str(outside))
    stubs = stubs_of(root)
    stubs.make("/link/x", "dir")
    stubs.make("/escape/y", "file")
    assert (root / "real" / "x").is_dir() and not (outside / "y").exists()
    assert (root / str(outside).lstrip("/") / "y").is_file()
    stubs.remove()
    assert os.listdir(root / "real") == [] and not (root / "tmp").exists()


def test_stubs_the_step_used_or_moved_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    stubs = stubs_of(root)
    stubs.make("/a/b", "dir")
    stubs.make("/c/d", "file")
    (root / "a" / "written").write_text("by the step")
    (root / "c" / "d").write_text("not empty")
    os.rename(root / "a", root / "moved")
    (root / "a").mkdir()  # the step made its own /a: not ours, kept
    stubs.remove()
    assert sorted(os.listdir(root)) == ["a", "c", "moved"]
    assert sorted(os.listdir(root / "moved")) == ["written"]  # our empty b is gone
    assert (root / "c" / "d").read_text() == "not empty"


def test_dangling_symlinks_are_followed_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("../run")  # as in Debian, but /run is missing
    (root / "loop").symlink_to("loop")
    stubs = stubs_of(root)
    stubs.make("/var/run/secrets/tok", "file")
    assert (root / "run" / "secrets" / "tok").is_file()
    with pytest.raises(StepbuildError):
        stubs.make("/loop/x", "dir")
    stubs.remove()
    assert sorted(os.listdir(root)) == ["loop", "var"]


# --- the agent forwarder -----------------------------------------------------------------------


def test_agent_proxy_forwards_both_ways(tmp_path: Path) -> None:
    upstream = tmp_path / ("u" * 90) / "agent.sock"  # beyond sun_path's 108 bytes
    upstream.parent.mkdir()
    server = socket.socket(socket.AF_UNIX)
    run_mounts._at_short_path(upstream, server.bind)
    server.listen(1)

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data.upper())

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    path = tmp_path / ("p" * 90) / "proxy.sock"
    path.parent.mkdir()
    proxy = AgentProxy(str(upstream), path, mode=0o600, uid=os.getuid(), gid=os.getgid())
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        client = socket.socket(socket.AF_UNIX)
        run_mounts._at_short_path(path, client.connect)
        client.sendall(b"ping")
        assert client.recv(1024) == b"PING"
        client.close()
    finally:
        proxy.close()
        server.close()
    thread.join(timeout=5)
