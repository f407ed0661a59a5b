"""What explaining misses costs: a cached rebuild and a one-file change, before and after.

    python bench/explain_bench.py --before REV [--after REV] [--rounds 20]

Each revision is extracted with `git archive` into a temp dir and byte-compiled (as an
installed package is), with a store of its own holding the busybox `base`. Workload: FROM
base, `COPY . /app` of a 2,000-file context, one RUN. Scenarios, alternating between the
trees each round (the order flips every round):

  change1  one context file gets new bytes: COPY and RUN miss (an explanation is made)
  cached   the same build again: every step hits (a changing environment variable keeps the
           whole-build fingerprint from answering it, so the builder really runs)

Both trees build the same shared context, so each writes the changed file just before its
own change1. Reports the median and range of each, and the ratio after / before. Needs root,
as every build does.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.builds import EPOCH, Stepbuild, base_image  # noqa: E402

FILES = 2000
STEPFILE = "FROM base\nCOPY . /app\nRUN ls /app/data | wc -l > /n\n"


def extract(rev: str, dest: Path) -> Path:
    """`rev`'s tree in `dest`, byte-compiled."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest / "stepbuild")],
                   check=True, env=env)
    return dest


def build(tree: Path, store: Path, context: Path, nonce: str) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(STEPBUILD_ROOT=str(store), PYTHONPATH=str(tree), NONCE=nonce)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "stepbuild", "build", "-t", "app", *EPOCH,
                             str(context)], env=env, capture_output=True, text=True, cwd=tree)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    return seconds, result.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--rounds", type=int, default=20)
    options = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="explain-bench-") as tmp:
        work = Path(tmp)
        context = work / "context"
        (context / "data").mkdir(parents=True)
        for n in range(FILES):
            (context / "data" / f"f{n}.txt").write_bytes(os.urandom(300))
        (context / "Stepfile").write_text(STEPFILE)
        trees = {name: extract(rev, work / name)
                 for name, rev in (("before", options.before), ("after", options.after))}
        stores = {name: work / f"store-{name}" for name in trees}
        for name, store in stores.items():
            base_image(Stepbuild(store), work, *EPOCH)
            build(trees[name], store, context, "warm")
        times: dict[tuple[str, str], list[float]] = {}
        for round_ in range(options.rounds):
            for name in (("after", "before") if round_ % 2 else ("before", "after")):
                (context / "data" / "f7.txt").write_bytes(os.urandom(300))
                seconds, log = build(trees[name], stores[name], context, f"c{round_}")
                assert log.count("DONE") == 2, log
                times.setdefault((name, "change1"), []).append(seconds)
                seconds, log = build(trees[name], stores[name], context, f"h{round_}")
                assert "DONE" not in log, log
                times.setdefault((name, "cached"), []).append(seconds)
    for scenario in ("cached", "change1"):
        row = []
        for name in ("before", "after"):
            values = times[(name, scenario)]
            row.append(statistics.median(values))
            print(f"{scenario:8} {name:6} {row[-1] * 1000:7.1f} ms "
                  f"[{min(values) * 1000:.0f}–{max(values) * 1000:.0f}]")
        print(f"{scenario:8} after/before {row[1] / row[0]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
