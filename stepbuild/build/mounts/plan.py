"""Planning RUN --mounts: from the typed `instructions.Mount` values to `PlannedMount`s.

Pure but for reading the context and the store's image list: expands each mount's options,
resolves its target against WORKDIR, checks it against the build options (`--secret`,
`--ssh`) and the stages, and returns `PlannedMount`s whose `key` is what the step's cache key
covers: the mount's declaration plus the identity of its content where the content is an
input (the selected context files' digest, the `from` stage's state) — never a cache
mount's content, a secret's value or an agent socket. The semantics are BuildKit's: see
the package docstring.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stepbuild.build.mounts.secrets import SecretSource
from stepbuild.errors import ContextChanged, StepbuildError
from stepbuild.frontend import instructions as ins
from stepbuild.frontend.flags import SHARING_MODES, FlagError, parse_mount

if TYPE_CHECKING:
    from stepbuild.build.mounts.cache import CacheMountObserver
    from stepbuild.build.state import ImageState
    from stepbuild.sources.context import BuildContext, Selection

SECRETS_DIR = "/run/secrets"
SSH_TARGET = "/run/buildkit/ssh_agent.{}"


@dataclass(frozen=True, slots=True)
class PlannedMount:
    """One RUN --mount, expanded and checked; `key` is its part of the step's cache key.

    `target` is absolute and clean ("" for a secret exported only as an environment
    variable). `state` is the `from=` stage or image, `selection` the context files a
    context bind shows. `secret` is where a secret's value comes
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
    state: ImageState | None = None
    selection: Selection | None = None
    secret: SecretSource | None = None
    socket: str = ""


@dataclass(frozen=True, slots=True)
class Sources:
    """What planning may look things up in. `state(name)` is the ImageState of a stage or
    image called `name`, or None; `error(message)` makes the located error to raise.
    `observer` is told about every cache mount planned (the build's team cache, if any)."""

    context: BuildContext
    state: Callable[[str], ImageState | None]
    error: Callable[[str], StepbuildError]
    secrets: Mapping[str, SecretSource] = field(default_factory=dict)
    ssh: Mapping[str, str] = field(default_factory=dict)
    observer: CacheMountObserver | None = None


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


def _from_state(m: ins.Mount, sources: Sources) -> ImageState | None:
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
    if sources.observer is not None:  # a step that hits the cache declared it too
        sources.observer.cache_mount_planned(planned)
    return planned


def _plan_bind(m: ins.Mount, target: str, sources: Sources) -> PlannedMount:
    state = _from_state(m, sources)
    source = _subpath(m.source)
    selection = None
    if state is None:
        try:
            selection = sources.context.select([source or "."])
        except ContextChanged:
            raise  # not the Stepfile's fault: the lifecycle reads the context again
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

