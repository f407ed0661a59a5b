"""stepbuild.api without building: a request's checks, per-step records assembled from
events, the failure events a caller's callback receives, the isolation the API refuses, and
that importing the API stays cheap. Real builds through the API: tests/integration/test_api.py.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from stepbuild import api
from stepbuild.api.build import _isolation
from stepbuild.api.steps import StepCollector, StepRecord
from stepbuild.errors import (
    IsolationUnavailable,
    SourcePosition,
    StepFailed,
    UsageError,
)
from stepbuild.fs import userns as fs_userns
from stepbuild.progress import Progress
from stepbuild.progress.events import Event
from stepbuild.sandbox import isolation

PROJECT = Path(__file__).resolve().parents[2]


# --- BuildRequest.check ------------------------------------------------------------------------


@pytest.mark.parametrize("changes", [
    {"tags": "app:1"},  # a string where names are expected: every letter would be a tag
    {"outputs": ["type=oci,dest=x", 3]},
    {"cache_from": b"type=local,src=x"},
    {"network": "bridge"},
    {"pull": "sometimes"},
    {"isolation": "vm"},
    {"compression": "bzip2"},
    {"jobs": 0},
    {"jobs": True},
    {"build_args": {"VERSION": 2}},
])
def test_a_bad_request_is_a_usage_error_naming_the_field(tmp_path: Path,
                                                          changes: dict[str, object]) -> None:
    request = api.BuildRequest(tmp_path, **changes)  # type: ignore[arg-type]
    with pytest.raises(UsageError) as caught:
        request.check()
    assert f"BuildRequest.{next(iter(changes))}" in caught.value.message
    assert caught.value.exit_code == 2


def test_a_context_that_is_no_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        api.BuildRequest(tmp_path / "missing").check()
    assert str(tmp_path / "missing") in caught.value.message


def test_a_good_request_passes(tmp_path: Path) -> None:
    api.BuildRequest(tmp_path, tags=("app:1",), build_args={"A": "1"}, network="none",
                     pull="never", isolation="chroot", jobs=2, outputs=("type=oci,dest=x",),
                     cache_to=("type=local,dest=c",)).check()


def test_build_reports_a_bad_request_to_the_callback_and_prints_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events: list[Event] = []
    with pytest.raises(UsageError):
        api.build(api.BuildRequest(tmp_path, network="bridge"), on_event=events.append)
    assert [(e.kind, e.exit_code) for e in events] == [("build.error", 2)]
    assert "network" in events[0].text
    assert capsys.readouterr() == ("", "")


# --- per-step records from events ---------------------------------------------------------------


def feed(collector: StepCollector, *events: Event) -> None:
    for event in events:
        collector(event)


def test_records_of_a_single_stage_build() -> None:
    collector = StepCollector()
    feed(collector,
         Event("build.started", text="isolation: namespaces"),
         Event("step.started", step=1, text="FROM base", line=1),
         Event("step.started", step=2, text="RUN make", line=2),
         Event("step.log", step=2, text="compiling"),
         Event("step.done", step=2, seconds=1.5),
         Event("warning", text="something odd"),
         Event("step.started", step=3, text="ENV A=1", line=3),
         Event("step.started", step=4, text="COPY . /src", line=4),
         Event("step.cached", step=4),
         Event("step.started", step=5, text='CMD ["sh"]', line=5),
         Event("build.done", text="sha256:ab", steps=5, cached=1))
    assert collector.records(succeeded=True) == (
        StepRecord("", 1, "FROM base", 1, "done"),
        StepRecord("", 2, "RUN make", 2, "done", 1.5),
        StepRecord("", 3, "ENV A=1", 3, "done"),
        StepRecord("", 4, "COPY . /src", 4, "cached"),
        StepRecord("", 5, 'CMD ["sh"]', 5, "done"),
    )
    assert collector.warnings() == ("something odd",)
    assert collector.running() == [StepRecord("", 5, 'CMD ["sh"]', 5)]


def test_records_of_stages_reporting_in_turn() -> None:
    """Two stages in parallel: each event belongs to its stage's running step."""
    collector = StepCollector()
    feed(collector,
         Event("step.started", stage="tools", step=1, text="FROM base AS tools", line=1),
         Event("step.started", stage="1", step=2, text="FROM base", line=3),
         Event("step.started", stage="tools", step=3, text="RUN make", line=2),
         Event("step.started", stage="1", step=4, text="RUN false", line=4),
         Event("step.error", stage="1", step=4, text="exit 1", exit_code=1))
    assert collector.records(succeeded=False) == (
        StepRecord("tools", 1, "FROM base AS tools", 1, "done"),
        StepRecord("1", 2, "FROM base", 3, "done"),
        StepRecord("tools", 3, "RUN make", 2, "stopped"),  # cancelled by the failure
        StepRecord("1", 4, "RUN false", 4, "failed", exit_code=1),
    )


# --- the failure event ------------------------------------------------------------------------


def test_build_error_is_said_once() -> None:
    """The API reports a failed build, then the CLI's `reporting` (cli/progress_flags.py)
    reports the same error again: one `build.error` reaches the views and listeners."""
    seen: list[Event] = []
    progress = Progress(io.StringIO(), listeners=[seen.append])
    error = StepFailed(SourcePosition("Stepfile", 2, 1), "RUN false", 7, ("oops",))
    progress.build_failed(error.render(), error.exit_code)
    progress.build_failed(error.render(), error.exit_code)
    assert [(e.kind, e.exit_code) for e in seen] == [("build.error", 1)]
    assert seen[0].text.startswith("Stepfile:2: step failed with exit code 7")


# --- isolation ---------------------------------------------------------------------------------


def test_userns_outside_a_user_namespace_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API never re-enters the process (the CLI does): it says so instead."""
    monkeypatch.setattr(isolation, "resolve", lambda requested="auto": isolation.Isolation(
        "userns", as_root=False, passed_over=("namespaces unavailable: not root",)))
    monkeypatch.setattr(fs_userns, "in_user_namespace", lambda: False)
    with pytest.raises(IsolationUnavailable) as caught:
        _isolation("auto")
    assert "not root" in caught.value.message
    assert caught.value.hint is not None and "stepbuild" in caught.value.hint
    monkeypatch.setattr(fs_userns, "in_user_namespace", lambda: True)
    assert _isolation("auto").mode == "userns"


# --- import cost -------------------------------------------------------------------------------


def test_importing_the_api_imports_no_builder() -> None:
    code = ("import sys, stepbuild.api; print(sorted(m for m in sys.modules if m == 'lark' or"
            " m.startswith(('stepbuild.build', 'stepbuild.store.store', 'requests'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_command_line_imports_the_api_only_to_build() -> None:
    """The no-op rebuild's path (cli/noop.py) stays as cheap as it was."""
    code = ("import sys, stepbuild.cli.main, stepbuild.cli.commands, stepbuild.cli.noop,"
            " stepbuild.cli.rootless; print(sorted(m for m in sys.modules"
            " if m.startswith('stepbuild.api')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
