"""The store commands behind the CLI: build, images, inspect, history, rmi, run, prune, check.

Each function takes the parsed options and returns an exit status; errors are raised as
`StepbuildError` for `cli.main` to print. Heavy modules are imported inside the functions so
that `stepbuild parse` and `--help` stay fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO

from stepbuild.cli import limit_flags, output_flags, progress_flags
from stepbuild.errors import StepbuildError, UsageError
from stepbuild.progress import human_size

if TYPE_CHECKING:
    from collections.abc import Callable

    from stepbuild.archive.export import Output
    from stepbuild.build.builder import Builder, BuildOptions, BuildResult
    from stepbuild.build.execute import Executor
    from stepbuild.build.mounts.secrets import SecretSource
    from stepbuild.cli.noop import Witness
    from stepbuild.distribution.connection import Connection
    from stepbuild.distribution.display import TransferDisplay
    from stepbuild.frontend.instructions import Stepfile
    from stepbuild.oci.annotations import Annotations
    from stepbuild.oci.documents import Descriptor
    from stepbuild.progress import Progress
    from stepbuild.sandbox.isolation import Isolation
    from stepbuild.sandbox.limits import Limits
    from stepbuild.sources.context import BuildContext
    from stepbuild.store.stale import StaleWork
    from stepbuild.store.store import Store
    from stepbuild.teamcache.cache import CacheSpec

def store_root(option: str | None) -> Path:
    """--root, else $STEPBUILD_ROOT, else /var/lib/stepbuild (root) or the XDG data dir.

    A rootless command asks as the user, before it enters its user namespace (where its
    euid is 0), and keeps the answer in `options.root` (cli/rootless.py)."""
    if option:
        return Path(option)
    if os.environ.get("STEPBUILD_ROOT"):
        return Path(os.environ["STEPBUILD_ROOT"])
    if os.geteuid() == 0:
        return Path("/var/lib/stepbuild")
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "stepbuild"


def open_store(options: argparse.Namespace,
               on_resolve: Callable[[str], None] | None = None, *,
               layers: bool = False) -> Store:
    """The store of --root. `layers`: this command writes layer dirs or mounts them (build,
    run, pull, load), so the store's overlay xattrs must be this process's
    (`Store.require_overlay_form`)."""
    from stepbuild.store.store import Store

    store = Store(store_root(options.root), on_resolve=on_resolve)
    if layers:
        store.require_overlay_form()
    return store


# --- build -------------------------------------------------------------------------------------


def build(options: argparse.Namespace) -> int:
    from stepbuild.cli import build_flags
    from stepbuild.cli.context_flags import fetched

    build_flags.check(options)  # a bad -t or --no-cache-filter fails before anything starts
    with fetched(options, lambda: open_store(options)):  # `-`, git, URLs, --build-context
        return _build(options)


def _build(options: argparse.Namespace) -> int:
    from stepbuild.cli import noop as fingerprint

    pull_policy = _pull_policy(options)  # before the context: `build --pull DIR`
    context_dir = Path(options.context)
    if not context_dir.is_dir():
        raise UsageError(f"the build context {context_dir} is not a directory")
    isolation = _isolation(options)
    # The mode chosen is part of the fingerprint, so that a replay never names another one.
    options.isolation_chosen = isolation.mode
    # Nothing changed since the last build? Then say so before importing the builder.
    witness = fingerprint.take(options, pull_policy, store_root(options.root))
    if witness is not None and fingerprint.replay(witness,
                                                  **progress_flags.replay_view(options)):
        return 0
    return _full_build(options, pull_policy, context_dir, witness, isolation)


def _isolation(options: argparse.Namespace) -> Isolation:
    """The isolation cli/rootless.py chose before the command ran (IsolationUnavailable was
    raised there), else --isolation resolved now (a caller that skipped it)."""
    from stepbuild.sandbox.isolation import resolve

    chosen = getattr(options, "isolation_chosen", None)
    return chosen if chosen is not None else resolve(getattr(options, "isolation", "auto"))


def _tell_isolation(progress: Progress, isolation: Isolation) -> None:
    """The build's first line names the mode; -v says why no stronger one was taken."""
    progress.isolation(isolation.describe(), isolation.passed_over)


def _full_build(options: argparse.Namespace, pull_policy: str, context_dir: Path,
                witness: Witness | None, isolation: Isolation) -> int:
    from stepbuild.build.builder import Builder, BuildOptions
    from stepbuild.cli import noop as fingerprint
    from stepbuild.frontend.cache import parse_cached
    from stepbuild.frontend.source import read_stepfile

    text, name = read_stepfile(options.file, options.context)
    # A bad --output, --push target, --label or --annotation fails now, not after the build.
    plan = output_flags.plan(options)
    outputs, pushes = plan.files, plan.pushes
    cache_from, cache_to = _cache_specs(options)  # and a bad --cache-from/--cache-to
    connection = _connection(options)  # FROM, --push and the team cache all reach out with it
    names_read: set[str] = set()  # every name the build looked up: the fingerprint needs them
    store = open_store(options, on_resolve=names_read.add, layers=True)
    stepfile = parse_cached(store.layout.parse_cache, text, name)
    build_args = read_build_arg_files(options.build_arg_file)
    build_args.update(parse_build_args(options.build_arg))
    epoch = source_date_epoch(build_args)
    progress = _progress(options)
    _tell_isolation(progress, isolation)
    if options.reproducible and epoch is None:
        epoch = 0  # timestamps must not differ between the two builds
        progress.warn("--reproducible: SOURCE_DATE_EPOCH is not set; using 0")
    warnings = [*stepfile.warnings, *unused_build_args(stepfile, build_args)]
    for warning in warnings:
        progress.warn(warning)
    enter_build_namespace(isolation.mode, store.layout.tmp, progress)
    context = _context(store, context_dir, None if name == "<stdin>" else Path(name))
    executor = _executor(store, context, progress, build_args, options.network, epoch,
                         *_mount_options(options), limits=limit_flags.limits(options),
                         seccomp=_seccomp(options), allow=frozenset(options.allow),
                         isolation=isolation.mode)
    builder = Builder(store, executor, progress, jobs=options.jobs)
    # A shared store lock for the whole build: `prune` (exclusive) waits until we are done.
    wanted = BuildOptions(tags=plan.tags, build_args=build_args,
                          no_cache=options.no_cache, network=options.network,
                          no_cache_filter=getattr(options, "no_cache_filter", ()),
                          source_date_epoch=epoch, target=options.target,
                          pull=pull_policy, cache_from=cache_from, cache_to=cache_to,
                          connection=connection, labels=plan.labels,
                          annotations=plan.annotations.manifest,
                          contexts=getattr(options, "named_contexts", {}))
    with store.lock(exclusive=False):
        try:
            result = builder.build(stepfile, wanted)
            if options.reproducible:
                check_reproducible(builder, stepfile, wanted, result)
        finally:
            executor.close()
        if outputs:  # under the same lock: prune cannot take an untagged result meanwhile
            _export(store, result.manifest_digest, outputs, options, list(plan.tags),
                    None if options.quiet else progress_flags.notices(progress),
                    plan.annotations)
        pushed = {target: _push(store, result.manifest_digest, target, options, connection,
                                stdout=False) for target in pushes}  # build --push
        _write_build_files(options, store, result.manifest_digest, pushed, plan.tags)
    context.save()
    if witness is not None:
        fingerprint.record(witness, digest=result.manifest_digest, names=options.tag,
                           resolved=names_read, transcript=progress.transcript,
                           warnings=warnings, outside=result.outside, keys=result.keys)
    progress.summary(result.steps, result.cached, result.manifest_digest, list(plan.tags))
    # After --push the digest a pipeline signs and deploys is the registry's (ours may name
    # other layer blobs: the store keeps them uncompressed); every -t got the same one.
    # With an archive on stdout (-o -), stdout is the archive's alone: the digest goes to stderr.
    print(next(iter(pushed.values())) if pushed else result.manifest_digest,
          file=sys.stderr if plan.stdout else sys.stdout)
    return 0


def _write_build_files(options: argparse.Namespace, store: Store, local: str,
                       pushed: dict[str, str], names: tuple[str, ...]) -> None:
    """--iidfile and --metadata-file, each written atomically (temp file, then rename), under
    the build's store lock (an untagged result cannot be pruned meanwhile)."""
    from stepbuild.fs.durable import write_file

    digest = next(iter(pushed.values())) if pushed else local
    if options.iidfile:
        write_file(Path(options.iidfile), digest.encode(), 0o644)
    if options.metadata_file:
        desc = store.resolve(local)
        assert desc is not None  # just built, under the store lock
        manifest = store.manifest(desc)
        metadata = {
            "containerimage.digest": digest,
            "containerimage.config.digest": manifest.config.digest,
            "image.name": ",".join(names),
            "stepbuild.local.digest": local,
            "stepbuild.pushed": pushed,
        }
        write_file(Path(options.metadata_file),
                   json.dumps(metadata, indent=2, sort_keys=True).encode() + b"\n", 0o644)


def _cache_specs(options: argparse.Namespace
                 ) -> tuple[tuple[CacheSpec, ...], tuple[CacheSpec, ...]]:
    """--cache-from and --cache-to, parsed (stepbuild/teamcache/cache.py)."""
    sources, destinations = getattr(options, "cache_from", []), getattr(options, "cache_to", [])
    if not sources and not destinations:
        return (), ()
    from stepbuild.teamcache.cache import parse_cache_spec

    return (tuple(parse_cache_spec(v, "from") for v in sources),
            tuple(parse_cache_spec(v, "to") for v in destinations))


def check_reproducible(builder: Builder, stepfile: Stepfile, wanted: BuildOptions,
                       first: BuildResult) -> None:
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


def parse_build_args(values: list[str]) -> dict[str, str]:
    """--build-arg K=V, or K alone to take the value from the environment (skipped if unset)."""
    args: dict[str, str] = {}
    for value in values:
        name, has_value, given = value.partition("=")
        if not name:
            raise UsageError(f"invalid --build-arg {value!r}: expected NAME=VALUE")
        if has_value:
            args[name] = given
        elif name in os.environ:
            args[name] = os.environ[name]
    return args


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


def read_build_arg_files(paths: list[str]) -> dict[str, str]:
    """--build-arg-file FILE: KEY=VALUE lines (blank lines and # comments skipped)."""
    args: dict[str, str] = {}
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read --build-arg-file {path}: {exc.strerror}") from None
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, has_value, value = line.partition("=")
            if not has_value or not name.strip():
                raise UsageError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
            args[name.strip()] = value
    return args


def source_date_epoch(build_args: dict[str, str]) -> int | None:
    text = build_args.get("SOURCE_DATE_EPOCH") or os.environ.get("SOURCE_DATE_EPOCH")
    if not text:
        return None
    if not text.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH must be a number of seconds, not {text!r}")
    return int(text)


def enter_build_namespace(isolation: str, upper_dirs: Path,
                          progress: Progress | None = None) -> None:
    """Move this process into a private mount namespace: every mount it makes vanishes with it.
    First, refuse `upper_dirs` (the store's tmp/, where overlay upper dirs are made) on a
    filesystem overlay cannot use for them, before any step starts. Chroot isolation mounts
    nothing (and cannot unshare): nothing to do then. Rootless, `progress` (-v) is told which
    overlay the first mount chose (the kernel's, or fuse-overlayfs where it refuses).

    Called before any thread starts (unshare of the mount namespace applies to the calling
    thread only).
    """
    if isolation == "chroot":
        return
    from stepbuild.fs.userns import in_user_namespace
    from stepbuild.sandbox import host

    host.require_upper_dir_filesystem(upper_dirs)
    host.enter_private_mount_namespace()
    if progress is not None and in_user_namespace():
        host.on_overlay_choice(lambda line: progress.note("", line))


def _progress(options: argparse.Namespace) -> Progress:
    return progress_flags.progress(options)  # --progress's view, closed by cli/main.py


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


def _seccomp(options: argparse.Namespace) -> str:
    """--security-opt: the seccomp setting of every RUN (see sandbox/seccomp.py)."""
    from stepbuild.sandbox.seccomp import parse_security_opts

    return parse_security_opts(getattr(options, "security_opt", None) or [])


def _mount_options(options: argparse.Namespace
                   ) -> tuple[dict[str, SecretSource], dict[str, str]]:
    """--secret and --ssh, checked now (a missing file is a usage error before building)."""
    values = (getattr(options, "secret", None) or [], getattr(options, "ssh", None) or [])
    if not any(values):
        return {}, {}
    from stepbuild.build.mounts.secrets import parse_secret, parse_ssh

    return dict(map(parse_secret, values[0])), dict(map(parse_ssh, values[1]))


# --- export ------------------------------------------------------------------------------------


def _export(store: Store, image: str, outputs: list[Output], options: argparse.Namespace,
            names: list[str] | None, stream: TextIO | None,
            annotations: Annotations | None = None) -> None:
    """Export, then one line per output to `stream` (None: silent): type, dest, digest.
    An output with dest=- is written to stdout."""
    from stepbuild.archive.export import export_image

    results = export_image(store, image, outputs, compression=options.compression, names=names,
                           annotations=annotations, stdout=sys.stdout.buffer)
    for result in results if stream is not None else ():
        print(f"{result.output.type} {result.output.where} {result.digest or '-'}", file=stream)


def export(options: argparse.Namespace) -> int:
    """`stepbuild export IMAGE -o ...`: one line per output (type, dest, digest), on stdout
    unless an archive goes there (-o -): then on stderr."""
    outputs = output_flags.file_outputs(options)
    stream = sys.stderr if any(output.to_stdout for output in outputs) else sys.stdout
    _export(open_store(options), options.image, outputs, options, None, stream)
    return 0


# --- load --------------------------------------------------------------------------------------


def load(options: argparse.Namespace) -> int:
    """`stepbuild load [-i FILE]`: import an OCI or docker archive (stepbuild/archive/load.py);
    one line per image, as `docker load` prints them."""
    from stepbuild.archive.load import load as load_archive

    stream: BinaryIO
    if options.input:
        try:
            stream = open(options.input, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise UsageError(f"cannot read {options.input}: {exc.strerror}") from None
    elif sys.stdin.isatty():
        raise UsageError("no archive on standard input",
                         hint="stepbuild load < image.tar, or stepbuild load -i image.tar")
    else:
        stream = sys.stdin.buffer
    store = open_store(options, layers=True)
    with stream:
        loaded = load_archive(store, stream)
    for image in loaded:
        for name in image.names:
            print(f"Loaded image: {name}")
        if not image.names:
            print(f"Loaded image ID: {image.digest}")
    return 0


# --- registries: push, pull, tag, login, logout (stepbuild/distribution/) ---------------------


def _connection(options: argparse.Namespace) -> Connection:
    """--authfile, --tls-verify, --ca-file and --stall-timeout as one
    connection.Connection, with the registry rules of the configuration files."""
    from stepbuild.config import registry_rules
    from stepbuild.distribution.connection import Connection

    connection = Connection(authfile=options.authfile, tls_verify=options.tls_verify,
                            ca_file=options.ca_file, registries=registry_rules())
    stall: float | None = options.stall_timeout or _stall_timeout_from_environment()
    if stall is None:
        return connection
    from dataclasses import replace

    return replace(connection, stall_timeout=stall)


def _stall_timeout_from_environment() -> float | None:
    """$STEPBUILD_STALL_TIMEOUT (seconds), None if unset; `UsageError` if not a number."""
    text = os.environ.get("STEPBUILD_STALL_TIMEOUT", "")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise UsageError(f"STEPBUILD_STALL_TIMEOUT={text!r}: expected a number of seconds")
    return value


def _display(options: argparse.Namespace) -> TransferDisplay:
    from stepbuild.distribution.display import TransferDisplay

    quiet = getattr(options, "quiet", False)  # pull's notes (a mirror skipped) show unless -q
    return TransferDisplay(progress_flags.progress(options).emit, verbose=not quiet)


def _pull_policy(options: argparse.Namespace) -> str:
    """--pull[=POLICY]. In `build --pull DIR` argparse took DIR for the policy: it is the
    context (docker's --pull takes no value; podman's only with `=`)."""
    value = str(getattr(options, "pull", "missing"))
    if value in ("missing", "always", "never"):  # pull.PULL_POLICIES (not imported here)
        return value
    if options.context != ".":
        raise UsageError(f"invalid --pull value {value!r}", hint="--pull=missing|always|never")
    options.context = value
    return "always"


def _push(store: Store, image: str, destination: str | None, options: argparse.Namespace,
          connection: Connection, *, stdout: bool = True) -> str:
    """Push; return the digest the registry now holds the image under."""
    from stepbuild.distribution.push import push as push_image

    result = push_image(store, image, destination, compression=options.compression,
                        connection=connection, display=_display(options))
    if stdout:
        progress_flags.progress(options).close()  # the live view ends before stdout is used
        print(result.digest)
    return result.digest


def push(options: argparse.Namespace) -> int:
    """`stepbuild push IMAGE [REF]`: a line per blob on stderr, the digest on stdout."""
    _push(open_store(options), options.image, options.destination, options,
          _connection(options))
    return 0


def pull(options: argparse.Namespace) -> int:
    """`stepbuild pull REF`: a line per layer on stderr, the registry's digest on stdout."""
    from stepbuild.distribution.pull import pull as pull_image

    result = pull_image(open_store(options, layers=True), options.image,
                        connection=_connection(options),
                        display=_display(options))
    progress_flags.progress(options).close()  # the live view ends before stdout is used
    print(result.digest)
    return 0


def tag(options: argparse.Namespace) -> int:
    """`stepbuild tag SOURCE TARGET`."""
    from stepbuild.distribution.local_names import find_local

    store = open_store(options)
    store.tag(options.target, find_local(store, options.image))
    return 0


def login(options: argparse.Namespace) -> int:
    """`stepbuild login REGISTRY`: the credentials are checked against the registry first."""
    from stepbuild.distribution.login import login as check_and_store

    username, password = _credentials(options)
    path = check_and_store(options.registry, username, password,
                           connection=_connection(options))
    print(f"Login Succeeded (credentials stored in {path})")
    return 0


def _credentials(options: argparse.Namespace) -> tuple[str, str]:
    """-u / a prompt; -p, --password-stdin or a prompt (never echoed)."""
    import getpass

    interactive = sys.stdin.isatty()
    username = options.username
    if not username:
        if not interactive or options.password_stdin:
            raise UsageError("no username", hint="give one with -u USER")
        username = input("Username: ").strip()
    if options.password_stdin:
        if options.password is not None:
            raise UsageError("--password and --password-stdin are mutually exclusive")
        password = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    elif options.password is not None:
        print("stepbuild: warning: a password on the command line is visible to other users;"
              " prefer --password-stdin", file=sys.stderr)
        password = options.password
    elif interactive:
        password = getpass.getpass("Password: ")
    else:
        raise UsageError("no password", hint="give it on standard input with --password-stdin")
    if not username or not password:
        raise UsageError("username and password must not be empty")
    return username, password


def logout(options: argparse.Namespace) -> int:
    """`stepbuild logout REGISTRY`."""
    from stepbuild.distribution.login import logout as remove_login

    path = remove_login(options.registry, authfile=options.authfile)
    print(f"Removed login credentials for {options.registry} from {path}")
    return 0


# --- images ------------------------------------------------------------------------------------


def images(options: argparse.Namespace) -> int:
    """`stepbuild images`: NAME, DIGEST (12 digits of the local manifest's), SIZE. With
    --digests: NAME, LOCAL DIGEST (the store's manifest, in full), SIZE, then PUSHED DIGEST
    and PUSHED TO, a row per reference the image was pushed to (the registry's manifest
    digest: what `stepbuild build --push` printed), "-" for an image never pushed."""
    store = open_store(options)
    digests = getattr(options, "digests", False)
    rows = [("NAME", "LOCAL DIGEST", "SIZE", "PUSHED DIGEST", "PUSHED TO") if digests
            else ("NAME", "DIGEST", "SIZE")]
    for name, descriptor in sorted(store.images()):
        manifest = store.manifest(descriptor)
        size = human_size(sum(layer.size for layer in manifest.layers))
        if not digests:
            rows.append((name, descriptor.digest.removeprefix("sha256:")[:12], size))
            continue
        pushed = sorted(store.push_records.get(descriptor.digest).items()) or [("-", "-")]
        rows += [(name, descriptor.digest, size, digest, ref) for ref, digest in pushed]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=False))
              + "  " + row[-1])
    return 0


def _resolve(store: Store, name: str) -> Descriptor:
    descriptor = store.resolve(name)
    if descriptor is None:
        raise StepbuildError(f"image {name!r} not found in the store",
                             hint="stepbuild images lists them")
    return descriptor


def inspect(options: argparse.Namespace) -> int:
    store = open_store(options)
    descriptor = _resolve(store, options.image)
    manifest = store.manifest(descriptor)
    config = store.config(manifest)
    document = {"digest": descriptor.digest, "manifest": manifest.to_json(),
                "config": config.to_json()}
    json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
    print()
    return 0


def history(options: argparse.Namespace) -> int:
    store = open_store(options)
    config = store.config(store.manifest(_resolve(store, options.image)))
    for entry in reversed(config.to_json().get("history", [])):
        layer = "-" if entry.get("empty_layer") else "layer"
        print(f"{entry.get('created', ''):<21} {layer:<6} {entry.get('created_by', '')}")
    return 0


def rmi(options: argparse.Namespace) -> int:
    store = open_store(options)
    if not store.untag(options.image):
        raise StepbuildError(f"no image tagged {options.image!r}")
    print(f"untagged {options.image}; `stepbuild prune` frees the space")
    return 0


def prune(options: argparse.Namespace) -> int:
    from stepbuild.store import gc
    from stepbuild.store.store import Store

    # No grace period: prune takes the store lock exclusively, so it waits for every build
    # and run (they hold it shared) and nothing it sees in tmp/ is still in use.
    store = Store(store_root(options.root), grace_period=0)
    stats = gc.prune(store, keep_cache=False)
    print(f"removed {stats.layers} layers, {stats.blobs} blobs ({human_size(stats.bytes_freed)}),"
          f" {stats.cache_records} cache records, {stats.remote_records} remote-blob records,"
          f" {stats.tmp_entries} temporary entries")
    if getattr(options, "cache_mounts", False):
        from stepbuild.build.mounts.cache import prune_cache_mounts

        print(f"removed {prune_cache_mounts(store)} cache mounts")
    return 0


def check(options: argparse.Namespace) -> int:
    from stepbuild.store import gc
    from stepbuild.store.stale import dead_work
    from stepbuild.store.store import Store

    store = Store(store_root(options.root), clear_dead=False)  # list dead work, not clear it
    _report_dead_work(store.root, dead_work(store.layout))
    repair = getattr(options, "repair", False)
    failed = []
    if repair:
        from stepbuild.store.repair import repair as repair_store

        repairs = repair_store(store)
        for line in repairs.done:
            print(f"repaired: {line}")
        failed = repairs.failed
    problems = gc.check(store, deep=repair or getattr(options, "deep", False))
    for problem in (*failed, *problems):
        print(problem)
    if failed or problems:
        if not repair:
            print("`stepbuild check --repair` restores layer dirs from their blobs and a"
                  " missing oci-layout; `stepbuild prune` removes garbage")
        return 1
    print("store is consistent")
    return 0


def _report_dead_work(root: Path, leftovers: list[StaleWork]) -> None:
    """What killed builders left in the store: garbage, not a problem (the next command
    that takes the store lock removes it)."""
    if not leftovers:
        return
    total = human_size(sum(work.size for work in leftovers))
    print(f"stale work of dead builders: {len(leftovers)} entries, {total}"
          " (the next build, or any command that locks the store, removes it)")
    for work in leftovers:
        print(f"  {work.path.relative_to(root)}  {human_size(work.size)}")


# --- run ---------------------------------------------------------------------------------------


def run(options: argparse.Namespace) -> int:
    from stepbuild.build.runner import run_image

    isolation = _isolation(options)
    progress = _progress(options) if options.verbose else None
    if progress is not None:
        _tell_isolation(progress, isolation)
    store = open_store(options, layers=True)
    enter_build_namespace(isolation.mode, store.layout.tmp, progress)
    with store.lock(exclusive=False):  # prune waits while a container uses the layers
        return int(run_image(store, options.image, options.command, options.network,
                             limit_flags.limits(options), seccomp=_seccomp(options),
                             isolation=isolation.mode))
