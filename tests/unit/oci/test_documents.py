"""oci.py: canonical JSON, round trips, the OCI JSON schemas, and validate_layout.

Everything we write is validated against the image-spec schemas in
../shared/conformance/oci-schema (with the four checks upstream makes beyond the schema, see
its README); the validator is first shown to agree with all 84 upstream fixtures.
"""

from __future__ import annotations

import base64
import io
import json
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepbuild.errors import InvalidDocument
from stepbuild.oci.digest import sha256_bytes
from stepbuild.oci.documents import (
    ANNOTATION_REF_NAME,
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    EMPTY_LAYER,
    EMPTY_LAYER_DIFF_ID,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    MEDIA_TYPE_MANIFEST,
    ContainerConfig,
    Descriptor,
    Healthcheck,
    History,
    ImageConfig,
    Index,
    Manifest,
    canonical_json,
    layout_header,
    load_json,
    rfc3339,
    validate_layout,
)
from stepbuild.store.store import Store

SCHEMA_FOR = {
    "application/vnd.oci.descriptor.v1+json": "content-descriptor.json",
    "application/vnd.oci.layout.header.v1+json": "image-layout-schema.json",
    MEDIA_TYPE_MANIFEST: "image-manifest-schema.json",
    MEDIA_TYPE_INDEX: "image-index-schema.json",
    MEDIA_TYPE_CONFIG: "config-schema.json",
}
Validate = Callable[[Any, str], list[str]]


# --- the schema validator -------------------------------------------------------------------


@pytest.fixture(scope="session")
def oci_schema(conformance_dir: Path) -> Path:
    return conformance_dir / "oci-schema"


@pytest.fixture(scope="session")
def validate(oci_schema: Path) -> Validate:
    """`validate(doc, media_type)` → problems ([] = valid): the schema plus upstream's extra
    checks (Env entries, digests per algorithm, strict base64 `data`, urls with a scheme)."""
    import jsonschema  # a test dependency (pyproject [test]): a missing one must fail
    import referencing
    from referencing.jsonschema import DRAFT4

    schemas = oci_schema / "schema"
    aliases = json.loads((oci_schema / "uri-map.json").read_text())["uri_aliases"]
    resources = []
    for name, uris in aliases.items():
        contents = json.loads((schemas / name).read_text())
        resource = referencing.Resource.from_contents(contents, default_specification=DRAFT4)
        resources += [(uri, resource) for uri in uris]
    registry = referencing.Registry().with_resources(resources)
    validators = {
        media_type: jsonschema.Draft4Validator(
            json.loads((schemas / name).read_text()),
            registry=registry,
            format_checker=jsonschema.FormatChecker(),
        )
        for media_type, name in SCHEMA_FOR.items()
    }

    def check(doc: Any, media_type: str) -> list[str]:
        problems = [e.message for e in validators[media_type].iter_errors(doc)]
        return problems + _extra_checks(doc, media_type)

    return check


def _extra_checks(doc: Any, media_type: str) -> list[str]:
    if not isinstance(doc, dict):
        return []
    if media_type == MEDIA_TYPE_CONFIG:
        env = (doc.get("config") or {}).get("Env") or []
        return [f"Env {e!r}" for e in env if not re.fullmatch(r"[^=]+=.*", str(e), re.S)]
    problems = []
    for desc in _descriptors(doc, media_type):
        problems += _descriptor_checks(desc)
    return problems


def _descriptors(doc: dict[str, Any], media_type: str) -> list[Any]:
    if media_type == "application/vnd.oci.descriptor.v1+json":
        return [doc]
    found = [doc.get(k) for k in ("config", "subject") if isinstance(doc.get(k), dict)]
    for key in ("layers", "manifests"):
        found += [d for d in doc.get(key) or [] if isinstance(d, dict)]
    return found


def _descriptor_checks(desc: dict[str, Any]) -> list[str]:
    problems = []
    digest = str(desc.get("digest", ""))
    lengths = {"sha256": 64, "sha512": 128}
    algorithm, _, encoded = digest.partition(":")
    if algorithm in lengths and not re.fullmatch(f"[a-f0-9]{{{lengths[algorithm]}}}", encoded):
        problems.append(f"digest {digest!r}")
    if "data" in desc:
        try:
            base64.b64decode(str(desc["data"]), validate=True)
        except ValueError:
            problems.append("data is not base64")
    problems += [f"url {u!r}" for u in desc.get("urls") or [] if ":" not in str(u)]
    return problems


def _fixtures(oci_schema: Path) -> list[dict[str, Any]]:
    fixtures: list[dict[str, Any]] = json.loads((oci_schema / "fixtures/index.json").read_text())
    return fixtures


def test_validator_agrees_with_every_upstream_fixture(oci_schema: Path, validate: Validate) -> None:
    fixtures = _fixtures(oci_schema)
    assert len(fixtures) == 84
    disagreements = []
    for fixture in fixtures:
        text = (oci_schema / fixture["file"]).read_text()
        try:
            problems = validate(json.loads(text), fixture["mediatype"])
        except ValueError:
            problems = ["not JSON"]
        if (not problems) != (fixture["expect"] == "valid"):
            disagreements.append((fixture["file"], problems))
    assert disagreements == []


def test_docker_originals_hash_as_stored(oci_schema: Path) -> None:
    checked = 0
    for fixture in _fixtures(oci_schema):
        if "original_docker_digest" in fixture:
            original = fixture["file"].replace("converted-valid", "docker-original")
            data = (oci_schema / original).read_bytes()
            assert sha256_bytes(data) == fixture["original_docker_digest"]
            checked += 1
    assert checked == 4


# --- our parsers against the fixtures -------------------------------------------------------

PARSERS: dict[str, Callable[[bytes], object]] = {
    MEDIA_TYPE_CONFIG: ImageConfig.from_bytes,
    MEDIA_TYPE_MANIFEST: Manifest.from_bytes,
    MEDIA_TYPE_INDEX: Index.from_bytes,
    "application/vnd.oci.descriptor.v1+json": lambda b: Descriptor.from_json(load_json(b, "d")),
}
# Where our parsers differ from the schema, on purpose:
LENIENT = {  # accepted although the schema says invalid
    "manifest/05-invalid.json": "zero layers: Docker writes them; we only refuse to write them",
    "manifest/08-invalid.json": "subject is not modelled (dropped)",
    "image-index/11-invalid.json": "subject is not modelled (dropped)",
    "descriptor/17-invalid.json": "urls are not modelled (dropped)",
    "descriptor/19-invalid.json": "artifactType is not modelled (dropped)",
    "descriptor/29-invalid.json": "data is not modelled (dropped)",
}
STRICT = {  # refused although valid: only sha256 digests, since digests become file names
    f"descriptor/{n}-valid.json" for n in (21, 22, 23, 24, 25, 27, 28)
} | {"manifest/06-valid.json"}


def test_parsers_agree_with_fixtures_except_where_documented(oci_schema: Path) -> None:
    outcomes = {}
    for fixture in _fixtures(oci_schema):
        parse = PARSERS.get(fixture["mediatype"])
        if parse is None:
            continue
        try:
            parse((oci_schema / fixture["file"]).read_bytes())
            accepted = True
        except InvalidDocument:
            accepted = False
        name = fixture["file"].removeprefix("fixtures/")
        if accepted != (fixture["expect"] == "valid"):
            outcomes[name] = accepted
    assert outcomes == {**dict.fromkeys(LENIENT, True), **dict.fromkeys(STRICT, False)}


def test_docker_config_with_nulls_and_extra_fields_parses(oci_schema: Path) -> None:
    data = (oci_schema / "fixtures/compat-config/01-docker-original.json").read_bytes()
    config = ImageConfig.from_bytes(data)
    assert config.config.cmd == () and config.config.labels == {}
    assert config.config.env == (
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
    assert config.history[0].empty_layer and config.history[0].author.startswith("Patrick")
    assert len(config.diff_ids) == 1


def test_docker_manifest_parses(oci_schema: Path) -> None:
    data = (oci_schema / "fixtures/compat-manifest/00-docker-original.json").read_bytes()
    manifest = Manifest.from_bytes(data)
    assert manifest.media_type == DOCKER_MANIFEST and len(manifest.layers) == 4


# --- canonical JSON -------------------------------------------------------------------------


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": "é", "c": None}]}) == (
        '{"a":[1,{"c":null,"d":"é"}],"b":1}'.encode()
    )
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": 1, "a": 2}',  # duplicate keys: a parser differential
        b'{"size": NaN}',
        b"\xff",
        b"[1,",
    ],
)
def test_load_json_refuses(text: bytes) -> None:
    with pytest.raises(InvalidDocument):
        load_json(text, "doc")


@pytest.mark.parametrize(
    "obj",
    [
        {"mediaType": MEDIA_TYPE_LAYER, "digest": EMPTY_LAYER_DIFF_ID, "size": True},
        {"mediaType": MEDIA_TYPE_LAYER, "digest": EMPTY_LAYER_DIFF_ID, "size": -1},
        {"mediaType": MEDIA_TYPE_LAYER, "digest": EMPTY_LAYER_DIFF_ID, "size": 1.0},
        {"mediaType": MEDIA_TYPE_LAYER, "digest": "sha256:../x", "size": 1},
        {"mediaType": "no-subtype", "digest": EMPTY_LAYER_DIFF_ID, "size": 1},
        {
            "mediaType": MEDIA_TYPE_LAYER,
            "digest": EMPTY_LAYER_DIFF_ID,
            "size": 1,
            "annotations": {"a": 1},
        },
        {
            "mediaType": MEDIA_TYPE_LAYER,
            "digest": EMPTY_LAYER_DIFF_ID,
            "size": 1,
            "platform": {"os": "linux"},
        },
        [],
    ],
)
def test_bad_descriptors_are_refused(obj: Any) -> None:
    with pytest.raises(InvalidDocument):
        Descriptor.from_json(obj)


def test_rfc3339() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1700000000.25) == "2023-11-14T22:13:20.25Z"


# --- what we write ---------------------------------------------------------------------------

FULL_CONFIG = ImageConfig(
    architecture="arm64",
    variant="v8",
    os="linux",
    os_version="6.1",
    os_features=("f1",),
    created="2024-01-02T03:04:05Z",
    author="dev <dev@example.com>",
    config=ContainerConfig(
        user="1000:1000",
        exposed_ports=frozenset({"80/tcp", "53/udp"}),
        env=("PATH=/usr/bin:/bin", "EMPTY="),
        entrypoint=("/bin/app",),
        cmd=("--serve",),
        volumes=frozenset({"/data"}),
        working_dir="/srv",
        labels={"org.example": "x"},
        stop_signal="SIGTERM",
        healthcheck=Healthcheck(
            ("CMD-SHELL", "curl -f localhost"),
            interval=30_000_000_000,
            timeout=5_000_000_000,
            start_period=1,
            start_interval=2,
            retries=3,
        ),
        on_build=("RUN make",),
        shell=("/bin/bash", "-c"),
    ),
    diff_ids=(EMPTY_LAYER_DIFF_ID, sha256_bytes(b"second")),
    history=(
        History(created="2024-01-02T03:04:05Z", created_by="COPY . /srv"),
        History(created_by="CMD", empty_layer=True, comment="c", author="a"),
    ),
)
MINIMAL_CONFIG = ImageConfig("amd64", "linux", diff_ids=(EMPTY_LAYER_DIFF_ID,))


def test_minimal_config_omits_every_empty_field() -> None:
    assert MINIMAL_CONFIG.to_json() == {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [EMPTY_LAYER_DIFF_ID]},
    }


def test_docker_healthcheck_fields_in_nanoseconds() -> None:
    health = FULL_CONFIG.to_json()["config"]["Healthcheck"]
    assert health == {
        "Test": ["CMD-SHELL", "curl -f localhost"],
        "Interval": 30_000_000_000,
        "Timeout": 5_000_000_000,
        "StartPeriod": 1,
        "StartInterval": 2,
        "Retries": 3,
    }
    assert Healthcheck(("NONE",)).to_json() == {"Test": ["NONE"]}


def test_config_fields_and_round_trip() -> None:
    doc = FULL_CONFIG.to_json()
    assert doc["config"]["ExposedPorts"] == {"53/udp": {}, "80/tcp": {}}
    assert doc["config"]["Volumes"] == {"/data": {}}
    assert doc["os.version"] == "6.1" and doc["os.features"] == ["f1"]
    assert doc["history"][1] == {
        "created_by": "CMD",
        "empty_layer": True,
        "comment": "c",
        "author": "a",
    }
    for config in (FULL_CONFIG, MINIMAL_CONFIG):
        assert ImageConfig.from_bytes(config.to_bytes()) == config
        assert ImageConfig.from_bytes(config.to_bytes()).to_bytes() == config.to_bytes()


def test_env_entries_must_be_name_value() -> None:
    with pytest.raises(InvalidDocument):
        ContainerConfig(env=("NOVALUE",))
    with pytest.raises(InvalidDocument):
        ImageConfig("amd64", "linux", diff_ids=("sha256:bad",))


def _manifest() -> Manifest:
    layers = (
        Descriptor(MEDIA_TYPE_LAYER, EMPTY_LAYER_DIFF_ID, 1024),
        Descriptor(MEDIA_TYPE_LAYER_GZIP, sha256_bytes(b"gz"), 2, {"k": "v"}),
        Descriptor(MEDIA_TYPE_LAYER_ZSTD, sha256_bytes(b"zst"), 3),
    )
    config = Descriptor(
        MEDIA_TYPE_CONFIG, sha256_bytes(FULL_CONFIG.to_bytes()), len(FULL_CONFIG.to_bytes())
    )
    return Manifest(config, layers, {"org.opencontainers.image.created": "2024"})


def _index() -> Index:
    manifest = _manifest().to_bytes()
    return Index(
        (
            Descriptor(
                MEDIA_TYPE_MANIFEST,
                sha256_bytes(manifest),
                len(manifest),
                {ANNOTATION_REF_NAME: "app:1.0"},
                FULL_CONFIG.platform,
            ),
            Descriptor(
                MEDIA_TYPE_MANIFEST,
                sha256_bytes(b"m"),
                1,
                platform={"architecture": "amd64", "os": "linux"},
            ),
        )
    )


def test_manifest_and_index_round_trip() -> None:
    manifest, index = _manifest(), _index()
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest
    assert Index.from_bytes(index.to_bytes()) == index
    assert index.manifests[0].platform == {
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8",
        "os.version": "6.1",
        "os.features": ["f1"],
    }
    assert Index().to_json() == {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": []}


def test_manifest_refuses_wrong_types() -> None:
    doc = _manifest().to_json()
    for bad in (
        {**doc, "schemaVersion": 1},
        {**doc, "mediaType": MEDIA_TYPE_INDEX},
        {**doc, "layers": None},
        {**doc, "config": "x"},
    ):
        with pytest.raises(InvalidDocument):
            Manifest.from_json(bad)
    assert Manifest.from_json({**doc, "mediaType": DOCKER_MANIFEST}).media_type == DOCKER_MANIFEST


def test_everything_we_write_validates(validate: Validate) -> None:
    documents = [
        (FULL_CONFIG.to_json(), MEDIA_TYPE_CONFIG),
        (MINIMAL_CONFIG.to_json(), MEDIA_TYPE_CONFIG),
        (_manifest().to_json(), MEDIA_TYPE_MANIFEST),
        (_index().to_json(), MEDIA_TYPE_INDEX),
        (Index().to_json(), MEDIA_TYPE_INDEX),
        (json.loads(layout_header()), "application/vnd.oci.layout.header.v1+json"),
    ]
    documents += [
        (d.to_json(), "application/vnd.oci.descriptor.v1+json") for d in _manifest().layers
    ]
    for doc, media_type in documents:
        assert validate(json.loads(canonical_json(doc)), media_type) == [], doc


def test_store_documents_validate(tmp_path: Path, validate: Validate) -> None:
    store, image = _store_with_image(tmp_path)
    manifest = store.manifest(image)
    assert validate(json.loads(store.read_blob(image.digest)), MEDIA_TYPE_MANIFEST) == []
    config = json.loads(store.read_blob(manifest.config.digest))
    assert validate(config, MEDIA_TYPE_CONFIG) == []
    index = json.loads((tmp_path / "index.json").read_bytes())
    assert validate(index, MEDIA_TYPE_INDEX) == []
    assert (
        validate(
            json.loads((tmp_path / "oci-layout").read_bytes()),
            "application/vnd.oci.layout.header.v1+json",
        )
        == []
    )


_names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
_words = st.lists(_names, max_size=3).map(tuple)


@settings(max_examples=60, deadline=None)
@given(
    env=st.lists(st.tuples(_names.filter(lambda s: s and "=" not in s), _names), max_size=3),
    cmd=_words,
    entrypoint=_words,
    user=_names,
    labels=st.dictionaries(_names, _names, max_size=3),
    ports=st.frozensets(_names, max_size=3),
    history=st.lists(
        st.builds(History, created_by=_names, comment=_names, empty_layer=st.booleans()), max_size=3
    ),
)
def test_any_config_round_trips_and_validates(
    validate: Validate,
    env: Any,
    cmd: Any,
    entrypoint: Any,
    user: Any,
    labels: Any,
    ports: Any,
    history: Any,
) -> None:
    config = ImageConfig(
        "amd64",
        "linux",
        ContainerConfig(
            user=user,
            env=tuple(f"{k}={v}" for k, v in env),
            cmd=cmd,
            entrypoint=entrypoint,
            labels=labels,
            exposed_ports=ports,
        ),
        diff_ids=(EMPTY_LAYER_DIFF_ID,),
        history=tuple(history),
    )
    data = config.to_bytes()
    assert ImageConfig.from_bytes(data) == config
    assert validate(json.loads(data), MEDIA_TYPE_CONFIG) == []


# --- validate_layout ------------------------------------------------------------------------


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _store_with_image(root: Path) -> tuple[Store, Descriptor]:
    store = Store(root)
    layers, diff_ids = [], []
    for files in ({"etc/hostname": b"box\n"}, {"app/main": b"#!/bin/sh\n"}):
        data = _tar(files)
        tar = store.tmp_file("layer-")
        tar.write_bytes(data)
        upper = store.tmp_dir("upper-")
        diff_id = sha256_bytes(data)
        store.commit_layer(upper, diff_id, tar)
        layers.append(store.descriptor(diff_id, MEDIA_TYPE_LAYER))
        diff_ids.append(diff_id)
    empty_tar = store.tmp_file("layer-")
    empty_tar.write_bytes(EMPTY_LAYER)
    store.commit_layer(store.tmp_dir("upper-"), EMPTY_LAYER_DIFF_ID, empty_tar)
    config = ImageConfig(
        "amd64",
        "linux",
        ContainerConfig(cmd=("/app/main",)),
        diff_ids=tuple(diff_ids),
        created=rfc3339(0),
    )
    image = store.put_image(config, layers)
    store.tag("app:1.0", image)
    return store, image


def test_validate_layout_accepts_a_store(tmp_path: Path) -> None:
    _store_with_image(tmp_path)
    assert validate_layout(tmp_path) == []


def _corrupt_blob(store: Store, digest: str, data: bytes) -> None:
    path = store.blob_path(digest)
    path.chmod(0o644)
    path.write_bytes(data)


def _replace_config(store: Store, image: Descriptor, **changes: Any) -> None:
    """Point the tag at a new manifest whose config differs (store-level forgery)."""
    manifest = store.manifest(image)
    doc = {**store.config(manifest).to_json(), **changes}
    digest, size = store.put_blob(canonical_json(doc))
    config = Descriptor(MEDIA_TYPE_CONFIG, digest, size)
    forged = Manifest(config, manifest.layers)
    digest, size = store.put_blob(forged.to_bytes())
    store.tag("app:1.0", Descriptor(MEDIA_TYPE_MANIFEST, digest, size))


DAMAGE: dict[str, Callable[[Path, Store, Descriptor], object]] = {
    "missing oci-layout": lambda root, s, i: (root / "oci-layout").unlink(),
    "wrong layout version": lambda root, s, i: (root / "oci-layout").write_text(
        '{"imageLayoutVersion":"2.0.0"}'
    ),
    "index.json not JSON": lambda root, s, i: (root / "index.json").write_text("{"),
    "manifest missing": lambda root, s, i: s.blob_path(i.digest).unlink(),
    "manifest wrong size": lambda root, s, i: _corrupt_blob(
        s, i.digest, s.read_blob(i.digest) + b" "
    ),
    "layer wrong digest": lambda root, s, i: _corrupt_blob(
        s, s.manifest(i).layers[0].digest, b"x" * s.manifest(i).layers[0].size
    ),
    "config not a config": lambda root, s, i: _corrupt_blob(s, s.manifest(i).config.digest, b"[]"),
    "diff_ids count": lambda root, s, i: _replace_config(
        s, i, rootfs={"type": "layers", "diff_ids": []}
    ),
    "diff_id differs": lambda root, s, i: _replace_config(
        s,
        i,
        rootfs={
            "type": "layers",
            "diff_ids": [s.manifest(i).layers[0].digest, EMPTY_LAYER_DIFF_ID],
        },
    ),
    "config media type": lambda root, s, i: _tag_forged_manifest(s, i, DOCKER_CONFIG + "x"),
}


def _tag_forged_manifest(store: Store, image: Descriptor, config_type: str) -> None:
    manifest = store.manifest(image)
    forged = Manifest(
        Descriptor(config_type, manifest.config.digest, manifest.config.size), manifest.layers
    )
    digest, size = store.put_blob(forged.to_bytes())
    store.tag("app:1.0", Descriptor(MEDIA_TYPE_MANIFEST, digest, size))


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_validate_layout_finds(damage: str, tmp_path: Path) -> None:
    store, image = _store_with_image(tmp_path)
    DAMAGE[damage](tmp_path, store, image)
    problems = validate_layout(tmp_path)
    assert len(problems) == 1, problems


def test_validate_layout_trusts_precomputed_digests(tmp_path: Path) -> None:
    store, image = _store_with_image(tmp_path)
    layer = store.manifest(image).layers[0]
    precomputed = {layer.digest.split(":")[1]: (layer.digest, layer.size)}
    _corrupt_blob(store, layer.digest, b"x" * layer.size)
    assert validate_layout(tmp_path, blob_digests=precomputed) == []
