"""COPY and ADD steps: their cache inputs, and putting the files into the mounted overlay.

Sources come from the build context, from an earlier stage or an image (`COPY --from`),
from heredocs (`COPY <<EOF`) or from URLs (ADD). `prepare` computes the key inputs: the
digest of the selected context files (content, modes, links — not mtimes), the source
stage's state for `--from`, heredoc bodies, downloaded content digests. `perform` copies with
Docker's destination rules (`copy.py`); a `--from` source is mounted read-only for the copy.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

from stepbuild import fetch, keys, layer, overlay
from stepbuild import instructions as ins
from stepbuild.copy import Copier, Owner, Placement, check_destination, file_target, open_root
from stepbuild.errors import BuildError, PlanError
from stepbuild.image import ImageState
from stepbuild.images import load_state
from stepbuild.plan import Scope, located
from stepbuild.run_step import user_ids
from stepbuild.step import PreparedStep


def prepare(executor: Any, copy: ins.Copy | ins.Add, state: ImageState, scope: Scope,
            run: Any) -> PreparedStep:
    word = "ADD" if isinstance(copy, ins.Add) else "COPY"
    expanded = [scope.expand(s) for s in copy.sources]
    urls = [s for s in expanded if fetch.is_url(s)]
    if urls and isinstance(copy, ins.Copy):
        raise BuildError("COPY cannot fetch URLs; use ADD", hint=urls[0])
    sources = [s for s in expanded if not fetch.is_url(s)]
    excludes = [scope.expand(e) for e in copy.excludes]
    source = _from(executor, copy, scope, run)
    selection = None
    if sources and source is None:
        selection = executor.context.select(sources, excludes=excludes)
    checksum = scope.expand(copy.checksum) if isinstance(copy, ins.Add) and (
        copy.checksum) else None
    if checksum is not None and (sources or copy.inline):
        raise located(PlanError, run.stages.filename, copy,
                      "ADD --checksum can't be specified for non-HTTP(S) sources")
    chmod = _chmod(scope.expand(copy.chmod), run, copy) if copy.chmod else None
    downloads = [fetch.download(url, executor.scratch_file("download"), checksum)
                 for url in urls]
    inline = [(s.name, scope.expand(s.data) if s.expand else s.data) for s in copy.inline]
    dest = destination(scope.expand(copy.dest), state.workdir)
    chown = scope.expand(copy.chown) if copy.chown else None
    inputs = {"op": word.lower(), "selection": selection.digest() if selection else None,
              "from": source.key if source else None, "sources": sources if source else None,
              "dest": dest, "chown": chown, "chmod": chmod, "excludes": excludes,
              "inline": [[name, keys.digest(data)] for name, data in inline],
              "urls": [[d.url, d.digest] for d in downloads],
              "sde": executor.source_date_epoch}
    key = keys.step_key(state.key, inputs)
    origin = f" --from={scope.expand(copy.from_)}" if isinstance(copy, ins.Copy) and (
        copy.from_) else ""
    created_by = f"{word}{origin} {' '.join([*expanded, *(n for n, _ in inline)])} {dest}"
    work = {"selection": selection, "source": source, "sources": sources,
            "excludes": excludes, "dest": dest, "inline": inline, "chown": chown,
            "downloads": downloads, "chmod": int(chmod, 8) if chmod else None,
            "unpack": isinstance(copy, ins.Add) and copy.unpack is not False}
    return PreparedStep(copy, key, inputs, created_by, work)


def _from(executor: Any, copy: ins.Copy | ins.Add, scope: Scope, run: Any
          ) -> ImageState | None:
    """The image state a `COPY --from` reads: an earlier stage's result, or an image."""
    if not isinstance(copy, ins.Copy) or not copy.from_:
        return None
    name = scope.expand(copy.from_)
    stage = run.stages.find(name)
    if stage is not None:
        built: ImageState = run.results[stage.index]  # the stage graph made sure it is built
        return built
    state = load_state(executor.store, name)
    if state is None:
        raise located(PlanError, run.stages.filename, copy,
                      f"COPY --from={name}: no stage or image of that name",
                      hint="name an earlier stage, or build or load the image first")
    return state


def _chmod(value: str, run: Any, copy: ins.Copy | ins.Add) -> str:
    if not value or len(value) > 4 or any(ch not in "01234567" for ch in value):
        raise located(PlanError, run.stages.filename, copy,
                      f"invalid --chmod value {value!r}: expected an octal mode such as 0755")
    return value


def destination(dest: str, workdir: str) -> str:
    """An absolute, clean destination; a trailing "/" (or "/.") is kept: it means "a dir"."""
    is_dir = dest.endswith(("/", "/.")) or dest in (".", "..")
    absolute = dest if dest.startswith("/") else workdir.rstrip("/") + "/" + dest
    cleaned = "/" + posixpath.normpath(absolute).lstrip("/")
    return cleaned.rstrip("/") + "/" if is_dir else cleaned


def perform(executor: Any, step: PreparedStep, merged: Path, tmp: Path) -> None:
    """Copy the step's sources into the mounted image root `merged`."""
    work = step.work
    source: ImageState | None = work["source"]
    if source is None:
        _copy_all(executor, executor.context, work["selection"], step, merged)
        return
    from stepbuild.context import BuildContext

    lowers = [executor.store.layer_dir(d) for d in reversed(source.diff_ids)]
    with overlay.mounted_readonly(tmp / "from", lowers) as root:
        context = BuildContext(root)
        selection = context.select(work["sources"], excludes=work["excludes"])
        _copy_all(executor, context, selection, step, merged)


def _copy_all(executor: Any, context: Any, selection: Any, step: PreparedStep,
              merged: Path) -> None:
    work = step.work
    owner = Owner()
    if work["chown"]:
        owner = chown_owner(merged, work["chown"])
    place = Placement(work["dest"], owner, work["chmod"])
    groups = selection.groups if selection else ()
    with open_root(merged) as root_fd:
        check_destination(place, len(groups) + len(work["inline"]) + len(work["downloads"]),
                          root_fd)
        copier = Copier(root_fd, place)
        for group in groups:
            _copy_group(context, copier, group, place, root_fd, work["unpack"], merged,
                        chowned=bool(work["chown"]))
        for name, data in work["inline"]:
            copier.write_file(file_target(place, name, root_fd), data.encode(), 0o644, 0)
        for download in work["downloads"]:
            _copy_download(copier, download, file_target(place, download.name, root_fd))
        copier.finish()


def chown_owner(root: Path, chown: str) -> Owner:
    """--chown: names resolved in the image; a lone numeric uid is also the gid (Dockerfile
    reference: "providing a UID without a GID uses the UID as the GID")."""
    if chown.isdigit():
        return Owner(int(chown), int(chown))
    ids = user_ids(root, chown)
    return Owner(ids.uid, ids.gid)


def _copy_group(context: Any, copier: Copier, group: Any, place: Placement, root_fd: int,
                unpack: bool, merged: Path, chowned: bool) -> None:
    if not group.is_dir:
        entry = group.entries[0]
        archive = context.root / group.resolved
        if unpack and entry.kind == "file" and layer.is_archive(archive):
            owner = place.owner if chowned else None
            layer.unpack_archive(archive, merged, place.dest.rstrip("/") or "/",
                                 uid=owner.uid if owner else None,
                                 gid=owner.gid if owner else None)
            return
        _copy_entry(context, copier, group.resolved, file_target(place, group.name, root_fd),
                    entry)
        return
    base = place.dest.rstrip("/") or "/"
    copier.make_dir(base, os.lstat(context.root / group.resolved), top=True)
    for entry in group.entries:
        source = f"{group.resolved}/{entry.path}" if group.resolved != "." else entry.path
        _copy_entry(context, copier, source, base.rstrip("/") + "/" + entry.path, entry)


def _copy_entry(context: Any, copier: Copier, source: str, target: str, entry: Any) -> None:
    """Copy one entry; `source` is relative to the context (or source image) root."""
    if entry.kind == "dir":
        copier.make_dir(target, os.lstat(context.root / source))
    elif entry.kind == "symlink":
        copier.copy_symlink(entry.link_target, target, os.lstat(context.root / source))
    else:
        fd = context.open_file(source)
        try:
            copier.copy_file(fd, target, os.fstat(fd))
        finally:
            os.close(fd)


def _copy_download(copier: Copier, download: fetch.Download, target: str) -> None:
    # Docker: a downloaded file gets mode 600 and its Last-Modified time as mtime.
    os.chmod(download.path, 0o600)
    os.utime(download.path, (download.mtime, download.mtime))
    fd = os.open(download.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        copier.copy_file(fd, target, os.fstat(fd))
    finally:
        os.close(fd)
