"""Build progress on the terminal: one line per step, RUN output indented, timings.

Plain text, line-buffered, to stderr by default (stdout stays for results such as the image
digest). Output of a RUN is shown as it comes, each line prefixed with "  | ". Not thread-safe
on purpose: the builder drives it from one thread.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class Progress:
    """Reports build steps. `quiet` prints only errors and the result."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False,
                 verbose: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.verbose = verbose
        self._partial = b""

    def step(self, number: int, total: int, stage: Any, instruction: Any) -> None:
        if self.quiet:
            return
        label = f"[{stage.name or stage.index}] " if stage.index or stage.name else ""
        text = instruction.text.split("\n", 1)[0]
        self._write(f"#{number:<3} {label}{text}")

    def cached(self) -> None:
        if not self.quiet:
            self._write("     CACHED")

    def done(self, seconds: float) -> None:
        self.flush_output()
        if not self.quiet:
            self._write(f"     DONE {seconds:.2f}s")

    def note(self, message: str) -> None:
        if self.verbose and not self.quiet:
            self._write(f"     {message}")

    def warn(self, message: str) -> None:
        self._write(f"warning: {message}")

    def summary(self, steps: int, cached: int, digest: str, tags: list[str]) -> None:
        if not self.quiet:
            named = f", tagged {', '.join(tags)}" if tags else ""
            self._write(f"built {digest} ({steps} steps, {cached} cached){named}")

    def output(self, data: bytes) -> None:
        """Bytes a RUN printed; shown line by line as they complete."""
        if self.quiet:
            return
        self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        for line in lines:
            self._write("  | " + line.decode("utf-8", "replace"))

    def flush_output(self) -> None:
        if self._partial and not self.quiet:
            self._write("  | " + self._partial.decode("utf-8", "replace"))
        self._partial = b""

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
