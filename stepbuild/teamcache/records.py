"""The team cache's record formats: what a step record and a cache-mount record hold, checked.

A step record: `{"schema", "key", "diff_id", "layer": {mediaType, digest, size} | null,
"created", "created_by"}`, and `"explain"`: the step's explanation material when the exporting
store had it (build/explain.py: paths and digests, never contents or secrets), so that a
colleague's miss can be explained. A cache-mount record: `{"schema", "id", "identity", "digest",
"size"}`, named by the hash of the cache's identity. Since issue 16 an export also stamps each
record it writes with `"used"` (when it was exported: its last use, for `stepbuild cache prune`)
and `"writer"` (the exporting store's `registry.writer_id`). Both are optional and unchecked
beyond their type: older readers ignore them, and an older record without them counts as last
used when it was created (or, in a directory, when its file was written). Both backends
(`local.py`, `registry.py`) store these bytes as they are; every record read from a source is
checked here before it is trusted, because a shared cache is written by other machines."""

from __future__ import annotations

from typing import Any

from stepbuild.errors import StepbuildError
from stepbuild.oci.digest import is_digest
from stepbuild.store.layout import cache_mount_name

RECORD_SCHEMA = "stepbuild-cache/1"
MOUNT_SCHEMA = "stepbuild-cache-mount/1"
MOUNT_PREFIX = "cache-mounts/"  # registry map entries of cache mounts
ARTIFACT_TYPE = "application/vnd.stepbuild.cache.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.stepbuild.cache.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"


class CacheError(StepbuildError):
    """A cache source or record that cannot be used (reported as a warning, never fatal)."""


def make_record(key: str, diff_id: str | None, layer: dict[str, Any] | None, created: str,
                created_by: str, *, used: str | None = None, writer: str | None = None,
                explain: dict[str, Any] | None = None) -> dict[str, Any]:
    record = {"schema": RECORD_SCHEMA, "key": key, "diff_id": diff_id, "layer": layer,
              "created": created, "created_by": created_by}
    if used is not None:
        record["used"] = used
    if writer is not None:
        record["writer"] = writer
    if explain is not None:  # left out when absent: records stay as they were
        record["explain"] = explain
    return record


def stamp(when: float) -> str:
    """A record's `used` stamp: RFC 3339 UTC with microseconds (two exports a moment apart
    still differ, and the stamps sort as text)."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def used_at(record: dict[str, Any]) -> float | None:
    """When a record was last exported (its `used`, else its `created`), in seconds since the
    epoch; None when neither parses."""
    from datetime import datetime

    for field in ("used", "created"):
        value = record.get(field)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def check_record(key: str, record: Any) -> dict[str, Any]:
    """The record if it is well-formed and for `key`; CacheError otherwise."""
    if not isinstance(record, dict) or record.get("schema") != RECORD_SCHEMA:
        raise CacheError(f"cache record {key} is not a stepbuild cache record")
    if record.get("key") != key:
        raise CacheError(f"cache record {key} is for another key")
    diff_id, layer = record.get("diff_id"), record.get("layer")
    if not isinstance(record.get("created"), str) or not isinstance(record.get("created_by"),
                                                                      str):
        raise CacheError(f"cache record {key}: bad created/created_by")
    if not isinstance(record.get("used", ""), str) or not isinstance(record.get("writer", ""),
                                                                        str):
        raise CacheError(f"cache record {key}: bad used/writer")
    if diff_id is None:
        if layer is not None:
            raise CacheError(f"cache record {key}: a layer without a diff_id")
        return record
    if not is_digest(diff_id):
        raise CacheError(f"cache record {key}: bad diff_id")
    if (not isinstance(layer, dict) or not is_digest(layer.get("digest"))
            or not isinstance(layer.get("size"), int)
            or layer["size"] < 0 or not isinstance(layer.get("mediaType"), str)):
        raise CacheError(f"cache record {key}: bad layer descriptor")
    return record


def check_mount_record(name: str, record: Any) -> dict[str, Any]:
    """The cache-mount record if well-formed and for the cache named `name` (the hash of its
    identity); CacheError otherwise."""
    if not isinstance(record, dict) or record.get("schema") != MOUNT_SCHEMA:
        raise CacheError(f"cache mount record {name} is not a stepbuild cache mount record")
    identity = record.get("identity")
    if (not isinstance(identity, dict) or not isinstance(record.get("id"), str)
            or identity.get("id") != record["id"]):
        raise CacheError(f"cache mount record {name}: bad id/identity")
    try:
        ok = cache_mount_name(identity) == name
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise CacheError(f"cache mount record {name} is for another cache")
    if (not is_digest(record.get("digest"))
            or not isinstance(record.get("size"), int) or record["size"] < 0):
        raise CacheError(f"cache mount record {name}: bad digest/size")
    return record
