"""RUN --mount: from the typed `instructions.Mount` values to what a step's sandbox mounts.

Two halves, as for every cached step:

- `plan` (pure but for reading the context and the store's image list): expands each mount's
  options, resolves its target against WORKDIR, checks it against the build options
  (`--secret`, `--ssh`) and the stages, and returns `PlannedMount`s whose `key` is what the
  step's cache key covers: the mount's declaration plus the identity of its content where
  the content is an input (the selected context files' digest, the `from` stage's state) —
  never a cache mount's content, a secret's value or an agent socket.
- `realised` (privileged, per run): puts every planned mount in place for one step and yields
  the `sandbox.spec.Mount`s and extra environment for the `SandboxSpec`; on exit it unmounts
  what it mounted, releases cache-mount locks and removes the mount-point stubs it made in
  the image, so that no mount leaves anything in a layer.

BuildKit semantics, read from dockerfile2llb (convert_runmount.go, convert_secrets.go,
convert_ssh.go) and llb (exec.go):

- `type=cache`: a directory kept in the store (`<store>/cache-mounts/<hash>/`), shared by
  every build of this store; `id` defaults to the target. Its identity is the id, plus the
  `from` state and `source` when seeded from one, plus uid/gid/mode when given (BuildKit
  keys the cache ref on the id and its parent state, and uid/gid/mode make a new parent
  state). `sharing=shared` (default): concurrent users share it; `locked`: an exclusive
  flock, a second user waits; `private`: a user that finds the cache busy gets another
  instance (`data.1`, `data.2`, ... kept for later private users). Without `from`, `source`
  is a sub-directory of the cache to mount. With `from`, a *new* cache starts as a copy of
  the `source` directory of that stage or image (BuildKit mounts `source` of a cache seeded
  with the whole state; copying only `source` is what the step can see of it).
- `type=bind`: `source` (default the root) of the build context, or of `from=` a stage or
  image; read-only unless `rw`, and then writes go to a throwaway overlay upper dir. The
  context's files are copied for the mount as the context selection saw them (ignore files
  applied, owner 0:0 as BuildKit's context transfer gives them).
- `type=secret`: `id` defaults to the basename of `target`, `target` to
  `/run/secrets/<id>` unless `env=` is given alone; mode 0400, uid 0, gid 0 by default. The
  value comes from `--secret id=..,src=FILE|env=VAR` and lives only in a tmpfs mounted for
  the step (and in the step's environment for `env=`). Missing and `required` is an error;
  missing and optional mounts nothing.
- `type=ssh`: `id` "default", target `/run/buildkit/ssh_agent.N` (N counts the step's ssh
  mounts), mode 0600; SSH_AUTH_SOCK points at the first one unless the step's ENV sets it.
  The step gets its own socket, served by a forwarder to the `--ssh` socket (so uid/gid/mode
  apply without touching the user's agent socket).
- `type=tmpfs`: `size` in bytes; nosuid.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import posixpath
import stat
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepbuild.build import keys
from stepbuild.errors import BuildError, StepbuildError, UsageError
from stepbuild.frontend import instructions as ins
from stepbuild.frontend.flags import SHARING_MODES, FlagError, parse_mount
from stepbuild.fs import rootpath

CACHE_MOUNTS = "cache-mounts"  # under the store root
SECRET_MAX = 500 * 1024  # BuildKit refuses bigger secrets too
SECRETS_DIR = "/run/secrets"
SSH_TARGET = "/run/buildkit/ssh_agent.{}"
# Targets below these are mounted by the sandbox itself (a tmpfs /dev, /proc, /sys): their
# mount points are made there by the child, never as stubs in the image.
_SANDBOX_TREES = ("/dev", "/proc", "/sys")


# --- build options: --secret and --ssh ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where a `--secret` value comes from: a file (`kind` "file", `ref` its path) or an
    environment variable of the builder (`kind` "env", `ref` its name). Read at use time."""

    kind: str
    ref: str

    def read(self) -> bytes:
        if self.kind == "env":
            value = os.environ.get(self.ref)
            if value is None:
                raise BuildError(f"secret environment variable {self.ref} is not set")
            data = os.fsencode(value)
        else:
            try:
                with open(self.ref, "rb") as f:
                    data = f.read(SECRET_MAX + 1)
            except OSError as exc:
                raise BuildError(f"cannot read secret file {self.ref}: {exc.strerror}") from None
        if len(data) > SECRET_MAX:
            raise BuildError(f"secret from {self.ref} is larger than {SECRET_MAX} bytes")
        return data


def parse_secret(value: str) -> tuple[str, SecretSource]:
    """`--secret id=ID[,src=FILE|,env=VAR][,type=file|env]` (buildx's syntax).

    With neither `src` nor `env`, the value is the environment variable named like the id
    (docker build's `--secret id=API_TOKEN`). Raises UsageError.
    """
    fields: dict[str, str] = {}
    for item in _csv_fields(value, "--secret"):
        key, eq, val = item.partition("=")
        key = {"source": "src"}.get(key.strip().lower(), key.strip().lower())
        if not eq or key not in ("id", "src", "env", "type"):
            raise UsageError(f"invalid --secret {value!r}: unexpected {item!r}",
                             hint="use --secret id=NAME,src=FILE or --secret id=NAME,env=VAR")
        fields[key] = val
    kind = fields.get("type") or ("file" if "src" in fields else "env")
    ident = fields.get("id") or (posixpath.basename(fields["src"]) if "src" in fields else "")
    if not ident or kind not in ("file", "env"):
        raise UsageError(f"invalid --secret {value!r}: it needs an id (and type file or env)")
    if kind == "file":
        path = fields.get("src", "")
        if not os.path.isfile(path):
            raise UsageError(f"--secret {ident}: {path!r} is not a readable file")
        return ident, SecretSource("file", os.path.abspath(path))
    return ident, SecretSource("env", fields.get("env") or fields.get("src") or ident)


def parse_ssh(value: str) -> tuple[str, str]:
    """`--ssh default` ($SSH_AUTH_SOCK) or `--ssh ID=SOCKET`: (id, absolute socket path).

    Only agent sockets: BuildKit also takes private key files, which need an agent of our
    own; load the key into ssh-agent and pass its socket instead. Raises UsageError.
    """
    ident, eq, path = value.partition("=")
    if not ident or "," in path or (eq and not path):
        raise UsageError(f"invalid --ssh {value!r}", hint="use --ssh default or --ssh ID=SOCKET")
    if not eq:
        path = os.environ.get("SSH_AUTH_SOCK", "")
        if not path:
            raise UsageError(f"--ssh {ident}: SSH_AUTH_SOCK is not set",
                             hint="start ssh-agent, or give the socket: --ssh ID=SOCKET")
    try:
        is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError as exc:
        raise UsageError(f"--ssh {ident}: {path}: {exc.strerror}") from None
    if not is_socket:
        raise UsageError(f"--ssh {ident}: {path} is not a socket",
                         hint="only agent sockets are supported: ssh-add the key and pass"
                              " $SSH_AUTH_SOCK")
    return ident, os.path.abspath(path)


def _csv_fields(text: str, what: str) -> list[str]:
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise UsageError(f"malformed {what} value {text!r}: {exc}") from None
    return [item for item in (rows[0] if rows else []) if item]


# --- planning ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedMount:
    """One RUN --mount, expanded and checked; `key` is its part of the step's cache key.

    `target` is absolute and clean ("" for a secret exported only as an environment
    variable). `state` is the `from=` stage or image (ImageState), `selection` the context
    files a context bind shows (context.Selection). `secret` is where a secret's value comes
    from, `socket` the agent socket of an ssh mount; both None/"" for an optional one the
    build was not given (nothing is mounted then).
    """

    type: str
    target: str
    key: dict[str, Any]
    readonly: bool = False
    source: str = ""
    cache_id: str = ""
    identity: dict[str, Any] = field(default_factory=dict)
    sharing: str = "shared"
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    env: str | None = None
    state: Any = None
    selection: Any = None
    secret: SecretSource | None = None
    socket: str = ""


@dataclass(frozen=True, slots=True)
class Sources:
    """What planning may look things up in. `state(name)` is the ImageState of a stage or
    image called `name`, or None; `error(message)` makes the located error to raise."""

    context: Any
    state: Callable[[str], Any]
    error: Callable[[str], StepbuildError]
    secrets: Mapping[str, SecretSource] = field(default_factory=dict)
    ssh: Mapping[str, str] = field(default_factory=dict)


def plan(run: ins.Run, expand: Callable[[str], str], workdir: str, sources: Sources
         ) -> tuple[PlannedMount, ...]:
    """Every --mount of `run`, expanded with `expand` and checked. Raises `sources.error`."""
    planned: list[PlannedMount] = []
    ssh_count = 0
    for mount in run.mounts:
        m = expand_mount(mount, expand, sources)
        target = mount_target(m.target, workdir, sources) if m.target else ""
        if m.type == "cache":
            planned.append(_plan_cache(m, target, sources))
        elif m.type == "bind":
            planned.append(_plan_bind(m, target, sources))
        elif m.type == "tmpfs":
            planned.append(PlannedMount("tmpfs", target, {"type": "tmpfs", "target": target,
                                                          "size": m.size}, size=m.size))
        elif m.type == "secret":
            planned.append(_plan_secret(m, target, sources))
        else:
            planned.append(_plan_ssh(m, target or SSH_TARGET.format(ssh_count), sources))
            ssh_count += 1
    targets = [p.target for p in planned if p.target]
    if dup := sorted({t for t in targets if targets.count(t) > 1}):
        raise sources.error(f"RUN --mount: more than one mount on {dup[0]}")
    return tuple(planned)


def expand_mount(mount: ins.Mount, expand: Callable[[str], str], sources: Sources) -> ins.Mount:
    """The mount with `$VAR`s in its option values expanded, re-parsed (numbers included)."""
    if "$" not in mount.raw:
        return mount
    out = []
    for item in next(csv.reader([mount.raw])):
        key, eq, value = item.partition("=")
        out.append(f"{key}={expand(value)}" if eq else item)
    text = io.StringIO()
    csv.writer(text, lineterminator="").writerow(out)
    try:
        return parse_mount(text.getvalue())
    except FlagError as exc:
        raise sources.error(str(exc)) from None


def mount_target(target: str, workdir: str, sources: Sources) -> str:
    """An absolute, clean target: a relative one is below WORKDIR; "/" is refused."""
    if "\0" in target:
        raise sources.error("invalid mount target: NUL character")
    if not target.startswith("/"):
        target = workdir.rstrip("/") + "/" + target
    cleaned = "/" + posixpath.normpath(target).lstrip("/")
    if cleaned == "/":
        raise sources.error(f"invalid mount target {target!r}")
    return cleaned


def _from_state(m: ins.Mount, sources: Sources) -> Any:
    if not m.from_:
        return None
    state = sources.state(m.from_)
    if state is None:
        raise sources.error(f"RUN --mount from={m.from_}: no stage or image of that name")
    return state


def _subpath(source: str | None) -> str:
    return posixpath.normpath("/" + (source or "")).lstrip("/")


def _plan_cache(m: ins.Mount, target: str, sources: Sources) -> PlannedMount:
    sharing = m.sharing or "shared"
    if sharing not in SHARING_MODES:
        raise sources.error(
            f"unsupported sharing value {sharing!r}: use shared, private or locked")
    state = _from_state(m, sources)
    cache_id = m.id or target
    source = _subpath(m.source)
    identity: dict[str, Any] = {"id": cache_id}
    if state is not None:
        identity.update({"from": state.key, "source": source})
    identity.update({k: v for k, v in (("mode", m.mode), ("uid", m.uid), ("gid", m.gid))
                     if v is not None})
    key = {"type": "cache", "target": target, "id": cache_id, "sharing": sharing,
           "source": source, "from": state.key if state is not None else None,
           "mode": m.mode, "uid": m.uid, "gid": m.gid, "readonly": m.readonly}
    planned = PlannedMount("cache", target, key, readonly=m.readonly, source=source,
                           cache_id=cache_id, identity=identity, sharing=sharing, mode=m.mode,
                           uid=m.uid, gid=m.gid, state=state)
    for observer in list(_OBSERVERS):  # a step that hits the cache declared it too
        observer.cache_mount_planned(planned)
    return planned


def _plan_bind(m: ins.Mount, target: str, sources: Sources) -> PlannedMount:
    state = _from_state(m, sources)
    source = _subpath(m.source)
    selection = None
    if state is None:
        try:
            selection = sources.context.select([source or "."])
        except StepbuildError as exc:
            raise sources.error(f"RUN --mount source={m.source or '/'}: {exc.message}") from None
    key = {"type": "bind", "target": target, "source": source, "readonly": m.readonly,
           "from": state.key if state is not None else None,
           "context": selection.digest() if selection is not None else None}
    return PlannedMount("bind", target, key, readonly=m.readonly, source=source, state=state,
                        selection=selection)


def _plan_secret(m: ins.Mount, target: str, sources: Sources) -> PlannedMount:
    ident = m.id or posixpath.basename(target)
    if not target and not m.env:
        target = f"{SECRETS_DIR}/{posixpath.basename(ident)}"
    secret = sources.secrets.get(ident)
    if secret is None and m.required:
        raise _missing(sources, f"secret {ident!r}", f"--secret id={ident},src=FILE")
    mode = 0o400 if m.mode is None else m.mode
    key = {"type": "secret", "id": ident, "target": target, "env": m.env, "mode": mode,
           "uid": m.uid or 0, "gid": m.gid or 0, "required": m.required}
    return PlannedMount("secret", target, key, readonly=True, cache_id=ident, mode=mode,
                        uid=m.uid or 0, gid=m.gid or 0, env=m.env, secret=secret)


def _plan_ssh(m: ins.Mount, target: str, sources: Sources) -> PlannedMount:
    ident = m.id or "default"
    socket = sources.ssh.get(ident, "")
    if not socket and m.required:
        raise _missing(sources, f"ssh agent {ident!r}", f"--ssh {ident}")
    mode = 0o600 if m.mode is None else m.mode
    key = {"type": "ssh", "id": ident, "target": target, "mode": mode, "uid": m.uid or 0,
           "gid": m.gid or 0, "required": m.required}
    return PlannedMount("ssh", target, key, readonly=False, cache_id=ident, mode=mode,
                        uid=m.uid or 0, gid=m.gid or 0, socket=socket)


def _missing(sources: Sources, what: str, option: str) -> StepbuildError:
    error = sources.error(f"{what} is required but was not given")
    error.hint = f"pass it to the build: stepbuild build {option} ..."
    return error


def key_inputs(planned: Sequence[PlannedMount]) -> list[dict[str, Any]]:
    """The mounts' part of the step key (in the order written: order decides nesting)."""
    return [p.key for p in planned]


def cache_dir_name(identity: Mapping[str, Any]) -> str:
    """The directory of a cache mount under `<store>/cache-mounts/`: a hash of its identity."""
    return keys.digest(dict(identity))


# --- realising: the per-step mounts ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Realised:
    """What a step's SandboxSpec gets: mounts (spec.Mount values, in mount order) and the
    environment entries the mounts add (secrets as env, SSH_AUTH_SOCK)."""

    mounts: tuple[Any, ...]
    env: tuple[str, ...]


def with_env(env: Sequence[str], extra: Sequence[str]) -> tuple[str, ...]:
    """`env` with `extra` ("K=V") added, replacing entries of the same name."""
    names = {e.partition("=")[0] for e in extra}
    return tuple(e for e in env if e.partition("=")[0] not in names) + tuple(extra)


@contextmanager
def realised(planned: Sequence[PlannedMount], *, store: Any, executor: Any, merged: Path,
             tmp: Path, env: Sequence[str], note: Callable[[str], None]) -> Iterator[Realised]:
    """Put the planned mounts in place for one run of the step over the rootfs `merged`.

    Everything is staged under `tmp/mounts/` (cache sub-dirs and `from` sources bound there
    through file descriptors, so no path in an image or a cache is ever followed on the
    host), secrets in a tmpfs that vanishes with the builder even after kill -9. Mount points
    the image lacks are made as stubs and removed again on exit, with the mtime of the
    directory that held them restored, so an unchanged image gets no layer.
    """
    work = tmp / "mounts"
    work.mkdir(mode=0o700)
    with ExitStack() as stack:
        root_fd = os.open(merged, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        stack.callback(os.close, root_fd)
        stubs = _Stubs(root_fd)
        stack.callback(stubs.remove)  # last: after every mount below is gone
        stager = _Stager(stack, work, store, executor, note)
        # Optional secrets and agents the build was not given mount nothing, not even a stub.
        ordered = sorted((p for p in planned if p.target and _given(p)),
                         key=lambda p: p.target.count("/"))
        mounts = []
        for p in ordered:
            source = stager.stage(p)
            kind = "dir" if p.type == "tmpfs" or os.path.isdir(source) else "file"
            _make_mount_point(stubs, p, ordered, kind)
            mounts.append(_sandbox_mount(p, source, kind))
        extra = _secret_env(planned)
        ssh = [p for p in ordered if p.type == "ssh" and p.socket]
        if ssh and not any(e.startswith("SSH_AUTH_SOCK=") for e in env):
            extra.append(f"SSH_AUTH_SOCK={ssh[0].target}")
        yield Realised(tuple(mounts), tuple(extra))


def _sandbox_mount(p: PlannedMount, source: str, create: str) -> Any:
    from stepbuild.sandbox.spec import Mount

    options = f"create={create}"
    if p.type == "tmpfs":
        size = f",size={p.size}" if p.size is not None else ""
        return Mount("tmpfs", "", p.target, options=f"nosuid,{options}{size}")
    return Mount("bind", source, p.target, readonly=p.readonly, options=options)


def _given(p: PlannedMount) -> bool:
    return p.secret is not None if p.type == "secret" else bool(p.socket) if (
        p.type == "ssh") else True


def _make_mount_point(stubs: _Stubs, p: PlannedMount, ordered: Sequence[PlannedMount],
                      kind: str) -> None:
    """Make the mount point (a `kind` "dir" or "file") in the image, unless a mount made
    before provides it: then the child makes it there (`create=`), inside a sandbox tmpfs
    (/dev) or another --mount."""
    inside = [o for o in ordered if o is not p and p.target.startswith(o.target + "/")]
    if not inside and not any(p.target == t or p.target.startswith(t + "/")
                              for t in _SANDBOX_TREES):
        stubs.make(p.target, kind)


def _secret_env(planned: Sequence[PlannedMount]) -> list[str]:
    extra = []
    for p in planned:
        if p.type == "secret" and p.env and p.secret is not None:
            value = os.fsdecode(p.secret.read())
            if "\0" in value:
                raise BuildError(f"secret {p.cache_id!r} holds a NUL byte: it cannot be an"
                                 " environment variable")
            extra.append(f"{p.env}={value}")
    return extra


class _Stager:
    """Makes the host-side source of each mount, under `work`; undone by `stack`."""

    def __init__(self, stack: ExitStack, work: Path, store: Any, executor: Any,
                 note: Callable[[str], None]) -> None:
        self.stack = stack
        self.work = work
        self.store = store
        self.executor = executor
        self.note = note
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
        name = cache_dir_name(p.identity)
        instance = self.caches.get(name)
        if instance is None:  # the same cache twice in one step: one instance, one lock
            seed = self.seeder(p) if p.state is not None else None
            instance = acquire_cache(self.store.root, p, self.stack, self.note, seed)
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
        from stepbuild.sandbox import host as overlay

        lowers = [self.store.layer_dir(d) for d in reversed(p.state.diff_ids)]
        with overlay.mounted_readonly(self.path("from"), lowers) as root:
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
        copy = context_copy(self.executor, p.selection)
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
        from stepbuild.sandbox import linux

        base = self.path("rw")
        for sub in ("merged", "upper", "work"):
            (base / sub).mkdir(parents=True)
        linux.mount_overlay(str(base / "merged"), [str(source)], str(base / "upper"),
                            str(base / "work"))
        self.stack.callback(linux.umount, str(base / "merged"))
        return str(base / "merged")

    def bind_fd(self, fd: int, name: str, *, is_dir: bool) -> str:
        """Bind what `fd` (ours; closed here) is onto a new staging path; return the path."""
        from stepbuild.sandbox import linux

        staging = self.path(name)
        try:
            if is_dir:
                staging.mkdir()
            else:
                staging.touch()
            tree = linux.clone_tree(fd)
            try:
                linux.attach(tree, str(staging))
            finally:
                os.close(tree)
        finally:
            os.close(fd)
        self.stack.callback(linux.umount, str(staging))
        return str(staging)

    # secret and ssh ----------------------------------------------------------------------

    def secret(self, p: PlannedMount) -> str:
        assert p.secret is not None
        data = p.secret.read()
        directory = self.secret_dir()
        path = directory / f"{self.count}-secret"
        self.count += 1
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchown(fd, p.uid or 0, p.gid or 0)
            os.fchmod(fd, 0o400 if p.mode is None else p.mode)
        finally:
            os.close(fd)
        return str(path)

    def secret_dir(self) -> Path:
        """A tmpfs for this step's secrets: never on disk, gone with the builder."""
        if self.secrets_dir is None:
            from stepbuild.sandbox import linux

            directory = self.path("secrets")
            directory.mkdir(mode=0o700)
            tree = linux.new_fs("tmpfs", [("source", "tmpfs"), ("mode", "0700"),
                                          ("size", str(32 * SECRET_MAX))],
                                linux.ATTRS["nodev"] | linux.ATTRS["nosuid"]
                                | linux.ATTRS["noexec"])
            try:
                linux.attach(tree, str(directory))
            finally:
                os.close(tree)
            self.stack.callback(linux.umount, str(directory))
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


# --- cache mounts in the store -----------------------------------------------------------------


def cache_mounts_dir(store_root: Path) -> Path:
    from stepbuild.store.layout import StoreLayout  # the store names its folders
    return StoreLayout(Path(store_root)).cache_mounts


def acquire_cache(store_root: Path, p: PlannedMount, stack: ExitStack,
                  note: Callable[[str], None], seed: Callable[[Path], None] | None) -> Path:
    """The instance dir of the cache `p` for this step, locked as its sharing mode says until
    `stack` closes; created (and seeded) if new. See the module docstring for the modes."""
    base = cache_mounts_dir(store_root) / cache_dir_name(p.identity)
    base.parent.mkdir(mode=0o700, exist_ok=True)
    base.mkdir(mode=0o700, exist_ok=True)
    _write_meta(base, p)
    if p.sharing == "private":
        number = 0
        while True:
            name = "data" if number == 0 else f"data.{number}"
            fd = _lock(base / f"{name}.lock", exclusive=True, wait=False)
            if fd is not None:
                break
            number += 1
        if number:
            note(f"cache mount {p.cache_id}: busy, using private instance {number}")
    else:
        name = "data"
        exclusive = p.sharing == "locked"
        fd = _lock(base / "data.lock", exclusive=exclusive, wait=False)
        if fd is None:
            note(f"cache mount {p.cache_id}: waiting for its lock (sharing={p.sharing})")
            fd = _lock(base / "data.lock", exclusive=exclusive, wait=True)
    assert fd is not None
    stack.callback(os.close, fd)
    instance = base / name
    observers = list(_OBSERVERS)
    for observer in observers:
        observer.cache_mount_used(store_root, p, base)
    if not instance.is_dir():
        if seed is None and name == "data":  # a new cache: maybe the team cache has it
            for observer in observers:
                seed = observer.cache_mount_seed(store_root, p)
                if seed is not None:
                    break
        _create_instance(base, instance, p, seed)
    return instance


_OBSERVERS: weakref.WeakSet[Any] = weakref.WeakSet()


def observe_cache_mounts(observer: Any) -> None:
    """Tell `observer` (held weakly) about every cache mount a RUN of this process declares,
    run or cached (`observer.cache_mount_planned(p)`, when planned), and every one a step
    acquires: `observer.cache_mount_used(store_root, p, base)` once its lock is held; for the main
    instance of a cache that does not exist yet and has no `from`,
    `observer.cache_mount_seed(store_root, p)`: a callable filling the new (temporary)
    instance dir, or None. The team cache uses this to export and import cache mounts."""
    _OBSERVERS.add(observer)


def forget_cache_mounts(observer: Any) -> None:
    """Stop telling `observer` (its build is over; it may live on until collected)."""
    _OBSERVERS.discard(observer)


def _lock(path: Path, *, exclusive: bool, wait: bool) -> int | None:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
    try:
        fcntl.flock(fd, flags)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _create_instance(base: Path, instance: Path, p: PlannedMount,
                     seed: Callable[[Path], None] | None) -> None:
    """Make a new cache instance beside its final name, then rename it into place; a
    concurrent creator (sharing=shared) that wins the rename makes ours redundant."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="new-", dir=base))
    try:
        if seed is not None:
            seed(tmp)
        os.chown(tmp, p.uid or 0, p.gid or 0)
        os.chmod(tmp, 0o755 if p.mode is None else p.mode)
        try:
            os.rename(tmp, instance)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_meta(base: Path, p: PlannedMount) -> None:
    """`meta.json`: which cache this is, for people looking at the store."""
    meta = base / "meta.json"
    if meta.exists():
        return
    tmp = base / f"meta.json.{os.getpid()}.{threading.get_ident()}"
    tmp.write_bytes(keys.canonical({"id": p.cache_id, "identity": p.identity}) + b"\n")
    os.replace(tmp, meta)


def prune_cache_mounts(store: Any) -> int:
    """Delete every cache mount of the store; return how many. Takes the store lock
    exclusively (builds hold it shared), so no build is using one meanwhile. Each is renamed
    into tmp/ first, so a crash mid-delete leaves no half cache under a real name."""
    directory = cache_mounts_dir(store.root)
    removed = 0
    with store.lock(exclusive=True):
        if not directory.is_dir():
            return 0
        for entry in sorted(os.listdir(directory)):
            doomed = store.tmp_dir("cache-mount-") / "gone"
            os.rename(directory / entry, doomed)
            _remove_tree(doomed.parent)
            removed += 1
    return removed


def _remove_tree(path: Path) -> None:
    import shutil

    def retry(func: Callable[..., Any], failed: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(failed), 0o700)
        func(failed)

    shutil.rmtree(path, onerror=retry)


# --- bind sources from the context -------------------------------------------------------------

_COPIES: weakref.WeakKeyDictionary[Any, dict[str, Path]] = weakref.WeakKeyDictionary()
_COPIES_LOCK = threading.Lock()


def context_copy(executor: Any, selection: Any) -> Path:
    """The selected context files copied into the build's scratch dir, once per build and
    selection digest: what a context bind mount shows (owner 0:0, modes and mtimes kept)."""
    digest = selection.digest()
    with _COPIES_LOCK:
        copies = _COPIES.setdefault(executor, {})
        known = copies.get(digest)
        if known is not None and os.path.lexists(known):
            return known
        copy: Path = executor.scratch_file("bind-context")
        _copy_selection(executor.context, selection, copy)
        copies[digest] = copy
        return copy


def _copy_selection(context: Any, selection: Any, dest: Path) -> None:
    group = selection.groups[0]
    if not group.is_dir:
        _copy_file(context, group.resolved, dest, group.entries[0])
        return
    dest.mkdir(mode=0o700)
    dirs = [(dest, group.mode, None)]
    for entry in sorted(group.entries, key=lambda e: e.path):
        target = dest / entry.path
        source = entry.path if group.resolved == "." else f"{group.resolved}/{entry.path}"
        if entry.kind == "dir":
            target.mkdir(mode=0o700)
            dirs.append((target, entry.mode, entry.mtime_ns))
        elif entry.kind == "symlink":
            os.symlink(entry.link_target, target)
            os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
        else:
            _copy_file(context, source, target, entry)
    for path, mode, mtime in reversed(dirs):  # children first: they change their parent's
        os.chmod(path, mode)
        if mtime is not None:
            os.utime(path, ns=(mtime, mtime))


def _copy_file(context: Any, source: str, target: Path, entry: Any) -> None:
    src = context.open_file(source)
    try:
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            while chunk := os.read(src, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            os.fchmod(fd, entry.mode)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)
    finally:
        os.close(src)


# --- mount-point stubs -------------------------------------------------------------------------


@dataclass(slots=True)
class _Made:
    """One stub: `name` in the directory `parent_fd` (ours, open), its inode, and for the
    first one made in an existing directory, that directory's times before and after."""

    parent_fd: int
    name: str
    ino: int
    is_dir: bool
    times: tuple[int, int] | None = None
    mtime_after: int = 0


class _Stubs:
    """Mount points made in the image for mounts whose target it lacks, and their removal.

    Made by walking the target inside the root (`rootpath`: symlinks in the image resolve
    inside it), removed through the directory fds kept from that walk, never by path: a step
    that moves or replaces a directory cannot make us remove anything but our own stubs.
    """

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.made: list[_Made] = []
        self.fds: list[int] = []

    def make(self, target: str, kind: str, hops: int = 0) -> None:
        """Make `target` (and missing parents) as a `kind` "dir" or "file" unless it exists.

        A dangling symlink on the way is followed inside the root, and what it points to is
        made there (contain, don't reject: SECURITY.md rule 2), as Docker would.
        """
        try:
            os.close(rootpath.open_in_root(self.root_fd, target, os.O_PATH))
            return  # the image has it
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BuildError(f"mount target {target}: {exc.strerror}") from None
        parts = target.strip("/").split("/")
        depth, parent = self._deepest(target, parts)
        st = os.fstat(parent)
        for number, name in enumerate(parts[depth:]):
            link = _readlink_at(parent, name)
            if link is not None:
                if hops >= rootpath.MAX_SYMLINKS:
                    raise BuildError(f"mount target {target}: too many symlinks")
                here = "/" + "/".join(parts[:depth + number])
                self.make(posixpath.join(here, link, *parts[depth + number + 1:]), kind,
                          hops + 1)
                return
            is_dir = depth + number < len(parts) - 1 or kind == "dir"
            self._create(parent, name, is_dir, target)
            made = _Made(parent, name, os.stat(name, dir_fd=parent, follow_symlinks=False).st_ino,
                         is_dir)
            if number == 0:
                made.times = (st.st_atime_ns, st.st_mtime_ns)
                made.mtime_after = os.fstat(parent).st_mtime_ns
            self.made.append(made)
            if is_dir:
                parent = self._open(os.open, name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                    | os.O_CLOEXEC, dir_fd=parent)

    def _open(self, opener: Callable[..., int], *args: Any, **kwargs: Any) -> int:
        fd = opener(*args, **kwargs)
        self.fds.append(fd)
        return fd

    def _deepest(self, target: str, parts: list[str]) -> tuple[int, int]:
        """(number of leading components that exist, an fd of the directory they lead to)."""
        for depth in range(len(parts) - 1, -1, -1):
            try:
                return depth, self._open(rootpath.open_in_root, self.root_fd,
                                         "/" + "/".join(parts[:depth]),
                                         os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise BuildError(f"mount target {target}: {exc.strerror}") from None
        raise BuildError(f"mount target {target}: the image has no root directory")

    @staticmethod
    def _create(parent: int, name: str, is_dir: bool, target: str) -> None:
        if name in (".", ".."):
            raise BuildError(f"mount target {target}: cannot make {name!r} below a missing"
                             " directory")
        try:
            if is_dir:
                os.mkdir(name, 0o700, dir_fd=parent)
                os.chmod(name, 0o755, dir_fd=parent, follow_symlinks=False)
            else:
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o644, dir_fd=parent))
        except FileExistsError:
            raise BuildError(f"mount target {target}: {name!r} appeared while the mount point"
                             " was being made") from None

    def remove(self) -> None:
        """Remove the stubs still empty and ours, newest first; restore the times of the
        directory that held them if the step did not change it meanwhile."""
        try:
            for made in reversed(self.made):
                before = os.fstat(made.parent_fd).st_mtime_ns
                if self._remove_one(made) and made.times is not None and (
                        before == made.mtime_after):
                    os.utime(made.parent_fd, ns=made.times)
        finally:
            for fd in self.fds:
                os.close(fd)
            self.made.clear()
            self.fds.clear()

    @staticmethod
    def _remove_one(made: _Made) -> bool:
        try:
            st = os.stat(made.name, dir_fd=made.parent_fd, follow_symlinks=False)
            if st.st_ino != made.ino:
                return False
            if made.is_dir and stat.S_ISDIR(st.st_mode):
                os.rmdir(made.name, dir_fd=made.parent_fd)
            elif not made.is_dir and stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(made.name, dir_fd=made.parent_fd)
            else:
                return False
        except OSError:
            return False  # not empty any more (the step wrote there): keep it
        return True


def _readlink_at(dir_fd: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return None  # missing, or not a symlink


# --- the ssh agent forwarder -------------------------------------------------------------------


class AgentProxy:
    """A unix socket at `path` (owner uid:gid, `mode`) whose connections are forwarded to the
    agent socket `upstream`, from threads of the builder, until `close`.

    The step gets a socket of its own, as BuildKit's (forwarded to the client over its
    session): the owner and mode asked for apply without changing the user's agent socket,
    and the step can reach nothing but the agent. Socket paths longer than sun_path's 108
    bytes are reached through /proc/self/fd/N/NAME of their directory.
    """

    def __init__(self, upstream: str, path: Path, *, mode: int, uid: int, gid: int) -> None:
        import socket

        self.upstream = upstream
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _at_short_path(path, self.listener.bind)
            os.chown(path, uid, gid, follow_symlinks=False)
            os.chmod(path, mode)
            self.listener.listen(16)
        except BaseException:
            self.listener.close()
            raise
        self._stop_r, self._stop_w = socket.socketpair()
        self._lock = threading.Lock()
        self._open: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._serve, name="ssh-agent-proxy", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            selector.register(self._stop_r, selectors.EVENT_READ)
            while True:
                ready = [key.fileobj for key, _ in selector.select()]
                if self._stop_r in ready:
                    return
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    continue
                self._forward(conn)

    def _forward(self, conn: Any) -> None:
        import socket

        agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _at_short_path(Path(self.upstream), agent.connect)
        except OSError:
            agent.close()
            conn.close()  # the agent is gone: the client sees EOF, as with a dead agent
            return
        with self._lock:
            self._open += [conn, agent]
            for a, b in ((conn, agent), (agent, conn)):
                thread = threading.Thread(target=_pump, args=(a, b), daemon=True)
                self._threads.append(thread)
                thread.start()

    def close(self, drain: float = 2.0) -> None:
        """Stop accepting; let what the (finished) step sent reach the agent and the agent
        close, for up to `drain` seconds; then cut what is left."""
        import socket
        import time

        self._stop_w.send(b"x")
        self._thread.join()
        deadline = time.monotonic() + drain
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            for sock in self._open:
                with _suppressed():
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=1)
        for sock in (*self._open, self.listener, self._stop_r, self._stop_w):
            sock.close()


def _pump(source: Any, sink: Any) -> None:
    import socket

    with _suppressed():
        while data := source.recv(65536):
            sink.sendall(data)
    with _suppressed():
        sink.shutdown(socket.SHUT_WR)


class _suppressed:
    """`with _suppressed():` ignores OSError (a peer gone away)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, *rest: Any) -> bool:
        return kind is not None and issubclass(kind, OSError)


def _at_short_path(path: Path, call: Callable[[str], None]) -> None:
    """`call(path)` for bind/connect, through an fd of the directory if the path is long."""
    if len(os.fsencode(path)) < 100:
        call(str(path))
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        call(f"/proc/self/fd/{fd}/{path.name}")
    finally:
        os.close(fd)
