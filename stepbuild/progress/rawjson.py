"""The rawjson view (`--progress=rawjson`): one JSON object per event, one per line.

Each line is `Event.as_json()` (schema: rawjson.schema.json beside this module, described in
docs/progress-events.md), compact, UTF-8, flushed as written, so a program can read the
stream as it comes. Nothing else is written to the stream: the CLI's error becomes the
`build.error` event (cli/progress_flags.py), and warnings are `warning` events.
"""

from __future__ import annotations

import json
import threading
from contextlib import suppress
from pathlib import Path
from typing import Any, TextIO

from stepbuild.progress.events import Event

__all__ = ["SCHEMA_PATH", "RawJsonView", "schema"]

SCHEMA_PATH = Path(__file__).with_name("rawjson.schema.json")


class RawJsonView:
    """Writes every event to `stream` as one line of JSON (a lock keeps lines whole)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = json.dumps(event.as_json(), ensure_ascii=False, separators=(",", ":"))
        with self._lock, suppress(OSError, ValueError):  # a closed stderr stops no build
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Nothing to undo: every line is complete when written."""


def schema() -> dict[str, Any]:
    """The JSON Schema every rawjson line satisfies (packaged with stepbuild)."""
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded
