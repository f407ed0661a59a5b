"""The progress of parallel blob transfers (push, pull) as `transfer` events.

A push or a pull reports each blob's changes of state and its bytes here; they become events
for the build's view (progress/): the plain log prints each state as a line of its own, the
tty view draws a bar per moving blob, rawjson writes them all. States that are work under way
are verbs in -ing (`compressing (gzip)`, `downloading 3.4MB`); the others (`pushed 3.4MB`,
`exists`, `mounted from …`, `downloaded`, `pulled`, `already present`) end a blob's
transfer (progress/events.py's `under_way` reads them so).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from stepbuild.oci.digest import digest_hex
from stepbuild.progress.events import Event

if TYPE_CHECKING:
    from stepbuild.progress.events import EventCallback

__all__ = ["TransferDisplay", "blob_key"]


class TransferDisplay:
    """Reports parallel transfers, keyed by a blob's short digest, to `emit` (usually
    `Progress.emit`; None or `quiet`: to nobody). `events` keeps every change of state
    (key, state) for callers and tests, `notes` every `note`: a `notice` when `verbose`,
    else a `note` event (which the plain log shows with -v only). Thread-safe (transfers
    report from worker threads).
    """

    def __init__(self, emit: EventCallback | None = None, *, quiet: bool = False,
                 verbose: bool = False) -> None:
        self.emit = None if quiet else emit
        self.verbose = verbose
        self.events: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self._lock = threading.Lock()

    def status(self, key: str, text: str) -> None:
        """A new state for the blob `key`."""
        with self._lock:
            self.events.append((key, text))
        self._send(Event("transfer", key=key, text=text))

    def bytes(self, key: str, verb: str, done: int, total: int) -> None:
        """Bytes moved so far (`total` 0: unknown)."""
        self._send(Event("transfer", key=key, text=verb, current=done, total=total or None))

    def message(self, text: str) -> None:
        """A line of its own about the whole transfer (`pushed REF (...)`)."""
        self._send(Event("notice", text=text))

    def pushed(self, reference: str, digest: str) -> None:
        """An image is now in a registry under `digest`."""
        self._send(Event("image.pushed", ref=reference, text=digest))

    def note(self, text: str) -> None:
        """A detail (a mirror skipped)."""
        with self._lock:
            self.notes.append(text)
        self._send(Event("notice" if self.verbose else "note", text=text))

    def _send(self, event: Event) -> None:
        if self.emit is not None:
            self.emit(event)


def blob_key(digest: str) -> str:
    """The key of a blob's line: the first 12 hex digits of its digest (or diff_id)."""
    return digest_hex(digest)[:12]
