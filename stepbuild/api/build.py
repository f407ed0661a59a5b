"""`build`: a Stepfile into an image, in this process — what `stepbuild build` runs.

The body of the CLI's build, moved here so that the command line and Python callers take one
path: the CLI turns its flags into a `BuildRequest`, makes its view of the progress and calls
`run_build`; `build` does the same with no view at all (or a stream) and a callback.

Errors are raised, never printed; before one leaves, every listener has seen `build.error`
(and, for a step that failed, `step.error`). Nothing here writes to stdout or touches signal
handlers: those belong to `cli/main.py`.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from stepbuild.api.request import BuildRequest, default_connection, store_root
from stepbuild.api.steps import StepCollector, StepRecord
from stepbuild.errors import IsolationUnavailable, StepbuildError
from stepbuild.progress.events import EventCallback
from stepbuild.progress.notices import notices

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from stepbuild.archive.export import Exported
    from stepbuild.archive.outputs import Output
    from stepbuild.build.builder import Builder, BuildOptions
    from stepbuild.build.builder import BuildResult as Built
    from stepbuild.build.execute import Executor
    from stepbuild.build.mounts.secrets import SecretSource
    from stepbuild.distribution.connection import Connection
    from stepbuild.frontend.instructions import Stepfile
    from stepbuild.oci.annotations import Annotations
    from stepbuild.progress import Progress
    from stepbuild.sandbox.isolation import Isolation
    from stepbuild.sandbox.limits import Limits
    from stepbuild.sources.context import BuildContext
    from stepbuild.sources.named import NamedContext
    from stepbuild.store.store import Store
    from stepbuild.teamcache.cache import CacheSpec

__all__ = ["BuildResult", "build", "enter_build_namespace", "open_store", "run_build"]


@dataclass(frozen=True, slots=True)
class BuildResult:
    """What a build made.

    `digest`: the image's digest to use everywhere — the registry's after a push (every tag
    got the same one), else `local_digest`, the manifest digest in the store. The two differ
    after a push: the store keeps layers uncompressed. `config_digest`: the image config's.
    `pushed`: registry reference → the digest it now serves. `tags`: the names given in the
    store. `steps`: one record per step, in step order; `cached`: how many steps a cache had
    (cache hits). `warnings`: every warning of the build, in order; `stepfile_warnings`:
    those about the Stepfile and build args alone. `exported`: one (type, dest, digest or
    None) per output. `outside`: what the build read from outside its context (why a
    rebuild may differ); `keys`: the cache keys of its RUN/COPY/ADD steps. `platforms`:
    each platform built (`linux/arm64`) → its image manifest's digest in the store; with
    several, `local_digest` is the image index's and `config_digest` is "" (an index has
    no config).
    """

    digest: str
    local_digest: str
    config_digest: str
    pushed: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    steps: tuple[StepRecord, ...] = ()
    cached: int = 0
    warnings: tuple[str, ...] = ()
    stepfile_warnings: tuple[str, ...] = ()
    exported: tuple[tuple[str, str, str | None], ...] = ()
    outside: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    platforms: dict[str, str] = field(default_factory=dict)


class _Discard(io.StringIO):
    """The progress stream of a caller that wants none: written to, shown nowhere."""

    def write(self, text: str) -> int:
        return len(text)


def build(request: BuildRequest, *, on_event: EventCallback | None = None,
          stream: TextIO | None = None, verbose: bool = False) -> BuildResult:
    """Build `request` in this process and return what it made.

    `on_event` gets every `Event` of the build (progress/events.py), in the thread that
    reports it (stages run in threads of their own): it must be quick, and an exception it
    raises fails the build. `stream`: where the plain progress log goes (None: nowhere);
    `verbose`: -v detail in it. Raises `StepbuildError`s (docs/api.md lists them), after
    `on_event` has seen `build.error`."""
    progress = caller_progress(on_event, stream, verbose=verbose)
    try:
        return run_build(request, progress)
    finally:
        progress.close()


def caller_progress(on_event: EventCallback | None, stream: TextIO | None, *,
                   verbose: bool = False) -> Progress:
    """The Progress of an API call: the plain log on `stream` (None: nowhere), every event
    to `on_event`."""
    from stepbuild.progress import Progress

    return Progress(stream or _Discard(), quiet=stream is None, verbose=verbose,
                    listeners=[on_event] if on_event is not None else [])


def run_build(request: BuildRequest, progress: Progress, *, isolation: Isolation | None = None,
              on_resolve: Callable[[str], None] | None = None,
              contexts: Mapping[str, NamedContext] | None = None) -> BuildResult:
    """`build` with a view of the caller's own (the CLI's). `isolation`: a mode chosen
    already (cli/rootless.py chose it before entering a user namespace); `on_resolve` is
    told every name the build looked up in the store (the no-op fingerprint's inputs);
    `contexts`: the named contexts, resolved already (the CLI fetched its git and URL ones:
    cli/context_flags.py); None: `request.build_contexts`."""
    collector = StepCollector()
    progress.listeners.insert(0, collector)
    try:
        request.check()
        named = contexts if contexts is not None else _named_contexts(request)
        return _full_build(request, progress, collector, isolation, on_resolve, named)
    except StepbuildError as exc:
        # The failed step said so itself (step.error: build/builder.py); the build ends here.
        progress.build_failed(exc.render(), exc.exit_code)
        raise
    finally:
        progress.listeners.remove(collector)


def _isolation(requested: str) -> Isolation:
    """The isolation `requested` resolves to here. The API runs in the calling process and
    never enters a user namespace itself (the CLI does, in cli/rootless.py): `userns`
    outside of one is refused."""
    from stepbuild.fs.userns import in_user_namespace
    from stepbuild.sandbox.isolation import USERNS, resolve

    chosen = resolve(requested)
    if chosen.mode == USERNS and not in_user_namespace():
        raise IsolationUnavailable(
            "the Python API cannot enter a user namespace, and this process has no"
            " isolation without one (" + "; ".join(chosen.passed_over or ("asked for",)) + ")",
            hint="call it as root with CAP_SYS_ADMIN (or isolation='chroot' as root), from a"
                 " process already in a user namespace, or run the `stepbuild` command")
    return chosen


def _tell_isolation(progress: Progress, isolation: Isolation) -> None:
    """The build's first line names the mode; -v says why no stronger one was taken."""
    progress.isolation(isolation.describe(), isolation.passed_over)


def open_store(root: str | os.PathLike[str] | None,
               on_resolve: Callable[[str], None] | None = None, *,
               layers: bool = False) -> Store:
    """The store at `root` (`store_root`). `layers`: this command writes layer dirs or mounts
    them (build, run, pull, load), so the store's overlay xattrs must be this process's
    (`Store.require_overlay_form`)."""
    from stepbuild.store.store import Store

    store = Store(store_root(root), on_resolve=on_resolve)
    if layers:
        store.require_overlay_form()
    return store


def _named_contexts(request: BuildRequest) -> dict[str, NamedContext]:
    """`request.build_contexts` parsed: directories, images and OCI layouts. A git or URL
    context is the command line's to fetch (cli/context_flags.py): refused here."""
    if not request.build_contexts:
        return {}
    from stepbuild.errors import UsageError
    from stepbuild.sources.named import parse_all

    named = parse_all(request.build_contexts)
    for context in named.values():
        if context.kind in ("git", "url"):
            raise UsageError(f"--build-context {context.name}={context.value}: the API takes"
                             " no git or URL context", hint="clone or download it, then give"
                             " its directory")
        if context.kind == "path" and not Path(context.value).is_dir():
            raise UsageError(f"--build-context {context.name}={context.value}: not a directory")
    return named


def _full_build(request: BuildRequest, progress: Progress, collector: StepCollector,
                isolation: Isolation | None, on_resolve: Callable[[str], None] | None,
                named: Mapping[str, NamedContext]) -> BuildResult:
    from stepbuild.api.outputs import plan as output_plan
    from stepbuild.build.builder import Builder, BuildOptions
    from stepbuild.frontend.cache import parse_cached
    from stepbuild.frontend.source import read_stepfile
    from stepbuild.oci.platform import parse_platforms

    context_dir = Path(request.context)
    if isolation is None:
        isolation = _isolation(request.isolation)
    text, name = read_stepfile(request.file, os.fspath(request.context))
    # A bad --output, --push target, --label or --annotation fails now, not after the build.
    plan = output_plan(request.outputs, request.tags, push=request.push, labels=request.labels,
                       annotations=request.annotations)
    outputs, pushes = plan.files, plan.pushes
    cache_from, cache_to = _cache_specs(request)  # and a bad --cache-from/--cache-to
    # FROM, --push and the team cache all reach out with it
    connection = request.connection or default_connection()
    store = open_store(request.root, on_resolve=on_resolve, layers=True)
    stepfile = parse_cached(store.layout.parse_cache, text, name)
    build_args = dict(request.build_args)
    epoch = source_date_epoch(build_args)
    _tell_isolation(progress, isolation)
    if request.reproducible and epoch is None:
        epoch = 0  # timestamps must not differ between the two builds
        progress.warn("--reproducible: SOURCE_DATE_EPOCH is not set; using 0")
    warnings = [*stepfile.warnings, *unused_build_args(stepfile, build_args)]
    for warning in warnings:
        progress.warn(warning)
    enter_build_namespace(isolation.mode, store.layout.tmp, progress)
    context = _context(store, context_dir, None if name == "<stdin>" else Path(name))
    executor = _executor(store, context, progress, build_args, request.network, epoch,
                         *_mount_options(request), limits=request.limits,
                         seccomp=_seccomp(request), allow=frozenset(request.allow),
                         isolation=isolation.mode)
    builder = Builder(store, executor, progress, jobs=request.jobs)
    # A shared store lock for the whole build: `prune` (exclusive) waits until we are done.
    wanted = BuildOptions(tags=plan.tags, build_args=build_args,
                          no_cache=request.no_cache, network=request.network,
                          no_cache_filter=request.no_cache_filter,
                          source_date_epoch=epoch, target=request.target,
                          pull=request.pull, cache_from=cache_from, cache_to=cache_to,
                          connection=connection, labels=plan.labels,
                          annotations=plan.annotations.manifest, contexts=named,
                          platforms=parse_platforms(request.platforms))
    with store.lock(exclusive=False):
        try:
            result = builder.build(stepfile, wanted)
            if request.reproducible:
                check_reproducible(builder, stepfile, wanted, result)
        finally:
            executor.close()
        exported = []
        if outputs:  # under the same lock: prune cannot take an untagged result meanwhile
            exported = _export(store, result.manifest_digest, outputs, request.compression,
                               list(plan.tags), None if progress.quiet else notices(progress),
                               plan.annotations)
        pushed = {target: _push(store, result.manifest_digest, target, request.compression,
                                connection, progress) for target in pushes}  # build --push
        _write_build_files(request, store, result.manifest_digest, pushed, plan.tags,
                           result.platforms)
        config_digest = _config_digest(store, result.manifest_digest, result.platforms)
    context.save()
    progress.summary(result.steps, result.cached, result.manifest_digest, list(plan.tags))
    return _result(result, collector, pushed, config_digest, exported, plan.tags, warnings)


def _result(built: Built, collector: StepCollector, pushed: dict[str, str],
            config_digest: str, exported: list[Exported], tags: tuple[str, ...],
            stepfile_warnings: list[str]) -> BuildResult:
    # After --push the digest a pipeline signs and deploys is the registry's (ours may name
    # other layer blobs: the store keeps them uncompressed); every -t got the same one.
    return BuildResult(
        digest=next(iter(pushed.values())) if pushed else built.manifest_digest,
        local_digest=built.manifest_digest, config_digest=config_digest, pushed=pushed,
        tags=tags, steps=collector.records(succeeded=True),
        cached=built.cached, warnings=collector.warnings(),
        stepfile_warnings=tuple(stepfile_warnings),
        exported=tuple((e.output.type, e.output.where, e.digest) for e in exported),
        outside=built.outside, keys=built.keys, platforms=dict(built.platforms))


def _config_digest(store: Store, local: str, platforms: Mapping[str, str]) -> str:
    """The config digest of the image `local` names; "" for an index (several platforms)."""
    if len(platforms) > 1:
        return ""
    desc = store.resolve(local)
    assert desc is not None  # just built, under the store lock
    return store.manifest(desc).config.digest


def _write_build_files(request: BuildRequest, store: Store, local: str,
                       pushed: dict[str, str], names: tuple[str, ...],
                       platforms: Mapping[str, str]) -> None:
    """--iidfile and --metadata-file, each written atomically (temp file, then rename), under
    the build's store lock (an untagged result cannot be pruned meanwhile). For an index
    (several platforms) the metadata has no config digest, as buildx's, and names each
    platform's manifest (`stepbuild.platforms`)."""
    from stepbuild.fs.durable import write_file

    digest = next(iter(pushed.values())) if pushed else local
    if request.iidfile:
        write_file(Path(request.iidfile), digest.encode(), 0o644)
    if request.metadata_file:
        metadata = {
            "containerimage.digest": digest,
            "containerimage.config.digest": _config_digest(store, local, platforms),
            "image.name": ",".join(names),
            "stepbuild.local.digest": local,
            "stepbuild.pushed": pushed,
        }
        if len(platforms) > 1:
            del metadata["containerimage.config.digest"]
            metadata["stepbuild.platforms"] = dict(platforms)
        write_file(Path(request.metadata_file),
                   json.dumps(metadata, indent=2, sort_keys=True).encode() + b"\n", 0o644)


def _cache_specs(request: BuildRequest
                 ) -> tuple[tuple[CacheSpec, ...], tuple[CacheSpec, ...]]:
    """--cache-from and --cache-to, parsed (stepbuild/teamcache/cache.py)."""
    sources, destinations = request.cache_from, request.cache_to
    if not sources and not destinations:
        return (), ()
    from stepbuild.teamcache.cache import parse_cache_spec

    return (tuple(parse_cache_spec(v, "from") for v in sources),
            tuple(parse_cache_spec(v, "to") for v in destinations))


def check_reproducible(builder: Builder, stepfile: Stepfile, wanted: BuildOptions,
                       first: Built) -> None:
    """Build again without the cache and compare: same layers, same config, same digest."""
    from dataclasses import replace

    from stepbuild.errors import BuildError

    second = builder.build(stepfile, replace(wanted, tags=(), no_cache=True))
    if second.manifest_digest == first.manifest_digest:
        builder.progress.warn(f"reproducible: a second build gave {first.manifest_digest} too")
        return
    differing = [i for i, (a, b) in enumerate(zip(first.state.diff_ids, second.state.diff_ids,
                                                   strict=False)) if a != b]
    where = f"layer {differing[0] + 1} differs" if differing else "the config differs"
    raise BuildError(f"the build is not reproducible: {first.manifest_digest} then "
                     f"{second.manifest_digest} ({where})",
                     hint="a step writes something that changes between runs (time, random)")


def unused_build_args(stepfile: Stepfile, build_args: dict[str, str]) -> list[str]:
    """A warning for --build-arg names no ARG in the Stepfile declares (Docker warns too)."""
    from stepbuild.build.keys import PROXY_ARGS
    from stepbuild.frontend.instructions import Arg

    declared = {d.name for i in stepfile.instructions if isinstance(i, Arg)
                for d in i.declarations}
    unused = sorted(set(build_args) - declared - PROXY_ARGS - {"SOURCE_DATE_EPOCH"})
    if not unused:
        return []
    return [f"build-args {', '.join(unused)} were not consumed by any ARG in the Stepfile"]


def source_date_epoch(build_args: dict[str, str]) -> int | None:
    from stepbuild.errors import UsageError

    text = build_args.get("SOURCE_DATE_EPOCH") or os.environ.get("SOURCE_DATE_EPOCH")
    if not text:
        return None
    if not text.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH must be a number of seconds, not {text!r}")
    return int(text)


_namespace = threading.local()  # .entered: this thread is in a mount namespace of our own


def enter_build_namespace(isolation: str, upper_dirs: Path,
                          progress: Progress | None = None) -> None:
    """Move this thread into a private mount namespace: every mount it makes vanishes with it.
    First, refuse `upper_dirs` (the store's tmp/, where overlay upper dirs are made) on a
    filesystem overlay cannot use for them, before any step starts. Chroot isolation mounts
    nothing (and cannot unshare): nothing to do then. Rootless, `progress` (-v) is told which
    overlay the first mount chose (the kernel's, or fuse-overlayfs where it refuses).

    unshare(CLONE_NEWNS) moves the calling thread only (and the threads and processes it
    starts afterwards), and for good: a thread that built once stays in its namespace, so
    its later builds do not unshare again (docs/api.md, "Threads and namespaces").
    """
    if isolation == "chroot":
        return
    from stepbuild.fs.userns import in_user_namespace
    from stepbuild.sandbox import host

    host.require_upper_dir_filesystem(upper_dirs)
    if not getattr(_namespace, "entered", False):
        host.enter_private_mount_namespace()
        _namespace.entered = True
    if progress is not None and in_user_namespace():
        host.on_overlay_choice(lambda line: progress.note("", line))


def _context(store: Store, context_dir: Path, stepfile: Path | None) -> BuildContext:
    import xxhash

    from stepbuild.sources.context import BuildContext
    from stepbuild.sources.ignore import ignore_patterns

    absolute = str(context_dir.resolve())
    name = xxhash.xxh3_64_hexdigest(absolute.encode()) + ".json"
    stat_cache = store.layout.context_cache / name
    stat_cache.parent.mkdir(mode=0o700, exist_ok=True)
    return BuildContext(context_dir, ignore=ignore_patterns(context_dir, stepfile),
                        stat_cache=stat_cache)


def _executor(store: Store, context: BuildContext, progress: Progress,
              build_args: dict[str, str], network: str, epoch: int | None,
              secrets: dict[str, SecretSource] | None = None,
              ssh: dict[str, str] | None = None, limits: Limits | None = None,
              seccomp: str = "default", allow: frozenset[str] = frozenset(),
              isolation: str = "namespaces") -> Executor:
    from stepbuild.build.execute import Executor
    from stepbuild.sandbox.pool import Pool

    return Executor(store, context, Pool(), progress, build_args, network, epoch,
                    secrets=secrets, ssh=ssh, limits=limits, seccomp=seccomp,
                    allow=allow, isolation=isolation)


def _seccomp(request: BuildRequest) -> str:
    """--security-opt: the seccomp setting of every RUN (see sandbox/seccomp.py)."""
    from stepbuild.sandbox.seccomp import parse_security_opts

    return parse_security_opts(list(request.security_opts))


def _mount_options(request: BuildRequest
                   ) -> tuple[dict[str, SecretSource], dict[str, str]]:
    """--secret and --ssh, checked now (a missing file is a usage error before building)."""
    if not request.secrets and not request.ssh:
        return {}, {}
    from stepbuild.build.mounts.secrets import parse_secret, parse_ssh

    return dict(map(parse_secret, request.secrets)), dict(map(parse_ssh, request.ssh))


# --- export and push ---------------------------------------------------------------------------


def _export(store: Store, image: str, outputs: list[Output], compression: str,
            names: list[str] | None, stream: TextIO | None,
            annotations: Annotations | None = None) -> list[Exported]:
    """Export, then one line per output to `stream` (None: silent): type, dest, digest.
    An output with dest=- is written to stdout (the only thing the API writes there, and
    only when asked)."""
    from stepbuild.archive.export import export_image

    results = export_image(store, image, outputs, compression=compression, names=names,
                           annotations=annotations, stdout=sys.stdout.buffer)
    for result in results if stream is not None else ():
        print(f"{result.output.type} {result.output.where} {result.digest or '-'}", file=stream)
    return results


def _push(store: Store, image: str, destination: str, compression: str,
          connection: Connection, progress: Progress) -> str:
    """Push; return the digest the registry now holds the image under."""
    from stepbuild.distribution.display import TransferDisplay
    from stepbuild.distribution.push import push as push_image

    display = TransferDisplay(progress.emit, verbose=not progress.quiet)
    return push_image(store, image, destination, compression=compression,
                      connection=connection, display=display).digest
