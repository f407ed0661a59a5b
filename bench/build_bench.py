"""stepbuild side by side with peer builders (BuildKit, Buildah, ch-image) on one workload.

    python bench/build_bench.py [--rounds 5] [--warmup 1] [--only stepbuild] [--json]

Workload: ../shared/peers/Dockerfile with the 2,000-file context from
../shared/peers/gen-context.py, FROM a busybox `base` image. Scenarios (columns):

  cold     the workload with an empty cache, `base` already present. stepbuild: a fresh store
           in which `base` was built (untimed) from a busybox rootfs tarball
           (scripts/make-busybox-rootfs.sh, `FROM scratch` + `ADD busybox-rootfs.tar /`);
           peers: their clean command (drop result and cached layers, keep base) + no-cache flag
  noop     the same build again, nothing changed
  change1  one of the 2,000 context files gets new content (3,000 random bytes)
  runs20   FROM base + 20 x `RUN echo i > /f_i`, cold; reported as ms per RUN step (total / 20)

Every (scenario, builder) pair runs once per round; builders take turns (the order rotates
each round), so machine noise hits all of them alike. Medians pool the measured rounds
(after --warmup untimed rounds). Each result is checked inside the built image, as the
peers' CHECK does (WORKDIR, ENV, deleted file, 2,000 data files, 50 MiB blob; for change1
also the new file's sha256; for runs20 each /f_i); for stepbuild via `stepbuild run`, and
its no-op must report every step cached.

The machine may be shared: before each round the script waits (--wait-quiet, up to 60 s) for
other processes to go idle, and the report says how much CPU they used during the runs
(flagged NOISY above 5 %).

Peers are brought up with the peers' own script (`setup-and-bench.sh [install] versions base
start import smoke`, W=/var/tmp/peers; `install` only when a peer's tools are missing) and
their commands come from it too (bench/peers.sh). Services it started are stopped at the end
(`setup-and-bench.sh stop`). A peer that cannot run is reported and skipped.

stepbuild runs as `PYTHON -m stepbuild` from the project directory (PYTHON: --python, default
the interpreter running this script; use the real one, not a pyenv shim) with STEPBUILD_ROOT
in a temp dir. Needs root, like the builders it compares.

Rootless rows (--rootless, or named in --only): `stepbuild-rootless` and `buildah-rootless`
run as a normal user (--user, default sbbench: reused if it exists, else made for the run and
removed at the end), started with only its uid, gid and a login-like environment (no runuser,
so no PAM start-up is timed). stepbuild-rootless is the same tree's `stepbuild` package, copied
into the user's ~/build-bench and run by a venv of /usr/bin/python3 there (the checkout and
root's interpreter may be unreadable to the user); it re-enters itself in a user namespace
mapped from the user's /etc/subuid range. buildah-rootless is the peers' buildah-overlay
command (overlay, --isolation chroot, --layers) run by the user with its storage in its home;
its `base` is imported by the peers' own `import` phase, as the user. Pass that venv's python
as --python to give both stepbuild rows the same interpreter.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import pwd
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

PROJECT = Path(__file__).resolve().parents[1]
PEERS_DIR = Path(os.environ.get("PEERS_DIR", PROJECT.parent / "shared" / "peers"))
PEERS_SH = PROJECT / "bench" / "peers.sh"
PEERS_ENV = {"PEERS_SCRIPT": str(PEERS_DIR / "setup-and-bench.sh")}  # for peers.sh
ROOTFS_SCRIPT = PROJECT / "scripts" / "make-busybox-rootfs.sh"

SCENARIOS = ("cold", "noop", "change1", "runs20")
ALL_PEERS = ("docker-buildkit", "buildah-overlay", "charliecloud", "buildah-vfs", "podman",
             "docker-legacy")
DEFAULT_PEERS = ALL_PEERS[:3]
# Rows run by a normal user (--rootless or --only): stepbuild re-entering itself in a user
# namespace, and Buildah rootless with the peers' own command (overlay, --isolation chroot).
ROOTLESS = ("stepbuild-rootless", "buildah-rootless")
ROOTLESS_PEER = {"buildah-rootless": "buildah-overlay"}  # the peers.sh name it runs as
BENCH_USER = "sbbench"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: a normal user may run it (root's may sit in /root)
USER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))
SUBID_COUNT = 65536
TUN = Path("/dev/net/tun")
RUN_STEPS = 20
CHANGE_FILE = "data/d07/f0007.txt"  # the file setup-and-bench.sh changes too
TIMEOUT = 600
# The tools each peer needs; when one is missing the setup includes the `install` phase.
PEER_TOOLS = {"docker-buildkit": ("dockerd", "/usr/bin/docker"),
              "docker-legacy": ("dockerd", "/usr/bin/docker"),
              "buildah-overlay": ("buildah",), "buildah-vfs": ("buildah",),
              "podman": ("podman",), "charliecloud": ("/usr/bin/ch-image", "ch-run")}
# Dropped from the builders' environment: with PYTHONDONTWRITEBYTECODE set (some shells and
# harnesses set it) a Python builder recompiles every module whose .pyc is missing or stale on
# every run: ch-image's modules ship without .pyc (+25 ms a build), and stepbuild's edited
# modules cost ~12 ms. Users do not run builders that way.
DROPPED_ENV = ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")
RUNS_CHECK = (f'for i in $(seq 1 {RUN_STEPS}); do test "$(cat /f_$i)" = "$i" || exit 1; done'
              " && echo CONTENT-OK")


@dataclass(frozen=True)
class Workload:
    name: str
    ctx: Path
    cacheable: int  # RUN/COPY/ADD/WORKDIR steps
    before_copy: int  # cacheable steps before the first COPY/ADD (still cached after change1)

    @property
    def dockerfile(self) -> Path:
        return self.ctx / "Dockerfile"


def builder_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.setdefault("USER", "root")  # ch-image and ch-run refuse to run without $USER
    return {**env, **extra}


def workload(name: str, ctx: Path) -> Workload:
    words = [line.split(None, 1)[0].upper() for line in
             (ctx / "Dockerfile").read_text().splitlines() if line.strip()
             and not line.lstrip().startswith("#")]
    # WORKDIR is a step of its own in stepbuild (it makes the directory: a layer), cached or not
    steps = [w for w in words if w in ("RUN", "COPY", "ADD", "WORKDIR")]
    first_copy = next((i for i, w in enumerate(steps) if w in ("COPY", "ADD")), len(steps))
    return Workload(name, ctx, len(steps), first_copy)


# --- the rootless rows' user -------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """The normal user the rootless rows build as, and its own directory for the run."""

    name: str
    uid: int
    gid: int
    home: Path

    @property
    def dir(self) -> Path:
        return self.home / "build-bench"

    def env(self, **extra: str) -> dict[str, str]:
        """A login-like environment: nothing of root's (no STEPBUILD_ROOT, no XDG dirs)."""
        return {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name,
                "PATH": USER_PATH, "LANG": "C.UTF-8", **extra}

    def spawn(self) -> dict[str, Any]:
        """subprocess.run arguments that start the child as this user: set in the forked
        child before exec, so no runuser/PAM start-up is timed with the build."""
        return {"user": self.uid, "group": self.gid, "extra_groups": [], "cwd": self.home}

    def run(self, argv: list[str], log: Path, **extra: str) -> int:
        with log.open("a") as out:
            return subprocess.run(argv, env=self.env(**extra), stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=out, timeout=TIMEOUT * 3,
                                  **self.spawn()).returncode


def subid_end(texts: list[str]) -> int:
    """The first id past every range that /etc/subuid or /etc/subgid (their texts) gives
    anyone, and at least 100000, where useradd starts them."""
    end = 100000
    for text in texts:
        for line in text.splitlines():
            fields = line.split(":")
            if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                end = max(end, int(fields[1]) + int(fields[2]))
    return end


def has_subids(text: str, name: str, uid: int) -> bool:
    """Whether a /etc/subuid-style text gives `name` (or its uid) a range."""
    return any(line.split(":")[0] in (name, str(uid)) and line.count(":") == 2
               for line in text.splitlines())


def without_subids(text: str, name: str) -> str:
    return "".join(f"{line}\n" for line in text.splitlines() if not line.startswith(f"{name}:"))


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@contextmanager
def bench_account(name: str) -> Iterator[tuple[Account, str]]:
    """The user `name` with subordinate ids: reused if it exists (then left as it is, except
    for ranges added here), else made now and removed at the end with its home."""
    made = False
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True,
                       capture_output=True)
        made = True
    entry = pwd.getpwnam(name)
    added: list[Path] = []
    try:
        start = subid_end([_read(p) for p in SUBID_FILES])
        for path in SUBID_FILES:
            if not has_subids(_read(path), name, entry.pw_uid):
                path.write_text(_read(path) + f"{name}:{start}:{SUBID_COUNT}\n")
                added.append(path)
        how = "made for this run, removed at the end" if made else "existing, reused"
        if added:
            how += f"; subordinate ids {start}-{start + SUBID_COUNT - 1} added for the run"
        yield Account(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir)), how
    finally:
        for path in added:
            path.write_text(without_subids(_read(path), name))
        if made:  # --force: a process the user left must not keep its home
            subprocess.run(["userdel", "--remove", "--force", name], capture_output=True)


@contextmanager
def open_tun(account: Account) -> Iterator[None]:
    """stepbuild's private network (its default) runs slirp4netns as the user, which opens
    /dev/net/tun: udev makes it 0666, some hosts leave it 0600. Opened to users for the run
    when the user cannot use it, and its mode put back after."""
    before = TUN.stat().st_mode & 0o7777
    usable = subprocess.run(["test", "-r", str(TUN), "-a", "-w", str(TUN)],
                            **account.spawn()).returncode == 0
    if not usable:
        print(f"rootless: {TUN} is {before:04o}; 0666 for the run", file=sys.stderr)
        TUN.chmod(0o666)
    try:
        yield
    finally:  # unless something else changed it meanwhile (a test's own fixture does this)
        if not usable and TUN.stat().st_mode & 0o7777 == 0o666:
            TUN.chmod(before)


def _project_dependencies() -> list[str]:
    with open(PROJECT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def user_python(account: Account, log: Path) -> tuple[str, Path]:
    """(a Python the user runs, with stepbuild's dependencies; a fresh copy of this tree's
    `stepbuild` it imports), both under the user's directory: the checkout and root's
    interpreter may sit under a 0700 /root. The venv (of Debian's python3) is kept for the
    next run; the copy is made anew and compiled as the user, as after any first run."""
    account.dir.mkdir(exist_ok=True)
    os.chown(account.dir, account.uid, account.gid)
    venv = account.dir / "venv"
    python = str(venv / "bin" / "python")
    probe = [python, "-c", "import lark, xxhash, zstandard, requests"]
    if not venv.exists() or account.run(probe, log) != 0:
        shutil.rmtree(venv, ignore_errors=True)
        print(f"rootless: a venv for {account.name} (pip; log: {log})", file=sys.stderr)
        if (account.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], log) != 0
                or account.run([python, "-m", "pip", "install", "-q",
                                "--disable-pip-version-check", *_project_dependencies()],
                               log) != 0):
            raise SystemExit(f"cannot make a Python for {account.name}: {_tail(log)}")
    source = account.dir / "src"
    shutil.rmtree(source, ignore_errors=True)
    # symlinks followed: stepbuild/grammar is a link to the top-level grammar/
    shutil.copytree(PROJECT / "stepbuild", source / "stepbuild",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chown", "-R", f"{account.uid}:{account.gid}", str(source)], check=True)
    account.run([python, "-m", "compileall", "-q", str(source / "stepbuild")], log)
    return python, source


def setup_buildah_rootless(account: Account, log: Path) -> str | None:
    """The peers' `base` phase (as root) and their `import` and `smoke` phases (as the user)
    in the user's own work dir; None when the smoke build passed, else why not."""
    if not shutil.which("buildah") or not shutil.which("newuidmap"):
        return "buildah or newuidmap (uidmap) is not installed"
    work_dir = account.dir / "peers"
    kit = account.dir / "kit"  # the peers' scripts, readable by the user
    kit.mkdir(exist_ok=True)
    for path in (PEERS_DIR / "setup-and-bench.sh", PEERS_DIR / "make-base.sh",
                 PEERS_DIR / "gen-context.py", PEERS_SH):
        shutil.copy(path, kit / path.name)
    if not (work_dir / "base.tar").exists():
        with log.open("a") as out:
            subprocess.run(["bash", str(kit / "setup-and-bench.sh"), "base"],
                           env={**os.environ, "W": str(work_dir)}, stdout=out, stderr=out,
                           timeout=TIMEOUT)
    subprocess.run(["chown", "-R", f"{account.uid}:{account.gid}", str(kit), str(work_dir)],
                   check=True)
    account.run(["bash", str(kit / "setup-and-bench.sh"), "import", "smoke"], log,
                W=str(work_dir), PEERS="buildah-overlay")
    match = re.search(r"^SMOKE buildah-overlay: (.*)$", log.read_text(errors="replace"), re.M)
    if match is None:
        return f"the peers' setup did not reach its smoke build ({log})"
    return None if match.group(1) == "OK" else "smoke build: " + match.group(1)


# --- builders -----------------------------------------------------------------------------


class Failed(Exception):
    """A build or its check failed; the message says what and where the log is."""


def _tail(path: Path, lines: int = 6) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


class Stepbuild:
    """`python -m stepbuild` with a store of its own: as root from the project directory, or,
    with an `account`, as that normal user (rootless: it re-enters itself in a user
    namespace) from a copy of the package, with the store in the user's directory."""

    def __init__(self, python: str, tmp: Path, base_ctx: Path,
                 account: Account | None = None, source: Path | None = None) -> None:
        self.name = "stepbuild" if account is None else "stepbuild-rootless"
        self.python = python
        self.stores = tmp / "stores" if account is None else account.dir / "stores"
        self.base_ctx = base_ctx
        self.account = account
        self.source = source
        self.store: Path | None = None
        self.serial = 0

    def env(self) -> dict[str, str]:
        assert self.store is not None
        if self.account is None:
            return builder_env(STEPBUILD_ROOT=str(self.store))
        return self.account.env(STEPBUILD_ROOT=str(self.store), PYTHONPATH=str(self.source))

    def spawn(self) -> dict[str, Any]:
        return {"cwd": PROJECT} if self.account is None else self.account.spawn()

    def _cli(self, *args: str) -> list[str]:
        return [self.python, "-m", "stepbuild", *args]

    def prepare_cold(self, work: Workload, log: Path) -> None:
        """A fresh store holding only `base` (built now, untimed). Root removes the old one:
        a rootless store's files belong to the user's subordinate ids."""
        if self.store is not None:
            shutil.rmtree(self.store, ignore_errors=True)
        self.serial += 1
        self.store = self.stores / f"{self.serial:03d}-{work.name}"
        if not self.stores.exists():
            self.stores.mkdir()
            if self.account is not None:
                os.chown(self.stores, self.account.uid, self.account.gid)
        with log.open("w") as out:
            rc = subprocess.run(self._cli("build", "-t", "base", str(self.base_ctx)),
                                env=self.env(), stdout=out, stderr=out, timeout=TIMEOUT,
                                **self.spawn()).returncode
        if rc != 0:
            raise Failed(f"building base failed ({rc}): {_tail(log)}")

    def command(self, work: Workload, cold: bool) -> tuple[list[str], dict[str, str]]:
        argv = self._cli("build", "-f", str(work.dockerfile), "-t", "out", str(work.ctx))
        return argv, self.env()

    def after_build(self, scenario: str, work: Workload, log: Path) -> None:
        """The cache did what the scenario means: nothing cached cold, everything on a no-op;
        rootless, the build's first line names the user-namespace isolation."""
        text = log.read_text(errors="replace")
        match = re.search(r"\((\d+) steps, (\d+) cached\)", text)
        if match is None:
            raise Failed(f"no build summary in the output: {_tail(log)}")
        cached = int(match.group(2))
        expected = {"noop": work.cacheable, "change1": work.before_copy}.get(scenario, 0)
        if cached != expected:
            raise Failed(f"{cached} steps cached, expected {expected} ({match.group(0)})")
        if self.account is not None and scenario != "noop" \
                and "isolation: userns" not in text:
            raise Failed(f"the build did not say it used a user namespace: {_tail(log)}")

    def verify(self, work: Workload, check: str, log: Path) -> None:
        with log.open("w") as out:
            subprocess.run(self._cli("run", "out", "sh", "-c", check), env=self.env(),
                           stdout=out, stderr=out, timeout=TIMEOUT, **self.spawn())
        if "CONTENT-OK" not in log.read_text(errors="replace"):
            raise Failed(f"content check failed: {_tail(log)}")

    def close(self) -> None:
        if self.store is not None:
            shutil.rmtree(self.store, ignore_errors=True)


class Peer:
    """A peer builder, run with the commands of ../shared/peers/setup-and-bench.sh: as root
    in the peers' work dir, or (buildah-rootless) as a normal user in the user's own, from
    copies of the peers' scripts there."""

    def __init__(self, name: str, work_dir: Path, account: Account | None = None) -> None:
        self.name = name
        self.tool = ROOTLESS_PEER.get(name, name)  # the peer's name in peers.sh
        self.work_dir = work_dir if account is None else account.dir / "peers"
        self.account = account
        self._commands: dict[tuple[str, bool], list[str]] = {}

    def env(self, **extra: str) -> dict[str, str]:
        return builder_env(**extra) if self.account is None else self.account.env(**extra)

    def spawn(self) -> dict[str, Any]:
        return {"cwd": PROJECT} if self.account is None else self.account.spawn()

    def _peers_sh(self, *args: str, work: Workload | None = None, check: str | None = None,
                  ) -> dict[str, Any]:
        script, kit = PEERS_SH, PEERS_ENV
        if self.account is not None:
            script = self.account.dir / "kit" / "peers.sh"
            kit = {"PEERS_SCRIPT": str(self.account.dir / "kit" / "setup-and-bench.sh")}
        env = self.env(**kit, W=str(self.work_dir))
        if work is not None:
            env["BENCH_CTX"] = str(work.ctx)
            if work.name == "runs":
                env["BENCH_NOCD"] = "1"
        if check is not None:
            env["BENCH_CHECK"] = check
        return {"args": ["bash", str(script), *args], "env": env, **self.spawn()}

    def prepare_cold(self, work: Workload, log: Path) -> None:
        call = self._peers_sh("clean", self.tool)
        with log.open("w") as out:  # as the peers' bench: failures of the clean are ignored
            subprocess.run(stdout=out, stderr=out, timeout=TIMEOUT, **call)

    def command(self, work: Workload, cold: bool) -> tuple[list[str], dict[str, str]]:
        key = (work.name, cold)
        if key not in self._commands:
            call = self._peers_sh("cmd", self.tool, "cold" if cold else "cached", work=work)
            text = subprocess.run(capture_output=True, text=True, check=True, **call).stdout
            self._commands[key] = shlex.split(text)
        return self._commands[key], self.env()

    def after_build(self, scenario: str, work: Workload, log: Path) -> None:
        pass

    def verify(self, work: Workload, check: str, log: Path) -> None:
        call = self._peers_sh("verify", self.tool, work=work, check=check)
        with log.open("w") as out:
            subprocess.run(stdout=out, stderr=out, timeout=TIMEOUT, **call)
        if "CONTENT-OK" not in log.read_text(errors="replace"):
            raise Failed(f"content check failed: {_tail(log)}")

    def close(self) -> None:
        pass


Builder = Stepbuild | Peer


# --- peers' setup and services ------------------------------------------------------------


def _docker_up(work_dir: Path) -> bool:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.connect(str(work_dir / "docker" / "docker.sock"))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _registry_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5000), timeout=1).close()
        return True
    except OSError:
        return False


def _missing_tools(peers: list[str]) -> list[str]:
    return sorted({t for p in peers for t in PEER_TOOLS.get(p, ()) if not shutil.which(t)})


def services_up(work_dir: Path) -> bool:
    return _docker_up(work_dir) or _registry_up()


def setup_peers(peers: list[str], work_dir: Path, install: bool, log: Path) -> dict[str, str]:
    """Run the peers' setup; return {peer: why it cannot run}."""
    phases = ["versions", "base", "start", "import", "smoke"]
    missing = _missing_tools(peers)
    if missing:
        if not install:
            return {p: f"not installed ({', '.join(missing)}); run without --no-install"
                    for p in peers}
        print(f"peers: installing (missing: {', '.join(missing)})", file=sys.stderr)
        phases.insert(0, "install")
    print(f"peers: setup-and-bench.sh {' '.join(phases)} (log: {log})", file=sys.stderr)
    env = {**os.environ, **PEERS_ENV, "W": str(work_dir), "PEERS": " ".join(peers)}
    with log.open("w") as out:
        subprocess.run(["bash", str(PEERS_DIR / "setup-and-bench.sh"), *phases], env=env,
                       stdout=out, stderr=subprocess.STDOUT, timeout=3600)
    text = log.read_text(errors="replace")
    broken: dict[str, str] = {}
    for peer in peers:
        match = re.search(rf"^SMOKE {re.escape(peer)}: (.*)$", text, re.M)
        if match is None:
            broken[peer] = "the peers' setup did not reach its smoke build"
        elif match.group(1) != "OK":
            broken[peer] = "smoke build: " + match.group(1)
        elif subprocess.run(["bash", str(PEERS_SH), "ready", peer], env=env,
                            capture_output=True).returncode != 0:
            broken[peer] = "its tools do not run or `base` is not imported (peers.sh ready)"
    return broken


def stop_services(work_dir: Path) -> None:
    env = {**os.environ, "W": str(work_dir)}
    result = subprocess.run(["bash", str(PEERS_DIR / "setup-and-bench.sh"), "stop"], env=env,
                            capture_output=True, text=True, timeout=120)
    for line in result.stdout.splitlines():
        if line.strip() and not line.startswith("==="):
            print(f"peers: {line}", file=sys.stderr)


# --- other load on the machine ------------------------------------------------------------

# Peer daemons and their children work for the benchmark; so do the kernel's threads.
BENCH_DAEMONS = frozenset({"dockerd", "containerd", "containerd-shim", "docker-registry", "runc",
                           "docker-proxy", "docker-init"})
_HZ = os.sysconf("SC_CLK_TCK")
# pid -> (comm, ppid, start time, own CPU seconds, CPU seconds of its reaped children)
Snapshot = dict[int, tuple[str, int, int, float, float]]


def _processes() -> Snapshot:
    """Every process's name, parent, start time and CPU time (own; its reaped children's)."""
    out: Snapshot = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1: text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        own = (int(fields[11]) + int(fields[12])) / _HZ  # utime stime
        children = (int(fields[13]) + int(fields[14])) / _HZ  # cutime cstime
        out[int(entry.name)] = (comm, int(fields[1]), int(fields[19]), own, children)
    return out


def _is_bench(pid: int, procs: Snapshot) -> bool:
    """This process, its descendants, the peers' daemons and kernel threads."""
    seen = 0
    while pid in procs and seen < 64:
        comm, ppid = procs[pid][:2]
        if pid == os.getpid() or comm in BENCH_DAEMONS or pid == 2 or ppid == 2:
            return True
        pid, seen = ppid, seen + 1
    return False


def other_load(before: Snapshot, after: Snapshot, seconds: float,
               children: bool = True) -> dict[str, Any]:
    """CPU time that processes other than the benchmark's used meanwhile (noise).

    With `children`, a process that lived through the interval also counts the children it
    reaped meanwhile (a test runner's short-lived subprocesses), all of their CPU time, some of
    which may predate the interval: right for a long interval, too coarse for a short one.
    """
    used: dict[str, float] = {}
    for pid, (comm, _, start, own, reaped) in after.items():
        if _is_bench(pid, after):
            continue
        old = before.get(pid)
        if old is None or old[2] != start:
            delta = own
        else:
            delta = own - old[3] + (reaped - old[4] if children else 0.0)
        if delta > 0:
            used[comm] = used.get(comm, 0.0) + delta
    total = sum(used.values())
    top = sorted(used.items(), key=lambda item: -item[1])[:3]
    share = total / (seconds * (os.cpu_count() or 1)) if seconds else 0.0
    return {"cpu_seconds": round(total, 1), "share": round(share, 3),
            "top": [[name, round(cpu, 1)] for name, cpu in top]}


def wait_quiet(limit: float, threshold: float = 0.10) -> None:
    """Wait (up to `limit` s) until other processes use under `threshold` of the CPUs."""
    deadline = time.monotonic() + limit
    while True:
        before = _processes()
        time.sleep(1.0)
        load = other_load(before, _processes(), 1.0, children=False)
        if load["share"] < threshold or time.monotonic() >= deadline:
            break
        busy = ", ".join(f"{name} {cpu:.1f} s" for name, cpu in load["top"])
        print(f"waiting for a quieter machine: {load['share']:.0%} busy ({busy})",
              file=sys.stderr)


# --- the measurement ----------------------------------------------------------------------


@dataclass
class Results:
    times: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    errors: dict[tuple[str, str], list[str]] = field(default_factory=dict)


@dataclass
class Bench:
    app: Workload
    runs: Workload
    logs: Path
    check: str
    has_app: set[str] = field(default_factory=set)  # builders whose last build was `app`

    def one(self, builder: Builder, scenario: str, label: str) -> float:
        """Prepare (untimed), build (timed), check (untimed); return the build's seconds."""
        work = self.runs if scenario == "runs20" else self.app
        log = self.logs / f"{builder.name}.{scenario}.{label}.log"
        cold = scenario in ("cold", "runs20")
        if cold:
            builder.prepare_cold(work, log.with_suffix(".prepare.log"))
        elif builder.name not in self.has_app:  # noop/change1 without a cold build before
            builder.prepare_cold(work, log.with_suffix(".prepare.log"))
            self._build(builder, work, True, log.with_suffix(".setup.log"))
        self.has_app.discard(builder.name)  # until this build has succeeded
        check = RUNS_CHECK if work is self.runs else self.check
        if scenario == "change1":
            changed = self.app.ctx / CHANGE_FILE
            changed.write_bytes(os.urandom(3000))
            digest = hashlib.sha256(changed.read_bytes()).hexdigest()
            check = (f'test "$(sha256sum /app/{CHANGE_FILE} | cut -c1-64)" = {digest} && '
                     f"{check}")
        seconds = self._build(builder, work, cold, log)
        builder.after_build(scenario, work, log)
        builder.verify(work, check, log.with_suffix(".check.log"))
        if work is self.app:
            self.has_app.add(builder.name)
        return seconds

    @staticmethod
    def _build(builder: Builder, work: Workload, cold: bool, log: Path) -> float:
        argv, env = builder.command(work, cold)
        os.sync()
        with log.open("w") as out:
            rc, seconds = timed_run(argv, env, out, **builder.spawn())
        if rc != 0:
            raise Failed(f"build failed ({rc}): {_tail(log)} [{log}]")
        return seconds


def timed_run(argv: list[str], env: dict[str, str] | None, out: IO[str],
              **popen: Any) -> tuple[int, float]:
    """(exit status, wall seconds) of one build. Not `subprocess.run(timeout=...)`: with a
    timeout, Popen.wait polls with sleeps that grow to 50 ms, so every time it measures is
    rounded up to the next poll (builds came out at 0.064, 0.114, 0.164 s ...). A plain
    wait blocks in waitpid and returns when the builder exits; a timer kills a hung one."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                               stderr=out, **popen)
    timer = threading.Timer(TIMEOUT, process.kill)
    timer.start()
    try:
        rc = process.wait()
    finally:
        timer.cancel()
    return rc, time.perf_counter() - started


def measure(bench: Bench, builders: list[Builder], scenarios: list[str], rounds: int,
            warmup: int, quiet_wait: float) -> Results:
    results = Results()
    for number in range(warmup + rounds):
        if quiet_wait > 0:
            wait_quiet(quiet_wait)
        shift = number % len(builders)
        order = builders[shift:] + builders[:shift]
        label = f"w{number + 1}" if number < warmup else f"r{number - warmup + 1}"
        for scenario in scenarios:
            for builder in order:
                key = (builder.name, scenario)
                try:
                    seconds = bench.one(builder, scenario, label)
                except (Failed, subprocess.SubprocessError, OSError) as exc:
                    results.errors.setdefault(key, []).append(f"{label}: {exc}")
                    print(f"{label:>4} {scenario:<8} {builder.name:<16} FAILED: {exc}",
                          file=sys.stderr)
                    continue
                print(f"{label:>4} {scenario:<8} {builder.name:<16} {seconds:7.3f} s",
                      file=sys.stderr)
                if number >= warmup:
                    results.times.setdefault(key, []).append(seconds)
    return results


# --- report -------------------------------------------------------------------------------


def _scale(scenario: str) -> tuple[float, str]:
    """runs20 is shown per RUN step in ms; the rest in seconds."""
    return (1000.0 / RUN_STEPS, "ms/RUN") if scenario == "runs20" else (1.0, "s")


def summary(results: Results, names: list[str], scenarios: list[str]) -> dict[str, Any]:
    cells: dict[str, dict[str, Any]] = {}
    for name in names:
        row: dict[str, Any] = {}
        for scenario in scenarios:
            times = results.times.get((name, scenario), [])
            scale, unit = _scale(scenario)
            row[scenario] = {
                "unit": unit, "n": len(times),
                "median": round(statistics.median(times) * scale, 4) if times else None,
                "min": round(min(times) * scale, 4) if times else None,
                "max": round(max(times) * scale, 4) if times else None,
                "seconds": [round(t, 4) for t in times],
                "errors": results.errors.get((name, scenario), []),
            }
        cells[name] = row
    ratios = _ratios(cells, "stepbuild", [n for n in names if n != "stepbuild"], scenarios)
    rootless = _ratios(cells, "stepbuild-rootless",
                       [n for n in names if n in ROOTLESS and n != "stepbuild-rootless"],
                       scenarios)
    return {"cells": cells, "ratios": ratios, "rootless_ratios": rootless}


def _ratios(cells: dict[str, dict[str, Any]], reference: str, names: list[str],
            scenarios: list[str]) -> dict[str, dict[str, float | None]]:
    """{name: {scenario: its median / the reference's}}; empty without the reference."""
    ours = cells.get(reference)
    if ours is None:
        return {}
    ratios: dict[str, dict[str, float | None]] = {}
    for name in names:
        ratios[name] = {}
        for scenario in scenarios:
            mine, theirs = ours[scenario]["median"], cells[name][scenario]["median"]
            ratios[name][scenario] = round(theirs / mine, 3) if mine and theirs else None
    return ratios


HEADINGS = {"cold": "cold s", "noop": "noop s", "change1": "change1 s",
            "runs20": "per-RUN ms"}


def _cell(cell: dict[str, Any]) -> str:
    if cell["median"] is None:
        return "FAILED" if cell["errors"] else "-"
    digits = 1 if cell["unit"] == "ms/RUN" else 3
    text = (f"{cell['median']:.{digits}f} ({cell['min']:.{digits}f}-"
            f"{cell['max']:.{digits}f})")
    return text + (f" [{len(cell['errors'])} failed]" if cell["errors"] else "")


def render(report: dict[str, Any], scenarios: list[str]) -> str:
    meta = report["meta"]
    lines = [f"# stepbuild vs peers: {meta['rounds']} rounds (+{meta['warmup']} warm-up), "
             f"median (min-max); {meta['machine']}; stepbuild {meta['stepbuild']}", ""]
    lines.append("| builder | " + " | ".join(HEADINGS[s] for s in scenarios) + " |")
    lines.append("|---" * (len(scenarios) + 1) + "|")
    for name, row in report["cells"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(row[s]) for s in scenarios) + " |")
    intro = {"ratios": "Ratio builder / stepbuild (median over median; > 1 means stepbuild "
                       "as root is faster, < 1 means the other is):",
             "rootless_ratios": "Rootless: ratio builder / stepbuild-rootless (> 1 means "
                                "rootless stepbuild is faster):"}
    for key, text in intro.items():
        if not report[key]:
            continue
        lines += ["", text, ""]
        lines.append("| builder | " + " | ".join(s for s in scenarios) + " |")
        lines.append("|---" * (len(scenarios) + 1) + "|")
        for name, row in report[key].items():
            cells = ["-" if row[s] is None else f"{row[s]:.2f}x" for s in scenarios]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, why in report["unavailable"].items():
        lines.append(f"\n{name}: CANNOT RUN: {why}")
    for name, row in report["cells"].items():
        for scenario in scenarios:
            for error in row[scenario]["errors"]:
                lines.append(f"{name} {scenario} FAILED {error}")
    load = meta["other_load"]
    busy = ", ".join(f"{name} {cpu:.1f} s" for name, cpu in load["top"]) or "none"
    lines.append(f"\nOther processes used {load['cpu_seconds']:.1f} CPU-s during the runs "
                 f"({load['share']:.0%} of the machine; {busy})"
                 + (": NOISY, numbers are suspect" if load["share"] > 0.05 else "") + ".")
    if meta.get("rootless"):
        lines.append(f"Rootless rows: {meta['rootless']}.")
    lines.append(f"per-RUN = the {RUN_STEPS}-RUN build, cold, divided by {RUN_STEPS} "
                 "(start-up and FROM included). Logs: " + meta["logs"])
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------


def _names(text: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"unknown {what}: {', '.join(unknown) or text!r}; "
                         f"choose from {', '.join(known)}")
    return names


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    ap.add_argument("--only", help="comma list of builders to run, e.g. stepbuild, or "
                    "stepbuild,stepbuild-rootless,buildah-rootless")
    ap.add_argument("--rootless", action="store_true",
                    help=f"add the rootless rows ({', '.join(ROOTLESS)}) to the default ones")
    ap.add_argument("--user", default=BENCH_USER,
                    help=f"the normal user of the rootless rows (default {BENCH_USER}): reused "
                    "if it exists (given subordinate ids for the run if it has none), else "
                    "made for the run (useradd; /etc/subuid and /etc/subgid ranges) and "
                    "removed at the end with its home. Its ~/build-bench holds a venv of "
                    "/usr/bin/python3 (kept with the user), a copy of stepbuild/, its stores "
                    "and Buildah's storage. /dev/net/tun is made 0666 for the run if the user "
                    "cannot open it (stepbuild's private network), then put back")
    ap.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                    help=f"peers to compare (default {','.join(DEFAULT_PEERS)})")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma list of {','.join(SCENARIOS)}")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--wait-quiet", type=float, default=60, metavar="S",
                    help="before each round, wait up to S s for other processes to use under"
                    " 10%% of the CPUs (default 60; 0: do not wait)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for stepbuild")
    ap.add_argument("--work-dir", default=os.environ.get("W", "/var/tmp/peers"),
                    help="the peers' work dir W (default /var/tmp/peers)")
    ap.add_argument("--no-install", action="store_true",
                    help="never apt-get missing peers (they are then reported as unable)")
    ap.add_argument("--keep-services", action="store_true",
                    help="leave dockerd and the registry running at the end")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (stores, logs)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        ap.error("--rounds must be >= 1 and --warmup >= 0")
    return args


def _prepare_files(tmp: Path, python: str) -> tuple[Workload, Workload, Path]:
    """The workload context, the 20-RUN context and stepbuild's base context."""
    ctx = tmp / "ctx"
    subprocess.run([python, str(PEERS_DIR / "gen-context.py"), str(ctx)], check=True,
                   stdout=subprocess.DEVNULL)
    runs_ctx = tmp / "runs-ctx"
    runs_ctx.mkdir()
    (runs_ctx / "Dockerfile").write_text(
        "FROM base\n" + "".join(f"RUN echo {i} > /f_{i}\n" for i in range(1, RUN_STEPS + 1)))
    base_ctx = tmp / "base-ctx"
    base_ctx.mkdir()
    subprocess.run(["sh", str(ROOTFS_SCRIPT), str(base_ctx / "busybox-rootfs.tar")], check=True)
    (base_ctx / "Stepfile").write_text("FROM scratch\nADD busybox-rootfs.tar /\n")
    return workload("app", ctx), workload("runs", runs_ctx), base_ctx


def _peer_check() -> str:
    return subprocess.run(["bash", str(PEERS_SH), "check"], capture_output=True, text=True,
                          env={**os.environ, **PEERS_ENV}, check=True).stdout.strip()


def _selection(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """(builders, root's peers among them, scenarios) from the options."""
    peers = _names(args.peers, ALL_PEERS, "peer")
    names = ["stepbuild", *peers, *(ROOTLESS if args.rootless else ())]
    if args.only:
        names = _names(args.only, ("stepbuild", *ALL_PEERS, *ROOTLESS), "builder")
        peers = [n for n in names if n in ALL_PEERS]
    return names, peers, _names(args.scenarios, SCENARIOS, "scenario")


def _check_python(python: str) -> None:
    """stepbuild's dependencies import, and its bytecode is fresh (as after any first run)."""
    probe = subprocess.run([python, "-c", "import lark, xxhash"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        raise SystemExit(f"{python} cannot import stepbuild's dependencies: "
                         f"{probe.stderr.strip().splitlines()[-1:]}")
    subprocess.run([python, "-m", "compileall", "-q", str(PROJECT / "stepbuild")],
                   env=builder_env(), check=True)


def _revision() -> str:
    """The measured stepbuild: HEAD, and whether stepbuild/ has uncommitted changes."""
    git = ["git", "-C", str(PROJECT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "unknown"
    dirty = subprocess.run([*git, "status", "--porcelain", "stepbuild"], capture_output=True,
                           text=True).stdout.strip()
    return head + (" + uncommitted changes in stepbuild/" if dirty else "")


def _make_builders(builders: list[Builder], names: list[str], args: argparse.Namespace,
                   tmp: Path, unavailable: dict[str, str], stack: ExitStack) -> str:
    """Append the builders `names` that can run (the others go to `unavailable`); for the
    rootless rows, set up their user (undone when `stack` closes). Returns how the rootless
    rows run, "" without them."""
    account, how = None, ""
    if any(n in ROOTLESS for n in names):
        account, made = stack.enter_context(bench_account(args.user))
        how = f"user {account.name} ({made})"
    for name in names:
        if name == "stepbuild":
            builders.append(Stepbuild(args.python, tmp, tmp / "base-ctx"))
        elif name == "stepbuild-rootless":
            assert account is not None
            stack.enter_context(open_tun(account))
            python, source = user_python(account, tmp / "logs" / "user-python.log")
            how += f"; stepbuild from a copy in {source}, run by {python}"
            builders.append(Stepbuild(python, tmp, tmp / "base-ctx", account, source))
        elif name == "buildah-rootless":
            assert account is not None
            why = setup_buildah_rootless(account, tmp / "logs" / "buildah-rootless-setup.log")
            if why is None:
                builders.append(Peer(name, Path(args.work_dir), account))
            else:
                unavailable[name] = why
        elif name not in unavailable:
            builders.append(Peer(name, Path(args.work_dir)))
    return how


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if os.geteuid() != 0:
        raise SystemExit("build_bench.py needs root (stepbuild and the peers mount overlays)")
    names, peers, scenarios = _selection(args)
    if "stepbuild" in names:
        _check_python(args.python)
    work_dir = Path(args.work_dir)
    tmp = Path(tempfile.mkdtemp(prefix="build-bench-", dir="/var/tmp"))
    tmp.chmod(0o755)  # the rootless user reads the contexts
    logs = tmp / "logs"
    logs.mkdir()
    started_services = False
    builders: list[Builder] = []
    with ExitStack() as stack:
        try:
            app, runs, _ = _prepare_files(tmp, args.python)
            unavailable: dict[str, str] = {}
            if peers:
                started_services = not services_up(work_dir)
                unavailable = setup_peers(peers, work_dir, not args.no_install,
                                          logs / "peers-setup.log")
            rootless = _make_builders(builders, names, args, tmp, unavailable, stack)
            for name, why in unavailable.items():
                print(f"{name}: CANNOT RUN: {why}", file=sys.stderr)
            bench = Bench(app, runs, logs, _peer_check())
            before, started = _processes(), time.perf_counter()
            results = measure(bench, builders, scenarios, args.rounds, args.warmup,
                              args.wait_quiet)
            load = other_load(before, _processes(), time.perf_counter() - started)
            report = summary(results, [b.name for b in builders], scenarios)
            report["unavailable"] = unavailable
            report["meta"] = {
                "rounds": args.rounds, "warmup": args.warmup, "python": args.python,
                "stepbuild": _revision(),
                "machine": f"{os.cpu_count()} cpus, kernel {platform.release()}, "
                           f"python {platform.python_version()}",
                "logs": str(logs) if args.keep else "(removed; --keep keeps them)",
                "workload": str(PEERS_DIR / "Dockerfile"), "run_steps": RUN_STEPS,
                "other_load": load, "rootless": rootless,
            }
            print(json.dumps(report, indent=2) if args.json else render(report, scenarios))
            return 1 if unavailable or any(results.errors.values()) else 0
        finally:
            for builder in builders:
                builder.close()
            if started_services and not args.keep_services:
                stop_services(work_dir)
            elif peers:
                why = "--keep-services" if started_services else "they were running before"
                print(f"peers: dockerd/registry left running ({why})", file=sys.stderr)
            if not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
