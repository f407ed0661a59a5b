"""`--progress=auto|tty|plain|rawjson|quiet` (build, push, pull) and the command's Progress.

The mode: `--progress` if given, else `-q` (quiet), else `$STEPBUILD_PROGRESS` (as
BuildKit's BUILDKIT_PROGRESS), else auto; auto is tty when stderr is a terminal, else plain.
Standard output is the same in every mode: the digest only.

A command makes its Progress with `progress(options)`: one per command, kept on the options
as `progress_session` (cli/noop.py leaves it out of the fingerprint). `reporting(options)`
wraps the command (cli/main.py): on a `StepbuildError` it emits `build.error` (so the rawjson
stream always ends with the error, which the CLI then does not print again as text), and at
the end it closes the Progress: the tty view draws its last frame and gives the cursor back,
the heartbeat thread stops.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from stepbuild.errors import StepbuildError, UsageError
from stepbuild.progress.notices import notices

if TYPE_CHECKING:
    from stepbuild.progress import Progress

__all__ = ["ENV", "add_arguments", "mode", "notices", "progress", "replay_view", "reported",
           "reporting"]

ENV = "STEPBUILD_PROGRESS"
CHOICES = ("auto", "tty", "plain", "rawjson", "quiet")
_SESSION = "progress_session"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=CHOICES, metavar="|".join(CHOICES),
                        help="how progress is shown on stderr: tty (a live view), plain (a"
                             " log, with a heartbeat for anything silent for 10 s), rawjson"
                             " (one JSON object per event), quiet (warnings and errors only);"
                             " auto: tty on a terminal, else plain (default:"
                             f" ${ENV}, else auto)")


def mode(options: argparse.Namespace) -> str:
    """The mode this command draws: tty, plain, rawjson or quiet (see the module docstring)."""
    chosen = getattr(options, "progress", None)
    if chosen is None and getattr(options, "quiet", False):
        return "quiet"
    if chosen is None:
        chosen = os.environ.get("STEPBUILD_PROGRESS", "") or "auto"  # (ENV)
        if chosen not in CHOICES:
            raise UsageError(f"{ENV}={chosen!r}: not a progress mode",
                             hint=f"one of {', '.join(CHOICES)}")
    if chosen == "auto":
        return "tty" if _is_terminal(sys.stderr) else "plain"
    return str(chosen)


def progress(options: argparse.Namespace) -> Progress:
    """The command's Progress, made on the first call (the tty view starts drawing then)."""
    made: Progress | None = getattr(options, _SESSION, None)
    if made is None:
        from stepbuild.progress import make_progress
        from stepbuild.progress.heartbeat import interval_from_environment

        watched = hasattr(options, "progress")  # build, push, pull: not run -v
        made = make_progress(mode(options) if watched else "plain",
                             verbose=getattr(options, "verbose", False),
                             heartbeat=interval_from_environment() if watched else None)
        setattr(options, _SESSION, made)
    return made


@contextmanager
def reporting(options: argparse.Namespace) -> Iterator[None]:
    """Run the command inside: its error becomes `build.error`; its Progress is closed."""
    try:
        yield
    except StepbuildError as exc:
        made = getattr(options, _SESSION, None)
        if made is None and hasattr(options, "progress") and _safe_mode(options) == "rawjson":
            with suppress(StepbuildError):  # (a bad $STEPBUILD_HEARTBEAT: printed as text)
                made = progress(options)  # an error before the build started: still an event
        if made is not None:
            made.build_failed(exc.render(), exc.exit_code)
            if _safe_mode(options) == "rawjson":
                exc.reported = True  # type: ignore[attr-defined]  # read by `reported`
        raise
    finally:
        made = getattr(options, _SESSION, None)
        if made is not None:
            made.close()


def reported(exc: BaseException) -> bool:
    """The error went out as a rawjson `build.error`: the CLI must not print it as text."""
    return bool(getattr(exc, "reported", False))


def replay_view(options: argparse.Namespace) -> dict[str, Any]:
    """How a no-op rebuild replays (cli/noop.py): the plain log (also for tty: a replay is
    over at once, and must not import rich), nothing but warnings, or rawjson events."""
    chosen = mode(options)
    emit = None
    if chosen == "rawjson":
        from stepbuild.progress.rawjson import RawJsonView

        emit = RawJsonView(sys.stderr)
    return {"quiet": chosen == "quiet", "verbose": getattr(options, "verbose", False),
            "emit": emit}


def _safe_mode(options: argparse.Namespace) -> str:
    """`mode`, or plain when $STEPBUILD_PROGRESS is the error being reported."""
    try:
        return mode(options)
    except UsageError:
        return "plain"


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
