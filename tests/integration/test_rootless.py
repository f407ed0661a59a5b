"""Rootless stepbuild, for real: normal users the test makes build, run, push, export, load,
pull, share a team cache, prune and check, each through a user namespace of its own
(stepbuild/sandbox/userns.py), and get the image digest root gets.

Made here, as root, and removed at the end: two users (`useradd`), one with subordinate id
ranges written to /etc/subuid and /etc/subgid, one without any (useradd's automatic ranges
taken out); a Python both can run (a venv of Debian's /usr/bin/python3 with the project's
dependencies from pyproject.toml, and a copy of the `stepbuild` package, in a world-readable
temp dir: the project checkout and root's Python may sit under a 0700 /root); and
/dev/net/tun opened to users (0666, as udev makes it) for the private network, its mode
restored afterwards. Family G (RUN isolation) for the rootless mode.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.integration import registry_fixture
from tests.integration.builds import EPOCH, PROJECT, Stepbuild, rootfs_tarball, step_lines
from tests.integration.registry_fixture import RunningRegistry

plain_registry = registry_fixture.plain_registry

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: every user may run it
TUN = Path("/dev/net/tun")
FUSE = Path("/dev/fuse")
REFUSER_SOURCE = Path(__file__).with_name("refuse_overlay.c")
RANGE_COUNT = 65536
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The sample: RUN, COPY, COPY --chown, a multi-stage COPY --from (of a file a RUN chowned),
# a cache mount, a secret, a deletion (a whiteout) and a new directory over an old one (opaque).
STEPFILE = """\
FROM scratch AS base
ADD busybox-rootfs.tar /
ENV PATH=/bin:/usr/bin:/sbin:/usr/sbin

FROM base AS tools
RUN mkdir /tools && echo tool > /tools/tool && chown -R 7:7 /tools

FROM base
COPY message.txt /app/message.txt
COPY --chown=1000:1000 message.txt /app/owned.txt
COPY --from=tools /tools /app/tools
RUN --mount=type=cache,target=/cache echo run >> /cache/runs && cp /cache/runs /app/runs
RUN --mount=type=secret,id=token wc -c < /run/secrets/token > /app/token-length
RUN echo made > /app/made && rm /etc/group && rm -rf /root && mkdir /root && touch /root/new
CMD ["cat", "/app/made"]
"""
NO_CHOWN = """\
FROM scratch
ADD busybox-rootfs.tar /
RUN echo hi > /hi && mkdir -p /var/x && echo x > /var/x/f
COPY message.txt /m
"""
CHOWN_5 = "FROM scratch\nADD busybox-rootfs.tar /\nCOPY --chown=5:5 message.txt /m\n"


@dataclass
class User:
    """A normal user made for the test and its way to run stepbuild."""

    name: str
    uid: int
    home: Path
    python: str
    source: Path
    first_subid: int | None  # where container id 1 maps to, None without ranges

    def __call__(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
                 cwd: Path | None = None, wrap: tuple[str, ...] = ()
                 ) -> subprocess.CompletedProcess[str]:
        """`python -m stepbuild ARGS` as this user, in a clean environment (no STEPBUILD_ROOT:
        the store is the default one unless `env` says otherwise); `wrap`: a command (run as
        root) that runs runuser's command line."""
        base = {"HOME": str(self.home), "USER": self.name, "PATH": PATH,
                "PYTHONPATH": str(self.source), "LANG": "C.UTF-8"}
        argv = [*wrap, "runuser", "-u", self.name, "--", "env", "-i",
                *(f"{k}={v}" for k, v in {**base, **(env or {})}.items()),
                self.python, "-m", "stepbuild", *args]
        result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                cwd=cwd or self.home, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"{self.name}: stepbuild {' '.join(args)} failed"
                                 f" ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def digest(self, *args: str, env: dict[str, str] | None = None,
               wrap: tuple[str, ...] = ()) -> str:
        return self(*args, env=env, wrap=wrap).stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def shared_dir() -> Iterator[Path]:
    """A temp dir every user may read (tmp_path's parents are root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="stepbuild-rootless-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="session")
def user_python(shared_dir: Path) -> tuple[str, Path]:
    """(a python any user can run with stepbuild's dependencies, a copy of the source)."""
    venv = shared_dir / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
    with open(PROJECT / "pyproject.toml", "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", *dependencies], check=True)
    source = shared_dir / "src"
    # symlinks followed: stepbuild/grammar is a link to the top-level grammar/
    shutil.copytree(PROJECT / "stepbuild", source / "stepbuild",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a+rX", str(shared_dir)], check=True)
    return str(venv / "bin" / "python"), source


def _free_range(files: tuple[Path, ...]) -> int:
    """The first id past every range /etc/subuid and /etc/subgid give anyone."""
    end = 100000
    for path in files:
        for line in path.read_text().splitlines() if path.exists() else ():
            fields = line.split(":")
            if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                end = max(end, int(fields[1]) + int(fields[2]))
    return end


def _set_subids(name: str, start: int | None) -> None:
    """Give `name` the range start..start+RANGE_COUNT-1 (None: no range) in both files."""
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        lines = [line for line in (path.read_text().splitlines() if path.exists() else ())
                 if not line.startswith(f"{name}:")]
        if start is not None:
            lines.append(f"{name}:{start}:{RANGE_COUNT}")
        path.write_text("".join(f"{line}\n" for line in lines))


@contextmanager
def _made_user(python: tuple[str, Path], subids_from: int | None) -> Iterator[User]:
    name = f"sbrl{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    try:
        _set_subids(name, subids_from)  # also takes out the ranges useradd gave on its own
        entry = pwd.getpwnam(name)
        yield User(name, entry.pw_uid, Path(entry.pw_dir), python[0], python[1], subids_from)
    finally:
        _set_subids(name, None)
        # --force: a process of the user's left by a failed test must not keep its home
        subprocess.run(["userdel", "--remove", "--force", name], check=False,
                       capture_output=True)


@pytest.fixture(scope="module")
def ranged(user_python: tuple[str, Path]) -> Iterator[User]:
    """A user with 65536 subordinate uids and gids."""
    start = _free_range((Path("/etc/subuid"), Path("/etc/subgid")))
    with _made_user(user_python, start) as user:
        yield user


@pytest.fixture(scope="module")
def rangeless(user_python: tuple[str, Path]) -> Iterator[User]:
    """A user with no subordinate ids: a one-id map (0 -> the user)."""
    with _made_user(user_python, None) as user:
        yield user


@contextmanager
def device_mode(device: Path, mode: int) -> Iterator[None]:
    """`device` with `mode` for the block, then as it was."""
    before = device.stat().st_mode & 0o7777
    device.chmod(mode)
    try:
        yield
    finally:
        device.chmod(before)


def tun_mode(mode: int) -> AbstractContextManager[None]:
    """/dev/net/tun with `mode` for the block, then as it was."""
    return device_mode(TUN, mode)


@pytest.fixture(scope="module")
def open_tun() -> Iterator[None]:
    """slirp4netns, run by the user, opens /dev/net/tun: 0666 as udev makes it."""
    with tun_mode(0o666):
        yield


@pytest.fixture(scope="module")
def context(shared_dir: Path) -> Path:
    """The sample's context, readable by everyone, with the secret the build mounts."""
    directory = shared_dir / "context"
    directory.mkdir()
    rootfs_tarball(directory)
    (directory / "Stepfile").write_text(STEPFILE)
    (directory / "no-chown.Stepfile").write_text(NO_CHOWN)
    (directory / "chown5.Stepfile").write_text(CHOWN_5)
    (directory / "message.txt").write_text("built without root\n")
    subprocess.run(["chmod", "-R", "a+rX", str(directory)], check=True)
    return directory


def _secret(user: User, text: str = "s3cret-token") -> str:
    """A secret file only `user` may read; the --secret flag naming it."""
    path = user.home / "token"
    path.write_text(text)
    os.chown(path, user.uid, -1)
    path.chmod(0o600)
    return f"id=token,src={path}"


@pytest.fixture(scope="module")
def root_digests(shared_dir: Path, context: Path) -> dict[str, str]:
    """The digests root gets for the two Stepfiles (a store of root's own)."""
    sb = Stepbuild(shared_dir / "root-store")
    secret = shared_dir / "root-token"
    secret.write_text("s3cret-token")
    return {
        "app": sb.build(context, "-q", *EPOCH, "--secret", f"id=token,src={secret}",
                        "-t", "app").stdout.strip(),
        "plain": sb.build(context, "-q", *EPOCH, "-f", str(context / "no-chown.Stepfile"),
                          "-t", "plain").stdout.strip(),
    }


@pytest.fixture(scope="module")
def built(ranged: User, context: Path, open_tun: None) -> str:
    """The sample built by the user with ranges into its default store, tagged `app`."""
    return ranged.digest("build", "-q", *EPOCH, "--secret", _secret(ranged), "-t", "app",
                         str(context))


def _default_store(user: User) -> Path:
    return user.home / ".local" / "share" / "stepbuild"


def _layer_entries(store: Path, relative: str) -> list[Path]:
    """`relative` (a path in the image) in each of the store's layer dirs that holds it."""
    return [d / "diff" / relative for d in (store / "layers").iterdir()
            if (d / "diff" / relative).exists()]


def test_the_user_with_ranges_gets_roots_digest(built: str, root_digests: dict[str, str],
                                                ranged: User) -> None:
    assert built == root_digests["app"]
    store = _default_store(ranged)
    assert (store / "index.json").is_file()
    assert store.stat().st_uid == ranged.uid
    # Outside the namespace the layer dirs hold the mapped ids: container 1000 is the
    # user's 1000th subordinate id, container 0 the user.
    assert ranged.first_subid is not None
    owned = _layer_entries(store, "app/owned.txt")
    assert owned and all(p.stat().st_uid == ranged.first_subid + 999 for p in owned)
    made = _layer_entries(store, "app/made")
    assert made and all(p.stat().st_uid == ranged.uid for p in made)
    # The opaque /root of the last RUN is in the user xattr form overlay reads rootless.
    root_dirs = _layer_entries(store, "root/new")
    assert root_dirs
    assert os.getxattr(root_dirs[0].parent, "user.overlay.opaque") == b"y"


def test_the_user_with_ranges_runs_the_image(built: str, ranged: User) -> None:
    assert ranged("run", "app").stdout == "made\n"
    listing = ranged("run", "app", "sh", "-c", "ls -ln /app /app/tools; cat /app/token-length"
                     " /app/runs; id -u").stdout.split("\n")
    owners = {line.split()[-1]: line.split()[2:4] for line in listing if line.count(" ") > 4}
    assert owners["owned.txt"] == ["1000", "1000"]
    assert owners["message.txt"] == ["0", "0"]
    assert owners["tool"] == ["7", "7"]
    assert listing[-4:] == ["12", "run", "0", ""]
    assert "store is consistent" in ranged("check").stdout


def test_the_user_with_ranges_pushes_exports_loads_and_pulls(
        built: str, ranged: User, plain_registry: RunningRegistry) -> None:
    ref = f"{plain_registry.host}/rootless/app:1"
    ranged("push", "-q", "app", ref)
    manifest = requests.get(f"{plain_registry.url}/v2/rootless/app/manifests/1", timeout=10,
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert manifest.status_code == 200
    archive = ranged.home / "app.tar"
    ranged("export", "app", "-o", f"type=docker,dest={archive}")
    loading = {"XDG_DATA_HOME": str(ranged.home / "loaded")}
    assert "Loaded image: app:latest" in ranged("load", "-i", str(archive), env=loading).stdout
    assert ranged("run", "app:latest", env=loading).stdout == "made\n"
    assert (ranged.home / "loaded" / "stepbuild" / "index.json").is_file()
    pulling = {"XDG_DATA_HOME": str(ranged.home / "pulled")}
    ranged("pull", "-q", ref, env=pulling)
    assert ranged("run", ref, "cat", "/app/tools/tool", env=pulling).stdout == "tool\n"
    for env in (loading, pulling):
        assert "store is consistent" in ranged("check", "--deep", env=env).stdout


def test_the_user_with_ranges_shares_a_team_cache(
        built: str, ranged: User, context: Path, plain_registry: RunningRegistry) -> None:
    local, remote = ranged.home / "team-cache", f"{plain_registry.host}/rootless/cache"
    secret = _secret(ranged)
    ranged("build", "-q", *EPOCH, "--secret", secret,
           "--cache-to", f"type=local,dest={local},mode=max",
           "--cache-to", f"type=registry,ref={remote},mode=max", str(context))
    for name, source in (("from-dir", f"type=local,src={local}"),
                         ("from-registry", f"type=registry,ref={remote}")):
        env = {"XDG_DATA_HOME": str(ranged.home / name)}  # an empty store
        result = ranged("build", *EPOCH, "--secret", secret, "--cache-from", source,
                        str(context), env=env)
        outcomes = [outcome for label in ("base", "tools", "2") for outcome in
                    step_lines(result.stderr, label)]
        assert len(outcomes) == 8 and set(outcomes) == {"CACHED"}, result.stderr
        assert result.stdout.strip() == built


def test_a_root_builds_registry_cache_is_every_step_cached_for_a_rootless_colleague(
        ranged: User, context: Path, shared_dir: Path, plain_registry: RunningRegistry,
        open_tun: None) -> None:
    """The team-cache scenario across modes: A, root on the host, builds and exports a
    registry cache (mode=max); B, a normal user, builds from an empty store with it as
    --cache-from: every step CACHED, A's digest."""
    remote = f"{plain_registry.host}/across-modes/cache"
    secret = shared_dir / "root-token"
    secret.write_text("s3cret-token")
    root = Stepbuild(shared_dir / "root-cache-store")
    exported = root.build(context, "-q", *EPOCH, "--secret", f"id=token,src={secret}",
                          "--cache-to", f"type=registry,ref={remote},mode=max")
    env = {"XDG_DATA_HOME": str(ranged.home / "from-root")}  # an empty store
    result = ranged("build", *EPOCH, "--secret", _secret(ranged), "--cache-from",
                    f"type=registry,ref={remote}", str(context), env=env)
    assert result.stderr.splitlines()[0] == "isolation: userns (rootless, ids from /etc/subuid)"
    outcomes = [outcome for label in ("base", "tools", "2") for outcome in
                step_lines(result.stderr, label)]
    assert len(outcomes) == 8 and set(outcomes) == {"CACHED"}, result.stderr
    assert result.stdout.strip() == exported.stdout.strip()


def test_the_user_without_ranges_builds_what_needs_no_chown(
        rangeless: User, context: Path, root_digests: dict[str, str], open_tun: None) -> None:
    digest = rangeless.digest("build", "-q", *EPOCH, "-f", str(context / "no-chown.Stepfile"),
                              "-t", "plain", str(context))
    assert digest == root_digests["plain"]
    assert rangeless("run", "plain", "sh", "-c", "cat /hi; id").stdout == (
        "hi\nuid=0(root) gid=0(root) groups=0(root)\n")
    assert "store is consistent" in rangeless("check").stdout


def test_the_user_without_ranges_gets_one_line_for_a_chown(rangeless: User,
                                                           context: Path) -> None:
    result = rangeless("build", "-q", "-f", str(context / "chown5.Stepfile"), str(context),
                       check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("stepbuild: error: ")
    assert "--chown=5:5" in errors[0] and "/etc/subuid" in errors[0]


def test_no_access_to_the_tun_device_is_one_line_and_network_none_still_works(
        ranged: User, context: Path) -> None:
    with tun_mode(0o600):
        result = ranged("build", "-q", "--no-cache", "-f", str(context / "no-chown.Stepfile"),
                        str(context), check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert f"needs {TUN} readable and writable by your user" in result.stderr
        assert "--network none" in result.stderr
        ranged("build", "-q", "--no-cache", "--network", "none", "-f",
               str(context / "no-chown.Stepfile"), str(context))


def test_limits_without_a_delegated_cgroup_are_refused_in_one_line(
        ranged: User, context: Path, open_tun: None) -> None:
    result = ranged("build", "-q", "--no-cache", "--memory", "64m", "-f",
                    str(context / "no-chown.Stepfile"), str(context), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot apply the resource limits" in result.stderr
    assert "delegated subtree" in result.stderr


def test_prune_removes_what_only_the_namespace_may_remove(built: str, ranged: User) -> None:
    """Layer dirs hold directories of the user's subordinate ids (/tools is 7:7): the
    user cannot remove what is in them outside the namespace; rmi + prune (inside) can."""
    store = _default_store(ranged)
    owned = _layer_entries(store, "tools/tool")  # the tools stage's layer
    assert owned
    outside = subprocess.run(["runuser", "-u", ranged.name, "--", "rm", "-f", str(owned[0])],
                             capture_output=True, text=True, check=False)
    assert outside.returncode != 0 and "Permission denied" in outside.stderr
    ranged("rmi", "app")
    assert "removed" in ranged("prune", "-f", "--filter", "until=0s").stdout
    assert not any(p.exists() for p in owned)
    assert "store is consistent" in ranged("check").stdout


def test_the_user_without_ranges_gets_one_line_for_an_image_with_other_owners(
        rangeless: User, shared_dir: Path, root_digests: dict[str, str]) -> None:
    """root's `app` holds files of 1000:1000 and 7:7: loading it cannot give them owners, and
    leaves no half-applied layer behind."""
    archive = shared_dir / "root-app.tar"
    Stepbuild(shared_dir / "root-store")("export", "app", "-o", f"type=docker,dest={archive}")
    archive.chmod(0o644)
    env = {"XDG_DATA_HOME": str(rangeless.home / "loading")}
    result = rangeless("load", "-i", str(archive), env=env, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and "/etc/subuid" in errors[0], result.stderr
    assert "only 0:0 is mapped" in errors[0]
    assert "store is consistent" in rangeless("check", env=env).stdout


# --- fuse-overlayfs, where the kernel refuses overlay in the user namespace -----------------
#
# This kernel mounts overlay rootless (userxattr, Linux >= 5.11), so the refusal is made here:
# refuse_overlay.c runs the user's stepbuild under a seccomp filter whose supervisor fails
# every fsopen("overlay") and mount(2) of type overlay with EPERM (what Linux < 5.11 answers
# in a user namespace) or EINVAL, and lets every other mount through — FUSE's included.

FUSE_LINE = "overlay: fuse-overlayfs (the kernel refused overlay in a user namespace: {})"


@pytest.fixture(scope="module")
def refuser(shared_dir: Path) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed: run scripts/setup.sh")
    program = shared_dir / "refuse_overlay"
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(program), str(REFUSER_SOURCE)], check=True)
    return program


@pytest.fixture(scope="module")
def open_fuse() -> Iterator[None]:
    """fuse-overlayfs, run by the user, opens /dev/fuse: 0666 as udev makes it."""
    with device_mode(FUSE, 0o666):
        yield


def _told(line: str, stderr: str) -> bool:
    """Whether -v printed `line` (a note: indented) on its own."""
    return line in (text.strip() for text in stderr.splitlines())


def _fuse_env(user: User, name: str) -> dict[str, str]:
    return {"XDG_DATA_HOME": str(user.home / name)}


def _fuse_left(user: User) -> list[str]:
    """fuse-overlayfs mounts in the host's mount table, and its processes run by `user`."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = [line for line in f if "fuse-overlayfs" in line]
    found = subprocess.run(["pgrep", "-u", str(user.uid), "-x", "fuse-overlayfs"],
                           capture_output=True, text=True, check=False).stdout.split()
    return mounts + found


@pytest.fixture(scope="module")
def fuse_built(ranged: User, context: Path, refuser: Path, open_tun: None,
               open_fuse: None) -> subprocess.CompletedProcess[str]:
    """The sample built by the user with ranges where overlay is refused (EPERM), -v."""
    return ranged("build", "-v", *EPOCH, "--secret", _secret(ranged), "-t", "app",
                  str(context), env=_fuse_env(ranged, "fuse"), wrap=(str(refuser), "EPERM"))


def test_the_kernel_overlay_is_really_refused_there(ranged: User, refuser: Path,
                                                    shared_dir: Path) -> None:
    target = shared_dir / "refused-mount"
    target.mkdir(exist_ok=True)
    script = (f"mount -t overlay -o lowerdir={shared_dir}:{ranged.home} none {target}"
              f" && echo mounted; mount -t tmpfs none {target} && echo tmpfs")
    probe = subprocess.run([str(refuser), "EPERM", "runuser", "-u", ranged.name, "--",
                            "unshare", "-Urm", "sh", "-c", script],
                           capture_output=True, text=True, check=False)
    assert probe.stdout == "tmpfs\n", probe.stderr
    assert "permission denied" in probe.stderr


def test_through_fuse_overlayfs_the_digest_is_the_kernel_overlays(
        fuse_built: subprocess.CompletedProcess[str], built: str, ranged: User) -> None:
    assert fuse_built.stdout.strip().splitlines()[-1] == built
    assert _told(FUSE_LINE.format("EPERM"), fuse_built.stderr)
    assert fuse_built.stderr.count("overlay: ") == 1  # decided once, by the first mount
    # The layer dirs are in the kernel's form: the opaque /root of the last RUN carries
    # user.overlay.opaque, and nothing of fuse-overlayfs's own is left in any of them.
    store = ranged.home / "fuse" / "stepbuild"
    root_dirs = _layer_entries(store, "root/new")
    assert root_dirs
    assert os.getxattr(root_dirs[0].parent, "user.overlay.opaque") == b"y"
    for path in (store / "layers").rglob("*"):
        assert not path.name.startswith(".wh."), path
        names = os.listxattr(path, follow_symlinks=False) if not path.is_symlink() else []
        assert not any(n.startswith("user.fuseoverlayfs.") for n in names), path
    assert not _fuse_left(ranged)


def test_through_fuse_overlayfs_run_works_and_the_store_checks_clean(
        fuse_built: subprocess.CompletedProcess[str], ranged: User, refuser: Path) -> None:
    env, wrap = _fuse_env(ranged, "fuse"), (str(refuser), "EPERM")
    result = ranged("run", "-v", "app", env=env, wrap=wrap)
    assert result.stdout == "made\n"
    assert _told(FUSE_LINE.format("EPERM"), result.stderr)
    listing = ranged("run", "app", "sh", "-c", "ls -ln /app; ls -a /root; cat /etc/group",
                     env=env, wrap=wrap, check=False)
    owners = {line.split()[-1]: line.split()[2:4] for line in listing.stdout.splitlines()
              if line.count(" ") > 4}
    assert owners["owned.txt"] == ["1000", "1000"] and owners["tools"] == ["0", "0"]
    assert listing.stdout.split("\n")[-5:] == [  # /root opaque, /etc/group whited out
        ".", "..", "new", "cat: can't open '/etc/group': No such file or directory", ""]
    assert "store is consistent" in ranged("check", "--deep", env=env, wrap=wrap).stdout
    assert not _fuse_left(ranged)


# A COPY of a directory into a new one (the path that can write straight into an upper dir),
# a replaced /usr (opaque over a lower dir) and a chmod deep in /bin (a dir only copied up,
# whose mtime the kernel keeps and fuse-overlayfs does not).
COPY_DIR = """\
FROM scratch
ADD busybox-rootfs.tar /
COPY files /srv/files
RUN rm -rf /usr && mkdir /usr && echo x > /usr/x && chmod 700 /bin/busybox
"""


def test_einval_is_a_refusal_too_and_gives_roots_digest(
        ranged: User, context: Path, refuser: Path, shared_dir: Path, open_tun: None,
        open_fuse: None) -> None:
    files = context / "files"
    files.mkdir(exist_ok=True)
    for name in ("a", "b", "c"):
        (files / name).write_text(name)
    stepfile = context / "copy-dir.Stepfile"
    stepfile.write_text(COPY_DIR)
    subprocess.run(["chmod", "-R", "a+rX", str(context)], check=True)
    root = Stepbuild(shared_dir / "root-store").build(context, "-q", *EPOCH, "-f",
                                                      str(stepfile)).stdout.strip()
    result = ranged("build", "-v", *EPOCH, "-f", str(stepfile), str(context),
                    env=_fuse_env(ranged, "fuse-einval"), wrap=(str(refuser), "EINVAL"))
    assert result.stdout.strip().splitlines()[-1] == root
    assert _told(FUSE_LINE.format("EINVAL"), result.stderr)
    assert "store is consistent" in ranged("check", "--deep",
                                           env=_fuse_env(ranged, "fuse-einval")).stdout
    assert not _fuse_left(ranged)


def _one_line_refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.strip().splitlines()
              if not line.startswith(("isolation:", "#", "  "))]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("stepbuild: error: rootless: the kernel refused an overlay")
    return errors[0]


def test_no_fuse_overlayfs_program_is_one_line_naming_the_package(
        ranged: User, context: Path, refuser: Path, shared_dir: Path, open_tun: None,
        open_fuse: None) -> None:
    """PATH holds every program of /usr/bin and /usr/sbin but fuse-overlayfs."""
    bin_dir = shared_dir / "bin-without-fuse-overlayfs"
    bin_dir.mkdir()
    for directory in (Path("/usr/sbin"), Path("/usr/bin")):
        for program in directory.iterdir():
            if program.name != "fuse-overlayfs" and not (bin_dir / program.name).exists():
                (bin_dir / program.name).symlink_to(program)
    env = {**_fuse_env(ranged, "no-fuse-program"), "PATH": str(bin_dir)}
    result = ranged("build", "-q", "--no-cache", "-f", str(context / "no-chown.Stepfile"),
                    str(context), env=env, wrap=(str(refuser), "EPERM"), check=False)
    line = _one_line_refusal(result)
    assert "fuse-overlayfs is not installed" in line and "apt-get install fuse-overlayfs" in line
    assert "store is consistent" in ranged("check", "--deep", env=env).stdout
    assert not _fuse_left(ranged)


def test_no_access_to_dev_fuse_is_one_line(ranged: User, context: Path, refuser: Path,
                                           open_tun: None) -> None:
    env = _fuse_env(ranged, "no-dev-fuse")
    with device_mode(FUSE, 0o600):
        result = ranged("build", "-q", "--no-cache", "-f", str(context / "no-chown.Stepfile"),
                        str(context), env=env, wrap=(str(refuser), "EPERM"), check=False)
    line = _one_line_refusal(result)
    assert "/dev/fuse is not readable and writable by your user" in line
    assert "store is consistent" in ranged("check", "--deep", env=env).stdout
    assert not _fuse_left(ranged)


def _status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict; {} once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _fuse_processes(uid: int) -> list[int]:
    """Every fuse-overlayfs process `uid` runs."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            status = _status(int(entry.name))
            if status.get("Name") == "fuse-overlayfs" and status["Uid"].split()[0] == str(uid):
                found.append(int(entry.name))
    return found


def _builder_of(pid: int) -> int:
    """The stepbuild builder (a python) that `pid` runs under, up its parents."""
    while pid > 1:
        status = _status(pid)
        if status.get("Name", "").startswith("python"):
            return pid
        pid = int(status.get("PPid", "0"))
    raise AssertionError("no python builder above the fuse-overlayfs process")


def test_a_killed_builder_leaves_no_fuse_overlayfs_behind(
        ranged: User, context: Path, refuser: Path, shared_dir: Path, open_tun: None,
        open_fuse: None) -> None:
    """kill -9 of the builder while a fuse-overlayfs mount serves its step: the program
    dies with it (setpriv --pdeathsig), and so its mount namespace and mount."""
    stepfile = shared_dir / "sleep.Stepfile"
    stepfile.write_text("FROM scratch\nADD busybox-rootfs.tar /\n"
                        "RUN touch /ready && sleep 600\n")
    stepfile.chmod(0o644)
    base = {"HOME": str(ranged.home), "PATH": PATH, "PYTHONPATH": str(ranged.source),
            **_fuse_env(ranged, "fuse-killed")}
    builder = subprocess.Popen(
        [str(refuser), "EPERM", "runuser", "-u", ranged.name, "--", "env", "-i",
         *(f"{k}={v}" for k, v in base.items()), ranged.python, "-m", "stepbuild", "build",
         "-q", "-f", str(stepfile), str(context)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ranged.home)
    try:
        # The RUN has made a file through the mount (fuse-overlayfs has acted as a caller:
        # the point where a parent-death signal of its own would be gone)
        tmp = ranged.home / "fuse-killed" / "stepbuild" / "tmp"
        while not list(tmp.glob("step-*/upper/ready")) and builder.poll() is None:
            os.sched_yield()
        serving = _fuse_processes(ranged.uid)
        assert serving, builder.stderr.read() if builder.stderr else ""
        os.kill(_builder_of(serving[0]), 9)  # the builder, inside the user namespace
        builder.wait(timeout=60)
    finally:
        if builder.poll() is None:
            builder.kill()
            builder.wait()
    assert builder.returncode != 0
    remaining = _fuse_processes(ranged.uid)
    for _ in range(1000):  # SIGKILL is delivered at once; reaping may take a moment
        if not remaining:
            break
        os.sched_yield()
        remaining = _fuse_processes(ranged.uid)
    assert remaining == []
    assert not _fuse_left(ranged)
