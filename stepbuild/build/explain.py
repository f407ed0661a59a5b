"""Why a step missed the cache: its explanation material, and one line comparing two of them.

A step's *material* is a small JSON object saved for every step that ran (`explain_store.py`),
never computed for a hit: where the step is (stage, its place among the stage's cached steps,
line, instruction text), what its key covered (its `inputs`, the parent state's key, the
base image of its stage, the ARG values in scope) and, for COPY/ADD of the context, the
per-file digests of the selection (path → kind, mode, content hash or link target; never
file contents). Secrets never reach it: a secret's value is in no key input (`keys.py`).

`reason(now, before)` compares a missed step's material with the closest earlier one for the
same step and says what differed, most specific first: the instruction text (a word diff),
the files a COPY selected, an ARG or ENV the step sees, another key input, and last the image
the step is built on (its base image, or the step before it). Pure; no I/O.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stepbuild.build.keys import PROXY_ARGS

if TYPE_CHECKING:
    from stepbuild.sources.context import Selection

MATERIAL_SCHEMA = 1
SHOWN_FILES = 3  # files named in the one-line reason; -v names them all


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a step ran: `short` (one line) and `full` (-v: every file named)."""

    short: str
    full: str


def material(*, stage: int, stage_name: str, place: int, line: int, text: str,
             inputs: Mapping[str, Any], parent: str | None, parent_line: int | None,
             parent_ran: bool, base: tuple[str, str] | None, args: Mapping[str, str],
             selection: Selection | None) -> dict[str, Any]:
    """The explanation material of a step that ran (see the module docstring). `place`: the
    step's index among its stage's cached steps; `parent`: the parent state's key (None for
    COPY --link, whose key leaves it out); `parent_line`: the line of the cached step before
    it in the stage (None for the first), `parent_ran`: whether that step ran; `base`: the
    stage's base image (name, digest)."""
    out: dict[str, Any] = {
        "v": MATERIAL_SCHEMA, "stage": stage, "stage_name": stage_name, "place": place,
        "line": line, "text": text, "inputs": dict(inputs), "parent": parent,
        "parent_line": parent_line, "parent_ran": parent_ran,
        "base": list(base) if base else None,
        "args": {k: v for k, v in sorted(args.items()) if k not in PROXY_ARGS}}
    if selection is not None:
        out["files"] = selection_files(selection)
    return out


def selection_files(selection: Selection) -> dict[str, str]:
    """Path (as in the context) → "kind mode hash" of every entry a COPY selected."""
    files: dict[str, str] = {}
    for group in selection.groups:
        source = posixpath.normpath(group.source_path)
        prefix = "" if source == "." else source + "/"  # entry paths are clean already
        for entry in group.entries:
            path = prefix + entry.path if group.is_dir else source
            digest = entry.content_hash or entry.link_target or ""
            files[path] = f"{entry.kind} {entry.mode:04o} {digest}"
    return files


def reason(now: Mapping[str, Any], before: Mapping[str, Any], filename: str) -> Reason | None:
    """What differs between a step's material `now` and an earlier one for the same step;
    None when nothing does (same key: the earlier result is gone from the store)."""
    for check in (_text, _files, _env, _args, _inputs):
        found = check(now, before)
        if found is not None:
            return _printable(found)
    found = _parent(now, before, filename)
    return None if found is None else _printable(found)


def _printable(found: Reason) -> Reason:
    """A team cache's material comes from another machine, and a file name may hold anything:
    control characters are shown escaped, never sent to the terminal."""
    return Reason(*(text.translate(_CONTROL) for text in (found.short, found.full)))


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f)}


def _one(text: str) -> Reason:
    return Reason(text, text)


def _text(now: Mapping[str, Any], before: Mapping[str, Any]) -> Reason | None:
    if now.get("text") == before.get("text"):
        return None
    return _one(f"the instruction text changed: {word_diff(before.get('text', ''), now['text'])}")


def word_diff(old: str, new: str) -> str:
    """`new` with the words removed from `old` as [-word-] and those added as {+word+}."""
    import difflib  # only when an instruction's text changed

    a, b = old.split(), new.split()
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out += a[i1:i2]
            continue
        if i2 > i1:
            out.append("[-" + " ".join(a[i1:i2]) + "-]")
        if j2 > j1:
            out.append("{+" + " ".join(b[j1:j2]) + "+}")
    return " ".join(out)


def _files(now: Mapping[str, Any], before: Mapping[str, Any]) -> Reason | None:
    new, old = now.get("files"), before.get("files")
    if new is None or old is None or new == old:
        return None
    changes = [f"{path} ({_file_change(old.get(path), new.get(path))})"
               for path in sorted(set(new) | set(old)) if old.get(path) != new.get(path)]
    count = f"{len(changes)} file{'s' if len(changes) != 1 else ''} changed: "
    shown = changes[:SHOWN_FILES]
    more = len(changes) - len(shown)
    short = count + ", ".join(shown) + (f", and {more} more (-v lists them)" if more else "")
    return Reason(short, count + ", ".join(changes))


def _file_change(old: str | None, new: str | None) -> str:
    if old is None:
        return "new"
    if new is None:
        return "deleted"
    old_kind, old_mode, old_digest = (old.split(" ", 2) + ["", ""])[:3]
    new_kind, new_mode, new_digest = (new.split(" ", 2) + ["", ""])[:3]
    if old_kind != new_kind:
        return f"{old_kind} → {new_kind}"
    changed = []
    if old_digest != new_digest:
        changed.append("link target" if new_kind == "symlink" else "content")
    if old_mode != new_mode:
        changed.append(f"mode {old_mode} → {new_mode}")
    return ", ".join(changed) or "changed"


def _env(now: Mapping[str, Any], before: Mapping[str, Any]) -> Reason | None:
    new = _pairs(now.get("inputs", {}).get("env"))
    old = _pairs(before.get("inputs", {}).get("env"))
    if new == old:
        return None
    args = set(now.get("args", {})) | set(before.get("args", {}))
    said = [_variable(name, old.get(name), new.get(name), name in args)
            for name in sorted(set(new) | set(old)) if old.get(name) != new.get(name)]
    return _one("; ".join(said))


def _args(now: Mapping[str, Any], before: Mapping[str, Any]) -> Reason | None:
    """An ARG a COPY or ADD expanded (its inputs hold the result, not the name)."""
    if now.get("inputs") == before.get("inputs"):
        return None
    new, old = now.get("args", {}), before.get("args", {})
    said = [_variable(name, old.get(name), new.get(name), True)
            for name in sorted(set(new) | set(old)) if old.get(name) != new.get(name)]
    return _one("; ".join(said)) if said else None


def _pairs(env: Any) -> dict[str, str]:
    if not isinstance(env, list):
        return {}
    return dict(item.partition("=")[::2] for item in env if isinstance(item, str))


def _variable(name: str, old: str | None, new: str | None, is_arg: bool) -> str:
    """An ARG shows its values (build arguments are not secret); an ENV only its name."""
    if not is_arg:
        word = "set" if old is None else "unset" if new is None else "changed"
        return f"ENV {name} {word}"
    if old is None:
        return f"ARG {name} set to {new}"
    if new is None:
        return f"ARG {name} unset (was {old})"
    return f"ARG {name} changed {old} → {new}"


_INPUT_NAMES = {"user": "the user (USER)", "cwd": "the working directory (WORKDIR)",
                "network": "the network (--network)", "mounts": "its --mount options",
                "script": "its heredoc script", "inline": "a heredoc", "urls": "a URL's content",
                "git": "a git commit", "from": "the --from source's content",
                "chown": "--chown", "chmod": "--chmod", "dest": "the destination",
                "sde": "SOURCE_DATE_EPOCH", "excludes": "--exclude",
                "selection": "the selected sources (paths or modes of the sources)"}


def _inputs(now: Mapping[str, Any], before: Mapping[str, Any]) -> Reason | None:
    new, old = now.get("inputs", {}), before.get("inputs", {})
    changed = sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))
    if not changed:
        return None
    return _one(", ".join(_INPUT_NAMES.get(k, k) for k in changed) + " changed")


def _parent(now: Mapping[str, Any], before: Mapping[str, Any], filename: str) -> Reason | None:
    if now.get("parent") is None or now.get("parent") == before.get("parent"):
        return None
    base_now, base_before = now.get("base"), before.get("base")
    if now.get("parent_line") is None and base_now and base_before and base_now != base_before:
        if base_now[0] != base_before[0]:
            return _one(f"the base image changed: {base_before[0]} → {base_now[0]}")
        return _one(f"base image {base_now[0]} now resolves to {base_now[1]}, was "
                    f"{base_before[1]}")
    if now.get("parent_line") is not None and now.get("parent_ran"):
        return _one(f"the step before it ({filename}:{now['parent_line']}) changed")
    if now.get("parent_line") is not None:  # that step hit: what changed is in between
        return _one(f"the image config changed after {filename}:{now['parent_line']} (a"
                    " config instruction such as LABEL, ENV or USER)")
    return _one("the image before it changed (its FROM, or a config instruction such as"
                " LABEL, ENV or USER above it)")


def describe(record: Mapping[str, Any], filename: str) -> str:
    """Where a material's step is: `Stepfile:5 COPY . /app`."""
    return f"{filename}:{record.get('line')} {record.get('text', '')}"
