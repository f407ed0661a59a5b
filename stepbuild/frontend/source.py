"""Finding and reading a Stepfile: the names looked for in a context, `-` for stdin, decoding.

Cheap to import (the no-op fingerprint in `cli/noop.py` uses `STEPFILE_NAMES` before anything
heavy is loaded); the decoder is imported when a file is actually read.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stepbuild.errors import UsageError

# Looked for in this order. Containerfile before Dockerfile, as Buildah and Podman prefer it.
STEPFILE_NAMES = ("Stepfile", "Containerfile", "Dockerfile")


def read_stepfile(file: str | None, context: str) -> tuple[str, str]:
    """Find and read the Stepfile: (text, name for messages). Raises UsageError/ParseError."""
    from stepbuild.frontend.lines import decode

    if file == "-":
        return decode(sys.stdin.buffer.read(), "<stdin>"), "<stdin>"
    if file is None:
        candidates = [Path(context) / name for name in STEPFILE_NAMES]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise UsageError(f"no Stepfile, Containerfile or Dockerfile in {context}",
                             hint="name one with -f FILE")
        path = found
    else:
        path = Path(file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return decode(data, str(path)), str(path)
