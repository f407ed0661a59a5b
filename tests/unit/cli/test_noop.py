"""fingerprint.py: what changes the fingerprint, what blocks a record, what a replay checks.

A real directory tree (inode, ctime and mtime matter), a hand-made store (index.json, blobs,
layer dirs) and argparse-like options.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from stepbuild.cli import noop as fingerprint
from stepbuild.cli.noop import Witness, record, replay, take
from stepbuild.store.layout import StoreLayout

OLD = time.time() - 3600  # well outside the racy window


def options(context: Path, **changes: object) -> argparse.Namespace:
    values: dict[str, object] = dict(
        context=str(context), file=None, tag=["app"], build_arg=[], build_arg_file=[],
        no_cache=False, network="host", target=None, reproducible=False, secret=[], ssh=[],
        jobs=2, push=False, pull="missing", cache_to=[], cache_from=[], quiet=False,
        verbose=False, output=[], compression=None, debug=False, root=None,
        authfile=None, tls_verify=True, ca_file=None)
    values.update(changes)
    return argparse.Namespace(**values)


def settle(*paths: Path) -> None:
    """Give the files an old mtime (their ctime is now: take a witness later than RACY)."""
    for path in paths:
        os.utime(path, (OLD, OLD), follow_symlinks=False)


@pytest.fixture
def context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "src" / "deep").mkdir(parents=True)
    (ctx / "Stepfile").write_text("FROM base\nCOPY src /src\n")
    (ctx / "src" / "a.txt").write_text("a")
    (ctx / "src" / "deep" / "b.txt").write_text("b")
    return ctx


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))
    return root


def value(context: Path, store: Path, **changes: object) -> str:
    witness = take(options(context, **changes), "missing", store)
    assert witness is not None
    return witness.value


@pytest.mark.parametrize("change", [
    {"no_cache": True}, {"reproducible": True}, {"push": True}, {"output": ["type=oci"]},
    {"cache_to": ["type=local,dest=/x"]}, {"file": "-"},
])
def test_builds_that_are_never_replayed(context: Path, store: Path, change: dict) -> None:
    assert take(options(context, **change), "missing", store) is None
    assert take(options(context), "always", store) is None


def test_the_same_inputs_give_the_same_fingerprint(context: Path, store: Path) -> None:
    first = value(context, store)
    assert value(context, store) == first
    # presentation options change nothing
    assert value(context, store, quiet=True, verbose=True, jobs=9) == first


@pytest.mark.parametrize("edit", [
    lambda c: (c / "src" / "deep" / "b.txt").write_text("B"),  # same size, new content
    lambda c: (c / "src" / "deep" / "new.txt").write_text(""),
    lambda c: (c / "src" / "a.txt").unlink(),
    lambda c: (c / "src" / "a.txt").chmod(0o600),
    lambda c: (c / "Stepfile").write_text("FROM base\nCOPY src /elsewhere\n"),
    lambda c: (c / ".dockerignore").write_text("src/a.txt\n"),
    lambda c: (c / "Stepfile.stepignore").write_text("x\n"),
    lambda c: os.symlink("a.txt", c / "src" / "link"),
])
def test_any_change_in_the_context_changes_it(context: Path, store: Path, edit: object) -> None:
    first = value(context, store)
    edit(context)  # type: ignore[operator]
    assert value(context, store) != first


@pytest.mark.parametrize("change", [
    {"build_arg": ["X=1"]}, {"target": "other"}, {"tag": ["app", "app:2"]},
    {"network": "none"}, {"cache_from": ["type=local,src=/c"]}, {"root": "/elsewhere"},
])
def test_any_option_that_can_change_the_result_changes_it(
        context: Path, store: Path, change: dict) -> None:
    assert value(context, store, **change) != value(context, store)


def test_environment_and_build_arg_files_count(context: Path, store: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    first = value(context, store)
    monkeypatch.setenv("STEPBUILD_TEST_VALUE", "1")
    second = value(context, store)
    assert second != first
    monkeypatch.setenv("OLDPWD", "/somewhere/else")  # shells change it: ignored
    assert value(context, store) == second
    args = tmp_path / "args.env"
    args.write_text("A=1\n")
    with_file = value(context, store, build_arg_file=[str(args)])
    args.write_text("A=2\n")
    assert value(context, store, build_arg_file=[str(args)]) != with_file


def test_a_file_changed_just_now_makes_the_witness_racy(context: Path, store: Path) -> None:
    for path in context.rglob("*"):
        settle(path)
    settle(context)
    # ctimes are still recent (utime sets ctime): everything made in this test is racy
    assert take(options(context), "missing", store).racy  # type: ignore[union-attr]


def test_a_huge_context_is_left_to_the_build(context: Path, store: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fingerprint, "MAX_ENTRIES", 3)
    assert take(options(context), "missing", store) is None


# --- record and replay ------------------------------------------------------------------------


def put_blob(store: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (store / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return digest


def make_image(store: Path, tag: str | None = "app") -> str:
    """A manifest with a config and one layer (blob and dir), tagged `tag`."""
    diff_id = "sha256:" + "1" * 64
    (store / "layers" / diff_id[7:] / "diff").mkdir(parents=True)
    layer = put_blob(store, b"layer")
    config = put_blob(store, json.dumps({"rootfs": {"type": "layers",
                                                    "diff_ids": [diff_id]}}).encode())
    manifest = put_blob(store, json.dumps({"config": {"digest": config},
                                           "layers": [{"digest": layer}]}).encode())
    if tag:
        set_tag(store, tag, manifest)
    return manifest


def set_tag(store: Path, name: str, digest: str) -> None:
    index = json.loads((store / "index.json").read_text())
    index["manifests"] = [m for m in index["manifests"]
                          if m["annotations"]["org.opencontainers.image.ref.name"] != name]
    index["manifests"].append({"digest": digest, "annotations": {
        "org.opencontainers.image.ref.name": name}})
    (store / "index.json").write_text(json.dumps(index))


def witness(store: Path, value: str = "f" * 32) -> Witness:
    tags = fingerprint._tags(StoreLayout(store)) or {}
    return Witness(store, "i" * 32, value, racy=False, tags_before=tags)


TRANSCRIPT = [("", "#1   FROM base"), ("", "#2   COPY src /src"), ("", "     DONE 0.12s"),
              ("", "#3   CMD [\"sh\"]")]


def do_record(w: Witness, digest: str, resolved: frozenset[str] = frozenset()) -> bool:
    return record(w, digest=digest, names=["app"], resolved=set(resolved),
                  transcript=list(TRANSCRIPT), warnings=["a warning"])


def test_replay_prints_what_a_no_op_build_prints(store: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    w = witness(store)
    digest = make_image(store)
    assert do_record(w, digest)
    assert replay(w, quiet=False, verbose=False)
    out, err = capsys.readouterr()
    assert out == digest + "\n"
    assert err == ("warning: a warning\n#1   FROM base\n#2   COPY src /src\n     CACHED\n"
                   f"#3   CMD [\"sh\"]\nbuilt {digest} (3 steps, 1 cached), tagged app\n")
    assert replay(w, quiet=True, verbose=False)
    assert capsys.readouterr() == (digest + "\n", "warning: a warning\n")


def test_a_replay_leads_with_the_isolation_line_as_a_full_build(
        store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A full build names its isolation first, before any warning (commands.py): so does its
    replay; -q prints neither the line nor the steps."""
    w = witness(store)
    digest = make_image(store)
    assert record(w, digest=digest, names=["app"], resolved=set(),
                  transcript=[("", "isolation: namespaces"), *TRANSCRIPT],
                  warnings=["a warning"])
    assert replay(w, quiet=False, verbose=False)
    err = capsys.readouterr().err
    assert err.startswith("isolation: namespaces\nwarning: a warning\n#1   FROM base\n")
    assert err.endswith(f"built {digest} (3 steps, 1 cached), tagged app\n")
    assert replay(w, quiet=True, verbose=False)
    assert capsys.readouterr().err == "warning: a warning\n"


def test_replay_needs_the_same_fingerprint_tags_and_contents(store: Path) -> None:
    w = witness(store)
    digest = make_image(store)
    assert do_record(w, digest)
    assert not replay(witness(store, "0" * 32), quiet=True, verbose=False)
    set_tag(store, "base", digest)  # any tag changed since
    assert not replay(w, quiet=True, verbose=False)
    index = json.loads((store / "index.json").read_text())
    index["manifests"] = index["manifests"][:1]
    (store / "index.json").write_text(json.dumps(index))
    assert replay(w, quiet=True, verbose=False)
    layer_dir = next((store / "layers").iterdir()) / "diff"
    layer_dir.rename(layer_dir.with_name("gone"))  # a layer dir removed
    assert not replay(w, quiet=True, verbose=False)
    layer_dir.with_name("gone").rename(layer_dir)
    (store / "blobs" / "sha256" / digest[7:]).unlink()  # a blob pruned
    assert not replay(w, quiet=True, verbose=False)


def test_a_corrupt_record_is_a_miss(store: Path) -> None:
    w = witness(store)
    assert do_record(w, make_image(store))
    path = store / "fingerprints" / f"{w.identity}.json"
    for data in (b"{", b"[]", json.dumps({"format": fingerprint.FORMAT,
                                          "fingerprint": w.value}).encode()):
        path.write_bytes(data)
        assert not replay(w, quiet=True, verbose=False)


def test_no_record_when_the_build_cannot_be_trusted(store: Path) -> None:
    base = make_image(store, tag="base")
    w = witness(store)
    digest = put_blob(store, (store / "blobs" / "sha256" / base[7:]).read_bytes() + b" ")
    set_tag(store, "app", digest)
    racy = Witness(store, w.identity, w.value, racy=True, tags_before=w.tags_before)
    assert not do_record(racy, digest)
    set_tag(store, "other", base)  # another tag changed during the build
    assert not do_record(w, digest)
    index = json.loads((store / "index.json").read_text())
    index["manifests"] = [m for m in index["manifests"]
                          if m["annotations"]["org.opencontainers.image.ref.name"] != "other"]
    (store / "index.json").write_text(json.dumps(index))
    assert do_record(w, digest)  # and without those, it is recorded


def test_no_record_after_an_input_from_outside_the_context(store: Path) -> None:
    w = witness(store)
    digest = make_image(store)
    assert not record(w, digest=digest, names=["app"], resolved=set(), transcript=[],
                      warnings=[], outside=["ADD http://example/x"])
    assert do_record(w, digest)  # the same build, nothing read from outside: recorded


def test_no_record_when_the_build_read_a_tag_it_moved(store: Path) -> None:
    # FROM app, tagged app: the next build starts from this result, so it is not a no-op
    old = make_image(store)
    w = witness(store)
    new = put_blob(store, (store / "blobs" / "sha256" / old[7:]).read_bytes() + b" ")
    set_tag(store, "app", new)
    assert not do_record(w, new, resolved=frozenset({"app"}))
    assert do_record(w, new, resolved=frozenset({"base"}))  # moved but not read: fine


def test_another_stepbuild_version_is_another_fingerprint(context: Path, store: Path,
                                                          tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    package = tmp_path / "site" / "stepbuild"
    (package / "sandbox").mkdir(parents=True)
    (package / "keys.py").write_text("KEY_SCHEMA = 1\n")
    monkeypatch.setattr(fingerprint, "__file__", str(package / "fingerprint.py"))
    first = value(context, store)
    assert value(context, store) == first
    (package / "keys.py").write_text("KEY_SCHEMA = 22\n")
    assert value(context, store) != first


@pytest.mark.parametrize(("ignore", "counted"), [
    (None, True), ("node_modules\n", False), ("/node_modules/\n", False),
    ("# a comment\n./node_modules\n", False), ("node_modules\n!node_modules/keep\n", True),
    ("node_*\n", True),  # only literal lines prune the walk (a wildcard costs nothing extra)
])
def test_a_literally_ignored_tree_is_not_walked(context: Path, store: Path,
                                                ignore: str | None, counted: bool) -> None:
    modules = context / "node_modules" / "pkg"
    modules.mkdir(parents=True)
    (modules / "index.js").write_text("1")
    if ignore is not None:
        (context / ".dockerignore").write_text(ignore)
    first = value(context, store)
    (modules / "index.js").write_text("2")
    (modules / "new.js").write_text("")
    assert (value(context, store) != first) is counted


def test_the_ignore_file_beside_a_named_stepfile_wins(context: Path, store: Path,
                                                      tmp_path: Path) -> None:
    (context / "junk").mkdir()
    stepfile = tmp_path / "app.Stepfile"
    stepfile.write_text("FROM base\n")
    (tmp_path / "app.Stepfile.dockerignore").write_text("junk\n")
    (context / ".dockerignore").write_text("src\n")  # not the one that applies
    first = value(context, store, file=str(stepfile))
    (context / "junk" / "x").write_text("x")
    assert value(context, store, file=str(stepfile)) == first
    (context / "src" / "a.txt").write_text("changed")
    assert value(context, store, file=str(stepfile)) != first
