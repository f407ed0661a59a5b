"""What realising adds to a step's environment, and that the mounts package keeps no
process-wide state (the per-build state is owned by the build; tests/integration holds the
privileged rest: tests/integration/test_run_mounts.py)."""

from __future__ import annotations

import importlib
import pkgutil
import threading
import weakref

import pytest

import stepbuild.build.mounts
from stepbuild.build.mounts.realise import with_env

MUTABLE = (dict, list, set, bytearray, weakref.WeakSet, weakref.WeakKeyDictionary,
           weakref.WeakValueDictionary, type(threading.Lock()), type(threading.RLock()))
MODULES = sorted(m.name for m in pkgutil.iter_modules(stepbuild.build.mounts.__path__))


def test_with_env_replaces_same_names() -> None:
    assert with_env(("A=1", "B=2"), ("B=3", "C=4")) == ("A=1", "B=3", "C=4")


@pytest.mark.parametrize("name", MODULES)
def test_no_module_level_mutable_state(name: str) -> None:
    # what a build needs (context copies, the cache-mount observer) lives in objects the
    # build owns; a registry here would outlive builds and mix up concurrent ones
    module = importlib.import_module(f"stepbuild.build.mounts.{name}")
    found = [key for key, value in vars(module).items()
             if not key.startswith("__") and isinstance(value, MUTABLE)]
    assert found == []


def test_every_module_is_checked() -> None:
    assert {"agent", "cache", "context_copies", "plan", "realise", "secrets",
            "stubs"} <= set(MODULES)
