"""`stepbuild run IMAGE [CMD...]`: a throwaway container of an image in the build sandbox.

The image's layers are mounted as an overlay with a fresh upper dir that is deleted afterwards,
and the command runs as RUN steps do (same namespaces, same confinement), with the image's
ENTRYPOINT, CMD, Env, User and WorkingDir. Its output goes to our stdout as it comes. This is
how users and tests look inside a result. With chroot isolation the command runs chrooted into
a copy of the image instead, which sees the image's own /etc files and the host's network.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from stepbuild.build.images import load_state
from stepbuild.build.run import user_ids, with_home, write_etc_files
from stepbuild.errors import ContainerOutOfMemory, StepbuildError, UsageError
from stepbuild.fs.trees import remove_tree
from stepbuild.oci.platform import Platform
from stepbuild.sandbox import host as overlay
from stepbuild.sandbox.binfmt import ensure_emulation

if TYPE_CHECKING:
    from stepbuild.build.state import ImageState
    from stepbuild.sandbox import RunResult
    from stepbuild.sandbox.limits import Limits
    from stepbuild.store.store import Store


def run_image(store: Store, name: str, command: list[str], network: str = "default",
              limits: Limits | None = None, seccomp: str = "default",
              isolation: str = "namespaces") -> int:
    """Run `command` (or the image's CMD) in image `name`, with `limits`; return its exit
    status. A command the OOM killer ended is an error that says so. `network` is "default"
    (a private network of its own, as a RUN step's), "none" or "host". With `isolation`
    "chroot" the container is a chroot into a copy of the image (no namespace, the host's
    network: "none" is refused)."""
    from stepbuild import sandbox
    from stepbuild.sandbox.limits import Limits
    from stepbuild.sandbox.network import PrivateNetwork
    from stepbuild.sandbox.spec import SandboxSpec

    limits = limits or Limits()

    state = load_state(store, name)
    if state is None:
        raise StepbuildError(f"image {name!r} not found in the store",
                             hint="stepbuild images lists them")
    argv = [*(state.config.get("Entrypoint") or []), *(command or state.config.get("Cmd")
                                                       or [])]
    if not argv:
        raise StepbuildError(f"image {name!r} has no CMD or ENTRYPOINT: give a command")
    ensure_emulation(Platform.of(state.os, state.architecture))  # QEMU for a foreign image
    lowers = [store.layer_dir(d) for d in reversed(state.diff_ids)]
    if isolation == "chroot":
        return _run_chrooted(store, lowers, state, argv, network, limits, seccomp, name)
    mode = "private" if network == "default" else network
    tmp = store.tmp_dir("run-")
    private_network = PrivateNetwork(lambda: store.tmp_dir("net-"))
    try:
        with overlay.mounted(tmp, lowers) as merged:
            ids = user_ids(merged, state.user)
            etc = _etc_dir(tmp, limits.add_hosts, private_network=mode == "private")
            netns = private_network.namespace() if mode == "private" else ""
            spec = SandboxSpec(rootfs=str(merged), argv=tuple(argv),
                               env=with_home(state.env, ids),
                               cwd=state.workdir, uid=ids.uid, gid=ids.gid, groups=ids.groups,
                               hostname="stepbuild", network=mode, etc_dir=str(etc),
                               limits=limits, seccomp=seccomp, netns=netns)
            result = sandbox.run(spec, on_output=_to_stdout)
        return _exit_status(result, name, limits)
    finally:
        private_network.close()
        remove_tree(tmp, best_effort=True)  # any depth: a step may nest 10,000 dirs


def _run_chrooted(store: Store, lowers: list[Path], state: ImageState, argv: list[str],
                  network: str, limits: Limits, seccomp: str, name: str) -> int:
    """`run_image` with chroot isolation: in a copy of the image, removed afterwards."""
    from stepbuild import sandbox
    from stepbuild.build.chroot import HOLLOW, make_dev_null
    from stepbuild.layers.merged import copy_merged
    from stepbuild.sandbox.spec import SandboxSpec

    if network == "none":
        raise UsageError("--network none needs a network namespace, which --isolation=chroot"
                         " cannot make", hint="leave --network out: the host's is used")
    tmp = store.tmp_dir("run-")
    try:
        root = tmp / "root"
        root.mkdir(mode=0o700)
        copy_merged(lowers, root, HOLLOW)
        make_dev_null(root)
        ids = user_ids(root, state.user)
        spec = SandboxSpec(rootfs=str(root), argv=tuple(argv), env=with_home(state.env, ids),
                           cwd=state.workdir, uid=ids.uid, gid=ids.gid, groups=ids.groups,
                           network="host", limits=limits, seccomp=seccomp,
                           isolation="chroot")
        return _exit_status(sandbox.run(spec, on_output=_to_stdout), name, limits)
    finally:
        remove_tree(tmp, best_effort=True)


def _exit_status(result: RunResult, name: str, limits: Limits) -> int:
    """The command's exit status; ContainerOutOfMemory (exit 137, as docker run's) when the
    OOM killer ended it."""
    from stepbuild.sandbox.limits import human_size

    if result.oom_killed:
        raise ContainerOutOfMemory(f"{name}: killed: out of memory (limit"
                                   f" {human_size(limits.memory or 0)})")
    return int(result.exit_code)


def _to_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _etc_dir(tmp: Path, add_hosts: tuple[tuple[str, str], ...], *,
             private_network: bool) -> Path:
    etc = tmp / "etc"
    write_etc_files(etc, "stepbuild", add_hosts, private_network=private_network)
    return etc
