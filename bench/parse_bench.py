"""Benchmark of `stepbuild parse` on a generated, realistic 1,000-instruction Stepfile.

Measures
  cold   whole processes, N runs each, stdout to /dev/null: `python -c pass`, `import lark`,
         importing stepbuild and loading the grammar, `python -m stepbuild parse -f FILE`,
         the same with an empty grammar cache, and the `stepbuild` console script if there
         is one (.venv/bin/stepbuild, or --script PATH). Subtracting rows shows where a
         run's time goes.
  warm   in-process `parse_syntax(text)` and `parse(text)` repeated after one untimed call:
         median and min per parse, and per instruction.

Usage: python bench/parse_bench.py [--instructions 1000] [--runs 20] [--warm-runs 50]
                                   [--python PATH] [--script PATH] [--json] [--profile]
Run it with the real interpreter (not a pyenv shim) or pass --python: shims add their own
start-up. The target is a whole `stepbuild parse` process under 150 ms.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_COLD_MS = 150.0

# --- the generated Stepfile ---------------------------------------------------------------

PACKAGES = (
    "build-essential", "ca-certificates", "curl", "git", "gnupg", "jq", "less", "libffi-dev",
    "libpq-dev", "libssl-dev", "locales", "make", "openssh-client", "pkg-config", "procps",
    "python3-dev", "rsync", "tzdata", "unzip", "vim", "wget", "xz-utils", "zlib1g-dev",
)
BASES = ("debian:bookworm-slim", "python:3.11-slim", "alpine:3.19", "golang:1.22",
         "node:20-bookworm", "ubuntu:22.04", "gcr.io/distroless/static-debian12:nonroot")


class _Writer:
    """Emits instructions of the kinds real Stepfiles use, counting them."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.parts: list[str] = []
        self.count = 0
        self.stages = 0

    def emit(self, text: str, comment: bool = False) -> None:
        if comment:
            what = self.rng.choice(["build", "deps", "app"])
            self.parts.append(f"# step {self.count + 1}: {what}")
        self.parts.append(text)
        self.count += 1

    def from_(self) -> None:
        self.stages += 1
        platform = "--platform=$BUILDPLATFORM " if self.rng.random() < 0.3 else ""
        self.parts.append("")
        self.emit(f"FROM {platform}{self.rng.choice(BASES)} AS stage{self.stages}")

    def run_continued(self) -> None:
        pkgs = self.rng.sample(PACKAGES, self.rng.randint(4, 12))
        body = " \\\n        ".join(pkgs)
        mount = ("--mount=type=cache,target=/var/cache/apt,sharing=locked \\\n    "
                 if self.rng.random() < 0.4 else "")
        self.emit(
            f"RUN {mount}apt-get update \\\n"
            f"    && apt-get install -y --no-install-recommends \\\n        {body} \\\n"
            "    && rm -rf /var/lib/apt/lists/*", comment=self.rng.random() < 0.3)

    def run_heredoc(self) -> None:
        lines = [f"echo step {self.count} >> /log/steps" for _ in range(self.rng.randint(2, 6))]
        quoted = "'EOF'" if self.rng.random() < 0.5 else "EOF"
        self.emit("RUN <<" + quoted + "\nset -eux\n" + "\n".join(lines) + "\nEOF")

    def run_simple(self) -> None:
        self.emit(self.rng.choice([
            'RUN ["/bin/sh", "-c", "make -j$(nproc) install"]',
            "RUN --mount=type=bind,source=go.mod,target=go.mod --network=none go build ./...",
            "RUN pip install --no-cache-dir -r requirements.txt",
            'RUN set -eux; for f in a b c; do echo "$f" > "/tmp/$f"; done',
            "RUN --mount=type=secret,id=npmrc,target=/root/.npmrc npm ci --omit=dev",
        ]))

    def copy(self) -> None:
        flags = self.rng.choice(["", "--chown=1000:1000 ", "--chmod=0644 ", "--link ",
                                 f"--from=stage{max(self.stages - 1, 1)} "])
        if self.rng.random() < 0.15:
            self.emit(f"COPY {flags}<<conf.ini /etc/app/\n[main]\nlevel = {self.count}\nconf.ini")
        elif self.rng.random() < 0.3:
            self.emit(f'COPY {flags}["src/a b.txt", "src/c.txt", "/app/"]')
        else:
            self.emit(f"COPY {flags}src/ pkg/{self.count}/ /app/")

    def other(self) -> None:
        n = self.count
        choices = [  # (weight, text): roughly how often real Stepfiles use each
            (10, f'ENV APP_HOME=/app PATH=/app/bin:$PATH VERSION_{n}="1.{n}"'),
            (3, f"ENV LEGACY_{n} value with spaces"),
            (8, f"ARG VERSION_{n}=1.{n}"),
            (3, "ARG TARGETOS TARGETARCH"),
            (6, f'LABEL org.opencontainers.image.version="1.{n}" build="{n}" \\\n'
                '      org.opencontainers.image.source="https://example.com/app"'),
            (8, f"WORKDIR /app/{n}"),
            (4, "USER 1000:1000"),
            (3, f"EXPOSE {8000 + n % 100}/tcp 443"),
            (2, 'VOLUME ["/data"]'),
            (3, f"ADD --checksum=sha256:{'ab' * 32} https://example.com/{n}.tar.gz /tmp/"),
            (2, "HEALTHCHECK --interval=30s --timeout=3s --retries=3 \\\n"
                "  CMD curl -f http://localhost/ || exit 1"),
            (1, 'SHELL ["/bin/bash", "-o", "pipefail", "-c"]'),
            (1, "ONBUILD RUN make -C /app"),
            (1, "STOPSIGNAL SIGTERM"),
            (3, 'CMD ["/app/bin/server", "--port", "8080"]'),
            (2, 'ENTRYPOINT ["/usr/bin/tini", "--"]'),
        ]
        weights, texts = zip(*choices, strict=True)
        self.emit(self.rng.choices(texts, weights)[0])


def generate_stepfile(instructions: int = 1000, seed: int = 1) -> str:
    """A Stepfile with exactly `instructions` instructions, in the mix real files have."""
    rng = random.Random(seed)
    out = _Writer(rng)
    out.parts.append("# syntax=docker/dockerfile:1")
    out.from_()
    steps = [(out.run_continued, 12), (out.run_heredoc, 6), (out.run_simple, 10),
             (out.copy, 18), (out.other, 50), (out.from_, 4)]
    kinds, weights = zip(*steps, strict=True)
    while out.count < instructions:
        rng.choices(kinds, weights)[0]()
    return "\n".join(out.parts) + "\n"


# --- timing -------------------------------------------------------------------------------


def _summary(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
            "runs": len(ms)}


def time_process(argv: list[str], runs: int, env: dict[str, str] | None = None,
                 fresh_cache: bool = False) -> dict[str, float]:
    """Wall time of a whole process, stdout to /dev/null; fails loudly on a non-zero exit."""
    samples = []
    for _ in range(runs):
        run_env = dict(env or os.environ)
        with tempfile.TemporaryDirectory() as cache:
            if fresh_cache:
                run_env["XDG_CACHE_HOME"] = cache
            start = time.perf_counter()
            done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  cwd=REPO, env=run_env, check=False)
            samples.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n"
                             f"{done.stderr.decode(errors='replace')}")
    return _summary(samples)


def time_in_process(function, text: str, runs: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    function(text)  # untimed: compiles or loads the grammar
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        function(text)
        samples.append(time.perf_counter() - start)
    return _summary(samples)


def profile_warm(text: str, repeat: int = 20, top: int = 10) -> str:
    from stepbuild.frontend.parse import parse

    parse(text)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repeat):
        parse(text)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instructions", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=20, help="runs per cold (process) row")
    ap.add_argument("--warm-runs", type=int, default=50, help="in-process parses")
    ap.add_argument("--python", default=sys.executable, help="interpreter for cold runs")
    ap.add_argument("--script", help="a `stepbuild` console script (default .venv/bin/stepbuild)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--profile", action="store_true", help="cProfile the warm parse, top 10")
    ap.add_argument("--keep", action="store_true", help="keep the generated Stepfile")
    options = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from stepbuild.frontend.parse import parse, parse_syntax

    text = generate_stepfile(options.instructions)
    stepfile = parse(text, "Stepfile")
    assert len(stepfile.instructions) == options.instructions, len(stepfile.instructions)

    workdir = Path(tempfile.mkdtemp(prefix="stepbuild-bench-"))
    path = workdir / "Stepfile"
    path.write_text(text, encoding="utf-8")
    py = options.python
    script = options.script or (str(REPO / ".venv" / "bin" / "stepbuild")
                                if (REPO / ".venv" / "bin" / "stepbuild").exists() else None)
    cli = [py, "-m", "stepbuild", "parse", "-f", str(path)]
    load = "import stepbuild.frontend.parse as p; p._parser()"
    rows: list[tuple[str, list[str], dict[str, object]]] = [
        ("python -c pass", [py, "-c", "pass"], {}),
        ("python -c 'import lark'", [py, "-c", "import lark"], {}),
        ("import stepbuild.frontend.parse + load grammar", [py, "-c", load], {}),
        ("python -m stepbuild parse -f FILE", cli, {}),
        ("  same, empty grammar cache", cli, {"fresh_cache": True}),
    ]
    if script:
        rows.append(("stepbuild parse -f FILE (console script)",
                     [script, "parse", "-f", str(path)], {}))
    try:
        time_process(cli, 1)  # warms the OS file cache and lark's grammar cache
        cold = {label: time_process(args, options.runs, **kw)  # type: ignore[arg-type]
                for label, args, kw in rows}
        warm = {
            "parse_syntax(text)": time_in_process(parse_syntax, text, options.warm_runs),
            "parse(text)": time_in_process(parse, text, options.warm_runs),
        }
    finally:
        if not options.keep:
            path.unlink()
            workdir.rmdir()
    for result in warm.values():
        result["per_instruction_us"] = result["median_ms"] * 1000 / options.instructions

    results = {
        "python": py,
        "python_version": subprocess.run([py, "-c", "import sys; print(sys.version.split()[0])"],
                                         capture_output=True, text=True).stdout.strip(),
        "instructions": options.instructions,
        "lines": text.count("\n"),
        "bytes": len(text.encode()),
        "cold": cold,
        "warm": warm,
        "target_cold_ms": TARGET_COLD_MS,
        "stepfile": str(path) if options.keep else None,
    }
    if options.profile:
        results["profile"] = profile_warm(text)
    if options.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0


def print_table(results: dict) -> None:  # type: ignore[type-arg]
    print(f"stepbuild parse benchmark: {results['instructions']} instructions, "
          f"{results['lines']} lines, {results['bytes']} bytes; Python "
          f"{results['python_version']} ({results['python']})")
    print()
    print(f"{'cold: whole process':<44} {'median ms':>10} {'min ms':>8} {'runs':>5}")
    for label, r in results["cold"].items():
        print(f"{label:<44} {r['median_ms']:>10.1f} {r['min_ms']:>8.1f} {r['runs']:>5}")
    cli = results["cold"]["python -m stepbuild parse -f FILE"]["median_ms"]
    verdict = "meets" if cli < results["target_cold_ms"] else "MISSES"
    print(f"  -> {verdict} the {results['target_cold_ms']:.0f} ms target")
    print()
    print(f"{'warm: in process':<44} {'median ms':>10} {'min ms':>8} {'µs/instr':>9}")
    for label, r in results["warm"].items():
        print(f"{label:<44} {r['median_ms']:>10.2f} {r['min_ms']:>8.2f} "
              f"{r['per_instruction_us']:>9.1f}")
    if results.get("stepfile"):
        print(f"\nStepfile kept at {results['stepfile']}")
    if results.get("profile"):
        print("\ncProfile of the warm parse (20 parses), top 10 by cumulative time:")
        print(results["profile"])


if __name__ == "__main__":
    raise SystemExit(main())
