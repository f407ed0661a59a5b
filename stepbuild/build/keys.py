"""Cache keys: what a step's result depends on, hashed.

A key is xxh3-128 over a canonical JSON serialisation of [KEY_SCHEMA, parent state, step
inputs]. The parent *state* is the content of the image so far (its diff_ids, its config
without history, and its platform), not how it was made: a step that reruns and produces an
identical layer lets later steps hit again. Step inputs are the expanded instruction and
everything it sees (env, user, cwd, shell, and for COPY/ADD the digest of the selected
context files) — never mtimes, never proxy variables, never secrets. Bump KEY_SCHEMA whenever
what goes in changes meaning, so that a fix never needs a special case for old records
(BuildKit's ExecOp.CacheMap idea).
Pure functions; no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import xxhash

# 2: the state has its platform (issue 15), so amd64 and arm64 steps never share a record.
KEY_SCHEMA = "stepbuild-key/2"

# Predefined proxy ARGs: usable in RUN, never part of a key (Docker excludes them from the
# build cache too, so that a proxy change does not invalidate every step).
PROXY_ARGS = frozenset(
    name for base in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
    for name in (base, base.lower())
)


def canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8. Same value, same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(value: Any) -> str:
    """xxh3-128 hex of the canonical form of `value`."""
    return xxhash.xxh3_128_hexdigest(canonical(value))


def state_key(diff_ids: Sequence[str], config: Mapping[str, Any], platform: str) -> str:
    """The identity of an image state: its layers, its runtime config (history excluded) and
    its platform (`linux/arm64`): the same files and config for another platform are another
    state, so no step of one platform ever hits a record of another."""
    return digest({"diff_ids": list(diff_ids), "config": dict(config), "platform": platform})


def step_key(parent_state: str, inputs: Mapping[str, Any]) -> str:
    """The cache key of a step with these inputs on top of `parent_state`."""
    return digest([KEY_SCHEMA, parent_state, dict(inputs)])


def without_proxies(env: Sequence[str]) -> list[str]:
    """An env list ("K=V") without the proxy variables, for use in a key."""
    return [item for item in env if item.partition("=")[0] not in PROXY_ARGS]
