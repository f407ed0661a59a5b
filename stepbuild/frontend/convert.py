"""Syntax nodes → typed instructions, checking each instruction's flags and arguments.

This is BuildKit's `instructions.ParseInstruction` step: the syntax tree (`syntax.Node`)
accepts any keyword and any `--flag`; here unknown instructions, unknown or malformed flags,
missing or surplus arguments and bad ONBUILD triggers become `ParseError`s that point at
the keyword or the flag. No expansion of variables happens here.
"""

from __future__ import annotations

from collections.abc import Callable

from stepbuild.errors import ParseError, SourcePosition
from stepbuild.frontend import instructions as ins
from stepbuild.frontend.flags import (
    FlagError,
    FlagValues,
    Kind,
    parse_duration,
    parse_flags,
    parse_mount,
)
from stepbuild.frontend.syntax import Node, SyntaxTree, chomp_heredoc, heredoc_marker
from stepbuild.fs import modes

# Healthcheck durations below this are refused (Docker's container.MinimumDuration), 0 aside.
MINIMUM_DURATION_NS = 1_000_000
NO_TRIGGER = ("onbuild", "from", "maintainer")


class _Refused(Exception):
    """Raised inside a converter; `needle` is text to point the caret at, if any."""

    def __init__(self, message: str, needle: str = "", hint: str | None = None) -> None:
        super().__init__(message)
        self.needle = needle
        self.hint = hint


def to_stepfile(tree: SyntaxTree) -> ins.Stepfile:
    """Convert every node of a syntax tree. Raises ParseError at the first bad instruction."""
    converted = tuple(to_instruction(node, tree) for node in tree.nodes)
    warnings = list(tree.warnings)
    for node in tree.nodes:
        warnings += _warnings_for(node, tree)
    return ins.Stepfile(
        tree.filename, converted, tree.escape, tree.directive("syntax"),
        tree.directive("check"), tuple(warnings),
    )


def to_instruction(node: Node, tree: SyntaxTree) -> ins.Instruction:
    """One node → its instruction. Raises ParseError with the location of the problem."""
    converter = _CONVERTERS.get(node.keyword)
    if converter is None:
        raise _error(tree, node, f"unknown instruction: {node.keyword_text}",
                     hint=_suggest(node.keyword))
    try:
        return converter(node, tree)
    except FlagError as exc:
        raise _error(tree, node, str(exc), needle=exc.flag) from None
    except _Refused as exc:
        raise _error(tree, node, str(exc), needle=exc.needle, hint=exc.hint) from None


def _error(
    tree: SyntaxTree, node: Node, message: str, needle: str = "", hint: str | None = None
) -> ParseError:
    line, column = node.start_line, node.column
    if needle:
        # Look past the keyword itself, so "ONBUILD ONBUILD" points at the second one.
        skip = node.column - 1 + len(node.keyword_text)
        for number in range(node.start_line, node.end_line + 1):
            found = tree.source_line(number).find(needle, skip if number == line else 0)
            if found >= 0:
                line, column = number, found + 1
                break
    return ParseError(
        message, SourcePosition(tree.filename, line, column, tree.source_line(line)), hint=hint
    )


def _suggest(keyword: str) -> str | None:
    import difflib

    close = difflib.get_close_matches(keyword, list(_CONVERTERS), n=1, cutoff=0.6)
    return f"did you mean {close[0].upper()}?" if close else None


def _loc(node: Node) -> ins.Location:
    return ins.Location(node.start_line, node.column, node.end_line)


def _flags(node: Node, **declared: Kind) -> FlagValues:
    # Python names stand for flag names: from_ → --from, keep_git_dir → --keep-git-dir.
    names = {k.rstrip("_").replace("_", "-"): v for k, v in declared.items()}
    return parse_flags(node.flags, names)


def _exactly_one(node: Node) -> str:
    if len(node.args) != 1:
        raise _Refused(f"{node.keyword.upper()} requires exactly one argument")
    return node.args[0]


def _at_least_one(node: Node) -> None:
    if not node.args:
        raise _Refused(f"{node.keyword.upper()} requires at least one argument")


# --- one converter per instruction --------------------------------------------------------


def _from(node: Node, tree: SyntaxTree) -> ins.From:
    flags = _flags(node, platform=Kind.STRING)
    args = node.args
    name = None
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if "$" not in name and not _valid_stage_name(name):
            raise _Refused(
                f"invalid name for build stage: {args[2]!r}, name can't start with a number"
                " or contain symbols", needle=args[2])
    elif len(args) != 1:
        raise _Refused("FROM requires either one or three arguments",
                       hint="FROM image[:tag] [AS name]")
    return ins.From(_loc(node), node.original, args[0], name, flags.string("platform"))


def _valid_stage_name(name: str) -> bool:
    return bool(name) and name[0].isascii() and name[0].isalpha() and all(
        ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in name)


def _command(node: Node, keyword: str) -> ins.Command:
    return ins.Command(node.args, not node.is_json, node.heredocs)


def _run(node: Node, tree: SyntaxTree) -> ins.Run:
    flags = _flags(node, mount=Kind.LIST, network=Kind.STRING, security=Kind.STRING)
    _at_least_one(node)
    network = flags.string("network")
    if network is not None and network not in ("default", "none", "host"):
        raise FlagError(f"unsupported network mode {network!r}: use default, none or host",
                        f"--network={network}")
    security = flags.string("security")
    if security is not None and security not in ("sandbox", "insecure"):
        raise FlagError(f"unsupported security mode {security!r}: use sandbox or insecure",
                        f"--security={security}")
    mounts = tuple(parse_mount(text) for text in flags.strings("mount"))
    return ins.Run(_loc(node), node.original, _command(node, "RUN"), mounts, network, security)


def _cmd(node: Node, tree: SyntaxTree) -> ins.Cmd:
    _flags(node)
    return ins.Cmd(_loc(node), node.original, _command(node, "CMD"))


def _entrypoint(node: Node, tree: SyntaxTree) -> ins.Entrypoint:
    _flags(node)
    return ins.Entrypoint(_loc(node), node.original, _command(node, "ENTRYPOINT"))


def _shell(node: Node, tree: SyntaxTree) -> ins.Shell:
    _flags(node)
    _at_least_one(node)
    if not node.is_json:
        raise _Refused("SHELL requires the arguments to be in JSON form",
                       hint='SHELL ["/bin/sh", "-c"]')
    return ins.Shell(_loc(node), node.original, node.args)


def _pairs(node: Node) -> tuple[ins.KeyValue, ...]:
    _flags(node)
    _at_least_one(node)
    pairs = []
    for i in range(0, len(node.args) - 2, 3):
        key, value = node.args[i], node.args[i + 1]
        if not key:
            raise _Refused(f"{node.keyword.upper()} names can not be blank", needle="=")
        pairs.append(ins.KeyValue(key, value))
    return tuple(pairs)


def _env(node: Node, tree: SyntaxTree) -> ins.Env:
    return ins.Env(_loc(node), node.original, _pairs(node))


def _label(node: Node, tree: SyntaxTree) -> ins.Label:
    return ins.Label(_loc(node), node.original, _pairs(node))


def _arg(node: Node, tree: SyntaxTree) -> ins.Arg:
    _flags(node)
    _at_least_one(node)
    declarations = []
    for word in node.args:
        name, has_default, default = word.partition("=")
        if not name:
            raise _Refused("ARG names can not be blank", needle=word)
        declarations.append(ins.ArgDeclaration(name, default if has_default else None))
    return ins.Arg(_loc(node), node.original, tuple(declarations))


def _expose(node: Node, tree: SyntaxTree) -> ins.Expose:
    _flags(node)
    _at_least_one(node)
    return ins.Expose(_loc(node), node.original, node.args)


def _volume(node: Node, tree: SyntaxTree) -> ins.Volume:
    _flags(node)
    _at_least_one(node)
    for path in node.args:
        if not path.strip():
            raise _Refused("VOLUME specified can not be an empty string")
    return ins.Volume(_loc(node), node.original, node.args)


def _user(node: Node, tree: SyntaxTree) -> ins.User:
    _flags(node)
    return ins.User(_loc(node), node.original, _exactly_one(node))


def _workdir(node: Node, tree: SyntaxTree) -> ins.Workdir:
    _flags(node)
    return ins.Workdir(_loc(node), node.original, _exactly_one(node))


def _stopsignal(node: Node, tree: SyntaxTree) -> ins.Stopsignal:
    _flags(node)
    return ins.Stopsignal(_loc(node), node.original, _exactly_one(node))


def _maintainer(node: Node, tree: SyntaxTree) -> ins.Maintainer:
    _flags(node)
    return ins.Maintainer(_loc(node), node.original, _exactly_one(node))


def _sources(node: Node) -> tuple[tuple[str, ...], str, tuple[ins.InlineSource, ...]]:
    """Split COPY/ADD arguments into paths, destination and heredoc sources."""
    word = node.keyword.upper()
    if len(node.args) < 2:
        detail = ", but only one was provided. Destination could not be determined" if (
            node.args) else ""
        raise _Refused(f"{word} requires at least two arguments{detail}")
    *sources, dest = node.args
    if not node.is_json and heredoc_marker(dest) is not None:
        raise _Refused(f"{word} cannot accept a heredoc as a destination", needle=dest)
    bodies = {h.name: h for h in node.heredocs}
    paths, inline = [], []
    for source in sources:
        marker = None if node.is_json else heredoc_marker(source)
        if marker is None or marker.name not in bodies:
            paths.append(source)
            continue
        content = bodies[marker.name].content
        inline.append(ins.InlineSource(
            marker.name, chomp_heredoc(content) if marker.chomp else content, marker.expand))
    return tuple(paths), dest, tuple(inline)


def _copy(node: Node, tree: SyntaxTree) -> ins.Copy:
    flags = _flags(node, from_=Kind.STRING, chown=Kind.STRING, chmod=Kind.STRING,
                   link=Kind.BOOL, parents=Kind.BOOL, exclude=Kind.LIST)
    sources, dest, inline = _sources(node)
    _check_chmod(flags.string("chmod"))
    return ins.Copy(
        _loc(node), node.original, sources, dest, inline, flags.string("from"),
        flags.string("chown"), flags.string("chmod"), flags.boolean("link"),
        flags.boolean("parents"), flags.strings("exclude"),
    )


def _add(node: Node, tree: SyntaxTree) -> ins.Add:
    flags = _flags(node, chown=Kind.STRING, chmod=Kind.STRING, link=Kind.BOOL,
                   exclude=Kind.LIST, checksum=Kind.STRING, keep_git_dir=Kind.BOOL,
                   unpack=Kind.BOOL)
    sources, dest, inline = _sources(node)
    _check_chmod(flags.string("chmod"))
    checksum = flags.string("checksum")
    if checksum is not None and "$" not in checksum and not _git_commit_checksum(
            checksum, sources):
        algorithm, _, digest = checksum.partition(":")
        if algorithm not in ("sha256", "sha384", "sha512") or not digest:
            raise FlagError(f"invalid checksum {checksum!r}: expected sha256:<hex>",
                            f"--checksum={checksum}")
    unpack = flags.boolean("unpack") if "unpack" in flags.used else None
    return ins.Add(
        _loc(node), node.original, sources, dest, inline, flags.string("chown"),
        flags.string("chmod"), flags.boolean("link"), flags.strings("exclude"), checksum,
        flags.boolean("keep-git-dir"), unpack,
    )


def _git_commit_checksum(checksum: str, sources: tuple[str, ...]) -> bool:
    """For a git source, --checksum is a commit sha (prefix), not an algorithm:digest."""
    is_hex = len(checksum) >= 7 and all(ch in "0123456789abcdef" for ch in checksum)
    return is_hex and any(".git" in source for source in sources)


def _check_chmod(chmod: str | None) -> None:
    if chmod is None or "$" in chmod:
        return
    try:
        modes.parse(chmod)
    except ValueError as exc:
        raise FlagError(f"invalid chmod {chmod!r}: {exc}", f"--chmod={chmod}") from None


def _healthcheck(node: Node, tree: SyntaxTree) -> ins.Healthcheck:
    _at_least_one(node)
    kind, *command = node.args
    kind = kind.upper()
    if kind == "NONE":
        _flags(node)
        if command:
            raise _Refused("HEALTHCHECK NONE takes no arguments")
        return ins.Healthcheck(_loc(node), node.original, ("NONE",))
    if kind != "CMD":
        raise _Refused(f"Unknown type {kind!r} in HEALTHCHECK (try CMD)", needle=node.args[0])
    flags = _flags(node, interval=Kind.STRING, timeout=Kind.STRING,
                   start_period=Kind.STRING, start_interval=Kind.STRING, retries=Kind.STRING)
    if not command:
        raise _Refused("Missing command after HEALTHCHECK CMD")
    test = ("CMD", *command) if node.is_json else ("CMD-SHELL", *command)
    return ins.Healthcheck(
        _loc(node), node.original, test, _interval(flags, "interval"),
        _interval(flags, "timeout"), _interval(flags, "start-period"),
        _interval(flags, "start-interval"), _retries(flags),
    )


def _interval(flags: FlagValues, name: str) -> int | None:
    text = flags.string(name)
    if text is None or text == "":
        return None
    value = parse_duration(text, f"--{name}={text}")
    if value != 0 and value < MINIMUM_DURATION_NS:
        raise FlagError(f"Interval {name!r} cannot be less than 1ms", f"--{name}={text}")
    return value


def _retries(flags: FlagValues) -> int | None:
    text = flags.string("retries")
    if text is None or text == "":
        return None
    try:
        value = int(text, 10)
    except ValueError:
        raise FlagError(f"invalid --retries value {text!r}", f"--retries={text}") from None
    if value < 0:
        raise FlagError(f"--retries cannot be negative ({value})", f"--retries={text}")
    return value


def _onbuild(node: Node, tree: SyntaxTree) -> ins.Onbuild:
    _flags(node)
    trigger = node.trigger
    if trigger is None:
        raise _Refused("ONBUILD requires at least one argument")
    if trigger.keyword == "onbuild":
        raise _Refused("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
                       needle=trigger.keyword_text)
    if trigger.keyword in NO_TRIGGER:
        raise _Refused(f"{trigger.keyword.upper()} isn't allowed as an ONBUILD trigger",
                       needle=trigger.keyword_text)
    expression = trigger.original
    for heredoc in trigger.heredocs:
        expression += "\n" + heredoc.content + heredoc.name
    return ins.Onbuild(_loc(node), node.original, to_instruction(trigger, tree), expression)


_CONVERTERS: dict[str, Callable[[Node, SyntaxTree], ins.Instruction]] = {
    "add": _add, "arg": _arg, "cmd": _cmd, "copy": _copy, "entrypoint": _entrypoint,
    "env": _env, "expose": _expose, "from": _from, "healthcheck": _healthcheck,
    "label": _label, "maintainer": _maintainer, "onbuild": _onbuild, "run": _run,
    "shell": _shell, "stopsignal": _stopsignal, "user": _user, "volume": _volume,
    "workdir": _workdir,
}


# --- warnings --------------------------------------------------------------------------------


def _warnings_for(node: Node, tree: SyntaxTree) -> list[str]:
    where = f"{tree.filename}:{node.start_line}"
    found = []
    if node.keyword == "maintainer":
        found.append(f"{where}: MAINTAINER is deprecated: use LABEL maintainer=...")
    command_like = node.keyword in ("run", "cmd", "entrypoint", "shell")
    if command_like and not node.is_json and node.args and node.args[0].lstrip().startswith("["):
        found.append(
            f"{where}: {node.keyword.upper()} argument looks like JSON but is not valid JSON;"
            " it runs in shell form"
        )
    return found
