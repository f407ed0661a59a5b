"""Benchmark layer.capture (and unpack_archive) on a 50 MB file + 2,000 small files.

    python3 bench/capture_bench.py [--runs 5] [--dir /tmp]

Reports the best of N runs (page cache warm: the tree was just written, as an upper dir is
right after a step), for the whole tree and for each half, in MB/s of tar bytes produced.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stepbuild.layers.capture import capture  # noqa: E402
from stepbuild.layers.unpack import unpack_archive  # noqa: E402


def make_tree(top: Path, big: bool, small: bool) -> None:
    top.mkdir()
    if big:
        (top / "big.bin").write_bytes(os.urandom(50 << 20))
    if small:
        for d in range(40):
            sub = top / "src" / f"pkg{d:02}"
            sub.mkdir(parents=True)
            for f in range(50):
                (sub / f"mod{f:02}.py").write_bytes(os.urandom(512 + 37 * f))


def best(fn: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        for label, big, small in [
            ("50 MB + 2,000 files", True, True),
            ("50 MB file", True, False),
            ("2,000 small files", False, True),
        ]:
            tree = base / label.replace(" ", "_").replace(",", "")
            make_tree(tree, big, small)
            tar = base / "layer.tar"
            blob = capture(tree, [], tar)
            assert blob is not None
            t = best(lambda tree=tree, tar=tar: capture(tree, [], tar), args.runs)
            print(f"capture {label:22} {blob.size / 1e6:7.1f} MB  {t * 1000:7.1f} ms  "
                  f"{blob.size / 1e6 / t:7.0f} MB/s")
            root = base / "root"

            def unpack(root: Path = root, tar: Path = tar) -> None:
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir()
                unpack_archive(tar, root, "/")

            t = best(unpack, args.runs)
            print(f"unpack  {label:22} {blob.size / 1e6:7.1f} MB  {t * 1000:7.1f} ms  "
                  f"{blob.size / 1e6 / t:7.0f} MB/s")
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
