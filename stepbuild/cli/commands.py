"""The store commands behind the CLI: build, images, inspect, history, rmi, run, prune, du, check.

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
from typing import TYPE_CHECKING, BinaryIO

from stepbuild.cli import limit_flags, output_flags, platform_flags, progress_flags
from stepbuild.errors import StepbuildError, UsageError
from stepbuild.progress import human_size
from stepbuild.store.layout import store_root

if TYPE_CHECKING:
    from collections.abc import Callable

    from stepbuild.api.request import BuildRequest
    from stepbuild.cli.noop import Witness
    from stepbuild.distribution.connection import Connection
    from stepbuild.oci.documents import Descriptor
    from stepbuild.progress import Progress
    from stepbuild.sandbox.isolation import Isolation
    from stepbuild.store.stale import StaleWork
    from stepbuild.store.store import Store

def open_store(options: argparse.Namespace,
               on_resolve: Callable[[str], None] | None = None, *,
               layers: bool = False) -> Store:
    """The store of --root (`api.build.open_store`)."""
    from stepbuild.api.build import open_store as open_root

    return open_root(options.root, on_resolve, layers=layers)


# --- build: a thin layer over stepbuild.api (api/build.py does the work) ----------------------


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
    from stepbuild.api.build import run_build
    from stepbuild.cli import explain_flags
    from stepbuild.cli import noop as fingerprint

    names_read: set[str] = set()  # every name the build looked up: the fingerprint needs them
    progress = _progress(options)
    explain_flags.apply(options, progress)  # --explain
    result = run_build(_request(options, pull_policy, context_dir), progress,
                       isolation=isolation, on_resolve=names_read.add,
                       contexts=getattr(options, "named_contexts", None))
    if witness is not None:
        fingerprint.record(witness, digest=result.local_digest, names=options.tag,
                           resolved=names_read, transcript=progress.transcript,
                           warnings=list(result.stepfile_warnings), outside=result.outside,
                           keys=result.keys)
    limit = getattr(options, "gc_keep_storage", None)  # config.toml's gc-keep-storage
    if limit is not None:
        from stepbuild.cli.store_flags import auto_gc

        auto_gc(open_store(options), limit, say=progress_flags.mode(options) != "rawjson")
    # After --push the digest a pipeline signs and deploys is the registry's.
    # With an archive on stdout (-o -), stdout is the archive's alone: the digest goes to
    # stderr, unless that is a rawjson stream (build.done and image.pushed carry it there).
    to_stdout = any(dest == "-" for _, dest, _ in result.exported)
    if not to_stdout:
        print(result.digest)
    elif progress_flags.mode(options) != "rawjson":
        print(result.digest, file=sys.stderr)
    return 0


def _request(options: argparse.Namespace, pull_policy: str, context_dir: Path
             ) -> BuildRequest:
    """The build the flags ask for, of the context in `context_dir`."""
    from stepbuild.api.request import BuildRequest

    build_args = read_build_arg_files(options.build_arg_file)
    build_args.update(parse_build_args(options.build_arg))
    return BuildRequest(
        context=context_dir, file=options.file, tags=tuple(options.tag), build_args=build_args,
        target=options.target, no_cache=options.no_cache, network=options.network,
        allow=tuple(options.allow), security_opts=tuple(getattr(options, "security_opt", [])),
        reproducible=options.reproducible, secrets=tuple(getattr(options, "secret", [])),
        ssh=tuple(getattr(options, "ssh", [])), jobs=options.jobs,
        outputs=tuple(getattr(options, "output", [])), compression=options.compression,
        push=getattr(options, "push", False), iidfile=options.iidfile,
        metadata_file=options.metadata_file, pull=pull_policy,
        cache_from=tuple(getattr(options, "cache_from", [])),
        cache_to=tuple(getattr(options, "cache_to", [])), connection=_connection(options),
        no_cache_filter=tuple(getattr(options, "no_cache_filter", ())),
        labels=tuple(getattr(options, "label", [])),
        annotations=tuple(getattr(options, "annotation", [])),
        limits=limit_flags.limits(options), root=options.root,
        platforms=platform_flags.platforms(options))


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


def _progress(options: argparse.Namespace) -> Progress:
    return progress_flags.progress(options)  # --progress's view, closed by cli/main.py


# --- export ------------------------------------------------------------------------------------


def export(options: argparse.Namespace) -> int:
    """`stepbuild export IMAGE -o ...`: one line per output (type, dest, digest), on stdout
    unless an archive goes there (-o -): then on stderr. --platform picks an image index's
    entry (archive/export.py)."""
    from stepbuild.archive.export import export_image
    from stepbuild.cli import platform_select

    outputs = output_flags.file_outputs(options)
    stream = sys.stderr if any(output.to_stdout for output in outputs) else sys.stdout
    results = export_image(open_store(options), options.image, outputs,
                           compression=options.compression, stdout=sys.stdout.buffer,
                           platform=platform_select.chosen(options))
    for result in results:  # as api/build._export says them
        print(f"{result.output.type} {result.output.where} {result.digest or '-'}", file=stream)
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




def push(options: argparse.Namespace) -> int:
    """`stepbuild push IMAGE [REF]`: a line per blob on stderr, the digest on stdout."""
    from stepbuild.api.registry import push as push_image

    result = push_image(options.image, options.destination, root=options.root,
                        connection=_connection(options), compression=options.compression,
                        progress=_progress(options), platform=options.platform)
    _progress(options).close()  # the live view ends before stdout is used
    print(result.digest)
    return 0


def pull(options: argparse.Namespace) -> int:
    """`stepbuild pull REF`: a line per layer on stderr, the registry's digest on stdout."""
    from stepbuild.api.registry import pull as pull_image

    result = pull_image(options.image, root=options.root, connection=_connection(options),
                        progress=_progress(options), platform=options.platform,
                        all_platforms=options.all_platforms)
    _progress(options).close()  # the live view ends before stdout is used
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
    """`stepbuild images`: NAME, DIGEST (12 digits of the local manifest's), SIZE, PLATFORMS
    (an image index is one row: its digest, the size of its layers, each platform). With
    --digests: NAME, LOCAL DIGEST (the store's manifest, in full), SIZE, then PUSHED DIGEST
    and PUSHED TO, a row per reference the image was pushed to (the registry's manifest
    digest: what `stepbuild build --push` printed), "-" for an image never pushed."""
    from stepbuild.store.images import summary

    store = open_store(options)
    digests = getattr(options, "digests", False)
    rows = [("NAME", "LOCAL DIGEST", "SIZE", "PUSHED DIGEST", "PUSHED TO") if digests
            else ("NAME", "DIGEST", "SIZE", "PLATFORMS")]
    for name, descriptor in sorted(store.images()):
        size, platforms = summary(store, descriptor)
        if not digests:
            rows.append((name, descriptor.digest.removeprefix("sha256:")[:12], human_size(size),
                         ",".join(platforms)))
            continue
        pushed = sorted(store.push_records.get(descriptor.digest).items()) or [("-", "-")]
        rows += [(name, descriptor.digest, human_size(size), digest, ref)
                 for ref, digest in pushed]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=False))
              + "  " + row[-1])
    return 0


def inspect(options: argparse.Namespace) -> int:
    """`stepbuild inspect IMAGE`: the manifest and config as JSON; of an image index (without
    --platform), the index and, per platform, its manifest and config."""
    from stepbuild.cli import platform_select
    from stepbuild.store.images import is_index, resolve_image

    store = open_store(options)
    found = resolve_image(store, options.image)
    document: dict[str, object]
    if is_index(found) and platform_select.chosen(options) is None:
        index = store.index(found)
        document = {"digest": found.digest, "index": index.to_json(),
                    "manifests": [_image_json(store, entry) for entry in index.manifests]}
    else:
        document = _image_json(store, platform_select.image(store, options.image, options))
    json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
    print()
    return 0


def _image_json(store: Store, descriptor: Descriptor) -> dict[str, object]:
    manifest = store.manifest(descriptor)
    out: dict[str, object] = {"digest": descriptor.digest}
    if descriptor.platform:
        out["platform"] = descriptor.platform
    return {**out, "manifest": manifest.to_json(), "config": store.config(manifest).to_json()}


def history(options: argparse.Namespace) -> int:
    """`stepbuild history IMAGE`: its history entries, newest first, with each layer's size
    (cli/history_table.py)."""
    from datetime import UTC, datetime

    from stepbuild.cli import history_table, platform_select

    store = open_store(options)
    descriptor = platform_select.image(store, options.image, options)
    manifest = store.manifest(descriptor)
    rows = history_table.entries(descriptor.digest, manifest, store.config(manifest))
    for line in history_table.render(rows, options, datetime.now(UTC)):
        print(line)
    return 0


def rmi(options: argparse.Namespace) -> int:
    store = open_store(options)
    if not store.untag(options.image):
        raise StepbuildError(f"no image tagged {options.image!r}")
    print(f"untagged {options.image}; `stepbuild prune` frees the space")
    return 0


def prune(options: argparse.Namespace) -> int:
    from stepbuild.cli import store_flags
    from stepbuild.store import gc
    from stepbuild.store.store import Store

    # No grace period: prune takes the store lock exclusively, so it waits for every build
    # and run (they hold it shared) and nothing it sees in tmp/ is still in use.
    store = Store(store_root(options.root), grace_period=0)
    policy = store_flags.policy(options)
    if options.dry_run:
        with store.lock(exclusive=False):
            store_flags.print_plan(store, gc.plan(store, policy), policy)
        if getattr(options, "cache_mounts", False):
            mounts = store.layout.cache_mounts
            print(f"would remove {len(os.listdir(mounts)) if mounts.is_dir() else 0} cache"
                  " mounts")
        return 0
    if not store_flags.confirm(options, policy):
        print("nothing removed", file=sys.stderr)
        return 1
    store_flags.print_stats(gc.prune(store, policy=policy))
    if getattr(options, "cache_mounts", False):
        from stepbuild.build.mounts.cache import prune_cache_mounts

        print(f"removed {prune_cache_mounts(store)} cache mounts")
    return 0


def du(options: argparse.Namespace) -> int:
    from stepbuild.cli import store_flags

    store_flags.print_du(open_store(options), verbose=options.verbose)
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
    from stepbuild.api.build import enter_build_namespace
    from stepbuild.build.runner import run_image
    from stepbuild.cli import platform_select

    isolation = _isolation(options)
    progress = _progress(options) if options.verbose else None
    if progress is not None:
        _tell_isolation(progress, isolation)
    store = open_store(options, layers=True)
    enter_build_namespace(isolation.mode, store.layout.tmp, progress)
    with store.lock(exclusive=False):  # prune waits while a container uses the layers
        image = platform_select.image(store, options.image, options).digest  # an index's entry
        return int(run_image(store, image, options.command, options.network,
                             limit_flags.limits(options), seccomp=_seccomp(options),
                             isolation=isolation.mode))


def _seccomp(options: argparse.Namespace) -> str:
    """--security-opt: the seccomp setting of the container (see sandbox/seccomp.py)."""
    from stepbuild.sandbox.seccomp import parse_security_opts

    return parse_security_opts(getattr(options, "security_opt", None) or [])
