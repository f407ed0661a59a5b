"""examples/ci, for real: pipeline.sh against Debian's docker-registry (registry_fixture.py).

The busybox base is pushed to the test registry first and the sample Stepfile takes it as
`BASE_IMAGE`. The first run (a fresh store, an empty cache) pushes the image; skopeo must
serve the digest of its metadata.json, under both tags, and that digest, pulled into another
store, runs. A second run from a new empty store (a fresh CI runner) finds every step in the
registry cache, and so do runs from the first store: every step that makes a layer is
`CACHED`, none runs, and the pushed digest never changes. The revision comes from GitLab's or
GitHub's variable, else the context's git commit, else "unknown". The GitLab and GitHub files
cannot run here: they are parsed, and must call pipeline.sh with what it needs, log in with
--password-stdin from a CI secret and keep metadata.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration import registry_fixture
from tests.integration.builds import PROJECT, Stepbuild, base_image
from tests.integration.registry_fixture import RunningRegistry

pytestmark = pytest.mark.root

plain_registry = registry_fixture.plain_registry

EXAMPLE = PROJECT / "examples" / "ci"
PIPELINE = EXAMPLE / "pipeline.sh"
GITLAB = EXAMPLE / ".gitlab-ci.yml"
GITHUB = EXAMPLE / "github" / "workflows" / "build.yml"
IMAGE = "team/ci-app"
GITLAB_SHA, GITHUB_SHA = "1" * 40, "2" * 40
# Set by CI systems or by hand; none may leak into a run from the environment of the tests.
PIPELINE_VARIABLES = ("REGISTRY", "IMAGE", "REVISION", "CONTEXT", "BASE_IMAGE", "CACHE_REF",
                      "OUT_DIR", "STEPBUILD", "STEPBUILD_TLS_VERIFY", "STEPBUILD_NETWORK",
                      "CI_REGISTRY", "CI_PROJECT_PATH", "CI_COMMIT_SHA", "GITHUB_REPOSITORY",
                      "GITHUB_SHA", "GITHUB_OUTPUT")


@dataclass
class Run:
    """One run of pipeline.sh: its output and the files it left in `out`."""

    result: subprocess.CompletedProcess[str]
    store: Path
    out: Path

    @property
    def metadata(self) -> dict[str, Any]:
        return json.loads((self.out / "metadata.json").read_text())  # type: ignore[no-any-return]

    @property
    def digest(self) -> str:
        return str(self.metadata["containerimage.digest"])


def run_pipeline(workdir: Path, store: Path, **env: str) -> Run:
    """pipeline.sh with `workdir` as the current directory (build/ goes there) and `store` as
    the stepbuild store, the registry given by `env`; it must succeed."""
    result = pipeline(workdir, store, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    return Run(result, store, workdir / "build")


def pipeline(workdir: Path, store: Path, **env: str) -> subprocess.CompletedProcess[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if k not in PIPELINE_VARIABLES}
    full_env = {**base, "STEPBUILD_ROOT": str(store), "PYTHONPATH": str(PROJECT),
                "STEPBUILD": f"{sys.executable} -m stepbuild",
                "DOCKER_CONFIG": str(workdir / "docker-config"), **env}
    full_env.pop("REGISTRY_AUTH_FILE", None)  # never the real credentials
    return subprocess.run(["bash", str(PIPELINE)], cwd=workdir, env=full_env,
                          capture_output=True, text=True, timeout=600, check=False)


def skopeo_digest(reference: str) -> str:
    done = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{reference}"],
                          capture_output=True, text=True, check=True, timeout=60)
    return str(json.loads(done.stdout)["Digest"])


_LABELLED = re.compile(r"\[([^]]+)\] (.*)")
_HEADER = re.compile(r"#(\d+)\s+(\S.*)")


def step_outcomes(log: str) -> dict[str, str | None]:
    """Each step of a plain build log ("#N INSTRUCTION") → "CACHED", "DONE" or None (a step
    that only sets config, such as FROM or CMD, reports no outcome). Lines of a multi-stage
    build carry a "[stage] " prefix and stages interleave: outcomes follow their stage."""
    current: dict[str, str] = {}  # stage label → the step it is at
    outcomes: dict[str, str | None] = {}
    for line in log.splitlines():
        labelled = _LABELLED.fullmatch(line)
        label, text = labelled.groups() if labelled else ("", line)
        header = _HEADER.fullmatch(text.strip())
        words = text.split()
        if header:
            current[label] = f"#{header[1]} {header[2]}"
            outcomes[current[label]] = None
        elif words and words[0] in ("CACHED", "DONE") and label in current:
            outcomes[current[label]] = words[0]
    return outcomes


def assert_all_cached(run: Run, first: Run) -> None:
    """Every step that made a layer in the first run is CACHED here, and nothing ran."""
    made = step_outcomes(first.result.stderr)
    again = step_outcomes(run.result.stderr)
    assert list(again) == list(made)
    assert {step for step, outcome in again.items() if outcome is not None} == {
        step for step, outcome in made.items() if outcome is not None}
    assert {outcome for outcome in again.values() if outcome is not None} == {"CACHED"}
    assert "self-test passed" not in run.result.stderr  # the sample's RUN printed nothing
    assert run.digest == first.digest  # the same image, so the same registry digest


# --- the real pipeline -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ci-example")


@pytest.fixture(scope="module")
def base_ref(work: Path, plain_registry: RunningRegistry) -> str:
    """The busybox base in the test registry: what the sample's FROM ${BASE} pulls."""
    sb = Stepbuild(work / "base-store")
    base_image(sb, work)
    ref = f"{plain_registry.host}/ci/busybox:1"
    sb("push", "--tls-verify=false", "base", ref)
    return ref


@pytest.fixture(scope="module")
def registry_env(plain_registry: RunningRegistry, base_ref: str) -> dict[str, str]:
    return {"REGISTRY": plain_registry.host, "IMAGE": IMAGE, "BASE_IMAGE": base_ref,
            "STEPBUILD_TLS_VERIFY": "false"}


@pytest.fixture(scope="module")
def first(work: Path, registry_env: dict[str, str]) -> Run:
    """The first run, as in GitLab: a fresh store, an empty registry cache."""
    return run_pipeline(work / "runner-1", work / "store-1", CI_COMMIT_SHA=GITLAB_SHA,
                        **registry_env)


def test_the_metadata_digest_is_what_the_registry_serves(first: Run,
                                                         plain_registry: RunningRegistry
                                                         ) -> None:
    name = f"{plain_registry.host}/{IMAGE}"
    metadata = first.metadata
    digest = metadata["containerimage.digest"]
    assert digest.startswith("sha256:")
    assert skopeo_digest(f"{name}:{GITLAB_SHA}") == digest
    assert skopeo_digest(f"{name}:latest") == digest
    assert metadata["stepbuild.pushed"] == {f"{name}:{GITLAB_SHA}": digest,
                                            f"{name}:latest": digest}
    assert metadata["image.name"] == f"{name}:{GITLAB_SHA},{name}:latest"
    raw = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                          f"docker://{name}@{digest}"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert json.loads(raw)["config"]["digest"] == metadata["containerimage.config.digest"]
    assert (first.out / "iidfile").read_text() == digest
    assert (first.out / "image.env").read_text() == (
        f"IMAGE_NAME={name}\nIMAGE_DIGEST={digest}\nIMAGE_REF={name}@{digest}\n")
    assert f"deploy by digest: {name}@{digest}\n" in first.result.stdout
    # the cache went to the registry too, beside the image
    subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                    f"docker://{name}:cache"], capture_output=True, check=True, timeout=60)
    # an empty store and an empty cache: every step that makes a layer ran
    outcomes = step_outcomes(first.result.stderr)
    assert {o for o in outcomes.values() if o is not None} == {"DONE"}
    assert "self-test passed" in first.result.stderr


def test_the_pushed_digest_deploys_and_runs(first: Run, tmp_path: Path,
                                            plain_registry: RunningRegistry) -> None:
    ref = f"{plain_registry.host}/{IMAGE}@{first.digest}"
    deployer = Stepbuild(tmp_path / "deployer")
    assert deployer("pull", "--tls-verify=false", ref).stdout.strip() == first.digest
    assert deployer.run(ref) == "hello from the CI example\n"


def test_a_fresh_runner_gets_every_step_from_the_registry_cache(
        first: Run, work: Path, registry_env: dict[str, str],
        plain_registry: RunningRegistry) -> None:
    outputs = work / "github-output"
    second = run_pipeline(work / "runner-2", work / "store-2", GITHUB_SHA=GITHUB_SHA,
                          GITHUB_OUTPUT=str(outputs), **registry_env)
    assert_all_cached(second, first)
    name = f"{plain_registry.host}/{IMAGE}"
    assert skopeo_digest(f"{name}:{GITHUB_SHA}") == second.digest
    assert outputs.read_text() == (f"image={name}\ndigest={second.digest}\n"
                                   f"ref={name}@{second.digest}\n")


def test_the_same_store_again_from_a_git_checkout_elsewhere(
        first: Run, work: Path, tmp_path: Path, registry_env: dict[str, str],
        plain_registry: RunningRegistry) -> None:
    """No CI variable: the revision is the context's commit; the store of the first run, the
    context copied elsewhere (keys never depend on paths)."""
    checkout = tmp_path / "checkout"
    shutil.copytree(EXAMPLE / "app", checkout / "app")
    git = ["git", "-C", str(checkout), "-c", "user.name=ci", "-c", "user.email=ci@example.test"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "the app"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    again = run_pipeline(tmp_path / "runner", first.store, CONTEXT=str(checkout / "app"),
                         **registry_env)
    assert_all_cached(again, first)
    assert skopeo_digest(f"{plain_registry.host}/{IMAGE}:{head}") == again.digest


def test_without_a_revision_the_tag_is_unknown(first: Run, tmp_path: Path,
                                               registry_env: dict[str, str],
                                               plain_registry: RunningRegistry) -> None:
    shutil.copytree(EXAMPLE / "app", tmp_path / "app")
    again = run_pipeline(tmp_path / "runner", first.store, CONTEXT=str(tmp_path / "app"),
                         GIT_CEILING_DIRECTORIES=str(tmp_path), **registry_env)
    assert_all_cached(again, first)
    assert skopeo_digest(f"{plain_registry.host}/{IMAGE}:unknown") == again.digest


def test_a_failed_build_leaves_no_digest_of_an_earlier_run(tmp_path: Path,
                                                           registry_env: dict[str, str]
                                                           ) -> None:
    """A later job must never deploy the last run's digest after this run failed."""
    context = tmp_path / "broken"
    context.mkdir()
    (context / "Stepfile").write_text("FROM scratch\nNOTANINSTRUCTION x\n")
    out = tmp_path / "runner" / "build"
    out.mkdir(parents=True)
    for stale in ("metadata.json", "iidfile", "image.env"):
        (out / stale).write_text("from an earlier run\n")
    result = pipeline(tmp_path / "runner", tmp_path / "store", CONTEXT=str(context),
                      **registry_env)
    assert result.returncode == 2, result.stdout + result.stderr  # stepbuild's: a bad Stepfile
    assert "Traceback" not in result.stderr and "NOTANINSTRUCTION" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == []


@pytest.mark.parametrize(("env", "message"), [
    ({"IMAGE": "team/app"}, "pipeline.sh: REGISTRY is not set"),
    ({"REGISTRY": "127.0.0.1:1"}, "pipeline.sh: IMAGE is not set"),
    ({"REGISTRY": "127.0.0.1:1", "IMAGE": "a", "CONTEXT": "/nonexistent"},
     "pipeline.sh: CONTEXT /nonexistent is not a directory"),
    ({"REGISTRY": "127.0.0.1:1", "IMAGE": "a", "STEPBUILD_TLS_VERIFY": "no"},
     "pipeline.sh: STEPBUILD_TLS_VERIFY must be true or false, not 'no'"),
])
def test_a_wrong_environment_is_one_line(tmp_path: Path, env: dict[str, str],
                                         message: str) -> None:
    result = pipeline(tmp_path, tmp_path / "store", **env)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert not (tmp_path / "store").exists()  # stepbuild never started


# --- the CI files ----------------------------------------------------------------------------


def required_variables() -> list[str]:
    """The variables pipeline.sh refuses to run without (its `die "X is not set"` lines)."""
    return re.findall(r'die "(\w+) is not set', PIPELINE.read_text())


def assigned(command: str) -> set[str]:
    """Variables a shell command line assigns for what it runs (`IMAGE=... bash ...`)."""
    return set(re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", command))


def test_pipeline_requires_registry_and_image() -> None:
    assert required_variables() == ["REGISTRY", "IMAGE"]


def gitlab_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(GITLAB.read_text())
    return {name: job for name, job in config.items()
            if isinstance(job, dict) and "script" in job}


def test_gitlab_job_calls_the_pipeline_with_what_it_needs() -> None:
    jobs = gitlab_jobs()
    calls = [(job, line) for job in jobs.values() for line in job["script"]
             if "examples/ci/pipeline.sh" in line]
    assert len(calls) == 1
    job, line = calls[0]
    given = set(job.get("variables", {})) | assigned(line)
    assert set(required_variables()) <= given
    assert job["variables"]["REGISTRY"] == "$CI_REGISTRY"
    assert "CI_REGISTRY_IMAGE" in line  # IMAGE: the project's repository
    assert job["artifacts"]["paths"] == ["build/metadata.json"]
    assert job["artifacts"]["reports"]["dotenv"] == "build/image.env"


def test_gitlab_logs_in_from_a_ci_secret() -> None:
    job = next(iter(gitlab_jobs().values()))
    logins = [line for line in job["before_script"] if "stepbuild login" in line]
    assert len(logins) == 1
    assert re.fullmatch(r"""printf '%s' "\$CI_REGISTRY_PASSWORD" \| stepbuild login """
                        r"""--username "\$CI_REGISTRY_USER" --password-stdin "\$CI_REGISTRY\"""",
                        logins[0])
    # no secret of its own: passwords and tokens come from the CI's settings
    assert not [k for k in job["variables"] if re.search("PASSWORD|TOKEN|SECRET", k)]
    assert any(line.startswith("pip install") for line in job["before_script"])


def github_workflow() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the workflow, its one job)."""
    workflow = yaml.safe_load(GITHUB.read_text())
    # YAML 1.1 (PyYAML) reads the bare key `on` as True; GitHub reads it as "on"
    assert "push" in workflow[True] and workflow["permissions"]["packages"] == "write"
    (job,) = workflow["jobs"].values()
    return workflow, job


def test_github_workflow_calls_the_pipeline_with_what_it_needs() -> None:
    workflow, job = github_workflow()
    calls = [step for step in job["steps"] if "examples/ci/pipeline.sh" in step.get("run", "")]
    assert len(calls) == 1
    step = calls[0]
    given = (set(workflow.get("env", {})) | set(job.get("env", {})) | set(step.get("env", {}))
             | assigned(step["run"]))
    assert set(required_variables()) <= given
    assert step["env"]["REVISION"] == "${{ github.sha }}"
    assert step["run"].startswith("sudo -E ")  # root, with the environment above
    uploads = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert [s["with"]["path"] for s in uploads] == ["build/metadata.json"]
    after = job["steps"][job["steps"].index(step) + 1:]
    assert any("steps.build.outputs.ref" in str(s.get("env")) for s in after)


def test_github_logs_in_from_a_secret() -> None:
    _, job = github_workflow()
    logins = [s for s in job["steps"] if "stepbuild login" in s.get("run", "")]
    assert len(logins) == 1
    login = logins[0]
    assert "--password-stdin" in login["run"]
    assert not re.search(r"(\s-p\s|--password[ =])", login["run"])
    assert login["env"]["REGISTRY_PASSWORD"] == "${{ secrets.GITHUB_TOKEN }}"
    for step in job["steps"]:
        for key, value in step.get("env", {}).items():
            if re.search("PASSWORD|TOKEN|SECRET", key):
                assert str(value).startswith("${{ secrets."), (key, value)


def ci_commands() -> list[str]:
    """Every shell command of the two CI files (GitLab's lines, GitHub's `run` blocks)."""
    job = next(iter(gitlab_jobs().values()))
    _, github_job = github_workflow()
    return [*job["before_script"], *job["script"], *job["after_script"],
            *(step["run"] for step in github_job["steps"] if "run" in step)]


def test_the_shell_passes_shellcheck(tmp_path: Path) -> None:
    """pipeline.sh, the sample's scripts, and every command of the CI files (bash on both)."""
    commands = tmp_path / "ci-commands.sh"
    commands.write_text("#!/bin/bash\n" + "\n".join(ci_commands()) + "\n")
    scripts = [PIPELINE, *sorted((EXAMPLE / "app" / "src").glob("*.sh")), commands]
    done = subprocess.run(["shellcheck", "--shell=bash", *map(str, scripts)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + commands.read_text()


@pytest.fixture(autouse=True, scope="module")
def _tools() -> Iterator[None]:
    for tool in ("skopeo", "git", "shellcheck"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} missing: run scripts/setup.sh")
    yield
