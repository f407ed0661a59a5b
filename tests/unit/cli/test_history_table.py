"""`stepbuild history`'s table and JSON lines (cli/history_table.py): sizes paired with the
layers, docker's columns, relative times, truncation — to the character, at a given time."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

import pytest

from stepbuild.cli.history_table import (
    MISSING,
    Entry,
    add_arguments,
    entries,
    render,
    since,
)
from stepbuild.oci.documents import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER,
    Descriptor,
    History,
    ImageConfig,
    Manifest,
)

NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
MANIFEST = "sha256:" + "ab" * 32


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def image(history: tuple[History, ...], sizes: tuple[int, ...]) -> tuple[Manifest, ImageConfig]:
    layers = tuple(Descriptor(MEDIA_TYPE_LAYER, digest(i), size)
                   for i, size in enumerate(sizes))
    config = ImageConfig("amd64", "linux", diff_ids=tuple(d.digest for d in layers),
                         history=history)
    return Manifest(Descriptor(MEDIA_TYPE_CONFIG, digest(99), 10), layers), config


def options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


HISTORY = (
    History("2024-01-01T00:00:00Z", "ADD busybox.tar /"),
    History("2024-01-01T00:00:00Z", "ENV PATH=/bin", empty_layer=True),
    History("2024-01-02T02:00:00Z", "RUN /bin/sh -c echo hi > /hi"),
    History("2024-01-02T03:03:00Z", "RUN /bin/sh -c true", empty_layer=True),
    History("2024-01-02T03:04:04.5Z", "COPY <<EOF /etc/hello", comment="made here"),
)


def test_each_entry_with_a_layer_takes_the_next_layer_s_size_newest_first() -> None:
    manifest, config = image(HISTORY, (1_234_567, 4096, 12))
    rows = entries(MANIFEST, manifest, config)
    assert [(row.image, row.created_by, row.size) for row in rows] == [
        ("ab" * 6, "COPY <<EOF /etc/hello", 12),
        (MISSING, "RUN /bin/sh -c true", 0),
        (MISSING, "RUN /bin/sh -c echo hi > /hi", 4096),
        (MISSING, "ENV PATH=/bin", 0),
        (MISSING, "ADD busybox.tar /", 1_234_567)]
    assert rows[0].comment == "made here"


def test_the_table_as_docker_shows_it() -> None:
    manifest, config = image(HISTORY, (1_234_567, 4096, 12))
    assert render(entries(MANIFEST, manifest, config), options(), NOW) == [
        "IMAGE          CREATED                  CREATED BY                     SIZE"
        "    COMMENT",
        "abababababab   Less than a second ago   COPY <<EOF /etc/hello          12B"
        "     made here",
        "<missing>      About a minute ago       RUN /bin/sh -c true            0B",
        "<missing>      About an hour ago        RUN /bin/sh -c echo hi > /hi   4.1kB",
        "<missing>      27 hours ago             ENV PATH=/bin                  0B",
        "<missing>      27 hours ago             ADD busybox.tar /              1.2MB"]


def test_human_false_prints_the_times_as_recorded_and_sizes_in_bytes() -> None:
    manifest, config = image(HISTORY[:2], (1_234_567,))
    assert render(entries(MANIFEST, manifest, config), options("--human=false"), NOW) == [
        "IMAGE          CREATED                CREATED BY          SIZE      COMMENT",
        "abababababab   2024-01-01T00:00:00Z   ENV PATH=/bin       0",
        "<missing>      2024-01-01T00:00:00Z   ADD busybox.tar /   1234567"]


def test_created_by_is_cut_at_45_characters_unless_no_trunc() -> None:
    body = "RUN /bin/sh -c " + "x" * 60
    manifest, config = image((History("2024-01-02T03:04:05Z", body),), (5,))
    [_, short] = render(entries(MANIFEST, manifest, config), options(), NOW)
    assert "RUN /bin/sh -c " + "x" * 29 + "…   5B" in short
    [_, full] = render(entries(MANIFEST, manifest, config), options("--no-trunc"), NOW)
    assert body + "   5B" in full


def test_a_heredoc_body_stays_on_its_row() -> None:
    manifest, config = image((History("", "RUN /bin/sh -c echo a\n\techo b\n"),), (5,))
    [_, row] = render(entries(MANIFEST, manifest, config), options(), NOW)
    assert row == "abababababab   N/A       RUN /bin/sh -c echo a\\n echo b\\n   5B"


def test_json_is_one_object_per_entry_with_docker_s_fields() -> None:
    manifest, config = image(HISTORY[:2], (1_234_567,))
    lines = render(entries(MANIFEST, manifest, config), options("--format", "json"), NOW)
    assert [json.loads(line) for line in lines] == [
        {"ID": "abababababab", "CreatedAt": "2024-01-01T00:00:00Z",
         "CreatedSince": "27 hours ago", "CreatedBy": "ENV PATH=/bin", "Size": "0B",
         "Comment": ""},
        {"ID": MISSING, "CreatedAt": "2024-01-01T00:00:00Z", "CreatedSince": "27 hours ago",
         "CreatedBy": "ADD busybox.tar /", "Size": "1.2MB", "Comment": ""}]


def test_an_image_without_history_shows_a_row_per_layer() -> None:
    manifest, config = image((), (7, 9))
    assert entries(MANIFEST, manifest, config) == [
        Entry("ab" * 6, "", "", 9, ""), Entry(MISSING, "", "", 7, "")]


def test_more_entries_with_layers_than_layers_size_the_rest_zero() -> None:
    manifest, config = image((History(created_by="RUN a"), History(created_by="RUN b")), (3,))
    assert [row.size for row in entries(MANIFEST, manifest, config)] == [0, 3]


@pytest.mark.parametrize(("seconds", "said"), [
    (-5, "Less than a second"), (0.5, "Less than a second"), (1, "1 second"),
    (59, "59 seconds"), (60, "About a minute"), (119, "About a minute"),
    (120, "2 minutes"), (3599, "59 minutes"), (3600, "About an hour"),
    (5399, "About an hour"), (5400, "2 hours"), (47 * 3600, "47 hours"),
    (48 * 3600, "2 days"), (14 * 86400, "2 weeks"), (60 * 86400, "2 months"),
    (730 * 86400, "2 years"),
])
def test_since_says_durations_as_docker_does(seconds: float, said: str) -> None:
    assert since(seconds) == said


def test_human_takes_only_true_or_false() -> None:
    assert options("-H", "false").human is False
    assert options("--human=true").human is True
    with pytest.raises(SystemExit):
        options("--human=maybe")
