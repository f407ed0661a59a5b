"""push.py: what is refused before the store or a registry is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepbuild.distribution.push import push
from stepbuild.errors import UsageError
from stepbuild.store.store import Store

D = "sha256:" + "ab" * 32


def test_a_digest_is_no_destination(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="push to a tag") as caught:
        push(Store(tmp_path), "app", f"127.0.0.1:5000/app@{D}")
    assert caught.value.hint == "stepbuild push app 127.0.0.1:5000/app:latest"


def test_an_unknown_compression_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        push(Store(tmp_path), "app", "127.0.0.1:5000/app:1", compression="lz4")
