"""Run a command as root inside an unprivileged `podman run` container: the CI pod of issue 13.

A GitLab or Kubernetes runner's default pod gives its root podman's (docker's) default
capability set, without CAP_SYS_ADMIN, under the runtime's default seccomp profile. The
containers made here are exactly that, so stepbuild can be proven where CI images are built:

- `podman run --runtime runc` (crun refuses this host's hybrid cgroup layout), no
  `--privileged`, no `--cap-add`, podman's own seccomp profile
  (/usr/share/containers/seccomp.json, which allows user namespaces) or, for the locked-down
  variant, that profile with user namespaces denied too (`deny_user_namespaces`);
- the root is an overlay (`--rootfs DIR:O`) over an almost empty skeleton, as an image's root
  is an overlay in a real pod (where an overlay upper dir cannot be put). The host's /usr
  and /etc, this checkout and the Python running the tests (its venv and its base install,
  at the same paths) are bound read-only; nothing else of the host is visible;
- the store is a host directory bound at /store (a volume, as a pod's emptyDir): it outlives
  one `run`, so a test can build, then run, then check, and look at it from the host too.

No image is pulled or imported (no registry here): binding the host's files starts as fast as
anything measured (0.2 to 0.45 s for `podman run ... true`, the same as an overlay of the whole
host root, which would also show the container every host file) and is the simplest.

Each `run` is a fresh container (`--rm`, a unique name); a timeout removes it, and the session
fixture (`Podman.cleanup`) removes anything left and checks no mount of podman's is left behind.
podman's state lives in directories of its own, so the host's containers are never touched.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
PODMAN_SECCOMP = Path("/usr/share/containers/seccomp.json")  # containers-common
STORE = "/store"  # where the store volume is, inside
TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")  # links into /usr, or real dirs

CLONE_NEWUSER = 0x10000000
EPERM, ENOSYS = 1, 38

# podman asks for high RLIMIT_NOFILE/NPROC by default; without CAP_SYS_RESOURCE (absent from
# this machine's bounding set) runc cannot set them (EPERM), so ask for what it can give:
# this process's own open-file limit, and 4096 processes (podman itself runs with 32768 here,
# and runc cannot give more than it has). Root in the container lacks CAP_SYS_RESOURCE and
# CAP_SYS_ADMIN, so every root process of the host counts against that limit.
_NOFILE = ":".join(str(limit) for limit in resource.getrlimit(resource.RLIMIT_NOFILE))
ULIMITS = ("--ulimit", f"nofile={_NOFILE}", "--ulimit", "nproc=4096:4096")

_names = itertools.count()


@dataclass(frozen=True)
class Volume:
    """A host path bound into the container at `target`, read-only unless said otherwise."""

    host: Path
    target: str
    readonly: bool = True

    def option(self) -> str:
        return f"{self.host}:{self.target}:{'ro' if self.readonly else 'rw'}"


@dataclass(frozen=True)
class Podman:
    """podman with state directories of its own (`root`, `runroot`) and the rootfs skeleton.

    Made once per test session by `Podman.create`; `cleanup` removes every container of it
    and its directories. `runroot` must stay short (podman refuses paths of 50 characters or
    more for its sockets), so it is a directory of /tmp, not under pytest's tmp_path.
    """

    root: Path
    runroot: Path
    skeleton: Path

    @classmethod
    def create(cls, workdir: Path) -> Podman:
        missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
        if missing or not PODMAN_SECCOMP.is_file():
            raise RuntimeError(f"not installed: {' '.join(missing) or PODMAN_SECCOMP} "
                               "(scripts/setup.sh installs podman, runc, containers-common)")
        runroot = Path(tempfile.mkdtemp(prefix="sb-podman-"))
        podman = cls(root=workdir / "podman", runroot=runroot, skeleton=workdir / "skeleton")
        make_skeleton(podman.skeleton)
        return podman

    def command(self, *args: str) -> list[str]:
        # vfs: no image is ever stored, so the simplest storage driver; cgroupfs and a file
        # for events: there is no systemd or journald on these machines; a network config dir
        # of our own: podman would make its lock file in the host's /etc/cni/net.d.
        return ["podman", "--root", str(self.root), "--runroot", str(self.runroot),
                "--tmpdir", str(self.runroot / "libpod"), "--storage-driver", "vfs",
                "--network-config-dir", str(self.root / "networks"),
                "--cgroup-manager", "cgroupfs", "--events-backend", "file", *args]

    def remove(self, name: str) -> None:
        """Remove one container now (SIGKILL, no grace period), whatever state it is in."""
        subprocess.run(self.command("rm", "--force", "--time", "0", "--ignore", name),
                       capture_output=True, check=False, timeout=60)

    def cleanup(self) -> None:
        """Remove every container of ours, then our directories; fail if a mount is left."""
        subprocess.run(self.command("rm", "--all", "--force", "--time", "0"),
                       capture_output=True, check=False, timeout=120)
        left = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4].startswith((str(self.root), str(self.runroot)))]
        shutil.rmtree(self.runroot, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
        if left:
            raise AssertionError(f"podman left mounts behind: {left}")


def make_skeleton(skeleton: Path) -> None:
    """The lower dir of every container's root: the mount points, and /bin, /lib... as the
    host has them (symlinks into /usr on a merged-/usr Debian; bound when they are real)."""
    for name, mode in (("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("run", 0o755),
                       ("etc", 0o755), ("usr", 0o755), ("root", 0o700), ("tmp", 0o1777),
                       ("var", 0o755), ("var/tmp", 0o1777), (STORE.strip("/"), 0o755)):
        (skeleton / name).mkdir(parents=True)
        (skeleton / name).chmod(mode)  # mkdir's mode is masked by the umask
    for name in TOP_LEVEL:
        if os.path.islink(f"/{name}"):
            (skeleton / name).symlink_to(os.readlink(f"/{name}"))


def _host_binds() -> list[Volume]:
    """What of the host every container sees, read-only: /usr, /etc, the top-level dirs that
    are not links into /usr, this checkout, and the Python running the tests (its venv and
    the installation it was made from), each at the same path as on the host. A path inside
    another one already bound is left out."""
    wanted: list[str | Path] = ["/usr", "/etc", PROJECT, sys.prefix, sys.base_prefix]
    wanted += [f"/{name}" for name in TOP_LEVEL
               if os.path.isdir(f"/{name}") and not os.path.islink(f"/{name}")]
    paths = sorted({Path(path).resolve() for path in wanted})
    kept: list[Path] = []
    for path in paths:  # sorted: a parent comes before what is inside it
        if not any(path.is_relative_to(parent) for parent in kept):
            kept.append(path)
    return [Volume(path, str(path)) for path in kept]


@dataclass(frozen=True)
class Container:
    """One kind of unprivileged container: podman's default capabilities, and `seccomp` (a
    profile file; None: podman's default). `label` names it in container names and test ids.
    """

    podman: Podman
    label: str
    seccomp: Path | None = None
    binds: tuple[Volume, ...] = field(default_factory=lambda: tuple(_host_binds()))

    def run(self, argv: Sequence[str], *, store: Path | None = None,
            volumes: Sequence[Volume] = (), env: Mapping[str, str] | None = None,
            network: str = "none", workdir: str = "/", input: str | None = None,
            devices: Sequence[str] = (), timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        """Run `argv` as root in a fresh container and return its output and exit status.

        `store`, a host dir, is bound read-write at /store and named by STEPBUILD_ROOT;
        `volumes` are bound as they say; `devices` (host paths such as /dev/net/tun) are
        given to the container at the same paths, as `podman run --device` does. The
        container is removed when the command ends, and on a timeout too (then
        subprocess.TimeoutExpired is raised). Exit status 125 is podman failing to make the
        container: that raises RuntimeError with podman's message, so the command run here
        must not use 125 itself.
        """
        name = f"sb-{self.label}-{os.getpid()}-{next(_names)}"
        command = self.podman.command(*self._run_options(name, network, workdir, input),
                                      *(option for path in devices
                                        for option in ("--device", path)),
                                      *self._mounts(store, volumes), *self._env(store, env),
                                      "--rootfs", f"{self.podman.skeleton}:O", *argv)
        try:
            result = subprocess.run(command, capture_output=True, text=True, input=input,
                                    timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            self.podman.remove(name)  # podman's client is killed; the container is not
            raise
        if result.returncode == 125:
            raise RuntimeError(f"podman could not run {name}: {result.stderr.strip()}")
        return result

    def stepbuild(self, *args: str, store: Path | None, volumes: Sequence[Volume] = (),
                  env: Mapping[str, str] | None = None, network: str = "none",
                  devices: Sequence[str] = (), timeout: float = 120
                  ) -> subprocess.CompletedProcess[str]:
        """`python -m stepbuild ARGS` inside, from this checkout, on the store `store`; the
        other arguments as `run`'s."""
        return self.run([sys.executable, "-m", "stepbuild", *args], store=store,
                        volumes=volumes, env=env, network=network, devices=devices,
                        timeout=timeout)

    def _run_options(self, name: str, network: str, workdir: str,
                     input: str | None) -> list[str]:
        options = ["--runtime", "runc", "run", "--rm", "--name", name, "--network", network,
                   "--workdir", workdir, *ULIMITS]
        if self.seccomp is not None:
            options += ["--security-opt", f"seccomp={self.seccomp}"]
        if input is not None:
            options.append("--interactive")
        return options

    def _mounts(self, store: Path | None, volumes: Sequence[Volume]) -> list[str]:
        every = [*self.binds, *volumes]
        if store is not None:
            every.append(Volume(store, STORE, readonly=False))
        return [option for volume in every for option in ("--volume", volume.option())]

    @staticmethod
    def _env(store: Path | None, env: Mapping[str, str] | None) -> list[str]:
        # The checkout first on the path, as tests/integration/builds.py does on the host; it
        # is read-only inside, so no bytecode is written (the host's caches are used).
        values = {"PYTHONPATH": str(PROJECT), "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
        if store is not None:
            values.setdefault("STEPBUILD_ROOT", STORE)
        return [option for key, value in values.items() for option in ("--env", f"{key}={value}")]


def deny_user_namespaces(profile: Mapping[str, Any]) -> dict[str, Any]:
    """podman's seccomp profile (as loaded from its JSON) that also refuses user namespaces:
    `unshare` and `clone` with CLONE_NEWUSER get EPERM, without it they are allowed as before;
    `clone3` gets ENOSYS. Everything else is left as it is.

    clone3 passes its flags in a struct a filter cannot read, so it is refused whole; ENOSYS,
    not EPERM, so glibc's pthread_create and posix_spawn fall back to clone(2), where the
    flags are seen (with EPERM, Python's `threading` cannot start a thread). clone's flags are
    its first argument on x86_64 and arm64, the architectures this is run on.
    """
    derived = copy.deepcopy(dict(profile))
    gated = {"unshare", "clone", "clone3"}
    rules = []
    for rule in derived["syscalls"]:
        rule["names"] = [name for name in rule["names"] if name not in gated]
        if rule["names"]:
            rules.append(rule)

    def flags(value: int) -> list[dict[str, Any]]:
        return [{"index": 0, "value": CLONE_NEWUSER, "valueTwo": value,
                 "op": "SCMP_CMP_MASKED_EQ"}]

    rules += [
        {"names": ["unshare", "clone"], "action": "SCMP_ACT_ALLOW", "args": flags(0)},
        {"names": ["unshare", "clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
         "args": flags(CLONE_NEWUSER)},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS, "args": []},
    ]
    derived["syscalls"] = rules
    return derived


def write_no_userns_profile(path: Path) -> Path:
    """`deny_user_namespaces` of the system's podman profile, written to `path`."""
    profile = json.loads(PODMAN_SECCOMP.read_text())
    path.write_text(json.dumps(deny_user_namespaces(profile), indent=1))
    return path
