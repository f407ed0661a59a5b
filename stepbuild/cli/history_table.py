"""`stepbuild history IMAGE`: an image's history entries, newest first, as `docker history`
shows them: IMAGE, CREATED, CREATED BY, SIZE, COMMENT.

SIZE is the size of the entry's layer as the store holds it: the uncompressed layer tar (the
store keeps every image's layers in that form, `store/received.py`), 0B for an entry without a
layer (`empty_layer`: ENV, CMD, a RUN that changed nothing). Entries with a layer take the
manifest's layers in order, as the image spec pairs them. IMAGE names the image (12 digits of
its manifest digest, as `stepbuild images` does) on the newest entry, `<missing>` on the others,
as docker does for entries that are no image of their own.

Everything here is pure (the time is given), so the table is tested to the character.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from stepbuild.progress.units import human_size

if TYPE_CHECKING:
    from stepbuild.oci.documents import Descriptor, ImageConfig, Manifest

__all__ = ["Entry", "add_arguments", "entries", "render"]

CREATED_BY_WIDTH = 45  # docker history's truncation of CREATED BY (stringutils.Ellipsis)
MISSING = "<missing>"  # docker's IMAGE of an entry that is no image of its own
COLUMNS = ("IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT")
FORMATS = ("table", "json")


@dataclass(frozen=True, slots=True)
class Entry:
    """One history entry, with the size of its layer (0 without one)."""

    image: str
    created: str  # RFC 3339 as the config holds it, "" if it has none
    created_by: str
    size: int
    comment: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """history's flags, as docker history names them."""
    parser.add_argument("--no-trunc", action="store_true",
                        help="do not shorten CREATED BY (the table shortens it to 45"
                             " characters)")
    parser.add_argument("-H", "--human", type=_boolean, default=True,
                        metavar="BOOL", help="sizes and times for people: `2 hours ago`,"
                        " `1.2MB` (the default); --human=false prints RFC 3339 times and"
                        " sizes in bytes")
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="table (the default) or json: one object per line, CREATED BY"
                             " never shortened")


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def entries(manifest_digest: str, manifest: Manifest, config: ImageConfig) -> list[Entry]:
    """The image's history entries, newest first, each with its layer's size."""
    layers = iter(manifest.layers)
    found = [Entry(MISSING, item.created or "", item.created_by,
                   0 if item.empty_layer else _size_of(next(layers, None)), item.comment)
             for item in config.history]
    if not config.history:  # an image built without history: a row per layer, as docker shows it
        found = [Entry(MISSING, "", "", layer.size, "") for layer in manifest.layers]
    if not found:
        return []
    found.reverse()
    found[0] = replace(found[0], image=manifest_digest.removeprefix("sha256:")[:12])
    return found


def _size_of(layer: Descriptor | None) -> int:
    return layer.size if layer is not None else 0  # more entries than layers: none to size


def render(rows: list[Entry], options: argparse.Namespace, now: datetime) -> list[str]:
    """The lines `stepbuild history` prints for these options (`--format`, `--human`,
    `--no-trunc`) at time `now`."""
    if options.format == "json":
        return [json.dumps(_json(row, options.human, now), ensure_ascii=False)
                for row in rows]
    table = [COLUMNS] + [(row.image, _created(row.created, options.human, now),
                          _created_by(row.created_by, options.no_trunc),
                          _size(row.size, options.human), row.comment) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS) - 1)]
    # Columns three spaces apart, as docker's tabwriter pads them; no trailing blanks.
    return ["   ".join([*(f"{cell:<{width}}" for cell, width in zip(line, widths,
                                                                    strict=False)),
                        line[-1]]).rstrip() for line in table]


def _json(row: Entry, human: bool, now: datetime) -> dict[str, Any]:
    """docker history --format json's fields."""
    return {"ID": row.image, "CreatedAt": row.created,
            "CreatedSince": _created(row.created, True, now), "CreatedBy": row.created_by,
            "Size": _size(row.size, human), "Comment": row.comment}


def _created_by(text: str, no_trunc: bool) -> str:
    # One line per entry: a heredoc body's newlines are shown escaped, tabs as spaces (docker).
    shown = text.replace("\t", " ").replace("\n", "\\n")
    if no_trunc or len(shown) <= CREATED_BY_WIDTH:
        return shown
    return shown[:CREATED_BY_WIDTH - 1] + "…"


def _size(size: int, human: bool) -> str:
    return human_size(size) if human else str(size)


def _created(created: str, human: bool, now: datetime) -> str:
    if not created:
        return "N/A"
    if not human:
        return created
    try:
        when = datetime.fromisoformat(created)
    except ValueError:
        return created  # not RFC 3339: shown as it is
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return since((now - when).total_seconds()) + " ago"


def since(seconds: float) -> str:
    """A duration as docker says it (go-units HumanDuration): `About an hour`, `3 weeks`."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds // 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds // 3600) // 24 // 365} years"
