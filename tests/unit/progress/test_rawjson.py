"""rawjson.py and rawjson.schema.json: one JSON object per event, each valid against the
packaged schema; the schema knows every kind and refuses what is not an event."""

from __future__ import annotations

import fnmatch
import io
import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from stepbuild.progress.events import KINDS, SCHEMA_VERSION, Event
from stepbuild.progress.rawjson import SCHEMA_PATH, RawJsonView, schema
from tests.unit.progress.scripted import DIGEST, failing, successful

PROJECT = Path(__file__).resolve().parents[3]


def validator() -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema())
    return jsonschema.Draft202012Validator(schema())


def written(events: list[Event]) -> list[dict[str, Any]]:
    out = io.StringIO()
    view = RawJsonView(out)
    for event in events:
        view(event)
    view.close()
    assert out.getvalue().endswith("\n")
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_every_event_is_one_valid_line() -> None:
    check = validator()
    events = [*successful(), *failing()]
    lines = written(events)
    assert [line["kind"] for line in lines] == [e.kind for e in events]
    for line in lines:
        check.validate(line)
    assert lines[-1] == {"v": SCHEMA_VERSION, "kind": "build.error", "time": events[-1].time,
                         "text": "Stepfile:2:1: RUN failed with exit status 1", "exit_code": 1}


def test_an_empty_output_line_keeps_its_text() -> None:
    assert written([Event("step.log", step=1, text="")])[0]["text"] == ""


def test_the_schema_names_exactly_the_kinds() -> None:
    assert set(schema()["properties"]["kind"]["enum"]) == KINDS
    assert schema()["properties"]["v"]["const"] == SCHEMA_VERSION


def typical(kind: str) -> Event:
    """A complete event of `kind`."""
    return {
        "build.started": Event(kind, text="isolation: chroot"),
        "step.started": Event(kind, stage="a", step=1, text="FROM x", line=1),
        "step.cached": Event(kind, step=2),
        "step.done": Event(kind, step=2, seconds=0.0),
        "step.error": Event(kind, step=2, text="failed"),
        "step.log": Event(kind, step=2, text="out"),
        "transfer": Event(kind, key="0123456789ab", text="pushing", current=5, total=9),
        "heartbeat": Event(kind, stage="a", step=2, text="RUN x", seconds=10.0),
        "note": Event(kind, text="n"),
        "notice": Event(kind, text="pushed r"),
        "warning": Event(kind, text="w"),
        "build.done": Event(kind, text=DIGEST, steps=2, cached=0, tags=("a:1",)),
        "image.pushed": Event(kind, ref="registry.example/a:1", text=DIGEST),
        "build.error": Event(kind, text="bad", exit_code=2),
    }[kind]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_schema_accepts_every_kind(kind: str) -> None:
    validator().validate(typical(kind).as_json())


@pytest.mark.parametrize(("kind", "change"), [
    ("step.done", {"seconds": None}),              # a required key missing
    ("step.started", {"step": None}),
    ("transfer", {"key": None}),
    ("build.error", {"exit_code": None}),
    ("build.done", {"text": "sha256:short"}),      # not a digest
    ("step.log", {"step": 0}),                     # steps count from 1
    ("step.log", {"colour": "red"}),               # a key version 1 does not have
    ("step.log", {"v": 2}),                        # another version
    ("step.log", {"kind": "step.unknown"}),
    ("transfer", {"current": -1}),
    ("warning", {"text": 3}),
])
def test_the_schema_refuses_what_is_not_an_event(kind: str, change: dict[str, Any]) -> None:
    data = typical(kind).as_json()
    for key, value in change.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    assert not validator().is_valid(data)


def test_the_schema_is_packaged() -> None:
    config = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["stepbuild"]
    inside = SCHEMA_PATH.relative_to(PROJECT / "stepbuild").as_posix()
    assert any(fnmatch.fnmatch(inside, pattern) for pattern in patterns)


def test_step_done_reason_is_valid_and_left_out_when_empty() -> None:
    check = validator()
    lines = written([Event("step.done", step=2, seconds=0.5, reason="ENV PATH changed"),
                     Event("step.done", step=3, seconds=0.5)])
    for line in lines:
        check.validate(line)
    assert lines[0]["reason"] == "ENV PATH changed" and "reason" not in lines[1]
