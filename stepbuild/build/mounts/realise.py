"""Realising a step's planned mounts: what its sandbox binds, staged for one run.

`realised` puts every planned mount's source in place under the step's tmp dir and yields
the `sandbox.spec.Mount`s and extra environment for the `SandboxSpec`; on exit it unmounts
what it mounted, releases cache-mount locks and removes the mount-point stubs it made in the
image, so that no mount leaves anything in a layer. The mounts it needs on the builder's
side (a bind of an fd, a writable overlay, a tmpfs for secrets) are made by `sandbox.host`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stepbuild.build.mounts.agent import AgentProxy
from stepbuild.build.mounts.cache import acquire_cache
from stepbuild.build.mounts.plan import PlannedMount
from stepbuild.build.mounts.secrets import SECRET_MAX, secret_env, write_secret
from stepbuild.build.mounts.stubs import Stubs
from stepbuild.errors import BuildError
from stepbuild.fs import rootpath
from stepbuild.sandbox import host
from stepbuild.store.layout import cache_mount_name

if TYPE_CHECKING:
    from stepbuild.build.mounts.cache import CacheMountObserver
    from stepbuild.build.mounts.context_copies import ContextCopies
    from stepbuild.sandbox.spec import Mount
    from stepbuild.store.store import Store

# Targets below these are mounted by the sandbox itself (a tmpfs /dev, /proc, /sys): their
# mount points are made there by the child, never as stubs in the image.
_SANDBOX_TREES = ("/dev", "/proc", "/sys")
_SECRETS_TMPFS_SIZE = 32 * SECRET_MAX


@dataclass(frozen=True, slots=True)
class Realised:
    """What a step's SandboxSpec gets: mounts (spec.Mount values, in mount order) and the
    environment entries the mounts add (secrets as env, SSH_AUTH_SOCK)."""

    mounts: tuple[Mount, ...]
    env: tuple[str, ...]


def with_env(env: Sequence[str], extra: Sequence[str]) -> tuple[str, ...]:
    """`env` with `extra` ("K=V") added, replacing entries of the same name."""
    names = {e.partition("=")[0] for e in extra}
    return tuple(e for e in env if e.partition("=")[0] not in names) + tuple(extra)


@contextmanager
def realised(planned: Sequence[PlannedMount], *, store: Store, context_copies: ContextCopies,
             merged: Path, tmp: Path, env: Sequence[str], note: Callable[[str], None],
             observer: CacheMountObserver | None = None) -> Iterator[Realised]:
    """Put the planned mounts in place for one run of the step over the rootfs `merged`.

    Everything is staged under `tmp/mounts/` (cache sub-dirs and `from` sources bound there
    through file descriptors, so no path in an image or a cache is ever followed on the
    host), secrets in a tmpfs that vanishes with the builder even after kill -9. Mount points
    the image lacks are made as stubs and removed again on exit, with the mtime of the
    directory that held them restored, so an unchanged image gets no layer. Context binds
    come from the build's `context_copies`; `observer` (the build's team cache, if any) hears
    of every cache mount the step acquires.
    """
    work = tmp / "mounts"
    work.mkdir(mode=0o700)
    with ExitStack() as stack:
        root_fd = os.open(merged, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        stack.callback(os.close, root_fd)
        stubs = Stubs(root_fd)
        stack.callback(stubs.remove)  # last: after every mount below is gone
        stager = _Stager(stack, work, store, context_copies, note, observer)
        # Optional secrets and agents the build was not given mount nothing, not even a stub.
        ordered = sorted((p for p in planned if p.target and _given(p)),
                         key=lambda p: p.target.count("/"))
        mounts = []
        for p in ordered:
            source = stager.stage(p)
            kind = "dir" if p.type == "tmpfs" or os.path.isdir(source) else "file"
            _make_mount_point(stubs, p, ordered, kind)
            mounts.append(_sandbox_mount(p, source, kind))
        extra = secret_env(planned)
        ssh = [p for p in ordered if p.type == "ssh" and p.socket]
        if ssh and not any(e.startswith("SSH_AUTH_SOCK=") for e in env):
            extra.append(f"SSH_AUTH_SOCK={ssh[0].target}")
        yield Realised(tuple(mounts), tuple(extra))


def _sandbox_mount(p: PlannedMount, source: str, create: str) -> Mount:
    from stepbuild.sandbox.spec import Mount

    options = f"create={create}"
    if p.type == "tmpfs":
        size = f",size={p.size}" if p.size is not None else ""
        return Mount("tmpfs", "", p.target, options=f"nosuid,{options}{size}")
    return Mount("bind", source, p.target, readonly=p.readonly, options=options)


def _given(p: PlannedMount) -> bool:
    return p.secret is not None if p.type == "secret" else bool(p.socket) if (
        p.type == "ssh") else True


def _make_mount_point(stubs: Stubs, p: PlannedMount, ordered: Sequence[PlannedMount],
                      kind: str) -> None:
    """Make the mount point (a `kind` "dir" or "file") in the image, unless a mount made
    before provides it: then the child makes it there (`create=`), inside a sandbox tmpfs
    (/dev) or another --mount."""
    inside = [o for o in ordered if o is not p and p.target.startswith(o.target + "/")]
    if not inside and not any(p.target == t or p.target.startswith(t + "/")
                              for t in _SANDBOX_TREES):
        stubs.make(p.target, kind)


class _Stager:
    """Makes the host-side source of each mount, under `work`; undone by `stack`."""

    def __init__(self, stack: ExitStack, work: Path, store: Store, context_copies: ContextCopies,
                 note: Callable[[str], None], observer: CacheMountObserver | None) -> None:
        self.stack = stack
        self.work = work
        self.store = store
        self.context_copies = context_copies
        self.note = note
        self.observer = observer
        self.count = 0
        self.caches: dict[str, Path] = {}
        self.secrets_dir: Path | None = None

    def path(self, name: str) -> Path:
        self.count += 1
        return self.work / f"{self.count}-{name}"

    def stage(self, p: PlannedMount) -> str:
        """The host path the child binds on the target ("" for a tmpfs)."""
        if p.type == "cache":
            return self.cache(p)
        if p.type == "bind":
            return self.state_source(p) if p.state is not None else self.context_source(p)
        if p.type == "secret":
            return self.secret(p)
        if p.type == "ssh":
            return self.ssh(p)
        return ""

    # cache -------------------------------------------------------------------------------

    def cache(self, p: PlannedMount) -> str:
        name = cache_mount_name(p.identity)
        instance = self.caches.get(name)
        if instance is None:  # the same cache twice in one step: one instance, one lock
            seed = self.seeder(p) if p.state is not None else None
            instance = acquire_cache(self.store.root, p, self.stack, self.note, seed,
                                     self.observer)
            self.caches[name] = instance
        if p.state is not None or not p.source:
            return str(instance)
        fd = _open_dir(instance)
        try:
            sub = rootpath.makedirs_in_root(fd, p.source)
        finally:
            os.close(fd)
        return self.bind_fd(sub, "cache", is_dir=True)

    def seeder(self, p: PlannedMount) -> Callable[[Path], None]:
        def seed(into: Path) -> None:
            import subprocess

            with self.mounted_state(p) as fd:
                try:
                    if not stat.S_ISDIR(os.fstat(fd).st_mode):
                        raise BuildError(f"cache mount {p.cache_id}: /{p.source} in its from="
                                         " stage or image is not a directory")
                    # cp -a (the host's own binary) copies links as links and keeps owners,
                    # modes, times and xattrs; it reaches the source only through our fd.
                    subprocess.run(["/bin/cp", "-a", "--", f"/proc/self/fd/{fd}/.", str(into)],
                                   pass_fds=(fd,), check=True, capture_output=True)
                finally:
                    os.close(fd)
        return seed

    # bind --------------------------------------------------------------------------------

    @contextmanager
    def mounted_state(self, p: PlannedMount) -> Iterator[int]:
        """An O_PATH fd (ours to close) of `p.source` in the `from` state, whose layers stay
        mounted read-only until the context exits."""
        assert p.state is not None  # only a mount with from= comes here
        lowers = [self.store.layer_dir(d) for d in reversed(p.state.diff_ids)]
        with host.mounted_readonly(self.path("from"), lowers) as root:
            root_fd = _open_dir(root)
            try:
                fd = rootpath.open_in_root(root_fd, p.source or "/", os.O_PATH)
            except (FileNotFoundError, NotADirectoryError):
                raise BuildError(f"RUN --mount from=: /{p.source} not found in the stage or"
                                 " image it names") from None
            finally:
                os.close(root_fd)
            yield fd

    def state_source(self, p: PlannedMount) -> str:
        fd = self.stack.enter_context(self.mounted_state(p))
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        staged = self.bind_fd(fd, "from-src", is_dir=is_dir)
        return staged if p.readonly else self.writable(Path(staged), is_dir)

    def context_source(self, p: PlannedMount) -> str:
        assert p.selection is not None  # planned for every bind without from=
        copy = self.context_copies.copy_of(p.selection)
        if p.readonly:
            return str(copy)
        return self.writable(copy, copy.is_dir())

    def writable(self, source: Path, is_dir: bool) -> str:
        """A throwaway writable view of `source`: an overlay with a fresh upper dir (a copy,
        for a file); discarded with the step's tmp dir."""
        if not is_dir:
            import shutil

            copy = self.path("rw-file")
            shutil.copy2(source, copy)
            return str(copy)
        base = self.path("rw")
        base.mkdir()
        return str(self.stack.enter_context(host.mounted(base, [source])))

    def bind_fd(self, fd: int, name: str, *, is_dir: bool) -> str:
        """Bind what `fd` (ours; closed here) is onto a new staging path; return the path."""
        staging = self.path(name)
        try:
            if is_dir:
                staging.mkdir()
            else:
                staging.touch()
            self.stack.enter_context(host.bind_mounted(fd, staging))
        finally:
            os.close(fd)
        return str(staging)

    # secret and ssh ----------------------------------------------------------------------

    def secret(self, p: PlannedMount) -> str:
        assert p.secret is not None
        data = p.secret.read()
        path = self.secret_dir() / f"{self.count}-secret"
        self.count += 1
        write_secret(path, data, uid=p.uid or 0, gid=p.gid or 0,
                     mode=0o400 if p.mode is None else p.mode)
        return str(path)

    def secret_dir(self) -> Path:
        """A tmpfs for this step's secrets: never on disk, gone with the builder."""
        if self.secrets_dir is None:
            directory = self.path("secrets")
            directory.mkdir(mode=0o700)
            self.stack.enter_context(host.tmpfs_mounted(directory, size=_SECRETS_TMPFS_SIZE,
                                                        mode=0o700))
            self.secrets_dir = directory
        return self.secrets_dir

    def ssh(self, p: PlannedMount) -> str:
        path = self.path("ssh.sock")
        proxy = AgentProxy(p.socket, path, mode=p.mode or 0o600, uid=p.uid or 0,
                           gid=p.gid or 0)
        self.stack.callback(proxy.close)
        return str(path)


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
