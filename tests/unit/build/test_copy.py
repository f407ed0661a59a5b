"""COPY/ADD --chown: numeric owners without a lookup, ids out of range refused, and lookup
errors located at the instruction; `COPY --from` source errors said of the stage."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stepbuild.build.copy import (
    COPY_RULES,
    CopyWork,
    _copy_all,
    _from_error,
    chown_owner,
    numeric_owner,
    prepare,
    select,
)
from stepbuild.build.copy_files import Owner
from stepbuild.build.plan import Scope
from stepbuild.build.state import ImageState
from stepbuild.build.step import PreparedStep
from stepbuild.build.users import UserError
from stepbuild.errors import BuildError, ContextError, SourceNotFound
from stepbuild.frontend import instructions as ins
from stepbuild.frontend.parse import parse
from stepbuild.sources.context import BuildContext


@pytest.mark.parametrize(("chown", "expected"), [
    ("1000", Owner(1000, 1000)),          # a lone uid is also the gid
    ("1000:50", Owner(1000, 50)),
    ("4294967294", Owner(4294967294, 4294967294)),
    ("app", None),
    ("1000:staff", None),
    ("1000:", None),                      # the primary group comes from passwd
])
def test_numeric_owner(chown: str, expected: Owner | None) -> None:
    assert numeric_owner(chown) == expected


@pytest.mark.parametrize("chown", ["4294967296", "4294967295", "0:4294967296"])
def test_numeric_owner_out_of_range(chown: str) -> None:
    with pytest.raises(UserError, match="out of range"):
        numeric_owner(chown)


def test_chown_errors_are_located(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as caught:
        chown_owner(tmp_path, "ghost", "Stepfile:3:1")
    assert caught.value.message.startswith("Stepfile:3:1: --chown=ghost: unable to find user")


def test_chown_with_a_passwd_loop_is_located(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(BuildError, match="Stepfile:2:1: --chown=app: cannot read /etc/passwd"):
        chown_owner(tmp_path, "app", "Stepfile:2:1")


def from_work(origin: str) -> CopyWork:
    return CopyWork(
        dest="/x", selection=None, layout=None, source=None, sources=("/missing",), excludes=(),
        parents=False, inline=(), downloads=(), git=(), keep_git_dir=False, chown=None,
        owner=None, chmod=None, unpack=False, where="Stepfile:3:1", origin=origin)


def test_missing_source_is_source_not_found(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound) as caught:
        select(BuildContext(tmp_path), ["/missing"], [], False)
    assert caught.value.source == "/missing" and not caught.value.excluded


def test_from_missing_source_names_the_stage_not_the_context(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound) as caught:
        select(BuildContext(tmp_path), ["/missing"], [], False)
    error = _from_error(caught.value, from_work('stage "build"'))
    assert error.message == ('Stepfile:3:1: COPY --from: /missing: no such file or directory'
                             ' in stage "build"')
    assert error.hint is None  # no word of the build context or .dockerignore
    assert error.exit_code == 1


def test_from_excluded_source() -> None:
    error = _from_error(SourceNotFound("/a.txt", excluded=True), from_work('image "alpine"'))
    assert error.message.endswith('/a.txt: excluded by --exclude in image "alpine"')


def test_from_other_source_errors_keep_their_message() -> None:
    error = _from_error(ContextError("empty COPY source", hint="about the context"),
                        from_work('stage "s"'))
    assert error.message == 'Stepfile:3:1: COPY --from (stage "s"): empty COPY source'
    assert error.hint is None


def _copy_work(dest: str, unpack: bool = False) -> CopyWork:
    return CopyWork(
        dest=dest, selection=None, layout=None, source=None, sources=("f",), excludes=(),
        parents=False, inline=(), downloads=(), git=(), keep_git_dir=False, chown=None,
        owner=None, chmod=None, unpack=unpack, where="Stepfile:2:1")


@pytest.mark.parametrize("unpack", [False, True], ids=["COPY", "ADD"])
def test_a_source_swapped_for_a_symlink_loop_after_hashing_is_named(
        tmp_path: Path, unpack: bool) -> None:
    context_dir = tmp_path / "context"
    context_dir.mkdir()
    (context_dir / "f").write_text("hashed")
    context = BuildContext(context_dir)
    selection, layout = select(context, ["f"], [], False)
    (context_dir / "f").unlink()  # ln -s g f; ln -s f g: between hashing and copying
    (context_dir / "f").symlink_to("g")
    (context_dir / "g").symlink_to("f")
    merged = tmp_path / "root"
    merged.mkdir()
    with pytest.raises(BuildError) as caught:
        _copy_all(context, selection, layout, _copy_work("/f", unpack), merged, tmp_path)
    assert caught.value.message == ("Stepfile:2:1: f changed while the build read it:"
                                    " Too many levels of symbolic links")
    assert list(merged.iterdir()) == []


# --- the key of the steps issue 11 changed ------------------------------------------------------


def prepared(text: str) -> PreparedStep:
    """The prepared COPY (after a stage `src`) that reads no build context."""
    stepfile = parse("FROM scratch AS src\nFROM scratch\n" + text)
    copy = stepfile.instructions[-1]
    assert isinstance(copy, ins.Copy | ins.Add)
    stages = SimpleNamespace(filename="Stepfile",
                             find=lambda name: SimpleNamespace(index=0) if name == "src" else None)
    run = SimpleNamespace(stages=stages, results={0: ImageState()},
                          named_source=lambda name, instruction: None)
    executor = SimpleNamespace(context=None, source_date_epoch=None)
    return prepare(executor, copy, ImageState(), Scope(), run)


def prepared_inputs(text: str) -> dict[str, Any]:
    """The key inputs of a COPY (after a stage `src`) that reads no build context."""
    return dict(prepared(text).inputs)


@pytest.mark.parametrize(("text", "marked"), [
    ("COPY --from=src /a /b\n", True),                 # owners now kept: was 0:0
    ("COPY --from=src --chown=1:1 /a /b\n", False),    # as before
    ("COPY --chmod=755 <<EOF /x/y\nx\nEOF\n", True),   # the dirs it makes: were 0755
    ("COPY <<EOF /x/y\nx\nEOF\n", False),
])
def test_steps_made_differently_now_cannot_hit_old_records(text: str, marked: bool) -> None:
    # A record made before issue 11 holds a layer with the old owners or modes: a step whose
    # result changed has `copy_rules` in its key; other steps' keys stay as they were.
    inputs = prepared_inputs(text)
    assert (inputs.get("copy_rules") == COPY_RULES) is marked


@pytest.mark.parametrize(("text", "created_by"), [
    ("COPY <<EOF /etc/hello\nhi\nEOF\n", "COPY <<EOF /etc/hello"),
    ("COPY <<-EOF <<'RAW' /etc/\n\tx\nEOF\ny\nRAW\n", "COPY <<EOF <<RAW /etc/"),
    ("ADD --link <<conf.ini /etc/\nk=v\nconf.ini\n", "ADD --link <<conf.ini /etc/"),
    ("COPY --from=src /a <<EOF /b/\nx\nEOF\n", "COPY --from=src /a <<EOF /b/"),
])
def test_heredoc_sources_are_in_the_history_as_written(text: str, created_by: str) -> None:
    # BuildKit's dispatchCopy: the paths, then `<<NAME` per heredoc (no quotes, no `-`), then
    # the destination. Before issue 16 the `<<` was lost: `COPY EOF /etc/hello`.
    assert prepared(text).created_by == created_by
