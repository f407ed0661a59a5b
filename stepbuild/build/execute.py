"""Running cached steps for real: the executor's part of the step lifecycle (`lifecycle.py`).

`Executor.prepare` turns an instruction into a `PreparedStep` (its expanded inputs and cache
key; `run_step` and `copy_step` know the details). For a step that missed the cache,
`workspace` makes its temporary dir (removed afterwards, whatever happens), `perform` mounts
an overlay of the image's layers with a fresh upper dir in the builder's private mount
namespace, runs the RUN in the sandbox or copies the files, and unmounts; `capture` turns the
upper dir into a layer tar. Committing it to the store is the lifecycle's business.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from stepbuild.build import chroot
from stepbuild.build import copy as copy_step
from stepbuild.build import run as run_step
from stepbuild.build import workdir as workdir_step
from stepbuild.build.mounts.context_copies import ContextCopies
from stepbuild.build.plan import Scope
from stepbuild.build.state import ImageState
from stepbuild.build.step import PreparedStep, Workspace
from stepbuild.frontend import instructions as ins
from stepbuild.fs.trees import remove_tree
from stepbuild.layers import capture as layer
from stepbuild.layers import fuse_upper
from stepbuild.layers.merged import copy_merged
from stepbuild.sandbox import host as overlay
from stepbuild.sandbox.limits import Limits
from stepbuild.sandbox.network import PrivateNetwork

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from stepbuild.build.mounts.secrets import SecretSource
    from stepbuild.build.seams import BuildRun
    from stepbuild.layers.capture import LayerBlob
    from stepbuild.progress import Progress
    from stepbuild.sandbox import RunResult
    from stepbuild.sandbox.spec import SandboxSpec
    from stepbuild.sources.context import BuildContext
    from stepbuild.store.store import Store

__all__ = ["Executor", "PreparedStep", "Sandbox"]


class Sandbox(Protocol):
    """What runs a RUN's command: a `stepbuild.sandbox.pool.Pool` (the executor closes it)."""

    def run(self, spec: SandboxSpec, on_output: Callable[[bytes], None] | None = None,
            cancel: threading.Event | None = None) -> RunResult: ...

    def close(self) -> None: ...


class Executor:
    """Prepares and performs RUN/COPY/ADD steps (`seams.StepExecutor`). Collaborators are
    injected."""

    def __init__(self, store: Store, context: BuildContext, sandbox: Sandbox,
                 progress: Progress, build_args: dict[str, str] | None = None,
                 network: str = "default", source_date_epoch: int | None = None,
                 secrets: dict[str, SecretSource] | None = None,
                 ssh: dict[str, str] | None = None, limits: Limits | None = None,
                 seccomp: str = "default", allow: frozenset[str] = frozenset(),
                 isolation: str = "namespaces") -> None:
        self.store = store
        self.context = context
        self.sandbox = sandbox
        self.progress = progress
        self.build_args = build_args or {}
        self.network = network  # of RUN steps: default (private), none or host
        # BuildKit's entitlements granted (--allow): "network.host" lets RUN --network=host
        # run; asking for the host's network on the command line grants it too.
        self.allow = allow | ({"network.host"} if network == "host" else set())
        self.private_network = PrivateNetwork(lambda: store.tmp_dir("net-"))
        self.source_date_epoch = source_date_epoch
        self.secrets = secrets or {}  # id -> mounts.secrets.SecretSource (--secret)
        self.ssh = ssh or {}  # id -> agent socket path (--ssh)
        self.limits = limits or Limits()  # every RUN's resource limits (--memory, ...)
        self.seccomp = seccomp  # --security-opt seccomp=: "default", "unconfined" or a path
        # sandbox/isolation.py: "namespaces" (overlay mounts, the namespaced sandbox) or
        # "chroot" (plain copies, a chrooted step, the layer from a tree diff: chroot.py)
        self.isolation = isolation
        self._told_chroot = False  # chroot mode's limits are said once per build
        self._scratch: Path | None = None
        # what RUN --mount=type=bind binds of the context: copied once per selection
        self.context_copies = ContextCopies(context, self.scratch_file)

    def close(self) -> None:
        """End the sandbox's spare child, stop the build's private network; remove the
        build's scratch files (downloads)."""
        self.sandbox.close()
        self.private_network.close()
        if self._scratch is not None:
            remove_tree(self._scratch, best_effort=True)
            self._scratch = None

    def scratch_file(self, name: str) -> Path:
        """A fresh path in this build's scratch dir (removed by `close`)."""
        if self._scratch is None:
            self._scratch = self.store.tmp_dir("build-")
        return self._scratch / f"{len(os.listdir(self._scratch))}-{name}"

    def prepare(self, instruction: ins.Run | ins.Copy | ins.Add | ins.Workdir,
                state: ImageState, scope: Scope, build: BuildRun) -> PreparedStep:
        if isinstance(instruction, ins.Run):
            return run_step.prepare(self, instruction, state, scope, build)
        if isinstance(instruction, ins.Workdir):
            return workdir_step.prepare(self, instruction, state, scope, build)
        return copy_step.prepare(self, instruction, state, scope, build)

    @contextmanager
    def workspace(self, step: PreparedStep, state: ImageState) -> Iterator[Workspace]:
        """A temporary dir in the store for `step`, on `state`'s layers; removed on exit."""
        # COPY/ADD --link: the layer is made on an empty root, independent of the parent.
        lowers = () if step.link else tuple(
            self.store.layer_dir(d) for d in reversed(state.diff_ids))
        tmp = self.store.tmp_dir("step-")
        try:
            yield Workspace(tmp, lowers)
        finally:
            remove_tree(tmp, best_effort=True)  # any depth: a step may nest 10,000 dirs

    def perform(self, step: PreparedStep, state: ImageState, space: Workspace,
                build: BuildRun, label: str) -> None:
        """Run the RUN, copy the files or make the WORKDIR, in an overlay mounted for the
        step (or, with chroot isolation, in a copy of the parent's tree)."""
        if self.isolation == "chroot":
            self._perform_in_copy(step, state, space, build, label)
            return
        stubs: list[str] = []
        with overlay.mounted(space.tmp, space.lowers) as merged:
            if isinstance(step.work, run_step.RunWork):
                stubs = run_step.perform(self, step, step.work, state, merged, space.tmp,
                                         build.stages.filename, label,
                                         cache_observer=build.team, cancel=build.cancel)
            elif isinstance(step.work, workdir_step.WorkdirWork):
                workdir_step.perform(step.work, merged)
            else:
                # fuse-overlayfs keeps its own picture of the upper dir: nothing may be
                # written into it behind the mount
                upper = None if overlay.uses_fuse() else space.upper
                copy_step.perform(self, step.work, merged, space.tmp, upper)
        if overlay.uses_fuse():  # its upper dir in the kernel's form, before anything reads it
            fuse_upper.normalise(space.upper, space.lowers)
        run_step.remove_stubs(space.upper, stubs)

    def _perform_in_copy(self, step: PreparedStep, state: ImageState, space: Workspace,
                         build: BuildRun, label: str) -> None:
        """`perform` for --isolation=chroot: the step works on `space.tmp/root`, a copy of
        the parent's tree, and `space.upper` is made from what changed (build/chroot.py)."""
        work, filename = step.work, build.stages.filename
        if isinstance(work, run_step.RunWork):
            run_step.chroot_refusal(step, work, filename)  # before copying anything
            self._tell_chroot_limits(work)
        root = chroot.copy_parent(space, hollow=chroot.HOLLOW if isinstance(
            work, run_step.RunWork) else frozenset())
        masked: frozenset[bytes] = frozenset()
        if isinstance(work, run_step.RunWork):
            masked = run_step.furnish_chroot(self, work, root, space.tmp)
        with chroot.recording(space, root, masked):
            if isinstance(work, run_step.RunWork):
                run_step.perform_chrooted(self, step, work, state, root, filename, label,
                                          cancel=build.cancel)
            elif isinstance(work, workdir_step.WorkdirWork):
                workdir_step.perform(work, root)
            else:
                copy_step.perform(self, work, root, space.tmp, None)

    def _tell_chroot_limits(self, work: run_step.RunWork) -> None:
        """Once per build, before the first chrooted RUN: what its steps do not get."""
        if self._told_chroot:
            return
        self._told_chroot = True
        network = " and the host's network" if work.network != "host" else ""
        self.progress.notice(
            "chroot isolation: RUN steps get no /proc, no /sys, no device nodes (/dev/null is a"
            f" plain file){network}; no PID, mount or network namespace holds them (see"
            " docs/security.md)")

    @contextmanager
    def readonly_root(self, target: Path, lowers: Sequence[Path]) -> Iterator[Path]:
        """An image's tree at `target`, to read from (COPY --from): an overlay mounted
        read-only, or with chroot isolation a copy (removed on exit)."""
        if self.isolation != "chroot":
            with overlay.mounted_readonly(target, lowers) as root:
                yield root
            return
        target.mkdir(mode=0o700)
        try:
            copy_merged(lowers, target)
            yield target
        finally:
            remove_tree(target, best_effort=True)

    def capture(self, space: Workspace) -> LayerBlob | None:
        """The upper dir as a layer tar in the workspace; None when the step changed
        nothing."""
        if self.source_date_epoch is not None:
            layer.clamp_mtimes(space.upper, self.source_date_epoch)
        return layer.capture(space.upper, space.lowers, space.tmp / "layer.tar",
                             source_date_epoch=self.source_date_epoch)
