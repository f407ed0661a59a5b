"""Start-up before and after a change: the same commands against two source trees, alternating.

A refactoring that moves code around can make every command slower by what it imports, so this
compares this tree with another revision in one run, on the two paths where start-up is most of
the time:

  parse   `python -m stepbuild parse -f FILE` on the generated 1,000-instruction Stepfile of
          parse_bench.py (grammar cache warm: the first run of each tree is untimed)
  noop    `python -m stepbuild build -t app CONTEXT` when nothing changed (the whole-build
          fingerprint answers it), on a 2,000-file context, each tree with its own store;
          needs root, as every build does

Runs alternate between the trees (before, after, before, …) so that a change of machine load
hits both alike; each row gives the median and range, and the ratio after / before.

Usage: python bench/startup_bench.py --before REV [--runs 30] [--json]
REV is any git revision of this repository; it is checked out into a temporary worktree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from parse_bench import generate_stepfile  # noqa: E402

CONTEXT_FILES = 2000


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """`rev` checked out in a temporary dir (a detached git worktree), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="stepbuild-before-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(path),
                        rev], check=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                           check=False)


def run_env(tree: Path, store: Path) -> dict[str, str]:
    # Bytecode is written (the warm-up runs compile each tree once), as an installed
    # stepbuild runs: an environment that forbids it would time the compiler instead.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(tree), "STEPBUILD_ROOT": str(store)}


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed in {cwd}:\n{result.stderr.decode()}")
    return elapsed


def make_context(directory: Path) -> Path:
    """A context of CONTEXT_FILES small files and a Stepfile that copies them."""
    for i in range(CONTEXT_FILES):
        sub = directory / "src" / f"d{i % 40}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.txt").write_text(f"file {i}\n")
    (directory / "Stepfile").write_text("FROM scratch\nCOPY src /app/src\n")
    return directory


def compare(scenario: str, argv: list[str], trees: dict[str, Path], stores: dict[str, Path],
            runs: int) -> dict[str, dict[str, float]]:
    """Warm each tree once, then time `runs` alternating runs of each; seconds."""
    samples: dict[str, list[float]] = {name: [] for name in trees}
    for name, tree in trees.items():
        for _ in range(2):  # the grammar cache, the fingerprint record, the page cache
            timed([sys.executable, "-m", "stepbuild", *argv], run_env(tree, stores[name]), tree)
    for _ in range(runs):
        for name, tree in trees.items():
            samples[name].append(timed([sys.executable, "-m", "stepbuild", *argv],
                                       run_env(tree, stores[name]), tree))
    return {name: {"median": statistics.median(s), "min": min(s), "max": max(s)}
            for name, s in samples.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="the git revision to compare with")
    ap.add_argument("--runs", type=int, default=30, help="timed runs per tree and scenario")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    options = ap.parse_args(argv)
    results: dict[str, dict[str, dict[str, float]]] = {}
    with worktree(options.before) as before, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        trees = {"before": before, "after": REPO}
        stores = {name: work / f"store-{name}" for name in trees}
        stepfile = work / "Stepfile.bench"
        stepfile.write_text(generate_stepfile(1000))
        results["parse"] = compare("parse", ["parse", "-f", str(stepfile)], trees, stores,
                                   options.runs)
        if os.geteuid() == 0:
            context = make_context(work / "context")
            results["noop"] = compare("noop", ["build", "-q", "-t", "app", str(context)],
                                      trees, stores, options.runs)
        else:
            print("noop: skipped (a build needs root)", file=sys.stderr)
    if options.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"| scenario | before ({options.before}) s | after s | after / before |")
    print("|---|---|---|---|")
    for scenario, rows in results.items():
        b, a = rows["before"], rows["after"]
        print(f"| {scenario} | {b['median']:.3f} ({b['min']:.3f}-{b['max']:.3f}) "
              f"| {a['median']:.3f} ({a['min']:.3f}-{a['max']:.3f}) "
              f"| {a['median'] / b['median']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
