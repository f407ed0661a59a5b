"""A RUN that nests 10,000 directories, end to end (issue 11 item 11).

Before, capture died of RecursionError, the step's temp dir stayed in tmp/ (shutil.rmtree
died too), and a tar holding such a tree could not be applied. Now: the build, its exports
(type=local, type=tar, type=oci), the oci archive imported as the base of another build that
changes the bottom file, `check`, `rmi` and `prune` all work and leave tmp/ empty. The store
lives on tmpfs where there is one (tests/deeptrees.py): this disk's rmdir is slow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stepbuild.layers.tar import TarReader
from tests.deeptrees import LEVELS, chain_depth, fast_tmp_dir
from tests.integration.builds import Stepbuild, base_image, write_context

# busybox sh's `cd` cannot go below PATH_MAX (4,096 bytes: ~2,040 levels of `d/`), so the
# step reaches the bottom through symlinks, each naming 1,000 more levels (a symlink holds
# at most PATH_MAX bytes; the kernel follows 40): /.s10 is /deep/d/…/d, 10,000 levels down.
THOUSAND = 'p=d; i=1; while [ $i -lt 1000 ]; do p=$p/d; i=$((i+1)); done'
LINKS = ('mkdir -p /deep && prev=/deep; for k in 1 2 3 4 5 6 7 8 9 10; do'
         ' {mkdir}ln -s $prev/$p /.s$k && prev=/.s$k; done')
UNLINK = "for k in 1 2 3 4 5 6 7 8 9 10; do rm /.s$k; done"
# (mkdir -p relative to the last link: from / every mkdir would walk all the levels above)
MAKE = (f"FROM base\nRUN {THOUSAND} && {LINKS.format(mkdir='cd $prev && mkdir -p $p && ')}"
        f" && echo bottom > /.s10/f && {UNLINK}\n")
CHANGE = f"RUN {THOUSAND} && {LINKS.format(mkdir='')} && echo seen >> /.s10/f && {UNLINK}\n"
assert LEVELS == 10_000
SLOW = 900  # seconds a command may take on a busy machine (it takes far less)


@dataclass
class Deep:
    sb: Stepbuild
    work: Path
    out: Path


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deep]:
    with fast_tmp_dir(tmp_path_factory.mktemp("deep")) as work:
        sb = Stepbuild(work / "store")
        base_image(sb, work)
        out = work / "out"
        sb("build", "-q", "-t", "deep", "-o", f"type=local,dest={out}/rootfs",
           "-o", f"type=tar,dest={out}/rootfs.tar", "-o", f"type=oci,dest={out}/deep.tar",
           str(write_context(work / "make", MAKE)), timeout=SLOW)
        yield Deep(sb, work, out)


def _tmp_entries(sb: Stepbuild) -> list[str]:
    return sorted(p.name for p in (sb.root / "tmp").iterdir())


def test_the_build_and_its_exports_hold_every_level(deep: Deep) -> None:
    assert chain_depth(deep.out / "rootfs" / "deep") == (LEVELS, b"bottom\n")
    bottom = b"deep/" + b"d/" * LEVELS + b"f"
    with open(deep.out / "rootfs.tar", "rb") as f:
        assert any(h.name == bottom for h in TarReader(f))
    assert _tmp_entries(deep.sb) == []


def test_the_oci_archive_is_a_base_a_step_changes_at_the_bottom(deep: Deep) -> None:
    """Import applies the 10,000-level layer; the RUN's capture walks the deep lower dirs
    (only the changed file goes in its layer); the export flattens both."""
    change = f"FROM oci-archive:{deep.out}/deep.tar\n{CHANGE}"
    out = deep.out / "changed"
    deep.sb("build", "-q", "-t", "changed", "-o", f"type=local,dest={out}",
            str(write_context(deep.work / "change", change)), timeout=SLOW)
    assert chain_depth(out / "deep") == (LEVELS, b"bottom\nseen\n")
    assert _tmp_entries(deep.sb) == []


def test_check_rmi_and_prune(deep: Deep) -> None:
    sb = deep.sb
    assert sb("check", timeout=SLOW).stdout.strip() == "store is consistent"
    sb("rmi", "deep")
    sb("rmi", "changed", check=False)  # made by the test before, when it runs
    pruned = sb("prune", "-f", "--filter", "until=0s", timeout=SLOW).stdout
    assert "removed 0 layers" not in pruned, pruned
    assert sb("check", timeout=SLOW).stdout.strip() == "store is consistent"
    assert _tmp_entries(sb) == []
    assert not any((layer / "diff" / "deep").exists() for layer in (sb.root / "layers").iterdir())
