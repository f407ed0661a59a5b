"""`--isolation=chroot`: builds where no namespace can be made (issue 13, "Unprivileged
containers"; docs/security.md "Chroot isolation", family G).

As root, `--isolation=chroot` builds the samples and an ordinary Stepfile to the digests the
namespaced mode gives (SOURCE_DATE_EPOCH set). Then in a process that really cannot make a
namespace — no CAP_SYS_ADMIN in its bounding set (setpriv) and a seccomp filter refusing
unshare, setns and clone with CLONE_NEW* flags (tests/integration/no_namespaces.c) — the test
first shows that `unshare` fails there, then that `--isolation=namespaces` is refused in one
line, that `auto` picks chroot and says so, and that the image is the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stepbuild.store.gc import check
from stepbuild.store.store import Store
from tests.integration.builds import (
    EPOCH,
    PROJECT,
    Stepbuild,
    assert_clear_error,
    rootfs_tarball,
    store_with_base,
    write_context,
)

pytestmark = pytest.mark.root

CHROOT = "--isolation=chroot"
NAMESPACES = "--isolation=namespaces"
WRAPPER_SOURCE = Path(__file__).with_name("no_namespaces.c")
# The capabilities of a podman container's root by default (no CAP_SYS_ADMIN, no CAP_MKNOD,
# no CAP_NET_RAW, no CAP_AUDIT_WRITE): what a CI runner's pod gives.
PODMAN_CAPS = ("chown", "dac_override", "fowner", "fsetid", "kill", "net_bind_service",
               "setfcap", "setgid", "setpcap", "setuid", "sys_chroot")

# An ordinary Stepfile: RUN, COPY (--chown, --from), WORKDIR, USER, a `#!` heredoc, files
# removed, a directory made again, a hard link, a mode change.
ORDINARY = """\
FROM base AS tools
RUN mkdir -p /opt/tool && echo 'v1' > /opt/tool/VERSION && chmod 0750 /opt/tool

FROM base
COPY --from=tools /opt/tool /opt/tool
WORKDIR /srv/app
COPY --chown=1000:1000 app.txt ./
RUN <<EOF
#!/bin/sh
echo "from a script" > /srv/app/script.out
EOF
RUN rm -rf /etc/hosts.d && mkdir /usr/share && echo doc > /usr/share/README \\
    && ln /usr/share/README /usr/share/README.link && chmod 0600 /etc/group
RUN echo "app:x:1000:1000::/srv/app:/bin/sh" >> /etc/passwd && rm /bin/vi && chown 1000 /srv/app
USER app
RUN echo "I am $(id -u)" > /srv/app/whoami
CMD ["cat", "/srv/app/whoami"]
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chroot")


@pytest.fixture(scope="module")
def ns_store(work: Path) -> Stepbuild:
    return store_with_base(work, "namespaced", NAMESPACES, *EPOCH)


@pytest.fixture(scope="module")
def chroot_store(work: Path) -> Stepbuild:
    return store_with_base(work, "chrooted", CHROOT, *EPOCH)


def digest(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.strip().splitlines()[-1]


def sample(work: Path, name: str) -> Path:
    """A copy of samples/<name> with the busybox rootfs its Stepfile may ADD."""
    target = work / f"sample-{name}"
    if not target.exists():
        shutil.copytree(PROJECT / "samples" / name, target)
        rootfs_tarball(target)
    return target


# A directory removed and made again: overlay makes it opaque; so does chroot mode where it
# may write overlay's trusted.* xattr (CAP_SYS_ADMIN), else it records the same tree with
# whiteouts (layers/treediff.py).
REPLACED = """\
FROM base
RUN mkdir -p /usr/share/old && echo old > /usr/share/old/f && echo keep > /usr/share/keep
RUN rm -rf /usr/share && mkdir -p /usr/share/again && echo again > /usr/share/again/f
"""


# --- as root: the same images -------------------------------------------------------------------


def test_the_base_image_is_the_same_either_way(ns_store: Stepbuild,
                                               chroot_store: Stepbuild) -> None:
    assert ns_store("inspect", "base").stdout == chroot_store("inspect", "base").stdout
    assert check(Store(chroot_store.root), deep=True) == []


@pytest.mark.parametrize("name", ["hello", "multistage"])
def test_a_sample_builds_to_the_same_digest(name: str, work: Path, ns_store: Stepbuild,
                                            chroot_store: Stepbuild) -> None:
    context = sample(work, name)
    namespaced = ns_store.build(context, NAMESPACES, *EPOCH, "-t", name)
    chrooted = chroot_store.build(context, CHROOT, *EPOCH, "-t", name)
    assert chrooted.stderr.splitlines()[0] == "isolation: chroot"
    assert namespaced.stderr.splitlines()[0] == "isolation: namespaces"
    assert digest(chrooted) == digest(namespaced)


def test_an_ordinary_stepfile_builds_to_the_same_digest_and_runs(
        work: Path, ns_store: Stepbuild, chroot_store: Stepbuild) -> None:
    context = write_context(work / "ordinary", ORDINARY, {"app.txt": "app\n"})
    namespaced = ns_store.build(context, NAMESPACES, *EPOCH, "-t", "ordinary")
    chrooted = chroot_store.build(context, CHROOT, *EPOCH, "-t", "ordinary")
    assert digest(chrooted) == digest(namespaced)
    assert chroot_store("run", CHROOT, "ordinary").stdout == "I am 1000\n"
    assert chroot_store("run", CHROOT, "ordinary", "cat", "/srv/app/script.out"
                        ).stdout == "from a script\n"
    assert check(Store(chroot_store.root), deep=True) == []


def test_a_replaced_directory_is_opaque_as_with_overlay(
        work: Path, ns_store: Stepbuild, chroot_store: Stepbuild) -> None:
    context = write_context(work / "replaced", REPLACED)
    namespaced = ns_store.build(context, NAMESPACES, *EPOCH, "-t", "replaced")
    chrooted = chroot_store.build(context, CHROOT, *EPOCH, "-t", "replaced")
    assert digest(chrooted) == digest(namespaced)


def test_the_chroot_notice_comes_once_per_build(work: Path, chroot_store: Stepbuild) -> None:
    context = write_context(work / "notice", "FROM base\nRUN true > /one\nRUN true > /two\n")
    result = chroot_store.build(context, CHROOT, "--no-cache")
    notices = [line for line in result.stderr.splitlines() if "no /proc" in line]
    assert len(notices) == 1 and "the host's network" in notices[0]


def test_what_a_chrooted_step_sees(work: Path, chroot_store: Stepbuild) -> None:
    """No /proc, a /dev holding only a regular /dev/null, our /etc/hostname; none of it
    reaches the layer."""
    context = write_context(work / "sees", """\
FROM base
RUN test ! -e /proc/self && echo "no proc" && ls -A /dev && test -f /dev/null \\
    && cat /etc/hostname && wc -c < /dev/null && (sleep 0 &) && echo junk > /dev/null \\
    && echo more > /etc/hosts
""")
    result = chroot_store.build(context, CHROOT, "--no-cache", "-t", "sees")
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("|")]
    assert lines == ["| no proc", "| null", "| stepbuild", "| 0"], result.stderr
    assert chroot_store("run", CHROOT, "sees", "ls", "-A", "/dev").stdout == "null\n"
    assert "more" not in chroot_store("run", CHROOT, "sees", "cat", "/etc/hosts").stdout


def test_a_failing_step_is_located_with_its_last_lines_and_leaves_nothing(
        work: Path, chroot_store: Stepbuild) -> None:
    context = write_context(work / "fails", "FROM base\nRUN echo before && echo oops && exit 3\n")
    result = chroot_store.build(context, CHROOT, check=False)
    assert_clear_error(result, 1, "Stepfile:2: step failed with exit code 3", "| oops")
    assert check(Store(chroot_store.root), deep=True) == []
    assert os.listdir(chroot_store.root / "tmp") == []


def test_what_a_step_leaves_running_is_killed(work: Path, chroot_store: Stepbuild) -> None:
    """No PID namespace ends with the step: its leftovers are killed by the child (a
    subreaper), or the build would wait on the output pipe they hold."""
    context = write_context(work / "daemon",
                            "FROM base\nRUN (sleep 4242 &) && echo started\n")
    result = chroot_store.build(context, CHROOT, "--no-cache")
    assert "| started" in result.stderr
    left = subprocess.run(["pgrep", "-f", "sleep 4242"], capture_output=True, text=True)
    assert left.stdout == ""


@pytest.mark.parametrize(("stepfile", "words"), [
    ("FROM base\nRUN --mount=type=tmpfs,target=/t true\n",
     ("Stepfile:2:1: RUN --mount needs a mount", "--isolation=chroot")),
    ("FROM base\nRUN --network=none true\n",
     ("Stepfile:2:1: --network=none needs a network namespace",)),
])
def test_what_chroot_cannot_do_is_refused_in_one_located_line(
        stepfile: str, words: tuple[str, ...], work: Path, chroot_store: Stepbuild) -> None:
    context = write_context(work / f"refused-{len(stepfile)}", stepfile)
    result = chroot_store.build(context, CHROOT, check=False)
    assert_clear_error(result, 1, *words)
    assert os.listdir(chroot_store.root / "tmp") == []


def test_chrooted_step_cannot_chroot_out_or_make_devices(work: Path,
                                                         chroot_store: Stepbuild) -> None:
    context = write_context(work / "caps", """\
FROM base
RUN if mknod /disk b 8 0; then echo MKNOD-WORKED; fi; \\
    if chroot / true; then echo CHROOT-WORKED; fi; echo checked
""")
    result = chroot_store.build(context, CHROOT, "--no-cache")
    assert "| checked" in result.stderr
    assert "| mknod: /disk: Operation not permitted" in result.stderr
    assert "Operation not permitted" in result.stderr.split("| chroot:")[1]
    assert "| MKNOD-WORKED" not in result.stderr and "| CHROOT-WORKED" not in result.stderr


# --- where no namespace can be made -------------------------------------------------------------


@pytest.fixture(scope="module")
def locked_down(work: Path) -> list[str]:
    """The command prefix of a process like root in an unprivileged pod: podman's default
    capabilities (no CAP_SYS_ADMIN) and a seccomp filter denying every namespace."""
    if shutil.which("gcc") is None or shutil.which("setpriv") is None:
        pytest.fail("gcc and setpriv (util-linux) are needed: run scripts/setup.sh")
    wrapper = work / "no_namespaces"
    subprocess.run(["gcc", "-O1", "-o", str(wrapper), str(WRAPPER_SOURCE)], check=True)
    keep = ",".join(f"+{cap}" for cap in PODMAN_CAPS)
    return ["setpriv", "--bounding-set", f"-all,{keep}", "--inh-caps", "-all", str(wrapper)]


def in_locked_down(prefix: list[str], store: Path, *args: str
                   ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STEPBUILD_ROOT": str(store), "PYTHONPATH": str(PROJECT)}
    return subprocess.run([*prefix, sys.executable, "-m", "stepbuild", *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_namespaces_are_really_impossible_there(locked_down: list[str]) -> None:
    for command in (["unshare", "--mount", "true"], ["unshare", "--user", "--map-root-user",
                                                     "--mount", "true"],
                    ["unshare", "--net", "true"]):
        result = subprocess.run([*locked_down, *command], capture_output=True, text=True)
        assert result.returncode != 0, command
        assert "Operation not permitted" in result.stderr, result.stderr
    status = subprocess.run([*locked_down, "grep", "CapEff", "/proc/self/status"],
                            capture_output=True, text=True, check=True).stdout
    assert not int(status.split()[1], 16) & (1 << 21)  # CAP_SYS_ADMIN


def test_namespaces_asked_for_there_are_refused_in_one_line(locked_down: list[str],
                                                            work: Path) -> None:
    context = write_context(work / "refusal", "FROM scratch\nCOPY f /f\n", {"f": "x"})
    result = in_locked_down(locked_down, work / "refusal-store", "build", NAMESPACES,
                            str(context))
    assert_clear_error(result, 1, "--isolation=namespaces is not possible here",
                       "CAP_SYS_ADMIN", "--isolation=auto")
    assert len(result.stderr.splitlines()) == 2  # the error and its hint


def test_auto_picks_chroot_there_and_builds_the_same_image(
        locked_down: list[str], work: Path, ns_store: Stepbuild) -> None:
    store = work / "locked-store"
    base = in_locked_down(locked_down, store, "build", "-q", "-t", "base", *EPOCH,
                          str(work / "base-context"))
    assert base.returncode == 0, base.stderr
    context = write_context(work / "locked-ordinary", ORDINARY, {"app.txt": "app\n"})
    result = in_locked_down(locked_down, store, "build", "-v", *EPOCH, "-t", "ordinary",
                            str(context))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "isolation: chroot"
    assert "namespaces unavailable: no CAP_SYS_ADMIN" in lines[1]
    expected = ns_store.build(context, NAMESPACES, *EPOCH, "-t", "ordinary")
    assert digest(result) == digest(expected)
    ran = in_locked_down(locked_down, store, "run", "ordinary")
    assert (ran.returncode, ran.stdout) == (0, "I am 1000\n"), ran.stderr


def test_a_replaced_directory_there_gives_the_same_tree(
        locked_down: list[str], work: Path, ns_store: Stepbuild) -> None:
    """Without CAP_SYS_ADMIN no trusted.* xattr can be written: the store's layer dirs keep
    overlay's opaque mark in user.overlay.opaque (as rootless ones do), so a replaced
    directory is opaque, as overlay makes it: the same layers, the same image digest, the
    same flattened tree as the namespaced build's."""
    store = work / "locked-store"
    context = write_context(work / "locked-replaced", REPLACED)
    result = in_locked_down(locked_down, store, "build", "-q", *EPOCH, "-t", "replaced",
                            "--output", f"type=tar,dest={work / 'locked.tar'}", str(context))
    assert result.returncode == 0, result.stderr
    namespaced = ns_store.build(context, NAMESPACES, "-q", *EPOCH, "-t", "replaced",
                                "--output", f"type=tar,dest={work / 'namespaced.tar'}")
    assert result.stdout.strip() == namespaced.stdout.strip()
    assert (work / "locked.tar").read_bytes() == (work / "namespaced.tar").read_bytes()
    assert (store / "overlay-xattrs").read_text() == "user\n"


def test_an_image_with_an_opaque_dir_loads_and_serves_as_a_base_there(
        locked_down: list[str], work: Path, ns_store: Stepbuild) -> None:
    """A loaded layer's opaque dir (`.wh..wh..opq`) is kept as user.overlay.opaque where
    trusted.* cannot be written, and chroot isolation's copy honours it: the directory
    the image replaced shows only its new content."""
    context = write_context(work / "opaque-image", REPLACED)
    archive = work / "opaque.tar"
    ns_store.build(context, NAMESPACES, *EPOCH, "-t", "opaque",
                   "--output", f"type=oci,dest={archive},name=opaque:1")
    store = work / "locked-load-store"
    loaded = in_locked_down(locked_down, store, "load", "-i", str(archive))
    assert loaded.returncode == 0, loaded.stderr
    listing = write_context(work / "opaque-child",
                            "FROM opaque:1\nRUN ls -A /usr/share > /listed\n")
    built = in_locked_down(locked_down, store, "build", "-t", "child", str(listing))
    assert built.returncode == 0, built.stderr
    ran = in_locked_down(locked_down, store, "run", "child", "cat", "/listed")
    assert ran.stdout == "again\n", ran.stderr  # not `keep` and `old`: the mark held
    assert ns_store.run("opaque", "ls", "-A", "/usr/share") == "again\n"
