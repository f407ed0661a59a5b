"""RUN steps: their cache inputs, and running them in the sandbox over a mounted overlay.

`prepare` computes what a RUN's result depends on (argv, environment, user, cwd, network,
its `--mount`s' declarations and sources — `mounts.plan.plan` —, a heredoc script's body);
`perform` runs it in `sandbox.run` inside the step's overlay, with its mounts in place
(`mounts.realise.realised`), and raises `StepFailed` with the location, the command, the exit
status and the last output lines when it fails. Mount points the image lacks (/proc, /dev,
/sys, /etc/hosts...) are created as stubs before and removed from the upper dir after, so
they never land in a layer (build.mounts does the same for the --mount targets).

Heredocs, as BuildKit's dockerfile2llb dispatchRun: `RUN <<EOF` whose body starts with `#!`
is written to a file (mode 0755) mounted read-only at /dev/pipes/EOF and run as
`SHELL /dev/pipes/EOF`, so the kernel picks the interpreter; its body is not expanded. Any
other single `RUN <<EOF` runs its body as the shell's command text; heredocs feeding a
command line are handed to the shell, which does their redirection and expansion.
"""

from __future__ import annotations

import os
import stat
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepbuild.build import keys, users
from stepbuild.build.plan import Scope, located
from stepbuild.build.state import ImageState
from stepbuild.build.step import PreparedStep
from stepbuild.errors import (
    BuildError,
    PlanError,
    SandboxError,
    SourcePosition,
    StepbuildError,
    StepFailed,
    StepOutOfMemory,
)
from stepbuild.frontend import instructions as ins
from stepbuild.frontend.syntax import chomp_heredoc, heredoc_marker
from stepbuild.fs import rootpath
from stepbuild.oci.platform import Platform
from stepbuild.sandbox.binfmt import ensure_emulation

if TYPE_CHECKING:
    import threading
    from collections.abc import Mapping

    from stepbuild.build.execute import Executor
    from stepbuild.build.mounts.cache import CacheMountObserver
    from stepbuild.build.mounts.plan import PlannedMount, Sources
    from stepbuild.build.seams import BuildRun
    from stepbuild.sandbox.spec import Mount, SandboxSpec

# Paths the sandbox mounts over; created as empty stubs when the image lacks them and removed
# from the layer afterwards, so that they never land in an image (BuildKit does the same).
MOUNT_STUBS = ("proc", "dev", "sys", "etc/hosts", "etc/resolv.conf", "etc/hostname")
HOSTNAME = "stepbuild"


PIPES = "/dev/pipes"  # where a `#!` heredoc script is mounted, as in BuildKit


@dataclass(frozen=True, slots=True)
class RunWork:
    """What a RUN runs, expanded: its argv, its whole environment (proxy variables included,
    which its key leaves out), its network, a `#!` heredoc (file name, body) to run as a
    file, and its `--mount`s, planned."""

    argv: tuple[str, ...]
    env: tuple[str, ...]
    network: str
    script: tuple[str, str] | None = None
    mounts: tuple[PlannedMount, ...] = ()


def prepare(executor: Executor, run: ins.Run, state: ImageState, scope: Scope,
            build: BuildRun) -> PreparedStep:
    """The key inputs and the work of a RUN. `build` is the builder's run of this Stepfile
    (stages, their results, the file name), for `--mount from=` and located errors."""
    argv = run_argv(run.command, state.shell)
    env = scope.run_env(executor.build_args)
    network = step_network(executor, run, build)
    inputs: dict[str, Any] = {"op": "run", "argv": argv, "env": keys.without_proxies(env),
                              "user": state.user, "cwd": state.workdir, "network": network}
    if executor.source_date_epoch is not None:
        inputs["sde"] = executor.source_date_epoch  # it clamps the layer's mtimes
    if executor.limits.add_hosts:  # what the step resolves may depend on them (as BuildKit)
        inputs["add_hosts"] = [list(host) for host in executor.limits.add_hosts]
    script = heredoc_script(run.command)
    if script is not None:
        inputs["script"] = list(script)  # the body: argv names only the file
    planned: tuple[PlannedMount, ...] = ()
    if run.mounts:
        from stepbuild.build.mounts.plan import key_inputs, plan

        sources = _mount_sources(executor, run, build, state.platform)
        planned = plan(run, lambda word: _expand(scope, word, sources), state.workdir, sources)
        inputs["mounts"] = key_inputs(planned)
    key = keys.step_key(state.key, inputs)
    reads = tuple(p.state for p in planned if p.state is not None)
    work = RunWork(tuple(argv), env, network, script, planned)
    return PreparedStep(run, key, inputs, "RUN " + " ".join(argv), work, reads)


def step_network(executor: Executor, run: ins.Run, build: BuildRun) -> str:
    """The sandbox network of a RUN: its --network, else the build's; "default" is the
    build's private network. `RUN --network=host` needs the network.host entitlement
    (`--allow network.host`), as in BuildKit: a Stepfile from a stranger must not reach the
    host's loopback services just by asking."""
    if run.network == "host" and "network.host" not in executor.allow:  # from ONBUILD
        raise located(PlanError, build.stages.filename, run,
                      "RUN --network=host needs the network.host entitlement",
                      hint="pass --allow network.host to stepbuild build to let it")
    mode = run.network if run.network not in (None, "default") else executor.network
    return "private" if mode == "default" else mode


def _mount_sources(executor: Executor, run: ins.Run, build: BuildRun,
                   state_platform: Platform) -> Sources:
    """What `RUN --mount from=NAME` may name: a --build-context, a stage, an image (of an
    image index, the entry of the step's platform)."""
    from stepbuild.build.images import load_state
    from stepbuild.build.mounts.plan import Sources

    stages = getattr(build, "stages", None)
    results: Mapping[int, ImageState] = getattr(build, "results", {})
    filename = getattr(stages, "filename", "Stepfile")

    def error(message: str) -> StepbuildError:
        loc = run.loc
        text = run.text.split("\n", 1)[0]
        return PlanError(message, SourcePosition(filename, loc.line, loc.column, text))

    def state(name: str) -> ImageState | None:
        find = getattr(build, "named_source", None)
        named = find(name, run) if find is not None else None  # --build-context NAME wins
        if isinstance(named, ImageState):
            return named
        if named is not None:
            raise error(f"RUN --mount from={name}: a directory --build-context cannot be"
                        " mounted here (use COPY --from)")
        stage = stages.find(name) if stages is not None else None
        if stage is not None and stage.index in results:
            return results[stage.index]
        return load_state(executor.store, name, state_platform)  # an index: the step's own

    return Sources(executor.context, state, error, getattr(executor, "secrets", None) or {},
                   getattr(executor, "ssh", None) or {},
                   observer=getattr(build, "team", None))  # the build's team cache


def _expand(scope: Scope, word: str, sources: Sources) -> str:
    try:
        return scope.expand(word)
    except StepbuildError as exc:
        raise sources.error(exc.message) from None


def perform(executor: Executor, step: PreparedStep, work: RunWork, state: ImageState,
            merged: Path, tmp: Path, filename: str, label: str,
            cache_observer: CacheMountObserver | None = None,
            cancel: threading.Event | None = None) -> list[str]:
    """Run the step (`work` is its work) in the sandbox; return the stubs made (for
    `remove_stubs`). `cache_observer` (the build's team cache) hears of the cache mounts the
    step uses; once `cancel` is set the command is killed (`Cancelled`)."""
    from stepbuild.sandbox.spec import SandboxSpec

    ensure_emulation(Platform.of(state.os, state.architecture))  # QEMU for a foreign one
    loc = step.instruction.loc
    where = f"{filename}:{loc.line}:{loc.column}"
    ids = _step_ids(merged, state, step, filename)
    etc = tmp / "etc"
    write_etc_files(etc, HOSTNAME, executor.limits.add_hosts,
                    private_network=work.network == "private")
    stubs = _make_stubs(merged)
    env = work.env
    progress = executor.progress
    with ExitStack() as stack:
        mounts: list[Mount] = []
        if work.script is not None:
            mounts.append(_script_mount(tmp, *work.script))
        if work.mounts:
            from stepbuild.build.mounts.realise import realised, with_env

            try:
                done = stack.enter_context(realised(
                    work.mounts, store=executor.store,
                    context_copies=executor.context_copies, merged=merged, tmp=tmp, env=env,
                    note=lambda message: progress.note(label, message),
                    observer=cache_observer))
            except BuildError as exc:  # e.g. a from= source path the stage does not have
                line = step.instruction.loc.line
                raise BuildError(f"{filename}:{line}: {exc.message}", hint=exc.hint) from None
            mounts += done.mounts
            env = with_env(env, done.env)
        try:
            netns = executor.private_network.namespace() if work.network == "private" else ""
        except SandboxError as exc:  # no slirp4netns: say which step needed it
            raise BuildError(f"{where}: {exc.message}", hint=exc.hint) from None
        try:
            spec = SandboxSpec(
                rootfs=str(merged), argv=work.argv, env=with_home(env, ids),
                cwd=state.workdir, uid=ids.uid, gid=ids.gid, groups=ids.groups,
                hostname=HOSTNAME, network=work.network, etc_dir=str(etc),
                mounts=tuple(mounts), limits=executor.limits, seccomp=executor.seccomp,
                netns=netns,
            )
        except ValueError as exc:  # what no kernel takes, e.g. a NUL in an ENV of the base
            raise BuildError(f"{where}: cannot run this step: {exc}") from None
        _run_and_report(executor, step, spec, filename, label, cancel)
    return stubs


def _run_and_report(executor: Executor, step: PreparedStep, spec: SandboxSpec, filename: str,
                    label: str, cancel: threading.Event | None) -> None:
    """Run `spec` in the sandbox, its output to the progress; StepFailed (or
    StepOutOfMemory) located at the step when the command fails."""
    progress = executor.progress
    result = executor.sandbox.run(spec, on_output=lambda data: progress.output(label, data),
                                  cancel=cancel)
    progress.flush_output(label)
    for notice in result.notices:  # e.g. the chroot fallback, a skipped /etc bind
        progress.note(label, notice)
    if result.exit_code != 0 or result.oom_killed:
        loc = step.instruction.loc
        text = step.instruction.text.split("\n", 1)[0]
        position = SourcePosition(filename, loc.line, loc.column, text)
        if result.oom_killed:
            from stepbuild.sandbox.limits import human_size

            raise StepOutOfMemory(position, step.created_by, result.exit_code,
                                  result.output_tail, human_size(executor.limits.memory or 0))
        raise StepFailed(position, step.created_by, result.exit_code, result.output_tail)


# --- --isolation=chroot -------------------------------------------------------------------------


def chroot_refusal(step: PreparedStep, work: RunWork, filename: str) -> None:
    """Refuse, located, what a chrooted RUN cannot have: `--mount`s (each is a mount) and
    `--network=none` (a network namespace). Checked before the step's root is copied."""
    why = ("RUN --mount needs a mount, which --isolation=chroot cannot make" if work.mounts
           else "--network=none needs a network namespace, which --isolation=chroot cannot"
                " make" if work.network == "none" else None)
    if why is not None:
        loc = step.instruction.loc
        raise BuildError(f"{filename}:{loc.line}:{loc.column}: {why}",
                         hint="build where namespaces are allowed (CAP_SYS_ADMIN), or leave"
                              " it out of the Stepfile")


def furnish_chroot(executor: Executor, work: RunWork, root: Path, tmp: Path
                   ) -> frozenset[bytes]:
    """Put into the chrooted step's root what the namespaced sandbox would mount: the
    mount-point stubs, our /etc/hosts, resolv.conf and hostname (over the image's own regular
    files, or as new files), a `#!` heredoc's script in /dev/pipes. Returns the paths left out
    of the layer (all of /proc, /dev, /sys; the /etc files placed), as mounts would be."""
    from stepbuild.build.chroot import HOLLOW, make_dev_null

    _make_stubs(root)
    etc = tmp / "etc"
    write_etc_files(etc, HOSTNAME, executor.limits.add_hosts,
                    private_network=False)  # the host's network: its resolver
    placed = {f"etc/{name}".encode() for name in ("hosts", "resolv.conf", "hostname")
              if _overwrite_in_root(root, f"etc/{name}", (etc / name).read_bytes(), 0o644)}
    make_dev_null(root)
    if work.script is not None:  # below /dev, which is never part of the layer
        name, body = work.script
        _overwrite_in_root(root, f"{PIPES.lstrip('/')}/{name}", body.encode(), 0o755,
                           create=True)
    return HOLLOW | frozenset(placed)


def _overwrite_in_root(root: Path, path: str, data: bytes, mode: int, *,
                       create: bool = False) -> bool:
    """Write `data` to the existing regular file `path` under `root` (`create`: made, with
    its missing directories, when absent). False, writing nothing, where it is missing, a
    symlink or other non-directory is on the way, or the file has other names (writing it
    would change them too): the step then sees the image's own, as a namespaced step whose
    image lacks /etc does."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    *dirs, name = path.split("/")
    fd = os.open(root, flags)
    try:
        for part in dirs:
            if create:
                with suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                fd, old = os.open(part, flags, dir_fd=fd), fd
            except OSError:  # missing, a symlink (ELOOP), a file (ENOTDIR)
                return False
            os.close(old)
        try:
            out = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
                          | (os.O_CREAT if create else 0), mode, dir_fd=fd)
        except OSError:  # a symlink (ELOOP), a directory, ...
            return False
        try:
            st = os.fstat(out)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                return False
            os.ftruncate(out, 0)
            os.write(out, data)
            os.fchmod(out, mode)
        finally:
            os.close(out)
        return True
    finally:
        os.close(fd)


def perform_chrooted(executor: Executor, step: PreparedStep, work: RunWork,
                     state: ImageState, root: Path, filename: str, label: str,
                     cancel: threading.Event | None = None) -> None:
    """Run the step chrooted into `root`, its plain copy (`furnish_chroot` done): no mounts,
    the host's network. Fails as `perform` does."""
    from stepbuild.sandbox.spec import SandboxSpec

    ensure_emulation(Platform.of(state.os, state.architecture))  # QEMU for a foreign one
    ids = _step_ids(root, state, step, filename)
    loc = step.instruction.loc
    try:
        spec = SandboxSpec(rootfs=str(root), argv=work.argv, env=with_home(work.env, ids),
                           cwd=state.workdir, uid=ids.uid, gid=ids.gid, groups=ids.groups,
                           hostname=HOSTNAME, network="host", limits=executor.limits,
                           seccomp=executor.seccomp, isolation="chroot")
    except ValueError as exc:  # what no kernel takes, e.g. a NUL in an ENV of the base
        raise BuildError(f"{filename}:{loc.line}:{loc.column}: cannot run this step: {exc}"
                         ) from None
    _run_and_report(executor, step, spec, filename, label, cancel)


def _step_ids(root: Path, state: ImageState, step: PreparedStep, filename: str) -> users.Ids:
    loc = step.instruction.loc
    try:
        return user_ids(root, state.user)
    except users.UserError as exc:  # USER names no one in the image, or an id out of range
        user = f"USER {state.user}: " if state.user else ""
        raise BuildError(f"{filename}:{loc.line}:{loc.column}: {user}{exc.message}",
                         hint=exc.hint) from None


def _script_mount(tmp: Path, name: str, body: str) -> Mount:
    """The `#!` heredoc as an executable file in a directory mounted read-only on /dev/pipes
    (inside the sandbox's /dev tmpfs, so its mount point is never in a layer)."""
    from stepbuild.sandbox.spec import Mount

    pipes = tmp / "pipes"
    pipes.mkdir(mode=0o755)
    os.chmod(pipes, 0o755)
    script = pipes / name
    script.write_text(body)
    os.chmod(script, 0o755)
    return Mount("bind", str(pipes), PIPES, readonly=True, options="create=dir")


def run_argv(command: ins.Command, shell: tuple[str, ...]) -> list[str]:
    """The argv of a RUN: exec form as is; shell form through SHELL, heredocs included.

    `RUN <<EOF` alone makes the heredoc the script: a `#!` one is run as a file (see
    `heredoc_script`), any other is the shell's command text; otherwise the shell gets the
    command line followed by the heredoc bodies and their terminators, and does the
    redirection itself.
    """
    if not command.shell_form:
        return list(command.args)
    script = heredoc_script(command)
    if script is not None:
        return [*shell, f"{PIPES}/{script[0]}"]
    text = command.args[0] if command.args else ""
    heredocs = command.heredocs
    if len(heredocs) == 1 and heredoc_marker(text.strip()) is not None:
        doc = heredocs[0]
        return [*shell, chomp_heredoc(doc.content) if doc.chomp else doc.content]
    for doc in heredocs:
        text += "\n" + doc.content + doc.name
    return [*shell, text]


def heredoc_script(command: ins.Command) -> tuple[str, str] | None:
    """(file name, body) of a `RUN <<EOF` whose body starts with `#!`, else None.

    BuildKit tests the body as written (before `<<-` strips tabs), writes it chomped, names
    the file after the delimiter, and never expands it.
    """
    if not command.shell_form or len(command.heredocs) != 1 or not command.args:
        return None
    if heredoc_marker(command.args[0].strip()) is None:
        return None
    doc = command.heredocs[0]
    if not doc.content.startswith("#!"):
        return None
    name = doc.name.replace("/", "_") if doc.name not in (".", "..") else "script"
    return name, chomp_heredoc(doc.content) if doc.chomp else doc.content


def with_home(env: tuple[str, ...], ids: users.Ids) -> tuple[str, ...]:
    """HOME from the user's passwd entry when the image sets none, as runc does for Docker."""
    if any(item.startswith("HOME=") for item in env):
        return env
    return (*env, f"HOME={ids.home}")


def user_ids(root: Path, user: str) -> users.Ids:
    """USER or --chown resolved in the image's own /etc/passwd and /etc/group (root: 0:0)."""
    if not user:
        user = "0"
    return users.resolve(user, _read_image_file(root, "/etc/passwd"),
                         _read_image_file(root, "/etc/group"))


def _read_image_file(root: Path, path: str) -> str:
    """The image's `path` as text, "" when it has none; UserError when it cannot be read
    (a symlink loop, a directory, ...): the ids cannot be known without it."""
    try:
        return rootpath.read_file_in_root(root, path).decode("utf-8", "replace")
    except (FileNotFoundError, NotADirectoryError):
        return ""
    except OSError as exc:
        raise users.UserError(f"cannot read {path} in the image: {exc.strerror or exc}"
                              ) from None
    except ValueError:  # not a regular file, or too large to be trusted whole
        raise users.UserError(f"cannot read {path} in the image: not a regular file of at"
                              " most 1 MiB") from None


def write_etc_files(etc: Path, hostname: str,
                    add_hosts: tuple[tuple[str, str], ...] = (), *,
                    private_network: bool) -> None:
    """The per-step /etc/hosts, /etc/resolv.conf and /etc/hostname (bind-mounted, never
    part of a layer). `add_hosts` (--add-host) are (name, address) lines added to hosts. On
    the private network, resolv.conf names the stack's DNS forwarder; otherwise it is the
    host's."""
    etc.mkdir()
    (etc / "hostname").write_text(hostname + "\n")
    extra = "".join(f"{address}\t{name}\n" for name, address in add_hosts)
    (etc / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        f"127.0.1.1\t{hostname}\n{extra}")
    try:
        resolv = Path("/etc/resolv.conf").read_text()
    except OSError:
        resolv = ""
    if private_network:
        from stepbuild.sandbox.network import resolv_conf

        resolv = resolv_conf(resolv)
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
