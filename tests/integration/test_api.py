"""stepbuild.api for real, in this process: builds with a callback, a failing RUN, build
--push, push and pull against the registry fixture (checked with skopeo), and what a build
does to the calling thread's mount namespace (and not to the others').

The busybox base is built by the CLI in a child process (tests/integration/builds.py); every
build of the API runs here, as root.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from stepbuild import api
from stepbuild.errors import ImageNotFound, StepFailed, UsageError
from stepbuild.progress.events import Event
from stepbuild.store.store import Store
from tests.integration import registry_fixture
from tests.integration.builds import Stepbuild, base_image, write_context

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry

EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}
TWO_STAGES = (
    "FROM base AS tools\n"
    "RUN echo tool > /tool\n"
    "FROM base\n"
    "ENV GREETING=hello\n"
    "COPY --from=tools /tool /tool\n"
    "COPY data.txt /data.txt\n"
    "RUN cat /tool /data.txt\n"
    'CMD ["cat", "/tool"]\n'
)
LAYER_STEPS = {"RUN echo tool > /tool", "COPY --from=tools /tool /tool",
               "COPY data.txt /data.txt", "RUN cat /tool /data.txt"}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api")


@pytest.fixture(scope="module")
def root(work: Path) -> Path:
    """A store holding the busybox `base` (built by the CLI, in a child process)."""
    base_image(Stepbuild(work / "store"), work, "--build-arg", "SOURCE_DATE_EPOCH=1700000000")
    return work / "store"


def skopeo_digest(ref: str) -> str:
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return str(json.loads(out)["Digest"])


def test_a_two_stage_build_reports_its_steps_and_a_rebuild_is_all_cached(
        root: Path, work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    context = write_context(work / "two", TWO_STAGES, {"data.txt": "data\n"})
    request = api.BuildRequest(context, tags=("two",), build_args=EPOCH, root=root)
    events: list[Event] = []
    first = api.build(request, on_event=events.append)
    assert capfd.readouterr() == ("", "")  # no stream given: nothing printed, not even stderr

    store = Store(root)
    described = store.resolve("two")
    assert described is not None
    assert first.digest == first.local_digest == described.digest  # no push: the store's
    assert first.config_digest == store.manifest(described).config.digest
    assert first.pushed == {} and first.tags == ("two",)
    images = {image.name: image.digest for image in api.images(root=root)}
    assert images["two"] == first.digest

    steps = first.steps
    assert [s.step for s in steps] == list(range(1, 9))
    assert [(s.stage, s.line) for s in steps][:2] == [("tools", 1), ("tools", 2)]
    assert {s.stage for s in steps[2:]} == {"1"}
    assert all(s.status == "done" for s in steps), steps
    ran = [s for s in steps if s.text in LAYER_STEPS]
    assert len(ran) == 4 and all(s.seconds is not None and s.seconds >= 0 for s in ran)
    assert first.cached == 0
    kinds = [e.kind for e in events]
    assert kinds[0] == "build.started" and kinds[-1] == "build.done"
    assert events[-1].text == first.digest and events[-1].steps == 8
    logs = [e for e in events if e.kind == "step.log"]
    assert [(e.stage, e.step, e.text) for e in logs] == [("1", 7, "tool"), ("1", 7, "data")]

    second = api.build(request)
    assert second.digest == first.digest
    assert second.cached == 4
    assert [s.status for s in second.steps if s.text in LAYER_STEPS] == ["cached"] * 4
    assert [s.seconds for s in second.steps] == [None] * 8


def test_a_failing_run_raises_step_failed_after_the_callback_saw_the_error(
        root: Path, work: Path) -> None:
    context = write_context(work / "failing", "FROM base\nENV A=1\n"
                                              "RUN echo about to fail; exit 3\n")
    events: list[Event] = []
    with pytest.raises(StepFailed) as caught:
        api.build(api.BuildRequest(context, root=root), on_event=events.append)
    assert caught.value.status == 3
    assert caught.value.position.line == 3
    assert caught.value.output_tail == ("about to fail",)
    errors = [e for e in events if e.kind in ("step.error", "build.error")]
    assert [(e.kind, e.step, e.exit_code) for e in errors] == [("step.error", 3, 3),
                                                              ("build.error", None, 1)]
    assert events[-1].kind == "build.error"
    log = [e.text for e in events if e.kind == "step.log"]
    assert log == ["about to fail"]


def test_a_stream_gets_the_plain_log_and_the_result_the_warnings_and_outputs(
        root: Path, work: Path) -> None:
    context = write_context(work / "logged", "FROM base\nRUN echo shown\n")
    stream = io.StringIO()
    archive = work / "logged.tar"
    result = api.build(api.BuildRequest(context, build_args={**EPOCH, "UNUSED": "1"},
                                        outputs=(f"type=oci,dest={archive}",), root=root),
                       stream=stream)
    text = stream.getvalue()
    assert "#2   RUN echo shown" in text and "  | shown" in text
    assert f"built {result.digest} (2 steps, 0 cached)" in text
    unused = "build-args UNUSED were not consumed by any ARG in the Stepfile"
    assert result.warnings == result.stepfile_warnings == (unused,)
    assert f"warning: {unused}" in text
    ((kind, dest, digest),) = result.exported
    assert (kind, dest) == ("oci", str(archive)) and digest is not None
    assert f"oci {archive} {digest}" in text
    out = subprocess.run(["skopeo", "inspect", f"oci-archive:{archive}"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert json.loads(out)["Digest"] == digest


def test_chroot_isolation_mounts_nothing_and_moves_no_thread(root: Path, work: Path) -> None:
    context = write_context(work / "chroot", "FROM base\nRUN echo chrooted > /c\n")
    events: list[Event] = []
    request = api.BuildRequest(context, build_args=EPOCH, isolation="chroot", no_cache=True,
                               root=root)

    def build() -> tuple[str, api.BuildResult, str]:  # in a thread that never built
        return mount_namespace(), api.build(request, on_event=events.append), mount_namespace()

    with ThreadPoolExecutor(1) as pool:
        before, result, after = pool.submit(build).result()
    assert after == before
    assert events[0].text == "isolation: chroot"
    assert [s.status for s in result.steps] == ["done", "done"]


def test_build_push_gives_the_registry_digest(
        root: Path, work: Path, plain_registry: registry_fixture.RunningRegistry) -> None:
    context = write_context(work / "pushed", "FROM base\nRUN echo pushed > /p\n")
    refs = (f"{plain_registry.host}/api/app:1", f"{plain_registry.host}/api/app:latest")
    metadata = work / "metadata.json"
    result = api.build(api.BuildRequest(
        context, tags=refs, build_args=EPOCH, push=True, metadata_file=str(metadata),
        connection=api.Connection(tls_verify=False), root=root))
    assert set(result.pushed) == set(refs)
    for ref in refs:
        assert result.pushed[ref] == result.digest == skopeo_digest(ref)
    assert result.digest != result.local_digest  # the store keeps its layers uncompressed
    assert json.loads(metadata.read_text())["containerimage.digest"] == result.digest


def test_push_and_pull_through_the_api(
        root: Path, work: Path, plain_registry: registry_fixture.RunningRegistry) -> None:
    connection = api.Connection(tls_verify=False)
    ref = f"{plain_registry.host}/api/base:1"
    events: list[Event] = []
    pushed = api.push("base", ref, root=root, connection=connection, on_event=events.append)
    assert pushed.digest == skopeo_digest(ref)
    moved = {e.key for e in events if e.kind == "transfer"}
    assert len(moved) == 2  # its layer and its config, each with its states
    assert events[-1].kind == "notice" and events[-1].text.startswith(f"pushed {ref}@")
    assert pushed.reference == f"{ref}@{pushed.digest}"
    assert pushed.uploaded + pushed.mounted + pushed.existing == 2  # its layer, its config
    again = api.push("base", ref, root=root, connection=connection)
    assert (again.digest, again.uploaded, again.mounted, again.existing) == (
        pushed.digest, 0, 0, 2)

    fresh = work / "fresh"
    pulled = api.pull(ref, root=fresh, connection=connection)
    assert pulled.digest == pulled.manifest_digest == pushed.digest
    assert pulled.name == ref and pulled.downloaded == 1
    listed = {image.name: image.digest for image in api.images(root=fresh)}
    assert listed == {ref: pulled.local_digest}
    assert pulled.local_digest == Store(root).resolve("base").digest  # type: ignore[union-attr]

    events.clear()
    with pytest.raises(ImageNotFound):
        api.push("no-such-image", ref, root=root, connection=connection, on_event=events.append)
    assert [(e.kind, e.exit_code) for e in events] == [("build.error", 1)]


def mount_namespace() -> str:
    return os.readlink("/proc/thread-self/ns/mnt")


def test_a_build_moves_its_own_thread_only_and_once(root: Path, work: Path) -> None:
    """The calling thread enters a private mount namespace on its first build and keeps it
    for its next ones; the other threads of the process stay where they were."""
    context = write_context(work / "thread", "FROM base\nRUN echo in a thread\n")
    request = api.BuildRequest(context, build_args=EPOCH, root=root)
    here = mount_namespace()

    def build_twice() -> tuple[str, str, str]:
        before = mount_namespace()
        api.build(request)
        after_first = mount_namespace()
        api.build(request)
        return before, after_first, mount_namespace()

    with ThreadPoolExecutor(1) as pool:
        before, after_first, after_second = pool.submit(build_twice).result()
    assert before == here
    assert after_first != before  # the builder's thread left the caller's namespace...
    assert after_second == after_first  # ...once
    assert mount_namespace() == here  # this thread did not move


def test_labels_annotations_and_a_named_context(root: Path, work: Path) -> None:
    tools = write_context(work / "named-tools", "unused\n", {"tool.sh": "echo named\n"})
    context = write_context(work / "named", "FROM base\nCOPY --from=tools tool.sh /tool.sh\n")
    request = api.BuildRequest(context, tags=("named",), build_args=EPOCH, root=root,
                               labels=("org.opencontainers.image.revision=abc",),
                               annotations=("org.example.built-by=api",),
                               build_contexts=(f"tools={tools}",))
    result = api.build(request)
    store = Store(root)
    described = store.resolve("named")
    assert described is not None and described.digest == result.digest
    manifest = store.manifest(described)
    assert (manifest.annotations or {}).get("org.example.built-by") == "api"
    config = store.config(manifest).to_json()
    assert config["config"]["Labels"] == {"org.opencontainers.image.revision": "abc"}
    assert Stepbuild(root).run("named", "cat", "/tool.sh") == "echo named\n"  # from `tools`

    with pytest.raises(UsageError) as caught:
        api.build(api.BuildRequest(context, root=root, build_contexts=(
            "tools=https://example.invalid/tools.git",)))
    assert "git or URL" in caught.value.message
