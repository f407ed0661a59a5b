"""`Builder` and the step lifecycle, driven with in-memory fakes (fakes.py): no root, no
mounts, no store on disk. What is checked is what a build leaves: the steps that ran, the
cache records written, the image tagged (its layers, config and history), the progress
lines, and on failure, that nothing was committed and every workspace is gone."""

from __future__ import annotations

import io
import itertools
from typing import Any

import pytest

from stepbuild.build.builder import Builder, BuildOptions, BuildResult, whole_store
from stepbuild.errors import PlanError, StepFailed
from stepbuild.frontend.parse import parse
from stepbuild.oci import documents as oci
from stepbuild.oci.platform import Platform, parse_platform
from stepbuild.progress import Progress
from stepbuild.teamcache.cache import CacheSpec
from tests.unit.build.fakes import (
    Disk,
    FakeExecutor,
    FakeStore,
    Remote,
    Script,
    TeamCaches,
    sha256,
)

TEAM = (CacheSpec("local", "/team-cache", "max"),)
AMD64 = Platform.of("linux", "amd64")
ARM64 = Platform.of("linux", "arm64")


class World:
    """One store, one executor following `script`, and a team cache storage: what several
    builds on one machine share."""

    def __init__(self, remote: Remote | None = None) -> None:
        self.disk: Disk = {}
        self.store = FakeStore(self.disk)
        self.script = Script()
        self.executor = FakeExecutor(self.disk, self.script)
        self.caches = TeamCaches(remote or Remote())
        self.output = io.StringIO()
        self.progress = Progress(self.output)
        self.clock = itertools.count(1_000_000)

    def build(self, stepfile: str, jobs: int = 1, **options: Any) -> BuildResult:
        self.progress = Progress(self.output)  # a fresh transcript per build
        builder = Builder(self.store, self.executor, self.progress,
                          clock=lambda: float(next(self.clock)), jobs=jobs,
                          team_cache=self.caches)
        return builder.build(parse(stepfile), BuildOptions(tags=("app",), **options))

    def key_of(self, created_by: str) -> str:
        """The key recorded for the step with this history text (there must be one)."""
        [key] = [k for k, r in self.store.cache.items() if r.created_by == created_by]
        return key

    def lines(self) -> list[str]:
        return [line.strip() for _, line in self.progress.transcript]


def layer(text: str) -> str:
    """The diff_id of the layer of a fake step that wrote its own text."""
    return sha256(text.encode())


STEPFILE = (
    "FROM scratch\n"
    "RUN make\n"
    "ENV MODE=release\n"
    "RUN true\n"
    "RUN make install\n"
)


def test_a_first_build_runs_every_step_commits_its_layer_and_records_its_key() -> None:
    world = World()
    world.script.writes["RUN true"] = None  # changes nothing: no layer
    result = world.build(STEPFILE)
    assert world.executor.ran == ["RUN make", "RUN true", "RUN make install"]
    assert (result.steps, result.cached) == (5, 0)  # FROM and ENV count as steps
    layers = (layer("RUN make"), layer("RUN make install"))
    assert result.state.diff_ids == layers
    assert world.store.layers == set(layers)
    records = {r.created_by: list(r.diff_ids) for r in world.store.cache.values()}
    assert records == {"RUN make": [layers[0]], "RUN true": [], "RUN make install": [layers[1]]}
    manifest, config = world.store.image("app")
    assert [d.digest for d in manifest.layers] == list(layers)
    assert manifest.layers[0].size == len(b"RUN make")
    document = config.to_json()
    assert "MODE=release" in document["config"]["Env"]
    assert [(h["created_by"], h.get("empty_layer", False)) for h in document["history"]] == [
        ("RUN make", False), ("ENV MODE=release", True), ("RUN true", True),
        ("RUN make install", False)]
    assert world.lines().count("DONE 1.00s") == 3  # the fake clock ticks once per call
    assert world.disk == {}  # every workspace removed; every tar moved into the store


def test_a_rebuild_hits_every_step_and_makes_the_same_image() -> None:
    world = World()
    first = world.build(STEPFILE)
    world.executor.ran.clear()
    records = dict(world.store.cache)
    second = world.build(STEPFILE)
    assert world.executor.ran == []
    assert (second.steps, second.cached) == (5, 3)
    assert second.manifest_digest == first.manifest_digest  # times come from the records
    assert world.store.cache == records
    assert world.lines().count("CACHED") == 3 and not any("DONE" in x for x in world.lines())


def test_labels_and_annotations_change_the_final_config_and_manifest_only() -> None:
    """--label: over the Stepfile's LABEL, no history entry, no step run again, no key
    changed; --annotation manifest: in the manifest, over our own annotations."""
    world = World()
    stepfile = STEPFILE + "LABEL a=stepfile b=kept\n"
    plain = world.build(stepfile)
    records = dict(world.store.cache)
    world.executor.ran.clear()
    labelled = world.build(stepfile, labels={"a": "cli", "c": "new"},
                           annotations={"org.opencontainers.image.created": "mine", "x": "y"})
    assert world.executor.ran == [] and world.store.cache == records
    assert labelled.keys == plain.keys and labelled.manifest_digest != plain.manifest_digest
    manifest, config = world.store.image("app")
    document = config.to_json()
    assert document["config"]["Labels"] == {"a": "cli", "b": "kept", "c": "new"}
    assert len(document["history"]) == len(plain.state.history)
    assert manifest.annotations == {"org.opencontainers.image.created": "mine", "x": "y"}


def test_no_cache_runs_every_step_again() -> None:
    world = World()
    world.build(STEPFILE)
    world.executor.ran.clear()
    result = world.build(STEPFILE, no_cache=True)
    assert world.executor.ran == ["RUN make", "RUN true", "RUN make install"]
    assert result.cached == 0


def test_a_no_cache_rerun_keeps_the_records_so_a_cached_rebuild_makes_the_first_image(
        ) -> None:
    """Issue 11, item 10: the first record of a key wins; --no-cache keeps its own result."""
    world = World()
    first = world.build(STEPFILE)
    records = dict(world.store.cache)
    world.script.writes["RUN make"] = b"another binary, this time"
    fresh = world.build(STEPFILE, no_cache=True)
    assert fresh.state.diff_ids[0] == sha256(b"another binary, this time")
    assert fresh.manifest_digest != first.manifest_digest
    assert {k: world.store.cache[k] for k in records} == records
    again = world.build(STEPFILE)
    assert again.cached == 3 and again.manifest_digest == first.manifest_digest


def test_a_step_that_raced_another_build_takes_the_record_in_force(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two builds run one step at once: the first record wins, and the later build takes it,
    as a cached rebuild of its image would."""
    world = World()
    first = world.build(STEPFILE)
    records = dict(world.store.cache)
    world.store.cache.clear()  # both builds looked the step up before either recorded it
    world.script.writes["RUN make"] = b"another binary, this time"
    perform = world.executor.perform

    def racing(step: Any, *args: Any) -> None:
        world.store.cache.update(records)  # the other build recorded first
        perform(step, *args)

    monkeypatch.setattr(world.executor, "perform", racing)
    second = world.build(STEPFILE)
    assert world.executor.ran[3:] == ["RUN make"]  # the later steps hit its records
    assert second.manifest_digest == first.manifest_digest
    assert world.store.cache == records


def test_a_changed_step_misses_and_so_do_the_steps_after_it() -> None:
    world = World()
    world.build(STEPFILE)
    world.executor.ran.clear()
    world.script.sees["RUN make"] = "main.c edited"  # its input changed...
    world.script.writes["RUN make"] = b"a different binary"  # ...and so did its output
    result = world.build(STEPFILE)
    assert world.executor.ran == ["RUN make", "RUN true", "RUN make install"]
    assert result.state.diff_ids[0] == sha256(b"a different binary")


def test_early_cutoff_a_step_that_reruns_to_the_same_layer_lets_the_next_steps_hit() -> None:
    world = World()
    first = world.build(STEPFILE)
    world.executor.ran.clear()
    world.script.sees["RUN make"] = "a comment edited in main.c"  # same binary again
    second = world.build(STEPFILE)
    assert world.executor.ran == ["RUN make"]  # a miss, which makes the layer it made before
    assert second.cached == 2  # RUN true and RUN make install: their parent state is the same
    assert second.state.diff_ids == first.state.diff_ids
    assert len([r for r in world.store.cache.values() if r.created_by == "RUN make"]) == 2


def test_a_failing_step_commits_nothing_and_reports_where_how_and_what_it_printed() -> None:
    world = World()
    world.script.writes["RUN make install"] = b"half-installed files"  # written, then failed
    world.script.fails["RUN make install"] = (2, ("cp: /usr/bin: Permission denied",))
    with pytest.raises(StepFailed) as failed:
        world.build(STEPFILE)
    error = failed.value
    assert (error.position.file, error.position.line) == ("Stepfile", 5)
    assert (error.status, error.output_tail) == (2, ("cp: /usr/bin: Permission denied",))
    assert error.render().splitlines() == [
        "Stepfile:5: step failed with exit code 2", "  RUN make install",
        "last 1 lines of output:", "  | cp: /usr/bin: Permission denied"]
    assert world.executor.ran == ["RUN make", "RUN true", "RUN make install"]
    assert sha256(b"half-installed files") not in world.store.blobs
    assert world.store.layers == {layer("RUN make"), layer("RUN true")}
    assert {r.created_by for r in world.store.cache.values()} == {"RUN make", "RUN true"}
    assert world.store.tags == {}
    assert world.disk == {}  # the failed step's workspace is removed too
    assert world.lines()[-1] == "#5   RUN make install"  # no DONE for it


def test_the_steps_before_a_failure_hit_once_it_is_fixed() -> None:
    world = World()
    world.script.fails["RUN make install"] = (1, ())
    with pytest.raises(StepFailed):
        world.build(STEPFILE)
    del world.script.fails["RUN make install"]
    world.executor.ran.clear()
    result = world.build(STEPFILE)
    assert world.executor.ran == ["RUN make install"] and result.cached == 2


WORKDIR_STEPFILE = (
    "FROM scratch\n"
    "RUN make\n"
    "USER nobody\n"
    "WORKDIR /app\n"
    "WORKDIR /\n"
)


def history(config: Any) -> list[tuple[str, bool]]:
    return [(h["created_by"], h.get("empty_layer", False)) for h in config.to_json()["history"]]


def test_workdir_makes_its_directory_at_once_in_a_cached_step_of_its_own() -> None:
    world = World()
    result = world.build(WORKDIR_STEPFILE)
    assert world.executor.ran == ["RUN make", "WORKDIR /app"]  # `/` is there: no step
    assert result.state.diff_ids == (layer("RUN make"), layer("WORKDIR /app"))
    _, config = world.store.image("app")
    assert history(config) == [("RUN make", False), ("USER nobody", True),
                               ("WORKDIR /app", False), ("WORKDIR /", True)]
    assert config.to_json()["config"]["WorkingDir"] == "/"
    world.executor.ran.clear()
    again = world.build(WORKDIR_STEPFILE)
    assert world.executor.ran == [] and again.cached == 2  # a rebuild hits WORKDIR too
    assert again.manifest_digest == result.manifest_digest


def test_a_workdir_whose_directory_is_there_adds_no_layer_and_only_sets_the_config() -> None:
    world = World()
    world.script.writes["WORKDIR /app"] = None  # the directory exists: nothing changes
    result = world.build(WORKDIR_STEPFILE + "RUN ls\n")
    assert world.executor.ran == ["RUN make", "WORKDIR /app", "RUN ls"]
    assert result.state.diff_ids == (layer("RUN make"), layer("RUN ls"))
    _, config = world.store.image("app")
    entries = config.to_json()["history"]
    assert history(config)[2] == ("WORKDIR /app", True)
    assert entries[2]["created"] == entries[0]["created"]  # as a config-only entry has it


def test_a_second_image_builds_on_the_first_from_the_store() -> None:
    world = World()
    base = world.build(STEPFILE)
    result = world.build("FROM app\nRUN make test\n")
    assert result.state.diff_ids == (*base.state.diff_ids, layer("RUN make test"))
    _, config = world.store.image("app")
    assert "MODE=release" in config.to_json()["config"]["Env"]


NAMED_STAGES = ("FROM scratch AS deps\nRUN fetch deps\nFROM scratch AS app\nRUN compile\n"
                "COPY --from=deps /deps /deps\n")


def test_no_cache_filter_runs_the_steps_of_that_stage_and_the_others_hit() -> None:
    world = World()
    world.build(NAMED_STAGES)
    records = dict(world.store.cache)
    world.executor.ran.clear()
    world.script.writes["RUN fetch deps"] = b"newer deps"
    result = world.build(NAMED_STAGES, no_cache_filter=("deps",))
    # deps ran again; app's RUN hit, and its COPY of the new /deps is a new step.
    assert world.executor.ran == ["RUN fetch deps", "COPY --from=deps /deps /deps"]
    assert result.cached == 1
    assert {k: world.store.cache[k] for k in records} == records  # the first record wins


def test_no_cache_filter_takes_stage_indices_and_leaves_unnamed_stages_cached() -> None:
    world = World()
    world.build(NAMED_STAGES)
    world.executor.ran.clear()
    world.build(NAMED_STAGES, no_cache_filter=("1",))
    assert world.executor.ran == ["RUN compile", "COPY --from=deps /deps /deps"]


def test_no_cache_filter_naming_no_stage_is_refused_before_any_step() -> None:
    world = World()
    with pytest.raises(PlanError) as caught:
        world.build(NAMED_STAGES, no_cache_filter=("dpes",))
    assert "deps, app" in (caught.value.hint or "")
    assert world.executor.ran == []


def test_stages_built_at_the_same_time_make_the_image_built_one_after_the_other() -> None:
    stepfile = ("FROM scratch AS a\nRUN build a\nFROM scratch AS b\nRUN build b\n"
                "FROM scratch\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n")
    serial, parallel = World(), World()
    one = serial.build(stepfile, source_date_epoch=0)
    two = parallel.build(stepfile, jobs=2, source_date_epoch=0)
    assert sorted(parallel.executor.ran) == sorted(serial.executor.ran)
    assert two.manifest_digest == one.manifest_digest
    assert parallel.store.cache.keys() == serial.store.cache.keys()
    again = parallel.build(stepfile, jobs=2, source_date_epoch=0)
    assert (again.cached, again.manifest_digest) == (4, one.manifest_digest)
    assert parallel.disk == {}


# --- the team cache -------------------------------------------------------------------------------

TWO_STAGES = (
    "FROM scratch AS deps\n"
    "RUN fetch deps\n"
    "FROM scratch\n"
    "COPY --from=deps /deps /deps\n"
    "RUN build\n"
)


def exported(stepfile: str) -> tuple[Remote, BuildResult]:
    """Builder A builds `stepfile` in its own store and exports every step."""
    a = World()
    result = a.build(stepfile, cache_to=TEAM)
    assert a.caches.opened[0].closed
    return a.caches.remote, result


def test_team_cache_hits_outside_the_target_stage_are_fetched_only_when_read() -> None:
    remote, built = exported(TWO_STAGES)
    b = World(remote)
    result = b.build(TWO_STAGES, cache_from=TEAM)
    assert b.executor.ran == [] and result.cached == 3
    assert result.manifest_digest == built.manifest_digest
    [cache] = b.caches.opened
    # deps' layer: the COPY --from hit needs only its key, the image only the target's layers
    assert cache.fetched == [layer("COPY --from=deps /deps /deps"), layer("RUN build")]
    assert layer("RUN fetch deps") not in b.store.layers
    assert b.store.cache_records.get(b.key_of("COPY --from=deps /deps /deps")) is not None


def test_a_lazy_hit_is_fetched_when_a_step_runs_on_it() -> None:
    remote, _ = exported(TWO_STAGES)
    b = World(remote)
    b.script.sees["RUN build"] = "src edited"
    b.build(TWO_STAGES, cache_from=TEAM)
    assert b.executor.ran == ["RUN build"]
    assert b.store.layers == {layer("COPY --from=deps /deps /deps"), layer("RUN build")}
    b.script.sees["COPY --from=deps /deps /deps"] = "deps changed"  # the COPY reads deps now
    b.executor.ran.clear()
    b.build(TWO_STAGES, cache_from=TEAM)
    assert b.executor.ran == ["COPY --from=deps /deps /deps"]  # same layer: RUN build hits
    assert layer("RUN fetch deps") in b.store.layers  # fetched before the COPY read it
    assert len(b.caches.opened) == 2  # one per build, no new attempt


def test_a_lazy_fetch_that_fails_makes_its_key_a_miss_and_the_build_starts_again() -> None:
    remote, _ = exported(TWO_STAGES)
    remote.unreadable.add(layer("RUN fetch deps"))
    b = World(remote)
    b.script.sees["COPY --from=deps /deps /deps"] = "deps changed"  # reads deps' files
    result = b.build(TWO_STAGES, cache_from=TEAM)
    first, second = b.caches.opened
    deps_key = b.key_of("RUN fetch deps")
    assert first.misses == {deps_key} and second.misses == {deps_key}
    assert first.closed and second.closed
    # The first attempt ran nothing (the COPY needed deps' layer first); the second ran deps
    # and the COPY, which made the layer builder A made: RUN build is a team cache hit again.
    assert b.executor.ran == ["RUN fetch deps", "COPY --from=deps /deps /deps"]
    assert result.cached == 1
    assert result.state.diff_ids == (layer("COPY --from=deps /deps /deps"), layer("RUN build"))
    assert layer("RUN fetch deps") in b.store.layers  # built here, not fetched
    assert "treated as a miss, building again" in b.output.getvalue()
    assert result.outside == ("a team cache layer could not be fetched",)  # never replayed
    assert b.disk == {}


def test_a_team_cache_hit_in_the_target_stage_is_fetched_at_once_so_a_failure_only_misses(
        ) -> None:
    remote, _ = exported(TWO_STAGES)
    remote.unreadable.add(layer("RUN build"))
    b = World(remote)
    b.build(TWO_STAGES, cache_from=TEAM)
    assert len(b.caches.opened) == 1  # no second attempt
    assert b.executor.ran == ["RUN build"]


def test_a_link_step_does_not_fetch_the_layers_below_it() -> None:
    stepfile = ("FROM scratch AS deps\nRUN fetch deps\nCOPY --link a /a\n"
                "FROM scratch\nCOPY --from=deps /a /a\n")
    remote, _ = exported(stepfile)
    b = World(remote)
    b.script.sees["COPY --link a /a"] = "a touched"  # a miss, which makes the same layer
    b.build(stepfile, cache_from=TEAM)
    assert b.executor.ran == ["COPY --link a /a"]
    assert layer("RUN fetch deps") not in b.store.layers  # a lazy hit, never read
    assert len(b.caches.opened) == 1


def test_only_the_real_store_reaches_what_takes_the_whole_store() -> None:
    # The team cache and a FROM of an archive take `store.Store`; a fake is refused there
    # rather than failing somewhere inside them.
    with pytest.raises(TypeError, match="FakeStore is not a store.Store"):
        whole_store(FakeStore({}))


@pytest.fixture
def amd64_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("stepbuild.oci.platform._machine.machine", lambda: "x86_64")


def platform_of(world: World, digest: str) -> str:
    """The platform an image's config says (os/architecture[/variant])."""
    config = world.store.config(world.store.manifest(world.store.resolve_digest(digest)))
    return "/".join(p for p in (config.os, config.architecture, config.variant) if p)


@pytest.mark.parametrize("platform", ["linux/amd64", "$BUILDPLATFORM", "${TARGETPLATFORM}",
                                      "linux/amd64/v1", "Linux/x86_64", "amd64", "linux",
                                      "$TARGETOS/$TARGETARCH", ""])
def test_from_platform_of_this_machine_builds(amd64_host: None, platform: str) -> None:
    world = World()
    result = world.build(f"FROM --platform={platform} scratch\nRUN make\n")
    assert world.executor.ran == ["RUN make"]
    assert result.state.diff_ids == (layer("RUN make"),)
    assert platform_of(world, result.manifest_digest) == "linux/amd64"
    assert dict(result.platforms) == {"linux/amd64": result.manifest_digest}


@pytest.mark.parametrize(("from_line", "shown"), [
    ("FROM --platform=linux/arm64 scratch", "linux/arm64"),
    ("FROM --platform=$ARCH scratch", "linux/arm64"),  # ARG ARCH=linux/arm64 above
    ("FROM --platform=linux/aarch64/v8 scratch", "linux/arm64"),
    ("FROM --platform=linux/amd64/v3 scratch", "linux/amd64/v3"),
    ("FROM --platform=linux/arm/v7 scratch", "linux/arm/v7"),
])
def test_from_platform_of_another_machine_makes_an_image_of_that_platform(
        amd64_host: None, from_line: str, shown: str) -> None:
    world = World()
    stepfile = ("ARG ARCH=linux/arm64\nFROM scratch AS first\nRUN make\n"
                f"{from_line} AS second\nCOPY --from=first /a /a\n")
    result = world.build(stepfile)
    assert platform_of(world, result.manifest_digest) == shown
    assert result.state.platform == parse_platform(shown)
    assert dict(result.platforms) == {shown: result.manifest_digest}


def test_the_target_platform_is_every_stage_platform_without_from_platform(
        amd64_host: None) -> None:
    world = World()
    result = world.build("FROM scratch\nCOPY a /a\n", platforms=(ARM64,))
    assert platform_of(world, result.manifest_digest) == "linux/arm64"
    assert world.store.tags["app"].media_type == oci.MEDIA_TYPE_MANIFEST  # one: no index


def test_a_platform_that_is_no_platform_is_refused_before_any_step(amd64_host: None) -> None:
    world = World()
    with pytest.raises(PlanError) as refused:
        world.build("FROM scratch AS first\nRUN make\n"
                    "FROM --platform=linux/amd64/v1/x scratch\nCOPY --from=first /a /a\n")
    assert refused.value.render().startswith(
        "Stepfile:3:1: --platform=linux/amd64/v1/x: not a platform")
    assert world.executor.ran == []


def test_a_stage_the_target_does_not_need_may_name_any_platform(amd64_host: None) -> None:
    world = World()
    world.build("FROM --platform=not/a/plat/form scratch AS other\nRUN other\n"
                "FROM scratch\nRUN make\n")
    assert world.executor.ran == ["RUN make"]


CROSS = ("FROM --platform=$BUILDPLATFORM scratch AS build\nRUN fetch tools\n"
         "ARG TARGETARCH\nRUN make $TARGETARCH\n"
         "FROM scratch\nCOPY a /a\nCOPY --from=build /out /out\n")


def test_several_platforms_make_an_index_of_one_manifest_each(amd64_host: None) -> None:
    world = World()
    result = world.build(CROSS, platforms=(AMD64, ARM64))
    tagged = world.store.tags["app"]
    assert tagged.media_type == oci.MEDIA_TYPE_INDEX and tagged.digest == result.manifest_digest
    entries = world.store.index(tagged).manifests
    assert [e.platform for e in entries] == [{"architecture": "amd64", "os": "linux"},
                                            {"architecture": "arm64", "os": "linux"}]
    assert dict(result.platforms) == {"linux/amd64": entries[0].digest,
                                      "linux/arm64": entries[1].digest}
    for entry, shown in zip(entries, ("linux/amd64", "linux/arm64"), strict=True):
        assert platform_of(world, entry.digest) == shown


def test_a_target_stage_of_one_platform_for_two_targets_is_refused(amd64_host: None) -> None:
    world = World()
    with pytest.raises(PlanError) as refused:
        world.build(CROSS, platforms=(AMD64, ARM64), target="build")
    assert refused.value.message.startswith("--platform linux/amd64,linux/arm64: the target "
                                            "stage is linux/amd64 for both")
    assert "app" not in world.store.tags


def test_a_buildplatform_stage_is_built_once_for_every_target(amd64_host: None) -> None:
    # the cross-compilation pattern: the $BUILDPLATFORM stage has the same keys for both
    # targets, so the second target's pass hits the first one's records
    world = World()
    result = world.build(CROSS, platforms=(AMD64, ARM64))
    assert world.executor.ran.count("RUN fetch tools") == 1
    assert world.executor.ran.count("RUN make $TARGETARCH") == 1  # the fake's key: its text
    assert world.executor.ran.count("COPY a /a") == 2  # a stage of each target platform
    assert result.cached == 2


def test_every_step_of_two_platforms_has_two_keys(amd64_host: None) -> None:
    world = World()
    stepfile = "FROM scratch\nCOPY a /a\nRUN make\nCOPY --link b /b\n"
    amd64 = world.build(stepfile, platforms=(AMD64,))
    arm64 = world.build(stepfile, platforms=(ARM64,))
    assert len(amd64.keys) == len(arm64.keys) == 3
    assert set(amd64.keys).isdisjoint(arm64.keys)
    assert world.executor.ran == ["COPY a /a", "RUN make", "COPY --link b /b"] * 2
    assert arm64.cached == 0  # no arm64 step hit an amd64 record


def test_a_multi_platform_build_exports_each_platforms_records(amd64_host: None) -> None:
    a = World()
    built = a.build(CROSS, platforms=(AMD64, ARM64), cache_to=TEAM)
    b = World(a.caches.remote)
    again = b.build(CROSS, platforms=(AMD64, ARM64), cache_from=TEAM)
    assert b.executor.ran == []  # every step of both platforms came from the team cache
    assert again.manifest_digest == built.manifest_digest


def test_run_network_host_without_the_entitlement_is_refused_before_any_step() -> None:
    world = World()
    stepfile = ("FROM scratch AS first\nRUN make\nFROM scratch\nCOPY --from=first /a /a\n"
                "RUN --network=host fetch\n")
    with pytest.raises(PlanError) as refused:
        world.build(stepfile)
    assert refused.value.render().startswith(
        "Stepfile:5:1: RUN --network=host needs the network.host entitlement")
    assert refused.value.hint == "pass --allow network.host to stepbuild build to let it"
    assert world.executor.ran == []  # nothing ran: not `RUN make` of the first stage either


def test_run_network_host_in_a_stage_not_needed_is_not_refused() -> None:
    world = World()
    world.build("FROM scratch AS tools\nRUN --network=host fetch\nFROM scratch\nRUN make\n")
    assert world.executor.ran == ["RUN make"]


def test_run_network_host_with_the_entitlement_runs() -> None:
    world = World()
    world.executor.allow = frozenset({"network.host"})
    world.build("FROM scratch\nRUN --network=host fetch\n")
    assert world.executor.ran == ["RUN --network=host fetch"]


def test_a_platform_that_is_no_platform_is_refused(amd64_host: None) -> None:
    with pytest.raises(PlanError, match="--platform=linux/amd64/v1/x: not a platform"):
        World().build("FROM --platform=linux/amd64/v1/x scratch\n")


def test_a_stage_the_target_does_not_need_may_name_another_platform(amd64_host: None) -> None:
    world = World()
    world.build("FROM --platform=linux/arm64 scratch AS other\nRUN other\n"
                "FROM scratch\nRUN make\n")
    assert world.executor.ran == ["RUN make"]
