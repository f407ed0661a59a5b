"""The `stepbuild` command line: argument parsing, exit codes, and the one place errors print.

Exit status: 0 success, 1 a build or run failed, 2 bad usage or a bad Stepfile. Errors are
`StepbuildError`s rendered in a few lines; a traceback only with `--debug`. Commands import
what they need lazily so that start-up stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import TYPE_CHECKING

from stepbuild.cli import config_defaults, progress_flags
from stepbuild.errors import StepbuildError
from stepbuild.frontend.source import read_stepfile

if TYPE_CHECKING:
    from types import FrameType

    from stepbuild.frontend.syntax import Node

    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_TERMINATED = 128 + signal.SIGTERM  # what a shell reports for a process SIGTERM killed
NETWORKS = ("default", "none", "host")
ISOLATIONS = ("auto", "namespaces", "userns", "chroot")  # sandbox/isolation.py's CHOICES
_PLATFORM_HELP = {"inspect": "of an image index, inspect that platform's image only (default:"
                            " the index and each platform's manifest and config)",
                  "history": "of an image index, the platform whose history to print"}
NETWORK_HELP = ("default: a private network with outbound access through slirp4netns, no"
                " host loopback; none: loopback only; host: the host's own")


class Terminated(BaseException):
    """SIGTERM arrived. Raised in the main thread so that every `finally` and cleanup on the
    way out runs (temp dirs, mounts, a half-written export) before we exit 143. A
    BaseException, so that no `except Exception` takes it for an ordinary failure."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # One unwinding is enough: a second SIGTERM must not cut the cleanup of the first short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    parser = _argument_parser()
    config_defaults.install(parser)  # config.toml's [defaults]; a flag given wins
    options = parser.parse_args(argv)
    if not hasattr(options, "run"):
        parser.print_help(sys.stderr)
        return 2
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (an embedding caller): leave signals alone
        previous = None
    try:
        return _run(options)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(options: argparse.Namespace) -> int:
    """Run the command; print its error, if any, and return the exit status."""
    try:
        if getattr(options, "userns", False):
            from stepbuild.cli.rootless import reenter

            reenter(options)  # no CAP_SYS_ADMIN: go on as root of a user namespace
        with progress_flags.reporting(options):  # a rawjson build.error; the view closed
            return int(options.run(options))
    except StepbuildError as exc:
        if options.debug:
            raise
        if not progress_flags.reported(exc):
            print(f"stepbuild: error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Terminated:
        print("stepbuild: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:
        # `stepbuild history IMG | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _argument_parser() -> argparse.ArgumentParser:
    from stepbuild.cli import help_text

    parser = help_text.top_parser()  # what stepbuild is, examples, exit statuses, environment
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--root", help="the store directory (default: $STEPBUILD_ROOT, else"
                        " /var/lib/stepbuild as root, else $XDG_DATA_HOME/stepbuild)")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    parse = commands.add_parser("parse", help="parse a Stepfile and print its instructions")
    parse.add_argument("-f", "--file", help="the Stepfile ('-' for standard input); default:"
                       " Stepfile, then Containerfile, then Dockerfile, in the context directory")
    parse.add_argument("--json", action="store_true", help="one JSON object per instruction")
    parse.add_argument("--syntax-tree", action="store_true",
                       help="print BuildKit's syntax-tree dump (no flag or argument checks)")
    parse.add_argument("context", nargs="?", default=".", help="the context directory")
    parse.set_defaults(run=_parse_command)
    _add_store_commands(commands)
    help_text.add_version(parser, commands)  # --version and `stepbuild version`
    help_text.add_completion_command(parser, commands)
    help_text.decorate(commands)  # each command's examples, in its --help
    from stepbuild.cli.rootless import OUTSIDE

    for name, sub in commands.choices.items():
        if name not in OUTSIDE:
            sub.set_defaults(userns=name)  # maybe in a user namespace (cli/rootless.py)
    return parser


def _add_store_commands(commands: Subcommands) -> None:
    """The commands that use the store (implemented in stepbuild/cli/commands.py)."""
    from stepbuild.cli import (
        build_flags,
        cache_command,
        context_flags,
        explain_flags,
        history_table,
        limit_flags,
        output_flags,
        platform_flags,
        platform_select,
        store_flags,
    )
    from stepbuild.cli import commands as impl

    build = commands.add_parser("build", help="build an image from a Stepfile")
    build.add_argument("-f", "--file", help="the Stepfile ('-' for stdin; default: Stepfile,"
                       " then Containerfile, then Dockerfile, in the context)")
    build.add_argument("-t", "--tag", action="append", default=[], help="name:tag (repeatable)")
    build.add_argument("--build-arg", action="append", default=[], metavar="K[=V]",
                       help="set a build ARG; K alone takes the value from the environment")
    build.add_argument("--build-arg-file", action="append", default=[], metavar="FILE",
                       help="KEY=VALUE lines of build ARGs (--build-arg wins)")
    build.add_argument("--no-cache", action="store_true", help="run every step again")
    build.add_argument("--network", choices=NETWORKS, default="default",
                       help="the network of RUN steps (" + NETWORK_HELP + ")")
    build.add_argument("--allow", action="append", default=[], choices=("network.host",),
                       help="grant an entitlement, as BuildKit: network.host lets RUN"
                            " --network=host use the host's network (--network host grants"
                            " it too)")
    _add_security_opt(build)
    _add_isolation(build)
    build.add_argument("--target", help="build up to this stage")
    build.add_argument("--reproducible", action="store_true",
                       help="build twice (the second time without cache) and fail unless the"
                       " image digests match")
    build.add_argument("--secret", action="append", default=[], metavar="id=ID,src=FILE|env=VAR",
                       help="a secret for RUN --mount=type=secret (repeatable)")
    build.add_argument("--ssh", action="append", default=[], metavar="default|ID=SOCKET",
                       help="an ssh agent socket for RUN --mount=type=ssh (repeatable;"
                            " default: $SSH_AUTH_SOCK)")
    build.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                       help="stages built at once (default: the number of CPUs)")
    _add_output_arguments(build, required=False)
    build.add_argument("--push", action="store_true",
                       help="push the result to every -t name (a registry reference); the"
                            " digest printed is then the registry's")
    build.add_argument("--iidfile", metavar="FILE",
                       help="write the image's digest to FILE (the registry's with --push)")
    build.add_argument("--metadata-file", metavar="FILE",
                       help="write the build's result as JSON to FILE, with buildx's keys"
                            " (containerimage.digest, containerimage.config.digest,"
                            " image.name, ...)")
    build.add_argument("--pull", nargs="?", const="always", default="missing",
                       metavar="missing|always|never",
                       help="FROM a registry reference: pull the base when it is missing from"
                            " the store (default), always, or never (bare --pull: always)")
    build.add_argument("--cache-to", action="append", default=[],
                       metavar="type=local,dest=DIR|type=registry,ref=REF[,mode=min|max]",
                       help="export the build cache (repeatable); ignore-error=true: a failed"
                            " export only warns")
    build.add_argument("--cache-from", action="append", default=[],
                       metavar="REF|type=local,src=DIR|type=registry,ref=REF",
                       help="import the build cache on a miss, sources in order (repeatable;"
                            " a bare REF is type=registry,ref=REF)")
    _add_registry_arguments(build)  # one connection for FROM, --push and a registry cache
    limit_flags.add_arguments(build)
    build_flags.add_arguments(build)  # --no-cache-filter
    explain_flags.add_arguments(build)  # --explain
    output_flags.add_arguments(build)  # --label, --annotation
    context_flags.add_arguments(build)  # --build-context
    platform_flags.add_arguments(build)  # --platform
    progress_flags.add_arguments(build)
    build.add_argument("-q", "--quiet", action="store_true", help="print only the image digest")
    build.add_argument("-v", "--verbose", action="store_true", help="say more about each step")
    build.add_argument("context", nargs="?", default=".",
                       help="the build context: a directory, '-' (a tar or a Stepfile on"
                            " stdin), a git URL (URL.git#ref:subdir, git@host:repo.git) or"
                            " an http(s) URL of a tarball")
    build.set_defaults(run=impl.build)
    explain_flags.add_command(commands)  # why [IMAGE]

    for name, helptext, func in (("images", "list tagged images", impl.images),
                                 ("prune", "remove cache records not in use and what no"
                                  " tag reaches", impl.prune),
                                 ("du", "show what the store spends on disk", impl.du),
                                 ("check", "verify the store's consistency", impl.check)):
        sub = commands.add_parser(name, help=helptext)
        sub.set_defaults(run=func)
        if name == "images":
            output_flags.add_images_arguments(sub)
        if name == "prune":
            sub.add_argument("--cache-mounts", action="store_true",
                             help="also delete the RUN --mount=type=cache directories")
            store_flags.add_prune_arguments(sub)
        if name == "du":
            store_flags.add_du_arguments(sub)
        if name == "check":
            sub.add_argument("--deep", action="store_true",
                             help="also compare every unpacked layer with its blob")
            sub.add_argument("--repair", action="store_true",
                             help="restore damaged layer dirs from their blobs and a missing"
                                  " oci-layout, then check deeply")
    for name, helptext, func in (("inspect", "print an image's manifest and config",
                                  impl.inspect),
                                 ("history", "print an image's history", impl.history),
                                 ("rmi", "remove an image's tag", impl.rmi)):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("image")
        sub.set_defaults(run=func)
        if name in _PLATFORM_HELP:
            platform_select.add_argument(sub, _PLATFORM_HELP[name])
        if name == "history":
            history_table.add_arguments(sub)
    export = commands.add_parser("export", help="write an image as an OCI or docker archive,"
                                 " an OCI layout, or its root filesystem")
    export.add_argument("image")
    platform_select.add_argument(export, "of an image index, export that platform's image"
                                 " only (oci and oci-layout write the whole index without"
                                 " it; docker, local and tar write one platform)")
    _add_output_arguments(export, required=True)
    export.set_defaults(run=impl.export)
    load = commands.add_parser("load", help="import the images of an OCI or docker archive"
                               " (tagged with the names it gives them)")
    load.add_argument("-i", "--input", metavar="FILE",
                      help="read the archive from FILE (default: standard input)")
    load.set_defaults(run=impl.load)
    run = commands.add_parser("run", help="run a command in a throwaway container of an image")
    run.add_argument("--rm", action="store_true",
                     help="accepted for docker compatibility: containers are always removed")
    run.add_argument("--network", choices=NETWORKS, default="default",
                     help="the container's network (" + NETWORK_HELP + ")")
    limit_flags.add_arguments(run)
    _add_security_opt(run)
    _add_isolation(run)
    platform_select.add_argument(run, "of an image index, the platform's image to run")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="say which isolation the container gets, and why")
    run.add_argument("image")
    run.add_argument("command", nargs=argparse.REMAINDER)
    run.set_defaults(run=impl.run)
    _add_registry_commands(commands)
    cache_command.add_parser(commands, _add_registry_arguments)  # cache ls|du|prune


def _add_registry_commands(commands: Subcommands) -> None:
    """push, pull, tag, login, logout (stepbuild/distribution/ does the work)."""
    from stepbuild.cli import commands as impl  # imported already by _add_store_commands
    from stepbuild.cli import platform_select
    push = commands.add_parser("push", help="push an image to a registry")
    push.add_argument("--compression", choices=("gzip", "zstd", "none"), default="gzip",
                      help="layer compression (default: gzip)")
    push.add_argument("image", help="the image in the store")
    push.add_argument("destination", nargs="?", metavar="REF",
                      help="REGISTRY/REPOSITORY[:TAG] (default: IMAGE read as a reference)")
    pull = commands.add_parser("pull", help="pull an image from a registry into the store")
    pull.add_argument("image", metavar="REF", help="[REGISTRY/]REPOSITORY[:TAG][@DIGEST]")
    platform_select.add_argument(pull, "of an image index, the platform to pull")
    pull.add_argument("--all-platforms", action="store_true",
                      help="of an image index, pull every platform and keep the index")
    platform_select.add_argument(push, "of an image index, push that platform's image only"
                                 " (default: the whole index)")
    for sub, func in ((push, impl.push), (pull, impl.pull)):
        _add_registry_arguments(sub)
        progress_flags.add_arguments(sub)
        sub.add_argument("-q", "--quiet", action="store_true",
                         help="no progress, only the digest")
        sub.set_defaults(run=func)
    tag = commands.add_parser("tag", help="give an image in the store another name")
    tag.add_argument("image", metavar="SOURCE")
    tag.add_argument("target", metavar="TARGET")
    tag.set_defaults(run=impl.tag)
    login = commands.add_parser("login", help="check and store credentials for a registry")
    login.add_argument("-u", "--username")
    login.add_argument("-p", "--password", help="(visible to other users: prefer"
                       " --password-stdin)")
    login.add_argument("--password-stdin", action="store_true",
                       help="read the password from standard input")
    _add_registry_arguments(login)
    login.add_argument("registry", metavar="REGISTRY")
    login.set_defaults(run=impl.login)
    logout = commands.add_parser("logout", help="remove the stored credentials of a registry")
    logout.add_argument("--authfile", help="the auth file (default: $REGISTRY_AUTH_FILE,"
                        " else ~/.docker/config.json)")
    logout.add_argument("registry", metavar="REGISTRY")
    logout.set_defaults(run=impl.logout)


def _add_registry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--authfile", help="the auth file (default: $REGISTRY_AUTH_FILE,"
                        " else ~/.docker/config.json)")
    parser.add_argument("--tls-verify", type=_boolean, default=True, metavar="BOOL",
                        help="verify the registry's certificate; false also allows plain HTTP"
                             " (default: true)")
    parser.add_argument("--ca-file", help="CA certificate(s) to trust for the registry")
    parser.add_argument("--stall-timeout", type=_seconds, metavar="SECONDS",
                        help="fail a registry transfer that makes no progress (under 1 KiB/s)"
                             " for this long; retried as other network errors (default:"
                             " $STEPBUILD_STALL_TIMEOUT, else 60)")


def _add_security_opt(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--security-opt", action="append", default=[],
                        metavar="seccomp=unconfined|PROFILE",
                        help="seccomp filter of RUN steps (default: the system's containers"
                             " seccomp.json, hardened, as docker's default profile)")


def _add_isolation(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--isolation", choices=ISOLATIONS, default="auto",
                        help="how RUN steps are isolated: namespaces (mount, PID, network"
                             " namespaces, overlay; needs CAP_SYS_ADMIN), userns (the same"
                             " inside a user namespace: rootless, or root without"
                             " CAP_SYS_ADMIN), chroot (a chroot into a copy of the root, for"
                             " where no namespace can be made; much weaker), or auto (default:"
                             " the strongest this environment allows)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}")
    return value


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _add_output_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """--output and --compression (stepbuild/archive/export.py documents them)."""
    parser.add_argument("-o", "--output", action="append", default=[], required=required,
                        metavar="type=TYPE,dest=PATH",
                        help="write the image: TYPE oci, oci-layout, docker, local or tar"
                             " (repeatable; a bare PATH means type=local; dest=- writes an"
                             " oci, docker or tar archive to stdout, and a bare - is"
                             " type=tar,dest=-); build also takes type=image[,name=REF]"
                             "[,push=true] and type=registry,name=REF (push to REF)")
    parser.add_argument("--compression", choices=("gzip", "zstd", "none"), default="gzip",
                        help="layer compression of oci and oci-layout outputs (default: gzip)")


def _parse_command(options: argparse.Namespace) -> int:
    from stepbuild.frontend.parse import parse_syntax
    from stepbuild.frontend.syntax import dump

    text, name = read_stepfile(options.file, options.context)
    tree = parse_syntax(text, name)
    if options.syntax_tree:
        _print_warnings(tree.warnings)
        sys.stdout.write(dump(list(tree.nodes)))
        return 0
    from stepbuild.frontend.convert import to_stepfile

    stepfile = to_stepfile(tree)
    _print_warnings(stepfile.warnings)
    out = []
    for node in tree.nodes:
        out.append(json.dumps(node_json(node), ensure_ascii=False) if options.json
                   else _readable(node))
    sys.stdout.write("".join(line + "\n" for line in out))
    return 0


def _print_warnings(warnings: tuple[str, ...]) -> None:
    for warning in warnings:
        print(f"stepbuild: warning: {warning}", file=sys.stderr)


def node_json(node: Node) -> dict[str, object]:
    """The `--json` form of one instruction (tools and tests read it)."""
    data: dict[str, object] = {
        "instruction": node.keyword,
        "flags": list(node.flags),
        "args": list(node.args),
        "json": node.is_json,
        "heredocs": [
            {"name": h.name, "content": h.content, "expand": h.expand, "chomp": h.chomp,
             "fd": h.fd} for h in node.heredocs
        ],
        "line": node.start_line,
        "column": node.column,
        "end_line": node.end_line,
        "original": node.original,
    }
    if node.trigger is not None:
        data["trigger"] = node_json(node.trigger)
    return data


def _readable(node: Node) -> str:
    span = f"{node.start_line}" if node.start_line == node.end_line else (
        f"{node.start_line}-{node.end_line}")
    heredocs = (node.trigger or node).heredocs
    notes = "".join(f"  <<{h.name}: {h.content.count(chr(10))} lines" for h in heredocs)
    return f"{span:>7}  {node.dump()}{notes}"
