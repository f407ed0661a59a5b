"""Property (fuzz) tests of the Stepfile parser: nothing but a result or a ParseError escapes.

Three sources of input: (a) random text built from Stepfile-ish pieces and arbitrary characters,
(b) random bytes through `decode`, (c) mutations of valid Stepfiles (the conformance suite's
Dockerfiles, read-only under shared/, plus the built-in seeds below). For every input both
`parse_syntax` and `parse` must return or raise `ParseError`; on success node line numbers must
lie inside the file, and every ParseError must carry a sane position and render to plain text.

The runs stay random (no `derandomize`); a failure prints the falsifying example and the
`@reproduce_failure` blob to replay it. Budget: the whole file in well under 20 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepbuild.errors import ParseError
from stepbuild.frontend import instructions as ins
from stepbuild.frontend.parse import SyntaxTree, decode, parse, parse_syntax
from stepbuild.frontend.syntax import Node

FILENAME = "Stepfile"
# Multiplies every example budget, for a deeper hunt: STEPBUILD_FUZZ_SCALE=20 pytest this file.
SCALE = max(1, int(os.environ.get("STEPBUILD_FUZZ_SCALE", "1")))


def examples(n: int) -> settings:
    return settings(max_examples=n * SCALE, deadline=None)

TESTFILES = (
    Path(__file__).resolve().parents[4] / "shared" / "conformance" / "buildkit-parser" / "testfiles"
)

# --- seeds --------------------------------------------------------------------------------

BUILTIN_SEEDS = (
    # heredocs: several on one line, <<- with tabs, quoted delimiters, an fd, COPY inline files
    """\
# syntax=docker/dockerfile:1
FROM alpine:3.19 AS build
RUN <<EOF
set -e
echo "hello $USER" > /greeting
EOF
RUN <<-'SCRIPT' bash
\techo tabs are stripped
\tSCRIPT
RUN 3<<A cat /dev/fd/3 && cat <<"B"
first
A
second
B
COPY <<conf.ini <<-EOT /etc/
[main]
key = value
conf.ini
\tother
\tEOT
ADD --chmod=755 <<run.sh /usr/local/bin/
#!/bin/sh
exec "$@"
run.sh
""",
    # ONBUILD triggers, including flags and heredocs inside a trigger
    """\
FROM busybox
ONBUILD ADD . /app/src
ONBUILD RUN --mount=type=cache,target=/root/.cache make -C /app/src
ONBUILD RUN <<EOF
echo built
EOF
ONBUILD COPY --from=builder /out /out
ONBUILD ENV A=1 B="two words"
""",
    # RUN --mount / --network / --security, continuations, comments inside them
    """\
FROM python:3.11-slim
ARG PIP_INDEX
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \\
    --mount=type=bind,source=requirements.txt,target=/tmp/req.txt \\
    --mount=type=secret,id=token,required=true,mode=0400,uid=0,gid=0 \\
    --mount=type=tmpfs,target=/scratch,size=64m \\
    --network=none \\
    # a comment inside a continuation
    pip install -r /tmp/req.txt
RUN --mount=type=ssh,id=default git clone git@example.com:x/y.git
RUN -- --not-a-flag
""",
    # HEALTHCHECK in all its forms, plus JSON forms and SHELL
    """\
FROM nginx:1.25
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --start-interval=1s --retries=3 \\
  CMD curl -f http://localhost/ || exit 1
HEALTHCHECK CMD ["curl", "-f", "http://localhost/"]
HEALTHCHECK NONE
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENTRYPOINT ["nginx", "-g", "daemon off;"]
CMD ["-c", "/etc/nginx/nginx.conf"]
STOPSIGNAL SIGQUIT
""",
    # the escape directive with a backtick, Windows-style paths, a CRLF line, a BOM
    "\ufeff# escape=`\r\n"
    "FROM mcr.microsoft.com/windows/servercore:ltsc2022\r\n"
    "WORKDIR C:\\app\r\n"
    "COPY [\"src\\\\a b.txt\", \"C:\\\\dest\\\\\"]\r\n"
    "RUN powershell -Command `\r\n"
    "    Write-Host hello ; `\r\n"
    "    Write-Host world\r\n"
    "LABEL a=\"b`\"c\" d='e f'\r\n",
    # every other instruction, legacy forms and quoting
    """\
FROM --platform=$BUILDPLATFORM golang:1.22 AS builder
ARG VERSION=1.0 COMMIT
ENV PATH=/go/bin:$PATH GOFLAGS="-mod=vendor"
ENV LEGACY value with spaces
LABEL maintainer="me@example.com" version=${VERSION} "quoted key"=x
MAINTAINER Someone <someone@example.com>
EXPOSE 80/tcp 443 8000-8100/udp
VOLUME ["/data", "/logs"]
VOLUME /cache /tmp/x
USER 1000:1000
WORKDIR /src/${VERSION}
COPY --chown=1000:1000 --chmod=0644 --link --parents --exclude=*.md ["a", "b", "/dst/"]
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d \\
    https://example.com/x.tar.gz /x.tar.gz
ADD --keep-git-dir=true https://github.com/moby/buildkit.git#v0.10.1 /bk
FROM scratch
COPY --from=builder /go/bin/app /app
CMD /app --serve
""",
)


def _corpus() -> tuple[str, ...]:
    found = []
    if TESTFILES.is_dir():
        for path in sorted(TESTFILES.glob("*/Dockerfile")):
            found.append(path.read_bytes().decode("utf-8", "replace"))
    return (*BUILTIN_SEEDS, *found)


SEEDS = _corpus()

# Pieces that steer random text toward the parser's corners.
TOKENS = (
    "FROM ", "RUN ", "COPY ", "ADD ", "ONBUILD ", "HEALTHCHECK ", "ENV ", "ARG ", "LABEL ",
    "CMD ", "ENTRYPOINT ", "SHELL ", "EXPOSE ", "VOLUME ", "USER ", "WORKDIR ", "STOPSIGNAL ",
    "MAINTAINER ", "from ", "oNbUiLd ", "NONE", "CMD", "FROM", "RUN",
    "--mount=type=cache,target=/x ", "--mount=", "--from=", "--chmod=", "--interval=",
    "--", "-- ", "--x", "--\"a b\"", "--'", "[", "]", '["a", "b"]', "[1]", '["', "{", "}",
    "<<", "<<EOF", "<<-EOF", "<< EOF", "<<'EOF'", '<<"EOF', "3<<EOF", "EOF", "\tEOF", "<<-",
    '<<"', "<<'", "<", "<<EOF <<", "/dst",
    "\\", "\\\n", "\\ \n", "`", "`\n", '"', "'", "#", "# ", "# escape=`\n", "# escape=\\\n",
    "# escape=x\n", "# syntax=a\n", "# check=skip=all\n", "#escape =`\n",
    "\n", "\r\n", "\r", "\t", " ", "  ", "\x00", "\x0b", "\x0c", "\x1b", "\x7f", "\x85",
    "\u2028", "\ufeff", "\u00a0", "=", "$", "${", "$X", "A=B", "=x", "a=", "é", "한", "😀",
)

piece = st.one_of(
    st.sampled_from(TOKENS),
    st.text(max_size=4),  # any code point (no surrogates), control characters included
    st.characters(max_codepoint=0x7F),  # ASCII, control characters included
)
stepfile_text = st.lists(piece, max_size=60).map("".join)


# --- the checks ---------------------------------------------------------------------------


def line_count(text: str) -> int:
    """Physical lines as the reader counts them: split on \\n, BOM and final newline aside."""
    text = text.removeprefix("\ufeff")
    if not text:
        return 0
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def check_error(exc: ParseError, lines: int | None = None) -> None:
    pos = exc.position
    if pos is not None:
        assert isinstance(pos.line, int) and pos.line >= 0, pos
        assert isinstance(pos.column, int) and pos.column >= 1, pos
        assert pos.file == FILENAME, pos
        if lines is not None:
            assert pos.line <= max(lines, 1), (pos, lines)
    rendered = exc.render()
    assert isinstance(rendered, str)
    assert "Traceback (most recent call last)" not in rendered
    assert isinstance(str(exc), str)


def check_node(node: Node, lines: int, outer: Node | None = None) -> None:
    assert 1 <= node.start_line <= node.end_line <= lines, (node, lines)
    assert node.column >= 1, node
    if outer is not None:  # an ONBUILD trigger lies within its ONBUILD
        assert outer.start_line <= node.start_line and node.end_line <= outer.end_line
    if node.trigger is not None:
        check_node(node.trigger, lines, node)


def check_tree(tree: SyntaxTree, lines: int) -> None:
    assert tree.nodes
    assert len(tree.lines) == lines
    previous_end = 0
    for node in tree.nodes:
        check_node(node, lines)
        assert node.start_line > previous_end, "instructions overlap or go backwards"
        previous_end = node.end_line


def check_instruction(instruction: ins.Instruction, lines: int) -> None:
    loc = instruction.loc
    assert 1 <= loc.line <= loc.end_line <= lines, (loc, lines)
    assert loc.column >= 1, loc
    if isinstance(instruction, ins.Onbuild):
        check_instruction(instruction.trigger, lines)


def check_text(text: str) -> None:
    """Parse at both levels; only a result or a ParseError may come out."""
    lines = line_count(text)
    try:
        tree = parse_syntax(text, FILENAME)
    except ParseError as exc:
        check_error(exc, lines)
    else:
        check_tree(tree, lines)
    try:
        stepfile = parse(text, FILENAME)
    except ParseError as exc:
        check_error(exc, lines)
    else:
        assert len(stepfile.instructions) == len(tree.nodes)
        for instruction in stepfile.instructions:
            check_instruction(instruction, lines)


# --- (a) random text ------------------------------------------------------------------------


@examples(1500)
@given(stepfile_text)
def test_random_text_only_parse_errors(text: str) -> None:
    check_text(text)


@examples(500)
@given(st.text())
def test_arbitrary_text_only_parse_errors(text: str) -> None:
    check_text(text)


@examples(600)
@given(st.lists(piece, max_size=30).map("".join))
def test_random_text_after_from(text: str) -> None:
    # Past a valid first instruction, so the rest is judged as instructions, not rejected early.
    check_text("FROM scratch\n" + text)
    check_text("# escape=`\nFROM scratch\n" + text)


# --- (b) random bytes -----------------------------------------------------------------------


def check_bytes(data: bytes) -> None:
    try:
        text = decode(data, FILENAME)
    except ParseError as exc:
        assert exc.position is not None
        assert exc.position.line >= 1
        assert exc.position.line <= data.count(b"\n") + 1
        check_error(exc)
        return
    assert text == data.decode("utf-8")
    check_text(text)


@examples(500)
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    check_bytes(data)


@st.composite
def corrupted_utf8(draw: st.DrawFn) -> bytes:
    """Mostly valid UTF-8 Stepfile text with a few bytes overwritten, inserted or cut."""
    data = bytearray(draw(stepfile_text).encode("utf-8"))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from([0x80, 0xBF, 0xC0, 0xC3, 0xE2, 0xED, 0xF0, 0xF4, 0xFF, 0x0A]))
        if draw(st.booleans()) or at == len(data):
            data.insert(at, byte)
        else:
            data[at] = byte
    if data and draw(st.booleans()):
        del data[draw(st.integers(0, len(data) - 1)):]
    return bytes(data)


@examples(600)
@given(corrupted_utf8())
def test_corrupted_utf8(data: bytes) -> None:
    check_bytes(data)


# --- (c) mutated valid Stepfiles --------------------------------------------------------------

INSERTS = (
    "\\", '"', "'", "<<EOF", "<<-EOF", "<<EOF\n", "\nEOF\n", "# escape=`\n", "# escape=\\\n",
    "\\\n", "`\n", "`", "\n", "#", "--", "-- ", "[", "]", "ONBUILD ", "RUN ", "{", "\t", "\r",
    "\x00", "=", "$", " ", "\n\n", "\\ \n", "--mount=", "<< ", "3<<X",
)


def _swap_case(text: str) -> str:
    return text.swapcase()


@st.composite
def mutated_stepfile(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(
            ["delete_char", "insert_char", "insert_token", "duplicate_chars", "delete_line",
             "duplicate_line", "swap_lines", "swap_case", "truncate", "escape_directive"]
        ))
        at = draw(st.integers(0, len(text)))
        if kind == "delete_char" and text:
            end = min(len(text), at + draw(st.integers(1, 3)))
            text = text[:at] + text[end:]
        elif kind == "insert_char":
            text = text[:at] + draw(st.characters()) + text[at:]
        elif kind == "insert_token":
            text = text[:at] + draw(st.sampled_from(INSERTS)) + text[at:]
        elif kind == "duplicate_chars":
            end = min(len(text), at + draw(st.integers(1, 8)))
            text = text[:end] + text[at:end] + text[end:]
        elif kind == "swap_case":
            end = min(len(text), at + draw(st.integers(1, 40)))
            text = text[:at] + _swap_case(text[at:end]) + text[end:]
        elif kind == "truncate":
            text = text[:at]
        elif kind == "escape_directive":
            text = draw(st.sampled_from(["# escape=`\n", "# escape=\\\n", "#escape=`\n"])) + text
        else:
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            if kind == "delete_line":
                del lines[i]
            elif kind == "duplicate_line":
                lines.insert(i, lines[i])
            else:  # swap_lines
                j = draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    return text


@examples(2000)
@given(mutated_stepfile())
def test_mutated_stepfiles(text: str) -> None:
    check_text(text)


def test_seeds_parse() -> None:
    """The seeds themselves are valid (else the mutations start from nothing useful)."""
    for seed in BUILTIN_SEEDS:
        stepfile = parse(seed, FILENAME)
        check_text(seed)
        assert stepfile.instructions


# --- (d) flag values and nesting depth: the corners random text rarely reaches ----------------

# Runs of digits around the limits that matter: float overflow (~309 digits), Python's
# int-from-string limit (4300 digits).
digit_runs = st.one_of(
    st.sampled_from([0, 1, 2, 20, 296, 298, 309, 310, 400, 4300, 4301, 5000]),
    st.integers(0, 6000),
).flatmap(lambda n: st.sampled_from(["1", "9", "0", "7"]).map(lambda d: d * n))
flag_value = st.one_of(
    st.text(max_size=12),
    st.lists(st.sampled_from(TOKENS + ("ns", "ms", "s", "m", "h", ".", "+", "-", ",", "k")),
             max_size=6).map("".join),
    st.tuples(digit_runs, st.sampled_from(["", "s", "ms", "h", ".5s", "k", "m", "g", "ib"]))
    .map("".join),
)
FLAG_TEMPLATES = (
    "HEALTHCHECK --interval={} CMD x", "HEALTHCHECK --timeout={} CMD x",
    "HEALTHCHECK --start-period={} --start-interval={} CMD x", "HEALTHCHECK --retries={} CMD x",
    "RUN --mount=type=tmpfs,target=/t,size={} x", "RUN --mount=type=cache,target=/c,uid={} x",
    "RUN --mount=type=cache,target=/c,mode={},gid={} x", "RUN --mount={} x",
    "RUN --mount=type=secret,id={},required={} x", "RUN --network={} --security={} x",
    "COPY --chmod={} a b", "ADD --checksum={} a b", "ADD --keep-git-dir={} a b",
    "COPY --from={} --chown={} --link={} a b", "FROM --platform={} img AS {}",
    "ONBUILD RUN --mount={} x", "ONBUILD HEALTHCHECK --interval={} CMD x",
)


@examples(800)
@given(st.sampled_from(FLAG_TEMPLATES), st.lists(flag_value, min_size=3, max_size=3))
def test_flag_values(template: str, values: list[str]) -> None:
    check_text("FROM scratch\n" + template.format(*values) + "\n")


NESTING = (
    ("", "ONBUILD ", "RUN x"),  # ONBUILD ONBUILD ... RUN x
    ("RUN ", "[", ""),  # RUN [[[[...
    ("CMD ", "[", "]"),
    ("COPY ", "[", ""),
    ("HEALTHCHECK CMD ", "[", ""),
    ("ENTRYPOINT [", '["', ""),
    ("RUN ", "{", ""),
    ("ONBUILD ", "ONBUILD --x ", "COPY <<EOF a\nEOF"),
)


@examples(60)
@given(st.sampled_from(NESTING), st.integers(1, 3000))
def test_deep_nesting(shape: tuple[str, str, str], depth: int) -> None:
    head, repeat, tail = shape
    check_text("FROM scratch\n" + head + repeat * depth + tail + "\n")


# Crashes found by this file, in their smallest known form (see its history in the report);
# each must give a result or a ParseError, whatever the recursion limit and stack depth.
REGRESSIONS = {
    "onbuild-nesting": "ONBUILD " * 2000 + "RUN x\n",
    "json-nesting": "FROM a\nRUN " + "[" * 2000 + "\n",
    "duration-overflow": "FROM a\nHEALTHCHECK --interval=1" + "0" * 296 + "h CMD x\n",
    "tmpfs-size-digits": "FROM a\nRUN --mount=type=tmpfs,target=/t,size=" + "1" * 4301 + " x\n",
    "copy-unterminated-heredoc-quote": 'FROM a\nCOPY <<" < /dst\n',
}


@pytest.mark.parametrize("text", REGRESSIONS.values(), ids=REGRESSIONS.keys())
def test_regressions(text: str) -> None:
    check_text(text)
