"""build/explain.py: a step's material, and the one line saying what differs between two.

Each kind of reason with its exact text; the order in which differences are reported (the
most specific first); the short line and the -v one; what the material leaves out (proxy
ARGs, file contents)."""

from __future__ import annotations

from typing import Any

import pytest

from stepbuild.build.explain import Reason, material, reason, selection_files, word_diff
from stepbuild.sources.context import ContextEntry, Selection, SourceGroup

BASE = ("debian:bookworm", "sha256:" + "a" * 64)


def entry(path: str, content: str = "h1", mode: int = 0o644, kind: str = "file",
          target: str | None = None) -> ContextEntry:
    return ContextEntry(path, kind, mode, 1, target, None if kind == "symlink" else content,
                        0, 0, 0)


def selection(*entries: ContextEntry, source: str = ".") -> Selection:
    return Selection((SourceGroup(source, source, True, 0o755, entries),))


def made(*, text: str = "RUN make", env: tuple[str, ...] = (), args: dict[str, str] | None = None,
         files: Selection | None = None, parent: str | None = "p1", place: int = 1,
         parent_ran: bool = True, base: tuple[str, str] | None = BASE,
         **inputs: Any) -> dict[str, Any]:
    return material(stage=0, stage_name="", place=place, line=6, text=text,
                    inputs={"op": "run", "env": list(env), **inputs}, parent=parent,
                    parent_line=5 if place else None, parent_ran=parent_ran, base=base,
                    args=args or {}, selection=files)


def why(now: dict[str, Any], before: dict[str, Any]) -> str:
    found = reason(now, before, "Stepfile")
    assert found is not None
    return found.short


def test_word_diff_marks_removed_and_added_words() -> None:
    assert word_diff("RUN pip install a==1", "RUN pip install a==2 b") == \
        "RUN pip install [-a==1-] {+a==2 b+}"
    assert word_diff("RUN make", "RUN make all") == "RUN make {+all+}"
    assert word_diff("RUN make all", "RUN make") == "RUN make [-all-]"


def test_instruction_text_comes_first() -> None:
    before = made(text="RUN make", env=("A=1",))
    assert why(made(text="RUN make  test", env=("A=2",)), before) == \
        "the instruction text changed: RUN make {+test+}"


def test_files_content_mode_new_deleted_symlink() -> None:
    before = made(files=selection(entry("src/main.py"), entry("run.sh"), entry("gone.txt"),
                                  entry("link", kind="symlink", target="a")))
    now = made(files=selection(entry("src/main.py", "h2"), entry("run.sh", mode=0o755),
                               entry("src/util.py"),
                               entry("link", kind="symlink", target="b")))
    found = reason(now, before, "Stepfile")
    assert found == Reason(
        "5 files changed: gone.txt (deleted), link (link target), run.sh (mode 0644 → 0755),"
        " and 2 more (-v lists them)",
        "5 files changed: gone.txt (deleted), link (link target), run.sh (mode 0644 → 0755),"
        " src/main.py (content), src/util.py (new)")


def test_one_file_and_a_kind_change() -> None:
    before = made(files=selection(entry("x")))
    now = made(files=selection(entry("x", kind="dir", content="")))
    assert why(now, before) == "1 file changed: x (file → dir)"


def test_a_file_source_is_named_as_written() -> None:
    group = SourceGroup("src/app.py", "src/app.py", False, 0o644, (entry("app.py"),))
    assert selection_files(Selection((group,))) == {"src/app.py": "file 0644 h1"}
    assert selection_files(selection(entry("a/b"), source="./lib")) == {"lib/a/b": "file 0644 h1"}


def test_arg_shows_its_values_env_only_its_name() -> None:
    before = made(env=("PATH=/bin", "VERSION=1.2"), args={"VERSION": "1.2"})
    assert why(made(env=("PATH=/bin", "VERSION=1.3"), args={"VERSION": "1.3"}), before) == \
        "ARG VERSION changed 1.2 → 1.3"
    assert why(made(env=("PATH=/sbin", "VERSION=1.2"), args={"VERSION": "1.2"}), before) == \
        "ENV PATH changed"
    assert why(made(env=("PATH=/bin", "VERSION=1.2", "X=1"), args={"VERSION": "1.2"}),
               before) == "ENV X set"
    assert why(made(env=("PATH=/bin",)), before) == "ARG VERSION unset (was 1.2)"
    both = why(made(env=("PATH=/sbin", "VERSION=2"), args={"VERSION": "2"}), before)
    assert both == "ENV PATH changed; ARG VERSION changed 1.2 → 2"


def test_an_arg_a_copy_expanded() -> None:
    before = made(text="COPY $SRC /app", args={"SRC": "a"}, dest="/app", selection="d1")
    now = made(text="COPY $SRC /app", args={"SRC": "b"}, dest="/app", selection="d2")
    assert why(now, before) == "ARG SRC changed a → b"


def test_another_input_is_named() -> None:
    assert why(made(user="app", cwd="/"), made(user="root", cwd="/")) == \
        "the user (USER) changed"
    assert why(made(network="none"), made(network="private")) == \
        "the network (--network) changed"


def test_the_step_before_it() -> None:
    assert why(made(parent="p2"), made(parent="p1")) == \
        "the step before it (Stepfile:5) changed"
    assert why(made(parent="p2", parent_ran=False), made(parent="p1")) == (
        "the image config changed after Stepfile:5 (a config instruction such as LABEL, ENV"
        " or USER)")


def test_the_base_image_now_resolves_to_another_digest() -> None:
    other = ("debian:bookworm", "sha256:" + "b" * 64)
    now = made(parent="p2", place=0, base=other)
    assert why(now, made(parent="p1", place=0)) == (
        f"base image debian:bookworm now resolves to {other[1]}, was {BASE[1]}")
    renamed = made(parent="p2", place=0, base=("debian:trixie", other[1]))
    assert why(renamed, made(parent="p1", place=0)) == \
        "the base image changed: debian:bookworm → debian:trixie"
    same_base = made(parent="p2", place=0)
    assert why(same_base, made(parent="p1", place=0)).startswith("the image before it changed")


def test_nothing_differs() -> None:
    assert reason(made(), made(), "Stepfile") is None
    link = made(parent=None)  # COPY --link: the parent is not in its key
    assert reason(link, made(parent=None), "Stepfile") is None


@pytest.mark.parametrize("proxy", ["HTTP_PROXY", "https_proxy", "NO_PROXY"])
def test_proxy_args_are_left_out(proxy: str) -> None:
    assert made(args={proxy: "http://secret@proxy", "A": "1"})["args"] == {"A": "1"}


def test_material_holds_digests_not_contents() -> None:
    found = made(files=selection(entry("a.txt", content="0123abcd")))
    assert found["files"] == {"a.txt": "file 0644 0123abcd"}


def test_control_characters_are_escaped() -> None:
    before = made(files=selection(entry("a")))
    now = made(files=selection(entry("a"), entry("\x1b[2Jevil\nname")))
    assert why(now, before) == "1 file changed: \\x1b[2Jevil\\x0aname (new)"
