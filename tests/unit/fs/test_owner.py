"""fs/owner.py: a work file's name says whose it is, and whether that owner is dead."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from stepbuild.fs.owner import is_dead_work, owner_tag

PROJECT = Path(__file__).resolve().parents[3]


def _tag_of_an_exited_process() -> str:
    code = "from stepbuild.fs.owner import owner_tag; print(owner_tag())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONPATH": str(PROJECT)})
    return result.stdout.strip()


def test_our_own_work_is_alive() -> None:
    assert re.fullmatch(rf"@[0-9a-f]{{8}}\.{os.getpid()}\.[0-9]+", owner_tag())
    assert not is_dead_work(f"step-{owner_tag()}-abc123")


def test_the_work_of_an_exited_process_is_dead() -> None:
    tag = _tag_of_an_exited_process()
    assert tag.split(".")[0] == owner_tag().split(".")[0]  # same machine
    assert is_dead_work(f"step-{tag}-abc123")
    assert is_dead_work(f".out.tar.{tag}-0123456789ab.tmp")


def test_a_reused_pid_is_told_apart_by_its_start_time() -> None:
    machine, pid, start = owner_tag().split(".")
    assert is_dead_work(f"step-{machine}.{pid}.{int(start) + 1}-x")


def test_other_machines_and_untagged_names_are_left_alone() -> None:
    _, pid, start = owner_tag().split(".")
    assert not is_dead_work(f"step-@00000000.999999999.{start}-x")
    assert not is_dead_work("step-abc123")
    assert not is_dead_work("0123abcd")
