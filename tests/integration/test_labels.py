"""`build --label K=V`, for real: the label is in the image config (`stepbuild inspect`), over
the Stepfile's LABEL of the same key, with no history entry; a changed --label runs no step
again (every step CACHED) yet gives another image; and the no-op fingerprint never replays
the digest of another --label.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.builds import Stepbuild, base_image, step_lines, write_context

pytestmark = pytest.mark.root

STEPFILE = "FROM base\nLABEL a=stepfile b=kept\nRUN echo labelled > /l\nLABEL c=after\n"


@pytest.fixture(scope="module")
def sb(tmp_path_factory: pytest.TempPathFactory) -> Stepbuild:
    work = tmp_path_factory.mktemp("labels")
    store = Stepbuild(work / "store")
    base_image(store, work)
    return store


def inspect(sb: Stepbuild, image: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(sb("inspect", image).stdout)
    return document


def test_labels_override_the_stepfiles_and_run_nothing_again(sb: Stepbuild,
                                                              tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", STEPFILE)
    plain = sb.build(context, "-t", "plain")
    assert "DONE" in step_lines(plain.stderr)  # the RUN ran once
    first = sb.build(context, "-t", "labelled", "--label", "a=cli", "--label", "d=new")
    second = sb.build(context, "-t", "relabelled", "--label", "a=other")
    for build in (first, second):
        assert set(step_lines(build.stderr)) == {"CACHED"}, build.stderr  # no step ran
    digests = {plain.stdout.strip(), first.stdout.strip(), second.stdout.strip()}
    assert len(digests) == 3  # only the config (and so the manifest) changed
    config = inspect(sb, "labelled")["config"]
    assert config["config"]["Labels"] == {"a": "cli", "b": "kept", "c": "after", "d": "new"}
    assert inspect(sb, "relabelled")["config"]["config"]["Labels"] == {
        "a": "other", "b": "kept", "c": "after"}
    plain_config = inspect(sb, "plain")["config"]
    assert config["history"] == plain_config["history"]  # --label adds no history entry
    assert config["rootfs"] == plain_config["rootfs"]  # nor a layer


def test_the_fingerprint_sees_the_labels(sb: Stepbuild, tmp_path: Path) -> None:
    """No-op rebuilds replay a recorded digest: never that of another --label."""
    context = write_context(tmp_path / "ctx", "FROM base\nRUN echo fp > /fp\n")
    one = sb.build(context, "-t", "fp", "--label", "v=1").stdout.strip()
    assert sb.build(context, "-t", "fp", "--label", "v=1").stdout.strip() == one  # a replay
    two = sb.build(context, "-t", "fp", "--label", "v=2").stdout.strip()
    assert two != one
    assert inspect(sb, "fp")["config"]["config"]["Labels"] == {"v": "2"}
    assert inspect(sb, two)["config"]["config"]["Labels"] == {"v": "2"}
    back = sb.build(context, "-t", "fp", "--label", "v=1").stdout.strip()
    assert back == one and inspect(sb, "fp")["config"]["config"]["Labels"] == {"v": "1"}
