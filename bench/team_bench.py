"""The team cache side by side: a colleague builds from a registry cache someone else filled.

    sudo python3 bench/team_bench.py [--rounds 3] [--peers docker-buildkit,buildah-overlay]

Workload (generated into a temp dir): the common multi-stage shape. A `toolchain` stage makes a
200 MiB random file and takes 3 s (the expensive install), an artifact is derived from it, and
the app stage takes only the artifact (`COPY --from`) plus 100 context files.

For each builder, builder A builds once with its registry cache export (untimed) into the
registry the peers' setup runs on 127.0.0.1:5000. Then, each round, builder B starts from an
empty cache (only `base` present) and builds the same Dockerfile importing that cache: that
build is timed. The artifact in B's image tells whether B reused A's toolchain (same bytes) or
ran it again (other random bytes): the `reused` column.

- stepbuild: `--cache-to type=registry,ref=…,mode=max` / `--cache-from type=registry,ref=…`;
  B's store is fresh each round (base built untimed).
- BuildKit (dockerd, the peers' docker-buildkit): `--build-arg BUILDKIT_INLINE_CACHE=1` and a
  push / `--cache-from IMAGE`, the cache the docker driver offers (a `mode=max` registry
  export needs a separate buildkitd, which the peers' setup does not run). Inline cache holds
  the final image's layers only, but its keys chain through the toolchain's: the `COPY --from`
  matches without the toolchain being run or fetched.
- Buildah (`buildah-overlay`): `--layers --cache-to REPO` / `--cache-from REPO`
  (`--tls-verify=false`: the registry is plain HTTP). B: every image but `base` removed.

Peers come up through build_bench's setup (the peers' own script). Needs root.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_bench import (  # noqa: E402  (the sibling script, not a package)
    PROJECT,
    ROOTFS_SCRIPT,
    Failed,
    _revision,
    _tail,
    builder_env,
    services_up,
    setup_peers,
    stop_services,
    timed_run,
    wait_quiet,
)

REGISTRY = "127.0.0.1:5000"
PEERS = ("docker-buildkit", "buildah-overlay")
TIMEOUT = 900
DOCKERFILE = """\
FROM base AS toolchain
RUN dd if=/dev/urandom of=/toolchain bs=1M count=200 2>/dev/null && sleep 3
RUN head -c 64 /toolchain | od -An -tx1 | tr -d ' \\n' > /artifact
FROM base
COPY --from=toolchain /artifact /app/artifact
COPY data/ /app/data/
WORKDIR /app
CMD ["sh"]
"""


def make_context(ctx: Path) -> None:
    rng = random.Random(7)
    (ctx / "data").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    for i in range(100):
        (ctx / "data" / f"f{i:03d}.txt").write_bytes(rng.randbytes(rng.randint(100, 4000)))


def run(argv: list[str], log: Path, env: dict[str, str] | None = None) -> str:
    """Run a command (output to `log`); return its stdout+stderr; Failed if it fails."""
    result = subprocess.run(argv, env=env or builder_env(), capture_output=True, text=True,
                            timeout=TIMEOUT, cwd=PROJECT)
    log.write_text(f"$ {shlex.join(argv)}\n{result.stdout}{result.stderr}")
    if result.returncode != 0:
        raise Failed(f"{shlex.join(argv[:4])}… failed ({result.returncode}): {_tail(log)}")
    return result.stdout + result.stderr


class Team:
    """One builder's A (export once) and B (import, timed) sides."""

    name = ""

    def export(self, logs: Path) -> str:  # A's build; returns A's artifact
        raise NotImplementedError

    def prepare(self, logs: Path) -> None:  # untimed: B's empty cache
        raise NotImplementedError

    def import_command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def artifact(self, logs: Path) -> str:  # the artifact in B's image
        raise NotImplementedError


class StepbuildTeam(Team):
    name = "stepbuild"

    def __init__(self, python: str, tmp: Path, ctx: Path, base_ctx: Path) -> None:
        self.python, self.tmp, self.ctx, self.base_ctx = python, tmp, ctx, base_ctx
        self.ref = f"{REGISTRY}/team-bench/stepbuild-cache:{os.getpid()}"
        self.store = tmp / "store-a"

    def _cli(self, *args: str) -> list[str]:
        return [self.python, "-m", "stepbuild", *args]

    def _env(self) -> dict[str, str]:
        return builder_env(STEPBUILD_ROOT=str(self.store))

    def _fresh_store(self, name: str, logs: Path) -> None:
        shutil.rmtree(self.store, ignore_errors=True)
        self.store = self.tmp / name
        run(self._cli("build", "-t", "base", str(self.base_ctx)), logs / "sb-base.log",
            self._env())

    def export(self, logs: Path) -> str:
        self._fresh_store("store-a", logs)
        run(self._cli("build", "-t", "out", "--cache-to",
                      f"type=registry,ref={self.ref},mode=max", str(self.ctx)),
            logs / "sb-export.log", self._env())
        return self.artifact(logs)

    def prepare(self, logs: Path) -> None:
        self._fresh_store("store-b", logs)

    def import_command(self) -> tuple[list[str], dict[str, str]]:
        return (self._cli("build", "-t", "out", "--cache-from", f"type=registry,ref={self.ref}",
                          str(self.ctx)), self._env())

    def artifact(self, logs: Path) -> str:
        return run(self._cli("run", "out", "cat", "/app/artifact"), logs / "sb-artifact.log",
                   self._env()).strip()


class BuildkitTeam(Team):
    name = "docker-buildkit"

    def __init__(self, work_dir: Path, ctx: Path) -> None:
        self.docker = ["env", f"DOCKER_HOST=unix://{work_dir}/docker/docker.sock",
                       "DOCKER_BUILDKIT=1", "/usr/bin/docker"]
        self.ctx = ctx
        self.image = f"{REGISTRY}/team-bench/buildkit:{os.getpid()}"

    def export(self, logs: Path) -> str:
        self.prepare(logs)
        run([*self.docker, "build", "--network", "none", "--build-arg",
             "BUILDKIT_INLINE_CACHE=1", "-t", self.image, str(self.ctx)], logs / "bk-export.log")
        run([*self.docker, "push", self.image], logs / "bk-push.log")
        artifact = run([*self.docker, "run", "--rm", "--network", "none", self.image, "cat",
                        "/app/artifact"], logs / "bk-artifact.log").strip()
        return artifact

    def prepare(self, logs: Path) -> None:
        for argv in ([*self.docker, "rmi", "-f", "out-team", self.image],
                     [*self.docker, "builder", "prune", "-af"]):
            subprocess.run(argv, capture_output=True, timeout=TIMEOUT)

    def import_command(self) -> tuple[list[str], dict[str, str]]:
        return ([*self.docker, "build", "--network", "none", "--cache-from", self.image,
                 "-t", "out-team", str(self.ctx)], builder_env())

    def artifact(self, logs: Path) -> str:
        return run([*self.docker, "run", "--rm", "--network", "none", "out-team", "cat",
                    "/app/artifact"], logs / "bk-artifact.log").strip()


class BuildahTeam(Team):
    name = "buildah-overlay"

    def __init__(self, work_dir: Path, ctx: Path) -> None:
        root = work_dir / "buildah-overlay"
        self.buildah = ["buildah", "--root", str(root / "root"), "--runroot", str(root / "run"),
                        "--storage-driver", "overlay"]
        self.ctx = ctx
        self.cache = f"{REGISTRY}/team-bench/buildah-cache-{os.getpid()}"

    def _build(self, cache_flag: str) -> list[str]:
        return [*self.buildah, "bud", "--isolation", "chroot", "--layers", cache_flag,
                self.cache, "--tls-verify=false", "-t", "out-team", "-f",
                str(self.ctx / "Dockerfile"), str(self.ctx)]

    def export(self, logs: Path) -> str:
        self.prepare(logs)
        run(self._build("--cache-to"), logs / "bah-export.log")
        return self.artifact(logs)

    def prepare(self, logs: Path) -> None:
        """Every image but `base` removed: the result, and the cache images a --cache-from
        build tags locally (`REPO:<key>`, which `rmi --prune` keeps: they are not dangling)."""
        listing = run([*self.buildah, "images", "--format", "{{.ID}} {{.Name}}"],
                      logs / "bah-images.log")
        keep = {line.split()[0] for line in listing.splitlines()
                if line.split()[1:] in (["localhost/base"], ["base"])}
        drop = sorted({line.split()[0] for line in listing.splitlines() if line.strip()} - keep)
        if not keep:
            raise Failed(f"buildah has no `base` image: {_tail(logs / 'bah-images.log')}")
        if drop:
            run([*self.buildah, "rmi", "-f", *drop], logs / "bah-rmi.log")

    def import_command(self) -> tuple[list[str], dict[str, str]]:
        return self._build("--cache-from"), builder_env()

    def artifact(self, logs: Path) -> str:
        container = run([*self.buildah, "from", "-q", "out-team"], logs / "bah-from.log").strip()
        try:
            return run([*self.buildah, "run", "--isolation", "chroot", container, "cat",
                        "/app/artifact"], logs / "bah-artifact.log").strip()
        finally:
            subprocess.run([*self.buildah, "rm", container], capture_output=True)


def measure(teams: list[Team], rounds: int, logs: Path, say: Callable[[str], None]
            ) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    exported: dict[str, str] = {}
    for team in teams:
        try:
            exported[team.name] = team.export(logs)
            results[team.name] = {"times": [], "reused": []}
        except Failed as exc:
            results[team.name] = {"error": f"export: {exc}"}
    for n in range(rounds):
        wait_quiet(60)
        order = teams[n % len(teams):] + teams[:n % len(teams)]
        for team in order:
            cell = results[team.name]
            if "error" in cell:
                continue
            try:
                team.prepare(logs)
                argv, env = team.import_command()
                subprocess.run(["sync"], check=False)
                log = logs / f"{team.name}.r{n + 1}.log"
                with log.open("w") as out:
                    rc, seconds = timed_run(argv, env, out, cwd=PROJECT)
                if rc != 0:
                    raise Failed(f"build failed ({rc}): {_tail(log)}")
                reused = team.artifact(logs) == exported[team.name]
            except Failed as exc:
                cell["error"] = str(exc)
                continue
            cell["times"].append(seconds)  # type: ignore[union-attr]
            cell["reused"].append(reused)  # type: ignore[union-attr]
            say(f"  r{n + 1} {team.name:<16} {seconds:7.2f} s  reused={reused}")
    return results


def render(results: dict[str, dict[str, object]], rounds: int) -> str:
    ours = results.get("stepbuild", {}).get("times") or []
    base = statistics.median(ours) if ours else None  # type: ignore[arg-type]
    lines = [f"# the team cache: a colleague's build from A's registry cache; {rounds} rounds,"
             f" median (min-max); stepbuild {_revision()}", "",
             "| builder | B's build s | reused A's toolchain | x stepbuild |", "|---|---|---|---|"]
    for name, cell in results.items():
        if "error" in cell:
            lines.append(f"| {name} | FAILED: {cell['error']} | | |")
            continue
        times: list[float] = cell["times"]  # type: ignore[assignment]
        reused: list[bool] = cell["reused"]  # type: ignore[assignment]
        median = statistics.median(times)
        ratio = f"{median / base:.2f}" if base else "-"
        lines.append(f"| {name} | {median:.2f} ({min(times):.2f}-{max(times):.2f}) | "
                     f"{sum(reused)}/{len(reused)} | {ratio} |")
    lines += ["", "x stepbuild: the builder's median / stepbuild's (> 1: stepbuild is faster)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {','.join(PEERS)}")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--work-dir", default="/var/tmp/peers", help="the peers' W")
    ap.add_argument("--no-install", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("team_bench: needs root", file=sys.stderr)
        return 2
    peers = [p for p in args.peers.split(",") if p]
    work_dir = Path(args.work_dir)
    tmp = Path(tempfile.mkdtemp(prefix="team-bench-", dir="/var/tmp"))
    logs = tmp / "logs"
    logs.mkdir()
    started_services = not services_up(work_dir)
    try:
        broken = setup_peers(peers, work_dir, not args.no_install, logs / "peers-setup.log")
        ctx, base_ctx = tmp / "ctx", tmp / "base-ctx"
        make_context(ctx)
        base_ctx.mkdir()
        subprocess.run(["sh", str(ROOTFS_SCRIPT), str(base_ctx / "busybox-rootfs.tar")],
                       check=True, capture_output=True)
        (base_ctx / "Stepfile").write_text("FROM scratch\nADD busybox-rootfs.tar /\n"
                                           'CMD ["sh"]\n')
        teams: list[Team] = [StepbuildTeam(args.python, tmp, ctx, base_ctx)]
        kinds = {"docker-buildkit": BuildkitTeam, "buildah-overlay": BuildahTeam}
        teams += [kinds[p](work_dir, ctx) for p in peers if p not in broken]
        for peer, why in broken.items():
            print(f"{peer}: CANNOT RUN ({why})", file=sys.stderr)
        results = measure(teams, args.rounds, logs, lambda s: print(s, file=sys.stderr))
        print(render(results, args.rounds))
        print(f"\nLogs: {logs}", file=sys.stderr)
    finally:
        if started_services:
            stop_services(work_dir)
        for store in tmp.glob("store-*"):
            shutil.rmtree(store, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
