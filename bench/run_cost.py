"""The marginal cost of one RUN step: (a cold build of FROM base + 20 RUNs - the same build
with none) / 20, for one or more stepbuild trees run in turns.

runs20 in build_bench.py divides the whole 20-RUN build by 20, start-up and FROM included;
this takes them out, so a change to the per-step path (the sandbox, its cgroup, the layer
capture) shows as it is. Trees are checkouts of this project (e.g. `git worktree add
/tmp/before REV`); each is run as `PYTHON -m stepbuild` with PYTHONPATH=TREE, every build
`--no-cache`, the trees' builds interleaved round by round so machine noise hits all alike.

    sudo .venv/bin/python bench/run_cost.py --tree before=/tmp/before --tree after=. --rounds 7

Needs root (the builds do) and Debian's busybox-static (scripts/make-busybox-rootfs.sh).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
RUNS = 20


def _contexts(work: Path) -> dict[str, Path]:
    """The base image's context and the two measured ones (0 and RUNS RUN steps)."""
    base = work / "base"
    base.mkdir()
    subprocess.run(["sh", str(PROJECT / "scripts" / "make-busybox-rootfs.sh"),
                    str(base / "busybox-rootfs.tar")], check=True, stdout=subprocess.DEVNULL)
    (base / "Stepfile").write_text("FROM scratch\nADD busybox-rootfs.tar /\n")
    none, many = work / "r0", work / f"r{RUNS}"
    none.mkdir()
    many.mkdir()
    (none / "Stepfile").write_text("FROM base\nLABEL runs=0\n")
    (many / "Stepfile").write_text("FROM base\n" + "".join(
        f"RUN echo {i} > /f_{i}\n" for i in range(RUNS)))
    return {"base": base, "none": none, "many": many}


def _build(python: str, tree: Path, store: Path, context: Path, *flags: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env |= {"PYTHONPATH": str(tree), "STEPBUILD_ROOT": str(store)}
    start = time.perf_counter()
    subprocess.run([python, "-m", "stepbuild", "build", "-q", *flags, str(context)], cwd=tree,
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", required=True, metavar="NAME=DIR",
                    help="a stepbuild checkout to measure (repeat to compare)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter, with stepbuild's dependencies")
    options = ap.parse_args()
    trees = {name: Path(path).resolve() for name, _, path in
             (spec.partition("=") for spec in options.tree)}
    with tempfile.TemporaryDirectory(prefix="run-cost-") as tmp:
        work = Path(tmp)
        contexts = _contexts(work)
        costs: dict[str, list[float]] = {name: [] for name in trees}
        for name, tree in trees.items():  # a store each, its base built, .pyc files warm
            _build(options.python, tree, work / name, contexts["base"], "-t", "base")
            for context in ("none", "many"):
                _build(options.python, tree, work / name, contexts[context], "--no-cache")
        for round_ in range(options.rounds):
            order = list(trees.items())
            for name, tree in order if round_ % 2 else reversed(order):
                args = (options.python, tree, work / name)
                none = _build(*args, contexts["none"], "--no-cache")
                many = _build(*args, contexts["many"], "--no-cache")
                costs[name].append((many - none) / RUNS * 1000)
    print(f"marginal cost of a RUN step, ms: median (min-max) over {options.rounds} rounds")
    for name, values in costs.items():
        print(f"  {name}: {statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
