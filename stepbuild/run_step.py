"""RUN steps: their cache inputs, and running them in the sandbox over a mounted overlay.

`prepare` computes what a RUN's result depends on (argv, environment, user, cwd, network);
`perform` runs it in `sandbox.run` inside the step's overlay and raises `StepFailed` with the
location, the command, the exit status and the last output lines when it fails. Mount points
the image lacks (/proc, /dev, /sys, /etc/hosts...) are created as stubs before and removed
from the upper dir after, so they never land in a layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from stepbuild import instructions as ins
from stepbuild import keys, rootpath, users
from stepbuild.errors import BuildError, SourcePosition, StepFailed
from stepbuild.image import ImageState
from stepbuild.plan import Scope
from stepbuild.step import PreparedStep
from stepbuild.syntax import chomp_heredoc, heredoc_marker

# Paths the sandbox mounts over; created as empty stubs when the image lacks them and removed
# from the layer afterwards, so that they never land in an image (BuildKit does the same).
MOUNT_STUBS = ("proc", "dev", "sys", "etc/hosts", "etc/resolv.conf", "etc/hostname")
HOSTNAME = "stepbuild"


def prepare(executor: Any, run: ins.Run, state: ImageState, scope: Scope) -> PreparedStep:
    if run.mounts:
        raise BuildError("RUN --mount is not supported yet", hint="see issue #4")
    argv = run_argv(run.command, state.shell)
    env = scope.run_env(executor.build_args)
    network = run.network if run.network not in (None, "default") else executor.network
    inputs = {"op": "run", "argv": argv, "env": keys.without_proxies(env),
              "user": state.user, "cwd": state.workdir, "network": network}
    key = keys.step_key(state.key, inputs)
    work = {"argv": argv, "env": env, "network": network}
    return PreparedStep(run, key, inputs, "RUN " + " ".join(argv), work)


def perform(executor: Any, step: PreparedStep, state: ImageState, merged: Path, tmp: Path,
            filename: str, label: str) -> list[str]:
    """Run the step in the sandbox; return the stubs made (for `remove_stubs`)."""
    from stepbuild.sandbox.spec import SandboxSpec

    ids = user_ids(merged, state.user)
    etc = tmp / "etc"
    write_etc_files(etc, HOSTNAME)
    stubs = _make_stubs(merged)
    spec = SandboxSpec(
        rootfs=str(merged), argv=tuple(step.work["argv"]), env=tuple(step.work["env"]),
        cwd=state.workdir, uid=ids.uid, gid=ids.gid, groups=ids.groups,
        hostname=HOSTNAME, network=step.work["network"], etc_dir=str(etc),
    )
    progress = executor.progress
    result = executor.sandbox.run(spec, on_output=lambda data: progress.output(label, data))
    progress.flush_output(label)
    for notice in result.notices:  # e.g. the chroot fallback, a skipped /etc bind
        progress.note(label, notice)
    if result.exit_code != 0:
        loc = step.instruction.loc
        text = step.instruction.text.split("\n", 1)[0]
        raise StepFailed(SourcePosition(filename, loc.line, loc.column, text),
                         step.created_by, result.exit_code, result.output_tail)
    return stubs


def run_argv(command: ins.Command, shell: tuple[str, ...]) -> list[str]:
    """The argv of a RUN: exec form as is; shell form through SHELL, heredocs included.

    `RUN <<EOF` alone makes the heredoc the script; otherwise the shell gets the command line
    followed by the heredoc bodies and their terminators, and does the redirection itself.
    """
    if not command.shell_form:
        return list(command.args)
    text = command.args[0] if command.args else ""
    heredocs = command.heredocs
    if len(heredocs) == 1 and heredoc_marker(text.strip()) is not None:
        doc = heredocs[0]
        return [*shell, chomp_heredoc(doc.content) if doc.chomp else doc.content]
    for doc in heredocs:
        text += "\n" + doc.content + doc.name
    return [*shell, text]


def user_ids(root: Path, user: str) -> users.Ids:
    """USER or --chown resolved in the image's own /etc/passwd and /etc/group (root: 0:0)."""
    if not user:
        return users.Ids(0, 0)
    return users.resolve(user, _read_image_file(root, "/etc/passwd"),
                         _read_image_file(root, "/etc/group"))


def _read_image_file(root: Path, path: str) -> str:
    try:
        return rootpath.read_file_in_root(root, path).decode("utf-8", "replace")
    except (FileNotFoundError, NotADirectoryError):
        return ""


def write_etc_files(etc: Path, hostname: str) -> None:
    """The per-step /etc/hosts, /etc/resolv.conf and /etc/hostname (bind-mounted, never
    part of a layer)."""
    etc.mkdir()
    (etc / "hostname").write_text(hostname + "\n")
    (etc / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        f"127.0.1.1\t{hostname}\n")
    try:
        resolv = Path("/etc/resolv.conf").read_text()
    except OSError:
        resolv = ""
    (etc / "resolv.conf").write_text(resolv)


def _make_stubs(merged: Path) -> list[str]:
    """Create the mount points the image lacks (they land in the upper dir; removed later)."""
    made = []
    for stub in MOUNT_STUBS:
        path = merged / stub
        if os.path.lexists(path):
            continue
        if not path.parent.is_dir() or path.parent.is_symlink():
            continue  # e.g. no /etc at all: the sandbox skips that mount
        if "/" in stub:
            path.touch(mode=0o644)
        else:
            path.mkdir(mode=0o755)
        made.append(stub)
    return made


def remove_stubs(upper: Path, stubs: list[str]) -> None:
    """Remove mount-point stubs made for the sandbox, if they are still empty."""
    for stub in sorted(stubs, reverse=True):
        path = upper / stub
        try:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            elif path.is_file() and path.stat().st_size == 0:
                path.unlink()
        except OSError:
            pass  # not empty: the step wrote there, keep it
        parent = path.parent
        while parent != upper:
            try:
                parent.rmdir()  # a parent dir created only to hold a stub
            except OSError:
                break
            parent = parent.parent
