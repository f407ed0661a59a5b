"""OCI image-spec values: media types, descriptors, manifests, configs, indexes, layouts.

Frozen dataclasses with `to_json()` (a JSON-ready dict) and `from_json(obj)` (strict: wrong
types, bad digests, duplicate keys raise `InvalidDocument` naming the field), `from_bytes`
for blob content, and `canonical_json(obj)`: the bytes we write and whose sha256 is the digest.

Serialisation follows what the image-spec Go types and Docker/BuildKit write: optional fields
are omitted when empty (Go's `omitempty`: "", 0, false, null, [] and {} are left out), the
container `config` object is always present, `rootfs` is always `{"type": "layers",
"diff_ids": [...]}`. Durations (Healthcheck) are integers in nanoseconds, like Go's
`time.Duration`. Parsing is lenient where real images differ from the schema (Docker writes
`"Cmd": null`, extra fields such as `container_config`; manifests with zero layers exist) and
strict where it matters (digests become file names; sizes must be non-negative integers).
Fields we do not model (`urls`, `data`, `artifactType`, `subject`, Docker's extra config
fields) are dropped on parse: never re-serialise a document you did not create, keep its
bytes (the digest covers the bytes as stored, not our rendering of them).

Specs: https://github.com/opencontainers/image-spec (manifest.md, config.md, image-index.md,
image-layout.md, descriptor.md); Docker's extensions (Healthcheck, OnBuild, Shell):
https://github.com/moby/docker-image-spec/blob/main/specs-go/v1/image.go

No store logic here beyond `validate_layout`, which reads a directory and reports problems.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stepbuild.errors import InvalidDocument
from stepbuild.oci.digest import PREFIX, is_digest, sha256_bytes, sha256_file

# Media types (image-spec media-types.md; Docker: distribution/docs/spec/manifest-v2-2.md).
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_LAYOUT_HEADER = "application/vnd.oci.layout.header.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = frozenset({MEDIA_TYPE_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({MEDIA_TYPE_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_TYPES = frozenset({MEDIA_TYPE_CONFIG, DOCKER_CONFIG})
UNCOMPRESSED_LAYER_TYPES = frozenset({MEDIA_TYPE_LAYER, DOCKER_LAYER})
LAYER_TYPES = UNCOMPRESSED_LAYER_TYPES | {
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_FOREIGN,
}

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_VERSION = "1.0.0"

# An empty tar archive (two zero blocks): the layer of an image that has no other layer. The
# schema wants at least one layer per manifest; this is the diff_id Docker used for it too.
EMPTY_LAYER = bytes(1024)
EMPTY_LAYER_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"

# defs-descriptor.json#/definitions/mediaType (RFC 6838 restricted names).
_MEDIA_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)
_ENV = re.compile(r"[^=]+=.*", re.DOTALL)

JSON = dict[str, Any]


def canonical_json(obj: Any) -> bytes:
    """The bytes we store for a JSON document: sorted keys, no spaces, UTF-8, no NaN.

    The digest of a document we write is sha256 over exactly these bytes. Documents from
    elsewhere keep their own bytes (see the module docstring).
    """
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def load_json(data: bytes | str, where: str) -> Any:
    """Parse JSON strictly: UTF-8, no NaN/Infinity, no duplicate keys (a parser differential
    waiting to happen: Go keeps the last one, other readers the first)."""
    try:
        return json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, our hooks
        raise InvalidDocument(where, f"not valid JSON: {exc}") from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> JSON:
    out: JSON = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def rfc3339(epoch: float) -> str:
    """A Unix time as RFC 3339 in UTC, like Go's `time.RFC3339Nano` ("…T00:00:00Z")."""
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


# --- strict field readers: each names the field in its error -----------------------------


def _object(value: Any, where: str) -> JSON:
    if not isinstance(value, dict):
        raise InvalidDocument(where, "expected a JSON object")
    return value


def _string(obj: JSON, key: str, where: str, *, required: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise InvalidDocument(where, f"{key} is required")
        return ""
    if not isinstance(value, str):
        raise InvalidDocument(where, f"{key} must be a string")
    return value


def _strings(obj: JSON, key: str, where: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidDocument(where, f"{key} must be an array of strings")
    return tuple(value)


def _string_map(obj: JSON, key: str, where: str) -> dict[str, str]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidDocument(where, f"{key} must be an object of strings")
    return dict(value)


def _string_set(obj: JSON, key: str, where: str) -> frozenset[str]:
    """Go's map[string]struct{}: `{"80/tcp": {}}`."""
    value = obj.get(key)
    if value is None:
        return frozenset()
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise InvalidDocument(where, f"{key} must be an object of objects")
    return frozenset(value)


def _integer(obj: JSON, key: str, where: str, *, required: bool = False) -> int:
    value = obj.get(key)
    if value is None and not required:
        return 0
    if type(value) is not int:  # bool is an int subclass; JSON true is not a size
        raise InvalidDocument(where, f"{key} must be an integer")
    return value


def _boolean(obj: JSON, key: str, where: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise InvalidDocument(where, f"{key} must be a boolean")
    return value


def _list(obj: JSON, key: str, where: str, *, required: bool = False) -> list[Any]:
    value = obj.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise InvalidDocument(where, f"{key} must be an array")
    return value


def _omit_empty(obj: JSON) -> JSON:
    """Go's `omitempty`: drop "", 0, False, None, empty lists and objects."""
    return {k: v for k, v in obj.items() if v}


def _annotations(obj: JSON, where: str) -> dict[str, str] | None:
    return _string_map(obj, "annotations", where) or None


def _schema_version(obj: JSON, where: str) -> None:
    if _integer(obj, "schemaVersion", where, required=True) != 2:
        raise InvalidDocument(where, "schemaVersion must be 2")


# --- descriptors ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A typed pointer to a blob: media type, digest, size (descriptor.md).

    Validated on construction: a descriptor with a bad digest or a negative size cannot
    exist. `platform` (index entries only) holds `architecture`, `os` and optionally
    `variant`, `os.version`, `os.features`. Treat the dicts as read-only.
    """

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    platform: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        where = f"descriptor {self.digest!r}"
        if not isinstance(self.media_type, str) or not _MEDIA_TYPE.fullmatch(self.media_type):
            raise InvalidDocument(where, f"invalid mediaType {self.media_type!r}")
        if not is_digest(self.digest):
            raise InvalidDocument(where, "digest must be sha256: + 64 lower-case hex digits")
        if type(self.size) is not int or self.size < 0:
            raise InvalidDocument(where, f"size must be a non-negative integer, not {self.size!r}")
        if self.platform is not None:
            _check_platform(self.platform, where)

    @property
    def ref_name(self) -> str | None:
        """The `org.opencontainers.image.ref.name` annotation (a tag in index.json), if any."""
        return (self.annotations or {}).get(ANNOTATION_REF_NAME)

    def to_json(self) -> JSON:
        out: JSON = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = dict(self.platform)
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "descriptor") -> Descriptor:
        obj = _object(obj, where)
        platform = obj.get("platform")
        if platform is not None:
            platform = dict(_object(platform, f"{where}.platform"))
        return cls(
            media_type=_string(obj, "mediaType", where, required=True),
            digest=_string(obj, "digest", where, required=True),
            size=_integer(obj, "size", where, required=True),
            annotations=_annotations(obj, where),
            platform=platform,
        )


def _check_platform(platform: Any, where: str) -> None:
    where = f"{where}.platform"
    obj = _object(platform, where)
    _string(obj, "architecture", where, required=True)
    _string(obj, "os", where, required=True)
    _string(obj, "variant", where)
    _string(obj, "os.version", where)
    _strings(obj, "os.features", where)


# --- image config ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Healthcheck:
    """Docker's HEALTHCHECK: `test` is ("NONE",), ("CMD", argv…) or ("CMD-SHELL", text).

    Durations are nanoseconds; 0 means "inherit the default".
    """

    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0

    def to_json(self) -> JSON:
        return _omit_empty(
            {
                "Test": list(self.test),
                "Interval": self.interval,
                "Timeout": self.timeout,
                "StartPeriod": self.start_period,
                "StartInterval": self.start_interval,
                "Retries": self.retries,
            }
        )

    @classmethod
    def from_json(cls, obj: Any, where: str = "Healthcheck") -> Healthcheck:
        obj = _object(obj, where)
        return cls(
            test=_strings(obj, "Test", where),
            interval=_integer(obj, "Interval", where),
            timeout=_integer(obj, "Timeout", where),
            start_period=_integer(obj, "StartPeriod", where),
            start_interval=_integer(obj, "StartInterval", where),
            retries=_integer(obj, "Retries", where),
        )


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """The `config` object of an image config: how to run a container from the image.

    OCI fields plus Docker's Healthcheck/OnBuild/Shell. `env` entries are `NAME=value`.
    Empty means unset (omitted from JSON): `CMD []` and no CMD serialise alike, as in Docker.
    """

    user: str = ""
    exposed_ports: frozenset[str] = frozenset()
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    volumes: frozenset[str] = frozenset()
    working_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    args_escaped: bool = False
    healthcheck: Healthcheck | None = None
    on_build: tuple[str, ...] = ()
    shell: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for entry in self.env:
            if not _ENV.fullmatch(entry):
                raise InvalidDocument("config.Env", f"{entry!r} is not NAME=value")

    def to_json(self) -> JSON:
        return _omit_empty(
            {
                "User": self.user,
                "ExposedPorts": {port: {} for port in sorted(self.exposed_ports)},
                "Env": list(self.env),
                "Entrypoint": list(self.entrypoint),
                "Cmd": list(self.cmd),
                "Volumes": {path: {} for path in sorted(self.volumes)},
                "WorkingDir": self.working_dir,
                "Labels": dict(self.labels),
                "StopSignal": self.stop_signal,
                "ArgsEscaped": self.args_escaped,
                "Healthcheck": self.healthcheck.to_json() if self.healthcheck else None,
                "OnBuild": list(self.on_build),
                "Shell": list(self.shell),
            }
        )

    @classmethod
    def from_json(cls, obj: Any, where: str = "config") -> ContainerConfig:
        obj = _object(obj, where)
        health = obj.get("Healthcheck")
        return cls(
            user=_string(obj, "User", where),
            exposed_ports=_string_set(obj, "ExposedPorts", where),
            env=_strings(obj, "Env", where),
            entrypoint=_strings(obj, "Entrypoint", where),
            cmd=_strings(obj, "Cmd", where),
            volumes=_string_set(obj, "Volumes", where),
            working_dir=_string(obj, "WorkingDir", where),
            labels=_string_map(obj, "Labels", where),
            stop_signal=_string(obj, "StopSignal", where),
            args_escaped=_boolean(obj, "ArgsEscaped", where),
            healthcheck=None if health is None else Healthcheck.from_json(health),
            on_build=_strings(obj, "OnBuild", where),
            shell=_strings(obj, "Shell", where),
        )


@dataclass(frozen=True, slots=True)
class History:
    """One entry of the image history; `empty_layer` for steps that added no layer."""

    created: str | None = None
    created_by: str = ""
    author: str = ""
    comment: str = ""
    empty_layer: bool = False

    def to_json(self) -> JSON:
        return _omit_empty(
            {
                "created": self.created,
                "created_by": self.created_by,
                "author": self.author,
                "comment": self.comment,
                "empty_layer": self.empty_layer,
            }
        )

    @classmethod
    def from_json(cls, obj: Any, where: str = "history") -> History:
        obj = _object(obj, where)
        return cls(
            created=_string(obj, "created", where) or None,
            created_by=_string(obj, "created_by", where),
            author=_string(obj, "author", where),
            comment=_string(obj, "comment", where),
            empty_layer=_boolean(obj, "empty_layer", where),
        )


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The image config blob (config.md): platform, run config, rootfs diff_ids, history.

    `diff_ids` are the digests of the *uncompressed* layer tars, base layer first; there is
    one per manifest layer. `created` is RFC 3339 (see `rfc3339`).
    """

    architecture: str
    os: str
    config: ContainerConfig = ContainerConfig()
    diff_ids: tuple[str, ...] = ()
    history: tuple[History, ...] = ()
    created: str | None = None
    author: str = ""
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for i, diff_id in enumerate(self.diff_ids):
            if not is_digest(diff_id):
                raise InvalidDocument(f"rootfs.diff_ids[{i}]", f"invalid diff_id {diff_id!r}")

    @property
    def platform(self) -> dict[str, Any]:
        """The platform object for an index entry pointing at this image."""
        return _omit_empty(
            {
                "architecture": self.architecture,
                "os": self.os,
                "variant": self.variant,
                "os.version": self.os_version,
                "os.features": list(self.os_features),
            }
        )

    def to_json(self) -> JSON:
        out = _omit_empty(
            {
                "created": self.created,
                "author": self.author,
                "variant": self.variant,
                "os.version": self.os_version,
                "os.features": list(self.os_features),
                "history": [h.to_json() for h in self.history],
            }
        )
        out["architecture"] = self.architecture
        out["os"] = self.os
        out["config"] = self.config.to_json()
        out["rootfs"] = {"type": "layers", "diff_ids": list(self.diff_ids)}
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, obj: Any, where: str = "image config") -> ImageConfig:
        obj = _object(obj, where)
        rootfs = _object(obj.get("rootfs"), f"{where}: rootfs")
        if rootfs.get("type") != "layers":
            raise InvalidDocument(where, 'rootfs.type must be "layers"')
        history = _list(obj, "history", where)
        return cls(
            architecture=_string(obj, "architecture", where, required=True),
            os=_string(obj, "os", where, required=True),
            config=ContainerConfig.from_json(obj.get("config") or {}, f"{where}: config"),
            diff_ids=_strings(rootfs, "diff_ids", f"{where}: rootfs"),
            history=tuple(
                History.from_json(h, f"{where}: history[{i}]") for i, h in enumerate(history)
            ),
            created=_string(obj, "created", where) or None,
            author=_string(obj, "author", where),
            variant=_string(obj, "variant", where),
            os_version=_string(obj, "os.version", where),
            os_features=_strings(obj, "os.features", where),
        )

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "image config") -> ImageConfig:
        return cls.from_json(load_json(data, where), where)


# --- manifest and index ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest (manifest.md): the config descriptor and the layers, base first.

    `media_type` is the OCI manifest type for what we write; Docker schema2 manifests parse
    too. Parsing accepts zero layers (Docker writes them); `put_image` does not write them.
    """

    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] | None = None
    media_type: str = MEDIA_TYPE_MANIFEST

    def to_json(self) -> JSON:
        out: JSON = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, obj: Any, where: str = "manifest") -> Manifest:
        obj = _object(obj, where)
        _schema_version(obj, where)
        media_type = _string(obj, "mediaType", where) or MEDIA_TYPE_MANIFEST
        if media_type not in MANIFEST_TYPES:
            raise InvalidDocument(where, f"mediaType {media_type!r} is not an image manifest")
        layers = _list(obj, "layers", where, required=True)
        return cls(
            config=Descriptor.from_json(obj.get("config"), f"{where}: config"),
            layers=tuple(
                Descriptor.from_json(d, f"{where}: layers[{i}]") for i, d in enumerate(layers)
            ),
            annotations=_annotations(obj, where),
            media_type=media_type,
        )

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "manifest") -> Manifest:
        return cls.from_json(load_json(data, where), where)


@dataclass(frozen=True, slots=True)
class Index:
    """An image index (image-index.md); also the shape of a layout's `index.json`."""

    manifests: tuple[Descriptor, ...] = ()
    annotations: dict[str, str] | None = None
    media_type: str = MEDIA_TYPE_INDEX

    def to_json(self) -> JSON:
        out: JSON = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "manifests": [m.to_json() for m in self.manifests],
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, obj: Any, where: str = "index") -> Index:
        obj = _object(obj, where)
        _schema_version(obj, where)
        media_type = _string(obj, "mediaType", where) or MEDIA_TYPE_INDEX
        if media_type not in INDEX_TYPES:
            raise InvalidDocument(where, f"mediaType {media_type!r} is not an image index")
        manifests = _list(obj, "manifests", where, required=True)
        return cls(
            manifests=tuple(
                Descriptor.from_json(d, f"{where}: manifests[{i}]") for i, d in enumerate(manifests)
            ),
            annotations=_annotations(obj, where),
            media_type=media_type,
        )

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "index") -> Index:
        return cls.from_json(load_json(data, where), where)


def layout_header() -> bytes:
    """The content of an `oci-layout` file."""
    return canonical_json({"imageLayoutVersion": LAYOUT_VERSION})


# --- layout validation (GGCR `validate` style) ----------------------------------------------


def validate_layout(
    path: Path | str, *, blob_digests: Mapping[str, tuple[str, int]] | None = None
) -> list[str]:
    """Check an OCI image layout; return its problems, `[]` when it is valid.

    Checks: `oci-layout` says 1.0.0; `index.json` parses; every blob reachable from it
    (manifests, nested indexes, configs, layers) exists under `blobs/sha256/` with the size
    and digest its descriptor gives; manifests and configs parse; a manifest's config has a
    config media type, its layers layer media types, and the config one diff_id per layer
    (equal to the layer digest for uncompressed layers). Blobs not reachable are ignored.

    `blob_digests` maps blob hex names to an already computed `(digest, size)`, so a caller
    that has hashed every blob (`store.gc.check`) does not pay for it twice.
    """
    return _LayoutValidator(Path(path), blob_digests or {}).run()


class _LayoutValidator:
    def __init__(self, root: Path, hashed: Mapping[str, tuple[str, int]]) -> None:
        self.root = root
        self.hashed = dict(hashed)
        self.problems: list[str] = []
        self.seen: set[str] = set()

    def run(self) -> list[str]:
        self._header()
        index = self._document(self.root / "index.json", "index.json", Index.from_bytes)
        if index is not None:
            for i, desc in enumerate(index.manifests):
                self._manifest_or_index(desc, f"index.json: manifests[{i}]")
        return self.problems

    def _header(self) -> None:
        header = self._document(self.root / "oci-layout", "oci-layout", _parse_header)
        if header is not None and header != LAYOUT_VERSION:
            self.problems.append(f"oci-layout: imageLayoutVersion {header!r}, expected 1.0.0")

    def _document(self, path: Path, where: str, parse: Any) -> Any:
        try:
            return parse(path.read_bytes(), where)
        except FileNotFoundError:
            self.problems.append(f"{where}: missing")
        except InvalidDocument as exc:
            self.problems.append(str(exc))
        return None

    def _manifest_or_index(self, desc: Descriptor, where: str) -> None:
        if desc.digest in self.seen:
            return
        self.seen.add(desc.digest)
        if desc.media_type in MANIFEST_TYPES:
            self._manifest(desc, where)
        elif desc.media_type in INDEX_TYPES:
            data = self._blob(desc, where, read=True)
            index = self._parse(data, f"index {desc.digest}", Index.from_bytes)
            for i, child in enumerate(index.manifests if index else ()):
                self._manifest_or_index(child, f"index {desc.digest}: manifests[{i}]")
        else:
            self.problems.append(f"{where}: unexpected mediaType {desc.media_type!r}")

    def _manifest(self, desc: Descriptor, where: str) -> None:
        data = self._blob(desc, where, read=True)
        manifest = self._parse(data, f"manifest {desc.digest}", Manifest.from_bytes)
        if manifest is None:
            return
        where = f"manifest {desc.digest}"
        if manifest.config.media_type not in CONFIG_TYPES:
            self.problems.append(f"{where}: config mediaType {manifest.config.media_type!r}")
        config_data = self._blob(manifest.config, f"{where}: config", read=True)
        config = self._parse(
            config_data, f"config {manifest.config.digest}", ImageConfig.from_bytes
        )
        for i, layer in enumerate(manifest.layers):
            if layer.media_type not in LAYER_TYPES:
                self.problems.append(f"{where}: layers[{i}]: mediaType {layer.media_type!r}")
            self._blob(layer, f"{where}: layers[{i}]", read=False)
        if config is not None:
            self._diff_ids(manifest, config, where)

    def _diff_ids(self, manifest: Manifest, config: ImageConfig, where: str) -> None:
        if len(config.diff_ids) != len(manifest.layers):
            self.problems.append(
                f"{where}: {len(manifest.layers)} layers but "
                f"{len(config.diff_ids)} diff_ids in the config"
            )
            return
        for i, (layer, diff_id) in enumerate(zip(manifest.layers, config.diff_ids, strict=True)):
            if layer.media_type in UNCOMPRESSED_LAYER_TYPES and layer.digest != diff_id:
                self.problems.append(
                    f"{where}: layers[{i}] is uncompressed but its digest "
                    f"differs from diff_id {diff_id}"
                )

    def _parse(self, data: bytes | None, where: str, parse: Any) -> Any:
        if data is None:
            return None
        try:
            return parse(data, where)
        except InvalidDocument as exc:
            self.problems.append(str(exc))
            return None

    def _blob(self, desc: Descriptor, where: str, *, read: bool) -> bytes | None:
        """Check one blob's presence, size and digest; its bytes if `read` and it is good."""
        path = self.root / "blobs" / "sha256" / desc.digest[len(PREFIX) :]
        try:
            data = path.read_bytes() if read else None
            digest, size = self._hash(path, data)
        except FileNotFoundError:
            self.problems.append(f"{where}: blob {desc.digest} missing")
            return None
        if size != desc.size:
            self.problems.append(
                f"{where}: blob {desc.digest} is {size} bytes, descriptor says {desc.size}"
            )
        elif digest != desc.digest:
            self.problems.append(f"{where}: blob {desc.digest} has digest {digest}")
        else:
            return data
        return None

    def _hash(self, path: Path, data: bytes | None) -> tuple[str, int]:
        if path.name in self.hashed:
            return self.hashed[path.name]
        result = (sha256_bytes(data), len(data)) if data is not None else sha256_file(path)
        self.hashed[path.name] = result
        return result


def _parse_header(data: bytes, where: str) -> str:
    obj = _object(load_json(data, where), where)
    return _string(obj, "imageLayoutVersion", where, required=True)
