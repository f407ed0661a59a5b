"""A fully cached rebuild gives the digest it gave before, and the no-op fingerprint never
prints a digest a full build would not give (issue 11, item 10).

The shared step writes a random UUID: every run of it makes another layer, so a record
replaced by a rerun shows as another image digest. (Not the time: busybox `date` has no `%N`,
and two runs in one second would write the same bytes.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stepbuild.store.store import Store
from tests.integration.builds import Stepbuild, step_lines, store_with_base, write_context

pytestmark = pytest.mark.root

SHARED = "FROM base\nRUN cat /proc/sys/kernel/random/uuid > /stamp\n"
REPLAYED = "nothing changed since the last build"
SETTLE = 2.1  # the fingerprint's racy window, and a little


@pytest.fixture(scope="module")
def sb(tmp_path_factory: pytest.TempPathFactory) -> Stepbuild:
    return store_with_base(tmp_path_factory.mktemp("stability"), "store")


def digest_of(sb: Stepbuild, context: Path, *args: str) -> tuple[str, str]:
    result = sb.build(context, "-v", *args)
    return result.stdout.strip().splitlines()[-1], result.stderr


def test_a_no_cache_build_sharing_a_step_leaves_earlier_images_reproducible(
        sb: Stepbuild, tmp_path: Path) -> None:
    first = write_context(tmp_path / "first", SHARED + "LABEL which=first\n")
    other = write_context(tmp_path / "other", SHARED + "LABEL which=other\n")
    built, _ = digest_of(sb, first, "-t", "first")
    fresh, err = digest_of(sb, other, "--no-cache", "-t", "other")
    assert step_lines(err) == ["DONE"]  # the shared RUN ran again, with a layer of its own
    rebuilt, err = digest_of(sb, first, "-t", "first")
    assert REPLAYED not in err  # the full path (the tag "other" is new)
    assert step_lines(err) == ["CACHED"]
    assert rebuilt == built
    assert sb.run("other", "cat", "/stamp") != sb.run("first", "cat", "/stamp")
    assert fresh != built


def test_the_fingerprint_is_not_replayed_once_a_step_record_it_used_is_gone(
        sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", SHARED + "LABEL which=replayed\n")
    time.sleep(SETTLE)  # so the build is recorded (not racy)
    built, _ = digest_of(sb, context, "-t", "replayed")
    again, err = digest_of(sb, context, "-t", "replayed")
    assert REPLAYED in err and again == built
    store = Store(sb.root)
    for path, record in store.cache_records.scan():  # the RUN's record: the step reruns
        if record is not None and record.created_by.endswith("uuid > /stamp"):
            path.unlink()
    rebuilt, err = digest_of(sb, context, "-t", "replayed")
    assert REPLAYED not in err
    assert step_lines(err) == ["DONE"]
    assert rebuilt != built
