"""ARG scoping, ENV/WORKDIR/USER/SHELL expansion, and ignore files, in real builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.builds import Stepbuild, base_image, step_lines, write_context


@pytest.fixture()
def sb(tmp_path: Path) -> Stepbuild:
    stepbuild = Stepbuild(tmp_path / "store")
    base_image(stepbuild, tmp_path)
    return stepbuild


def out(sb: Stepbuild, context: Path, *args: str) -> str:
    """Build and return the image's /out file."""
    sb.build(context, "-t", "t", *args)
    return sb.run("t", "cat", "/out")


def test_global_args_reach_from_and_stages_only_when_redeclared(sb: Stepbuild, tmp_path: Path
                                                              ) -> None:
    context = write_context(tmp_path / "ctx", (
        "ARG BASE=base\nARG V=global\nFROM ${BASE}\nRUN echo \"[$V]\" > /out\n"
        "FROM $BASE\nARG V\nCOPY --from=0 /out /first\nRUN cat /first > /out && "
        "echo \"[$V]\" >> /out\n"))
    assert out(sb, context) == "[]\n[global]\n"
    assert out(sb, context, "--build-arg", "V=given") == "[]\n[given]\n"


def test_build_arg_from_environment_and_from_a_file(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\nARG A=default\nARG B\nRUN echo \"$A $B\" > /out\n"))
    result = sb("build", "-t", "t", "--build-arg", "B=x", "--build-arg", "A", str(context),
                env={"A": "env-a"})
    assert result.returncode == 0 and sb.run("t", "cat", "/out") == "env-a x\n"
    arg_file = tmp_path / "args.env"
    arg_file.write_text("# comment\nA=file-a\n\nB=file-b\n")
    assert out(sb, context, "--build-arg-file", str(arg_file)) == "file-a file-b\n"
    assert out(sb, context, "--build-arg-file", str(arg_file),
               "--build-arg", "B=flag") == "file-a flag\n"


def test_arg_names_are_expanded(sb: Stepbuild, tmp_path: Path) -> None:
    # BuildKit expands an ARG's name as well as its default (issue 11, item 3).
    context = write_context(tmp_path / "ctx", (
        "FROM base\nENV src=file3\nARG ${src}=default\nRUN echo \"[$file3]\" > /out\n"))
    assert out(sb, context) == "[default]\n"
    assert out(sb, context, "--build-arg", "file3=given") == "[given]\n"


def test_unused_build_arg_warns(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", "FROM base\nARG USED\n")
    result = sb.build(context, "--build-arg", "USED=1", "--build-arg", "TYPO=2")
    assert "build-args TYPO were not consumed" in result.stderr
    assert "USED" not in result.stderr.split("not consumed")[0].split("build-args")[-1]


def test_changed_arg_misses_from_its_first_use(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\nRUN echo before > /before\nARG V=1\nRUN echo \"$V\" > /out\n"
        "RUN echo later > /later\n"))
    sb.build(context)
    result = sb.build(context, "--build-arg", "V=2")
    assert step_lines(result.stderr) == ["CACHED", "DONE", "DONE"]


def test_proxy_args_need_no_declaration_and_never_miss_the_cache(sb: Stepbuild,
                                                                 tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", "FROM base\nRUN echo \"$http_proxy\" > /out\n")
    first = sb.build(context, "-t", "t", "--build-arg", "http_proxy=http://proxy:3128")
    assert sb.run("t", "cat", "/out") == "http://proxy:3128\n"
    assert "not consumed" not in first.stderr
    second = sb.build(context, "--build-arg", "http_proxy=http://other:3128")
    assert step_lines(second.stderr) == ["CACHED"]


def test_platform_args(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "ARG TARGETPLATFORM\nFROM base\nARG TARGETARCH\nARG TARGETOS\n"
        "RUN echo \"$TARGETOS/$TARGETARCH\" > /out\n"))
    assert out(sb, context) == "linux/amd64\n"


def test_env_workdir_user_shell_expansion(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", (
        "FROM base\nARG NAME=app\nENV ROOT=/srv\nENV DIR=$ROOT/$NAME OLD=$DIR\n"
        "WORKDIR $DIR\nWORKDIR sub\nWORKDIR ../other\n"
        "RUN pwd > /out && echo \"[$OLD] $DIR\" >> /out\n"
        'SHELL ["/bin/sh", "-ec"]\nRUN echo shell=$0 >> /out\n'
        "USER 1234:2345\nRUN id -u >> /tmp/ids && id -g >> /tmp/ids\n"
        "USER root\nRUN cat /tmp/ids >> /out\n"))
    assert out(sb, context) == "/srv/app/other\n[] /srv/app\nshell=/bin/sh\n1234\n2345\n"


def test_ignore_files(sb: Stepbuild, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", "FROM base\nCOPY . /ctx/\nRUN ls -a /ctx > /out\n",
                            {"keep.txt": "k", "skip.log": "s", "build/x": "x",
                             "important.log": "i", ".dockerignore": "*.log\nbuild\n"})
    listing = out(sb, context).split()
    assert listing == [".", "..", ".dockerignore", "Stepfile", "keep.txt"]
    (context / ".stepignore").write_text("*.log\n!important.log\n")
    listing = out(sb, context).split()
    assert "important.log" in listing and "skip.log" not in listing and "build" in listing
    (context / "Stepfile.stepignore").write_text("keep.txt\n")
    listing = out(sb, context).split()
    assert "keep.txt" not in listing and "skip.log" in listing
    # A change to an ignored file never misses the cache.
    (context / "keep.txt").write_text("changed")
    assert step_lines(sb.build(context).stderr) == ["CACHED", "CACHED"]


def test_run_network_modes(sb: Stepbuild, tmp_path: Path) -> None:
    # /proc/net/dev lists the interfaces the step sees: only lo in a new network namespace,
    # lo and slirp4netns's tap0 on the default (private) network, the host's own with host.
    context = write_context(tmp_path / "ctx", (
        "FROM base\n"
        "RUN --network=none tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' > /none\n"
        "RUN --network=host tail -n +3 /proc/net/dev | wc -l > /host\n"
        "RUN tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort > /default\n"))
    sb.build(context, "-t", "net", "--allow", "network.host")
    assert sb.run("net", "cat", "/none") == "lo\n"
    host_interfaces = int(sb.run("net", "cat", "/host"))
    assert host_interfaces == len(Path("/proc/net/dev").read_text().splitlines()) - 2
    assert sb.run("net", "cat", "/default") == "lo\ntap0\n"
    sb.build(context, "--network", "none", "-t", "all-none", "--no-cache",
             "--allow", "network.host")
    assert sb.run("all-none", "cat", "/default") == "lo\n"
