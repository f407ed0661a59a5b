"""The build's named contexts (`--build-context`, `sources/named.py`), resolved on first use.

A named context is what `FROM NAME`, `COPY --from=NAME` and `RUN --mount from=NAME` read
instead of the stage or image NAME would otherwise name (buildx's rule: the named context
wins over both). Each is resolved once per build, whichever stage thread asks first:

- "path": a `BuildContext` of the directory, without ignore files (a named context has no
  .dockerignore, as in buildx); COPY selects in it, and the step's key holds the digest of
  the selected files (content, modes, links), as for the main context;
- "image": the reference, found in the store or pulled as FROM does it (`--pull`);
- "oci-layout": the image of a layout dir, imported into the store with every blob verified
  (`archive/load.import_base`, as `FROM oci-layout:DIR:REF`).

An image's state goes into the keys of the steps that read it (its diff_ids and config), so a
changed image misses the cache; a changed file of a directory changes the selection digest.
Every use is reported as read from outside the main context, so the no-op fingerprint
(`cli/noop.py`) never replays a build that used one: it does not watch those directories.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from stepbuild.build.images import load_state
from stepbuild.build.plan import located
from stepbuild.errors import BaseImageError, ImageNotFound, PlanError, StepbuildError
from stepbuild.sources.named import NamedContext, lookup

if TYPE_CHECKING:
    from stepbuild.build.seams import BuildStore
    from stepbuild.build.state import ImageState
    from stepbuild.distribution.connection import Connection
    from stepbuild.frontend import instructions as ins
    from stepbuild.progress import Progress
    from stepbuild.sources.context import BuildContext
    from stepbuild.store.store import Store

__all__ = ["NamedSources"]


class NamedSources:
    """The named contexts of one build. `source(name, …)` is thread-safe: stages built at
    once share one resolution of each context (one pull, one import, one walk)."""

    def __init__(self, contexts: Mapping[str, NamedContext], store: BuildStore,
                 progress: Progress, filename: str, *, pull: str,
                 connection: Connection | None, read_outside: Callable[[str], None]) -> None:
        self.contexts = contexts
        self.store = store
        self.progress = progress
        self.filename = filename
        self.pull = pull
        self.connection = connection
        self.read_outside = read_outside
        self._lock = threading.Lock()
        self._resolved: dict[str, tuple[str, str] | BuildContext] = {}

    def find(self, name: str | None) -> NamedContext | None:
        return lookup(self.contexts, name) if name else None

    def context(self, named: NamedContext) -> BuildContext:
        """The directory of a "path" named context, as a build context."""
        from stepbuild.sources.context import BuildContext

        with self._lock:
            found = self._resolved.get(named.name)
            if found is None:
                self.read_outside(f"--build-context {named.name}")
                found = self._resolved[named.name] = BuildContext(Path(named.value))
        assert not isinstance(found, tuple), named  # a path context is always a BuildContext
        return found

    def image(self, named: NamedContext, instruction: ins.Instruction
              ) -> tuple[ImageState, tuple[str, str]]:
        """The state of an "image" or "oci-layout" named context, and its (name, manifest
        digest) for the base annotations; errors located at `instruction`."""
        with self._lock:
            found = self._resolved.get(named.name)
            if found is None:
                self.read_outside(f"--build-context {named.name}")
                digest = self._resolve_image(named, instruction)
                found = self._resolved[named.name] = (named.value, digest)
        assert isinstance(found, tuple), named  # an image context is always (name, digest)
        state = load_state(self.store, found[1])
        if state is None:  # just resolved, under the build's store lock
            raise located(BaseImageError, self.filename, instruction,
                          f"--build-context {named.name}: image {found[1]} vanished")
        return state, found

    def _resolve_image(self, named: NamedContext, instruction: ins.Instruction) -> str:
        """The local manifest digest of the image, imported or pulled as needed."""
        if named.kind == "oci-layout":
            from stepbuild.archive.load import import_base

            try:
                return import_base(_whole(self.store), named.value)
            except StepbuildError as exc:  # as images.import_archive, naming the context
                usage = exc.exit_code == 2 or isinstance(exc, ImageNotFound)
                raise located(PlanError if usage else BaseImageError, self.filename,
                              instruction, f"--build-context {named.name}: {exc.message}",
                              hint=exc.hint) from None
        local = self.store.resolve(named.value)
        if local is not None and self.pull != "always":
            return local.digest
        from stepbuild.distribution.display import TransferDisplay
        from stepbuild.distribution.pull import base_image

        try:
            pulled = base_image(_whole(self.store), named.value, self.pull,
                                found=local is not None,
                                display=TransferDisplay(self.progress.emit,
                                                        verbose=self.progress.verbose),
                                connection=self.connection)
        except StepbuildError as exc:
            kind = PlanError if exc.exit_code == 2 else BaseImageError
            raise located(kind, self.filename, instruction,
                          f"--build-context {named.name}: {exc.message}", hint=exc.hint
                          ) from None
        if pulled is None:
            if local is not None:
                return local.digest
            raise located(BaseImageError, self.filename, instruction,
                          f"--build-context {named.name}: image {named.value!r} not found",
                          hint="with --pull=never it must be in the store already")
        return pulled


def _whole(store: BuildStore) -> Store:
    """`store` as the `store.Store` that importing and pulling take (as `builder.whole_store`:
    the builder's in-memory fakes never get here)."""
    from stepbuild.store.store import Store

    if not isinstance(store, Store):
        raise TypeError(f"{type(store).__name__} is not a store.Store")
    return store
