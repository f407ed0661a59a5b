"""The emulated RUN's overhead, stepbuild beside BuildKit, Buildah and podman.

    sudo .venv/bin/python bench/emulation_bench.py [--rounds 3] [--warmup 1] [--runs 10]

One Stepfile shape, built on an amd64 busybox base (native) and on an arm64 busybox base (its
RUN steps run under QEMU user emulation, qemu-aarch64-static through binfmt_misc), by every
builder that can build it here:

  empty   FROM base + LABEL: the build's fixed cost (start-up, FROM, commit)
  execs   FROM base + N x `RUN for i in 1 2 3 4 5; do /bin/true; done` + LABEL: each RUN
          starts a shell that execs /bin/true five times (six emulated processes a step)
  cpu     FROM base + one `RUN uname -m > /arch && head -c 16777216 /dev/zero | sha256sum
          > /sum` + LABEL: busybox's sha256 of 16 MiB, CPU bound

Per round and builder: per-exec-RUN ms = (execs - empty) / N, CPU RUN ms = cpu - empty, for
each platform; the report gives their medians over the rounds, the emulation overhead
(emulated - native) and the ratios stepbuild / peer. Every build is cold (--no-cache; peers
get their clean command first) and each cpu build's result is checked inside the image:
/arch says the step ran as aarch64 (or x86_64) and /sum holds the right digest.

The bases are the same image for every builder: scripts/make-busybox-rootfs.sh and
scripts/make-arm64-busybox-rootfs.sh's rootfs tarballs, built by stepbuild into an image whose
config names the platform, exported as an OCI archive. stepbuild takes it as
`FROM oci-archive:FILE` (so no --platform is needed); the peers import it (buildah and podman
pull oci-archive:, docker through skopeo's docker-daemon:) as sb-emu-<arch> and build with
--platform linux/<arch>, with the peers' own commands and clean commands (bench/peers.sh).

The peers emulate through the host's binfmt_misc table and need its entry there with F: the
script mounts binfmt_misc on /proc/sys/fs/binfmt_misc if it is not, registers QEMU's line from
/usr/lib/binfmt.d/qemu-aarch64.conf (flags with F) if no entry is there, and removes both at
the end. stepbuild finds that entry and uses it (it would register the same line itself).

Needs root, qemu-user-static and arm64 as a dpkg architecture (scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform as machine
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_bench as bb  # noqa: E402  -- the peers' setup, services and load measure

PROJECT = bb.PROJECT
ARCHES = ("amd64", "arm64")  # native first, then emulated (on this amd64 machine)
WORKLOADS = ("empty", "execs", "cpu")
PEERS = ("docker-buildkit", "buildah-overlay", "podman")
EXEC_RUN = "RUN for i in 1 2 3 4 5; do /bin/true; done"
CPU_BYTES = 16 * 1024 * 1024
CPU_RUN = f"RUN uname -m > /arch && head -c {CPU_BYTES} /dev/zero | sha256sum > /sum"
UNAME = {"amd64": "x86_64", "arm64": "aarch64"}
ROOTFS_SCRIPTS = {"amd64": "make-busybox-rootfs.sh", "arm64": "make-arm64-busybox-rootfs.sh"}
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_NAME = "qemu-aarch64"
SUBCOMMANDS = ("bud", "build")  # where a peer's tool prefix ends in its build command


# --- the workload (pure) ------------------------------------------------------------------


def stepfile(base: str, workload: str, runs: int) -> str:
    """The Stepfile of `workload` on `base`; the same LABEL ends each, so the three differ
    only by their RUN steps."""
    steps = {"empty": [], "execs": [EXEC_RUN] * runs, "cpu": [CPU_RUN]}[workload]
    return "\n".join([f"FROM {base}", *steps, "LABEL bench=emulation"]) + "\n"


def cpu_check(arch: str) -> str:
    """The check inside a cpu build's image: the step's machine and its digest."""
    digest = hashlib.sha256(bytes(CPU_BYTES)).hexdigest()
    return (f'test "$(cat /arch)" = {UNAME[arch]} && test "$(cut -c1-64 /sum)" = {digest}'
            " && echo CONTENT-OK")


def with_platform(argv: list[str], arch: str) -> list[str]:
    """A peer's build command (from peers.sh) with `--platform linux/ARCH` before its `-t`."""
    at = argv.index("-t")
    return [*argv[:at], "--platform", f"linux/{arch}", *argv[at:]]


def tool_prefix(argv: list[str]) -> list[str]:
    """The tool invocation (storage root, runtime, DOCKER_HOST) of a peer's build command:
    everything before its `bud`/`build`."""
    at = next(i for i, word in enumerate(argv) if word in SUBCOMMANDS)
    return argv[:at]


# --- results (pure) -----------------------------------------------------------------------

Times = dict[tuple[str, str, str], list[float]]  # (builder, arch, workload) -> s per round


@dataclass(frozen=True)
class Cost:
    """A median over rounds with its range, in ms; None when no round measured it."""

    median: float | None
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, values: list[float]) -> Cost:
        if not values:
            return cls(None)
        return cls(statistics.median(values), min(values), max(values))

    def text(self) -> str:
        if self.median is None:
            return "FAILED"
        return f"{self.median:.1f} ({self.low:.1f}-{self.high:.1f})"


def per_run_costs(times: Times, builder: str, arch: str, runs: int) -> dict[str, list[float]]:
    """Per round, in ms: `execs` = (execs - empty) / runs, `cpu` = cpu - empty. Rounds pair
    up by position; a round where one of the builds failed is left out."""
    empty, execs, cpu = (times.get((builder, arch, w), []) for w in WORKLOADS)
    return {"execs": [(e - b) / runs * 1000 for b, e in zip(empty, execs, strict=False)],
            "cpu": [(c - b) * 1000 for b, c in zip(empty, cpu, strict=False)]}


@dataclass(frozen=True)
class Row:
    """One builder's per-RUN costs: native, emulated and the overhead, for both kinds."""

    builder: str
    native: dict[str, Cost]
    emulated: dict[str, Cost]

    def overhead(self, kind: str) -> float | None:
        emulated, native = self.emulated[kind].median, self.native[kind].median
        return None if emulated is None or native is None else emulated - native


def rows(times: Times, builders: list[str], runs: int) -> list[Row]:
    out = []
    for name in builders:
        native, emulated = (per_run_costs(times, name, arch, runs) for arch in ARCHES)
        out.append(Row(name, {k: Cost.of(v) for k, v in native.items()},
                       {k: Cost.of(v) for k, v in emulated.items()}))
    return out


RATIO_COLUMNS = ("native exec-RUN", "emulated exec-RUN", "exec overhead", "native CPU RUN",
                 "emulated CPU RUN", "CPU overhead")


def _figures(row: Row) -> list[float | None]:
    return [row.native["execs"].median, row.emulated["execs"].median, row.overhead("execs"),
            row.native["cpu"].median, row.emulated["cpu"].median, row.overhead("cpu")]


def ratios(table: list[Row], reference: str = "stepbuild") -> dict[str, list[float | None]]:
    """{peer: stepbuild's figure / the peer's, per RATIO_COLUMNS}: below 1, stepbuild is
    faster. None where either is missing or the peer's is not above 0."""
    ours = next((r for r in table if r.builder == reference), None)
    if ours is None:
        return {}
    mine = _figures(ours)
    out: dict[str, list[float | None]] = {}
    for row in table:
        if row.builder != reference:
            out[row.builder] = [None if a is None or b is None or b <= 0 else a / b
                                for a, b in zip(mine, _figures(row), strict=True)]
    return out


def render(table: list[Row], errors: dict[str, list[str]], unavailable: dict[str, str],
           runs: int) -> str:
    lines = [f"Per-RUN cost in ms, median (min-max) over the rounds. exec-RUN: one of {runs}"
             " RUN steps that each exec /bin/true 5 times; CPU RUN: sha256sum of 16 MiB.", "",
             "| builder | exec-RUN native | exec-RUN emulated | overhead | CPU RUN native |"
             " CPU RUN emulated | overhead |", "|---|---|---|---|---|---|---|"]
    for row in table:
        cells = []
        for kind in ("execs", "cpu"):
            extra = row.overhead(kind)
            cells += [row.native[kind].text(), row.emulated[kind].text(),
                      "-" if extra is None else f"+{extra:.1f}"]
        lines.append(f"| {row.builder} | " + " | ".join(cells) + " |")
    ratio = ratios(table)
    if ratio:
        lines += ["", "Ratio stepbuild / peer (below 1: stepbuild is faster):", "",
                  "| peer | " + " | ".join(RATIO_COLUMNS) + " |",
                  "|---" * (len(RATIO_COLUMNS) + 1) + "|"]
        for name, values in ratio.items():
            cells = ["-" if v is None else f"{v:.2f}" for v in values]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, why in unavailable.items():
        lines.append(f"\n{name}: CANNOT RUN: {why}")
    for key, messages in errors.items():
        for message in messages:
            lines.append(f"{key} FAILED {message}")
    return "\n".join(lines)


# --- the host's binfmt_misc entry, for the peers ------------------------------------------


def _binfmt_line() -> str:
    from stepbuild.sandbox.binfmt import CONF_DIR, read_registration

    registration = read_registration(Path(CONF_DIR), BINFMT_NAME)
    if registration is None:
        raise SystemExit(f"no {CONF_DIR}/{BINFMT_NAME}.conf: apt-get install qemu-user-static")
    return registration.with_fix_binary().line()


@contextmanager
def host_binfmt() -> Iterator[str]:
    """QEMU's aarch64 entry, with F, in the host's binfmt_misc table for the run: binfmt_misc
    mounted and the entry registered if they were not, both taken back at the end. An entry
    already there is used and left; one without F is refused (we do not change the host's)."""
    from stepbuild.sandbox.binfmt import Entry

    mounted = (BINFMT_DIR / "status").exists()
    if not mounted:
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)],
                       check=True)
    entry_path = BINFMT_DIR / BINFMT_NAME
    added = False
    try:
        if entry_path.exists():
            entry = Entry.parse(BINFMT_NAME, entry_path.read_text())
            if "F" not in entry.flags:
                raise SystemExit(f"{entry_path} has no F flag (flags: {entry.flags}); the "
                                 f"peers cannot emulate with it: echo -1 > {entry_path}")
            how = f"{BINFMT_NAME} was registered already (flags {entry.flags}); left as it was"
        else:
            (BINFMT_DIR / "register").write_text(_binfmt_line())
            added = True
            how = f"{BINFMT_NAME} registered for the run, removed at the end"
        yield how + ("" if mounted else f"; binfmt_misc mounted on {BINFMT_DIR} for the run")
    finally:
        if added and entry_path.exists():
            entry_path.write_text("-1")
        if not mounted:
            subprocess.run(["umount", str(BINFMT_DIR)], check=False)


# --- the builders -------------------------------------------------------------------------


@dataclass
class Contexts:
    """One context dir per (arch, workload): a Stepfile (stepbuild: FROM oci-archive:) and a
    Dockerfile (peers: FROM sb-emu-ARCH)."""

    root: Path
    archives: dict[str, Path]
    runs: int

    def dir(self, arch: str, workload: str) -> Path:
        return self.root / f"{arch}-{workload}"

    def write(self) -> None:
        for arch in ARCHES:
            for workload in WORKLOADS:
                ctx = self.dir(arch, workload)
                ctx.mkdir(parents=True)
                (ctx / "Stepfile").write_text(
                    stepfile(f"oci-archive:{self.archives[arch]}", workload, self.runs))
                (ctx / "Dockerfile").write_text(stepfile(f"sb-emu-{arch}", workload, self.runs))


class Stepbuild:
    name = "stepbuild"

    def __init__(self, python: str, store: Path) -> None:
        self.python, self.store = python, store

    def _run(self, *args: str, log: Path) -> subprocess.CompletedProcess[bytes]:
        with log.open("w") as out:
            return subprocess.run([self.python, "-m", "stepbuild", *args], cwd=PROJECT,
                                  env=bb.builder_env(STEPBUILD_ROOT=str(self.store)),
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                  timeout=bb.TIMEOUT)

    def clean(self, log: Path) -> None:
        pass  # --no-cache: every step runs again

    def command(self, ctx: Path, arch: str) -> tuple[list[str], dict[str, str]]:
        argv = [self.python, "-m", "stepbuild", "build", "--no-cache", "-f",
                str(ctx / "Stepfile"), "-t", "out", str(ctx)]
        return argv, bb.builder_env(STEPBUILD_ROOT=str(self.store))

    def verify(self, arch: str, log: Path) -> None:
        self._run("run", "out", "sh", "-c", cpu_check(arch), log=log)
        if "CONTENT-OK" not in log.read_text(errors="replace"):
            raise bb.Failed(f"content check failed: {bb._tail(log)}")


class Peer:
    """A peer, with the peers' own build and clean commands (bench/peers.sh)."""

    def __init__(self, name: str, work_dir: Path) -> None:
        self.name, self.work_dir = name, work_dir

    def _peers_sh(self, *args: str, **env: str) -> dict[str, Any]:
        return {"args": ["bash", str(bb.PEERS_SH), *args], "cwd": PROJECT,
                "env": bb.builder_env(**bb.PEERS_ENV, W=str(self.work_dir), **env)}

    def command(self, ctx: Path, arch: str) -> tuple[list[str], dict[str, str]]:
        call = self._peers_sh("cmd", self.name, "cold", BENCH_CTX=str(ctx))
        text = subprocess.run(capture_output=True, text=True, check=True, **call).stdout
        return with_platform(shlex.split(text), arch), bb.builder_env()

    def clean(self, log: Path) -> None:
        with log.open("w") as out:  # as the peers' bench: a failed clean is not an error
            subprocess.run(stdout=out, stderr=out, timeout=bb.TIMEOUT,
                           **self._peers_sh("clean", self.name))

    def verify(self, arch: str, log: Path) -> None:
        with log.open("w") as out:
            subprocess.run(stdout=out, stderr=out, timeout=bb.TIMEOUT,
                           **self._peers_sh("verify", self.name, BENCH_CHECK=cpu_check(arch)))
        if "CONTENT-OK" not in log.read_text(errors="replace"):
            raise bb.Failed(f"content check failed: {bb._tail(log)}")

    def import_base(self, arch: str, archive: Path, ctx: Path, log: Path) -> None:
        """The base archive as sb-emu-ARCH in the peer's own storage."""
        prefix = tool_prefix(self.command(ctx, arch)[0])
        name = f"sb-emu-{arch}"
        with log.open("a") as out:
            def run(argv: list[str]) -> str:
                done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=out, text=True,
                                      env=bb.builder_env(), timeout=bb.TIMEOUT)
                if done.returncode != 0:
                    raise bb.Failed(f"importing {archive.name} failed: {bb._tail(log, 2)}")
                return done.stdout.strip()

            if self.name.startswith("docker"):
                host = next(w.split("=", 1)[1] for w in prefix if w.startswith("DOCKER_HOST="))
                run(["skopeo", "copy", "-q", "--dest-daemon-host", host,
                     f"oci-archive:{archive}", f"docker-daemon:{name}:latest"])
            else:
                image = run([*prefix, "pull", "-q", f"oci-archive:{archive}"]).splitlines()[-1]
                run([*prefix, "tag", image, name])


Builder = Stepbuild | Peer


# --- setup --------------------------------------------------------------------------------


def make_archives(python: str, work: Path, log: Path) -> dict[str, Path]:
    """arch -> an OCI archive of the busybox base whose config names that arch."""
    from stepbuild.store.store import Store

    store = work / "base-store"
    archives = {}
    for arch in ARCHES:
        ctx = work / f"base-{arch}"
        ctx.mkdir()
        with log.open("a") as out:
            subprocess.run(["sh", str(PROJECT / "scripts" / ROOTFS_SCRIPTS[arch]),
                            str(ctx / "rootfs.tar")], check=True, stdout=out, stderr=out)
        (ctx / "Stepfile").write_text("FROM scratch\nADD rootfs.tar /\n"
                                      "ENV PATH=/bin:/usr/bin:/sbin:/usr/sbin\nCMD [\"sh\"]\n")
        cli = [python, "-m", "stepbuild"]
        env = bb.builder_env(STEPBUILD_ROOT=str(store))
        with log.open("a") as out:
            subprocess.run([*cli, "build", "-q", "-t", f"{arch}-unmarked", str(ctx)], env=env,
                           cwd=PROJECT, check=True, stdout=out, stderr=out)
        images = Store(store)  # the config names the arch (as `build --platform` will)
        descriptor = images.resolve(f"{arch}-unmarked")
        assert descriptor is not None
        manifest = images.manifest(descriptor)
        config = replace(images.config(manifest), architecture=arch, variant="")
        images.tag(arch, images.put_image(config, manifest.layers,
                                          dict(manifest.annotations or {})))
        archives[arch] = work / f"busybox-{arch}.oci.tar"
        with log.open("a") as out:
            subprocess.run([*cli, "export", arch, "-o", f"type=oci,dest={archives[arch]}",
                            "--compression", "none"], env=env, cwd=PROJECT, check=True,
                           stdout=out, stderr=out)
    return archives


def setup_peers(peers: list[str], work_dir: Path, install: bool, log: Path) -> dict[str, str]:
    """Install (if allowed and needed) and start the peers' services with the peers' own
    script; return {peer: why it cannot run}."""
    phases = ["versions", "start"]
    missing = bb._missing_tools(peers)
    if missing:
        if not install:
            return {p: f"not installed ({', '.join(missing)})" for p in peers}
        phases.insert(0, "install")
    env = {**os.environ, **bb.PEERS_ENV, "W": str(work_dir), "PEERS": " ".join(peers)}
    with log.open("w") as out:
        subprocess.run(["bash", str(bb.PEERS_DIR / "setup-and-bench.sh"), *phases], env=env,
                       stdout=out, stderr=subprocess.STDOUT, timeout=3600)
    return {}


def versions(python: str, work_dir: Path) -> list[str]:
    def first(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except OSError as exc:
            return str(exc)
        return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 \
            else f"unavailable ({(done.stderr.strip().splitlines() or ['?'])[-1]})"

    docker = ["/usr/bin/docker", "version", "--format", "docker {{.Server.Version}}"]
    return [f"stepbuild {bb._revision()}, {first([python, '--version'])}",
            first(["qemu-aarch64-static", "--version"]), first(["buildah", "--version"]),
            first(["podman", "--version"]),
            first(["env", f"DOCKER_HOST=unix://{work_dir}/docker/docker.sock", *docker]),
            f"kernel {machine.release()}, {os.cpu_count()} cpus"]


# --- the measurement ----------------------------------------------------------------------


@dataclass
class Bench:
    contexts: Contexts
    logs: Path
    times: Times = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)

    def one(self, builder: Builder, arch: str, workload: str, label: str) -> float:
        ctx = self.contexts.dir(arch, workload)
        log = self.logs / f"{builder.name}.{arch}.{workload}.{label}.log"
        builder.clean(log.with_suffix(".clean.log"))
        argv, env = builder.command(ctx, arch)
        os.sync()
        with log.open("w") as out:
            rc, seconds = bb.timed_run(argv, env, out, cwd=PROJECT)
        if rc != 0:
            raise bb.Failed(f"build failed ({rc}): {bb._tail(log, 3)} [{log}]")
        if workload == "cpu":
            builder.verify(arch, log.with_suffix(".check.log"))
        return seconds

    def round(self, builders: list[Builder], label: str, timed: bool) -> None:
        for builder in builders:
            for arch in ARCHES:
                for workload in WORKLOADS:
                    try:
                        seconds = self.one(builder, arch, workload, label)
                    except (bb.Failed, subprocess.SubprocessError, OSError) as exc:
                        key = f"{builder.name} {arch} {workload}"
                        self.errors.setdefault(key, []).append(f"{label}: {exc}")
                        print(f"{label:>4} {key} FAILED: {exc}", file=sys.stderr)
                        continue
                    print(f"{label:>4} {builder.name:<16} {arch} {workload:<5} "
                          f"{seconds:7.3f} s", file=sys.stderr)
                    if timed:
                        self.times.setdefault((builder.name, arch, workload), []).append(
                            seconds)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    ap.add_argument("--runs", type=int, default=10,
                    help="exec RUN steps in the execs build (default 10)")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"comma list of peers, or none (default {','.join(PEERS)})")
    ap.add_argument("--python", default=sys.executable, help="interpreter for stepbuild")
    ap.add_argument("--work-dir", default=os.environ.get("W", "/var/tmp/peers"),
                    help="the peers' work dir W (default /var/tmp/peers)")
    ap.add_argument("--no-install", action="store_true", help="never apt-get missing peers")
    ap.add_argument("--wait-quiet", type=float, default=60, metavar="S",
                    help="before each round, wait up to S s for the machine to go quiet")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (stores, logs)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or args.runs < 1:
        ap.error("--rounds and --runs must be >= 1, --warmup >= 0")
    unknown = {p for p in args.peers.split(",") if p} - {*PEERS, "none"}
    if unknown:
        ap.error(f"unknown peer {', '.join(sorted(unknown))}; choose from {', '.join(PEERS)}")
    return args


def _builders(peers: list[str], args: argparse.Namespace, tmp: Path, contexts: Contexts,
              unavailable: dict[str, str]) -> list[Builder]:
    builders: list[Builder] = [Stepbuild(args.python, tmp / "store")]
    for name in peers:
        if name in unavailable:
            continue
        peer = Peer(name, Path(args.work_dir))
        try:
            for arch in ARCHES:
                peer.import_base(arch, contexts.archives[arch], contexts.dir(arch, "empty"),
                                 tmp / "logs" / f"{name}.import.log")
        except (bb.Failed, subprocess.SubprocessError, OSError) as exc:
            unavailable[name] = str(exc)
            continue
        builders.append(peer)
    return builders


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if os.geteuid() != 0:
        raise SystemExit("emulation_bench.py needs root (builds, binfmt_misc)")
    peers = [p for p in args.peers.split(",") if p and p != "none"]
    tmp = Path(tempfile.mkdtemp(prefix="emulation-bench-", dir="/var/tmp"))
    logs = tmp / "logs"
    logs.mkdir()
    work_dir = Path(args.work_dir)
    started_services = bool(peers) and not bb.services_up(work_dir)
    print("command: " + shlex.join([sys.executable, *sys.argv]), file=sys.stderr)
    try:
        bb._check_python(args.python)
        contexts = Contexts(tmp / "ctx", make_archives(args.python, tmp, logs / "base.log"),
                            args.runs)
        contexts.write()
        unavailable = setup_peers(peers, work_dir, not args.no_install,
                                  logs / "peers-setup.log") if peers else {}
        with host_binfmt() as binfmt:
            builders = _builders(peers, args, tmp, contexts, unavailable)
            bench = Bench(contexts, logs)
            load_before, before, started = os.getloadavg(), bb._processes(), time.perf_counter()
            for number in range(args.warmup + args.rounds):
                if args.wait_quiet > 0:
                    bb.wait_quiet(args.wait_quiet)
                shift = number % len(builders)  # builders take turns going first
                order = builders[shift:] + builders[:shift]
                timed = number >= args.warmup
                label = f"r{number - args.warmup + 1}" if timed else f"w{number + 1}"
                bench.round(order, label, timed)
            load = bb.other_load(before, bb._processes(), time.perf_counter() - started)
        table = rows(bench.times, [b.name for b in builders], args.runs)
        print("\n".join([
            f"# emulated RUN (linux/arm64 on {machine.machine()}) vs native: {args.rounds} "
            f"rounds (+{args.warmup} warm-up)",
            "command: " + shlex.join([sys.executable, *sys.argv]),
            *versions(args.python, work_dir), f"binfmt_misc: {binfmt}", "",
            render(table, bench.errors, unavailable, args.runs), "",
            f"Load average {load_before[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the "
            f"end. Other processes used {load['cpu_seconds']:.1f} CPU-s during the runs "
            f"({load['share']:.0%} of the machine; "
            + (", ".join(f"{n} {c:.1f} s" for n, c in load["top"]) or "none") + ")"
            + (": NOISY" if load["share"] > 0.05 else "") + ".",
            "Logs: " + (str(logs) if args.keep else "(removed; --keep keeps them)")]))
        return 1 if unavailable or bench.errors else 0
    finally:
        if started_services:
            bb.stop_services(work_dir)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
