"""Typed Stepfile instructions: frozen values, one class per instruction.

Each instruction keeps its `Location` and the logical line as written (`text`); flags are
parsed into typed fields (a `--mount` is a `Mount`, a duration is nanoseconds). Values are
as written: variables are not expanded here (that is the planner's job, with `words.py`),
and quotes in ENV/LABEL/ARG values are kept for the same reason. Pure data, no behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from stepbuild.frontend.syntax import Heredoc


@dataclass(frozen=True, slots=True)
class Location:
    """1-based line and column of the keyword, and the last source line the instruction uses."""

    line: int
    column: int
    end_line: int


@dataclass(frozen=True, slots=True)
class Command:
    """The command of RUN/CMD/ENTRYPOINT/HEALTHCHECK: exec form (argv) or shell form (text).

    In shell form `args` holds one string, run through SHELL; `heredocs` are inline files
    (RUN only) whose names appear in that text.
    """

    args: tuple[str, ...]
    shell_form: bool
    heredocs: tuple[Heredoc, ...] = ()


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One `key=value` of ENV or LABEL, the value as written (quotes and `$` kept)."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class ArgDeclaration:
    """One name of an ARG, with its default as written, or None when it has none."""

    name: str
    default: str | None


@dataclass(frozen=True, slots=True)
class Mount:
    """One `RUN --mount=...`. Fields not given are None; `readonly` has the type's default.

    String options may hold `$VAR` (expanded when the step is planned); `raw` is the option
    text as written, for re-parsing after expansion.
    """

    type: str
    target: str | None = None
    source: str | None = None
    from_: str | None = None
    id: str | None = None
    sharing: str | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    readonly: bool = False
    required: bool = False
    env: str | None = None
    size: int | None = None
    raw: str = ""


@dataclass(frozen=True, slots=True)
class InlineSource:
    """A heredoc used as a COPY/ADD source: a file named `name` holding `data`."""

    name: str
    data: str
    expand: bool


@dataclass(frozen=True, slots=True)
class From:
    loc: Location
    text: str
    image: str
    stage_name: str | None = None
    platform: str | None = None


@dataclass(frozen=True, slots=True)
class Run:
    loc: Location
    text: str
    command: Command
    mounts: tuple[Mount, ...] = ()
    network: str | None = None
    security: str | None = None


@dataclass(frozen=True, slots=True)
class Cmd:
    loc: Location
    text: str
    command: Command


@dataclass(frozen=True, slots=True)
class Entrypoint:
    loc: Location
    text: str
    command: Command


@dataclass(frozen=True, slots=True)
class Shell:
    loc: Location
    text: str
    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Env:
    loc: Location
    text: str
    pairs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class Label:
    loc: Location
    text: str
    pairs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class Arg:
    loc: Location
    text: str
    declarations: tuple[ArgDeclaration, ...]


@dataclass(frozen=True, slots=True)
class Expose:
    loc: Location
    text: str
    ports: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Volume:
    loc: Location
    text: str
    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class User:
    loc: Location
    text: str
    user: str


@dataclass(frozen=True, slots=True)
class Workdir:
    loc: Location
    text: str
    path: str


@dataclass(frozen=True, slots=True)
class Copy:
    """COPY, also the base of ADD. `sources` are paths as written; `inline` are heredocs."""

    loc: Location
    text: str
    sources: tuple[str, ...]
    dest: str
    inline: tuple[InlineSource, ...] = ()
    from_: str | None = None
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    parents: bool = False
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Add:
    loc: Location
    text: str
    sources: tuple[str, ...]
    dest: str
    inline: tuple[InlineSource, ...] = ()
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    excludes: tuple[str, ...] = ()
    checksum: str | None = None
    keep_git_dir: bool = False
    unpack: bool | None = None


@dataclass(frozen=True, slots=True)
class Healthcheck:
    """HEALTHCHECK. `test` is the OCI form: ("NONE",), ("CMD", *argv) or ("CMD-SHELL", text).

    Durations are nanoseconds; None means "not given" (the runtime's default).
    """

    loc: Location
    text: str
    test: tuple[str, ...]
    interval: int | None = None
    timeout: int | None = None
    start_period: int | None = None
    start_interval: int | None = None
    retries: int | None = None


@dataclass(frozen=True, slots=True)
class Stopsignal:
    loc: Location
    text: str
    signal: str


@dataclass(frozen=True, slots=True)
class Maintainer:
    loc: Location
    text: str
    name: str


@dataclass(frozen=True, slots=True)
class Onbuild:
    """ONBUILD: `trigger` is the wrapped instruction, stored in the image and run later."""

    loc: Location
    text: str
    trigger: Instruction
    expression: str = ""


Instruction: TypeAlias = (
    From | Run | Cmd | Entrypoint | Shell | Env | Label | Arg | Expose | Volume | User | Workdir
    | Copy | Add | Healthcheck | Stopsignal | Maintainer | Onbuild
)


@dataclass(frozen=True, slots=True)
class Stepfile:
    """A whole parsed Stepfile: instructions in order, plus what the file header said."""

    filename: str
    instructions: tuple[Instruction, ...]
    escape: str = "\\"
    syntax: str | None = None
    check: str | None = None
    warnings: tuple[str, ...] = field(default=())


def keyword(instruction: Instruction) -> str:
    """The lower-case keyword of an instruction ("run", "copy", ...)."""
    return type(instruction).__name__.lower()
