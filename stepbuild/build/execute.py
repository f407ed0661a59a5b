"""Running cached steps for real: mount, run or copy, capture, commit.

`Executor.prepare` turns an instruction into a `PreparedStep` (its expanded inputs and cache
key; `run_step` and `copy_step` know the details). `Executor.execute` runs a step that missed
the cache: it mounts an overlay of the image's layers with a fresh upper dir in the builder's
private mount namespace, runs the RUN in the sandbox or copies the files, unmounts, captures
the upper dir as a layer and commits it to the store. On any failure the step's temporary
directory is removed and nothing is committed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from stepbuild.build import copy as copy_step
from stepbuild.build import run as run_step
from stepbuild.build.mounts.context_copies import ContextCopies
from stepbuild.build.plan import Scope
from stepbuild.build.state import ImageState
from stepbuild.build.step import PreparedStep
from stepbuild.frontend import instructions as ins
from stepbuild.layers import capture as layer
from stepbuild.sandbox import host as overlay

__all__ = ["Executor", "PreparedStep"]


class Executor:
    """Prepares and executes RUN/COPY/ADD steps. Collaborators are injected."""

    def __init__(self, store: Any, context: Any, sandbox: Any, progress: Any,
                 build_args: dict[str, str] | None = None, network: str = "host",
                 source_date_epoch: int | None = None, secrets: dict[str, Any] | None = None,
                 ssh: dict[str, str] | None = None) -> None:
        self.store = store
        self.context = context
        self.sandbox = sandbox
        self.progress = progress
        self.build_args = build_args or {}
        self.network = network
        self.source_date_epoch = source_date_epoch
        self.secrets = secrets or {}  # id -> mounts.secrets.SecretSource (--secret)
        self.ssh = ssh or {}  # id -> agent socket path (--ssh)
        self._scratch: Path | None = None
        # what RUN --mount=type=bind binds of the context: copied once per selection
        self.context_copies = ContextCopies(context, self.scratch_file)

    def close(self) -> None:
        """Remove the build's scratch files (downloads)."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def scratch_file(self, name: str) -> Path:
        """A fresh path in this build's scratch dir (removed by `close`)."""
        if self._scratch is None:
            self._scratch = self.store.tmp_dir("build-")
        return self._scratch / f"{len(os.listdir(self._scratch))}-{name}"

    def prepare(self, instruction: ins.Run | ins.Copy | ins.Add, state: ImageState,
                scope: Scope, run: Any) -> PreparedStep:
        if isinstance(instruction, ins.Run):
            return run_step.prepare(self, instruction, state, scope, run)
        return copy_step.prepare(self, instruction, state, scope, run)

    def execute(self, step: PreparedStep, state: ImageState, run: Any, label: str = ""
                ) -> str | None:
        """Run a step that missed the cache; return its layer's diff_id (None: no change)."""
        # COPY/ADD --link: the layer is made on an empty root, independent of the parent.
        lowers = [] if step.work.get("link") else [
            self.store.layer_dir(d) for d in reversed(state.diff_ids)]
        tmp = self.store.tmp_dir("step-")
        try:
            upper = tmp / "upper"
            stubs: list[str] = []
            with overlay.mounted(tmp, lowers) as merged:
                if isinstance(step.instruction, ins.Run):
                    stubs = run_step.perform(self, step, state, merged, tmp,
                                             run.stages.filename, label,
                                             cache_observer=run.team)
                else:
                    copy_step.perform(self, step, merged, tmp)
            run_step.remove_stubs(upper, stubs)
            if self.source_date_epoch is not None:
                layer.clamp_mtimes(upper, self.source_date_epoch)
            blob = layer.capture(upper, lowers, tmp / "layer.tar",
                                 source_date_epoch=self.source_date_epoch)
            if blob is None:
                return None
            self.store.commit_layer(upper, blob.diff_id, blob.path)
            return str(blob.diff_id)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
