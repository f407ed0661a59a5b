"""COPY and ADD steps: their cache inputs, and putting the files into the mounted overlay.

Sources come from the build context, from an earlier stage or an image (`COPY --from`),
from heredocs (`COPY <<EOF`), from URLs (ADD) or from git repositories (ADD of an
`http(s)://…/repo.git#ref:subdir` URL, `sources/git.py`). `prepare` computes the key inputs: the
digest of the selected context files (content, modes, links — not mtimes), the source
stage's state for `--from`, heredoc bodies, downloaded content digests, the commit a git ref
resolves to. `perform` copies with Docker's destination rules (`copy_files.py`); a `--from` source
is mounted read-only for the copy; a git commit is fetched into the step's tmp dir.

`--link` (BuildKit, Dockerfile reference "COPY --link"): the files are copied into an empty
root — the executor mounts no lower layers for such a step (`execute.py`) — so the layer
depends on the step's own inputs only, and its key leaves out the parent state
(`LINK_PARENT` stands in for it): when an earlier step changes, the step still hits and the
same layer (same diff_id) is put on top of the new parent. The documented trade-offs follow:
nothing of the parent is read, so a destination path through a symlink of the parent is not
followed (the layer holds real directories there), an existing directory at the destination
is not seen (`COPY --link f /etc` writes a file `/etc`: write `/etc/`), and a directory the
layer creates replaces the parent's mode and mtime for that path. `--chown` with names is
resolved in the parent's /etc/passwd and /etc/group while preparing, and the numeric ids are
part of the key.

`--parents` (COPY only; Dockerfile reference "COPY --parents", BuildKit's dockerfile2llb
copies the pivot with an include pattern): each source keeps its path relative to the
context (or `--from` root) under the destination, which is always a directory; a `/./` in a
source is the pivot: only the part after it is kept (`./a/./b/c` → `<dest>/b/c`). The parent
directories on the kept path are copied as directories of the tree: with the source
directories' modes and mtimes (and the owner given by --chown), like a directory met inside a
copied tree.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepbuild.build import keys, users
from stepbuild.build.copy_files import (
    Copier,
    Owner,
    Placement,
    check_destination,
    copy_hashing,
    file_target,
    fresh_directory,
    open_root,
    upper_directory,
)
from stepbuild.build.images import import_archive, is_archive_name, load_state
from stepbuild.build.plan import Scope, located
from stepbuild.build.run import user_ids
from stepbuild.build.state import ImageState
from stepbuild.build.step import PreparedStep
from stepbuild.errors import BuildError, ContextChanged, ContextError, PlanError, SourceNotFound
from stepbuild.frontend import instructions as ins
from stepbuild.fs import modes, rootpath
from stepbuild.fs.userns import owner_mapped, unmapped_message
from stepbuild.layers.unpack import is_archive, unpack_archive
from stepbuild.oci.platform import Platform
from stepbuild.sources import git
from stepbuild.sources import url as fetch
from stepbuild.sources.context import BuildContext, ContextEntry, Selection, SourceGroup

if TYPE_CHECKING:
    from stepbuild.build.execute import Executor
    from stepbuild.build.seams import BuildRun

# What a --link step's key has in place of the parent state: the layer does not depend on it.
LINK_PARENT = "stepbuild-copy-link/1"
# In the key of the steps whose result changed with issue 11 — a `COPY --from` without
# --chown (owners were reset to 0:0), a --chmod (the directories it made were 0755) — so that
# a cache record made before cannot hit.
COPY_RULES = 2


@dataclass(frozen=True, slots=True)
class CopyWork:
    """What a COPY or ADD copies, as `prepare` found it: the context files selected (or, with
    `--from`, the `source` image and the `sources` to select in it), the `--parents` layout,
    the heredocs (name, body), the URLs downloaded and the git commits resolved; where they go
    and with which owner and mode. `owner` is the `--link --chown` owner, resolved in the
    parent; otherwise `chown` is resolved in the image when copying. `unpack`: an ADD of a
    local archive unpacks it. `where` ("Stepfile:LINE:COLUMN") locates errors while copying;
    `origin` names the `--from` source for them (`stage "build"`, `image "alpine"`)."""

    dest: str
    selection: Selection | None
    layout: tuple[_Kept, ...] | None
    source: ImageState | None
    sources: tuple[str, ...]
    excludes: tuple[str, ...]
    parents: bool
    inline: tuple[tuple[str, str], ...]
    downloads: tuple[fetch.Download, ...]
    git: tuple[_GitInput, ...]
    keep_git_dir: bool
    chown: str | None
    owner: Owner | None
    chmod: modes.Chmod | None
    unpack: bool
    where: str
    origin: str = ""
    context: BuildContext | None = None  # a named context the selection is of (--from)


def prepare(executor: Executor, copy: ins.Copy | ins.Add, state: ImageState, scope: Scope,
            run: BuildRun) -> PreparedStep:
    word = "ADD" if isinstance(copy, ins.Add) else "COPY"
    expanded = [scope.expand(s) for s in copy.sources]
    is_add = isinstance(copy, ins.Add)
    gits = [s for s in expanded if is_add and git.is_git_url(s)]
    urls = [s for s in expanded if fetch.is_url(s) and s not in gits]
    if urls and isinstance(copy, ins.Copy):
        raise BuildError("COPY cannot fetch URLs; use ADD", hint=urls[0])
    sources = [s for s in expanded if not fetch.is_url(s)]
    excludes = [scope.expand(e) for e in copy.excludes]
    parents = isinstance(copy, ins.Copy) and copy.parents
    named, source, selection, layout = _sources(executor, copy, state.platform, scope, run,
                                                sources, excludes, parents)
    checksum = scope.expand(copy.checksum) if isinstance(copy, ins.Add) and (
        copy.checksum) else None
    if checksum is not None and (sources or copy.inline):
        raise located(PlanError, run.stages.filename, copy,
                      "ADD --checksum can't be specified for non-HTTP(S) sources")
    if checksum is not None and gits and urls:
        raise located(PlanError, run.stages.filename, copy,
                      "ADD --checksum can't be given for both a git repository and a URL")
    chmod = _chmod(scope.expand(copy.chmod), run, copy) if copy.chmod else None
    with _at_line(run, copy):
        repos = [_resolve_git(s, checksum, run) for s in gits]
        downloads = [_download(url, checksum, executor, run) for url in urls]
    inline = [(s.name, scope.expand(s.data) if s.expand else s.data) for s in copy.inline]
    dest = destination(scope.expand(copy.dest), state.workdir)
    chown = scope.expand(copy.chown) if copy.chown else None
    where = f"{run.stages.filename}:{copy.loc.line}:{copy.loc.column}"
    if chown:
        try:
            numeric_owner(chown)  # an id out of range is the Stepfile's fault: say so now
        except users.UserError as exc:
            raise located(PlanError, run.stages.filename, copy,
                          f"--chown={chown}: {exc.message}") from None
    keep_git_dir = isinstance(copy, ins.Add) and copy.keep_git_dir
    inputs: dict[str, Any] = {
        "op": word.lower(), "selection": selection.digest() if selection else None,
        "from": source.key if source else None, "sources": sources if source else None,
        "dest": dest, "chown": chown, "chmod": chmod.text if chmod else None,
        "excludes": excludes,
        "inline": [[name, keys.digest(data)] for name, data in inline],
        "urls": [[d.url, d.digest] for d in downloads],
        "sde": executor.source_date_epoch}
    # Only present when used, so that the keys of other steps stay as they were.
    if repos:
        inputs["git"] = [[r.source.shown, r.commit] for r in repos]
        inputs["keep_git_dir"] = keep_git_dir
    if parents:
        inputs["parents"] = {"sources": sources, "dirs": _layout_key(layout)}
    if (source and not chown) or chmod:
        inputs["copy_rules"] = COPY_RULES
    owner = None
    if copy.link:
        inputs["link"] = True
        if chown:
            owner = _parent_owner(executor, state, chown, run, where)
            inputs["owner"] = [owner.uid, owner.gid]
    # --link: no parent state, but still the platform: records of two platforms never mix.
    parent = f"{LINK_PARENT} {state.platform}" if copy.link else state.key
    key = keys.step_key(parent, inputs)
    flags = "".join(f" {flag}" for flag, on in (
        ("--link", copy.link), ("--parents", parents),
        ("--keep-git-dir=true", keep_git_dir and repos)) if on)
    origin = f" --from={scope.expand(copy.from_)}" if isinstance(copy, ins.Copy) and (
        copy.from_) else ""
    shown = [next((r.source.shown for r in repos if s == r.written), s) for s in expanded]
    # Heredocs as written (`COPY <<EOF /etc/hello`), as BuildKit's dispatchCopy writes them.
    heredocs = [f"<<{name}" for name, _ in inline]
    created_by = f"{word}{flags}{origin} {' '.join([*shown, *heredocs])} {dest}"
    work = CopyWork(
        dest=dest, selection=selection, layout=layout, source=source, sources=tuple(sources),
        excludes=tuple(excludes), parents=parents, inline=tuple(inline),
        downloads=tuple(downloads), git=tuple(repos), keep_git_dir=keep_git_dir, chown=chown,
        owner=owner, chmod=chmod,
        unpack=isinstance(copy, ins.Add) and copy.unpack is not False,
        where=where, origin=_origin(copy, scope, run) if source else "", context=named)
    return PreparedStep(copy, key, inputs, created_by, work, (source,) if source else (),
                        link=copy.link)


@contextmanager
def _at_line(run: BuildRun, copy: ins.Copy | ins.Add) -> Iterator[None]:
    """Errors of fetching sources (git, URLs) name the Stepfile line; exit status stays 1."""
    try:
        yield
    except BuildError as exc:
        raise BuildError(f"{run.stages.filename}:{copy.loc.line}: {exc.message}",
                         hint=exc.hint) from None


def _download(url: str, checksum: str | None, executor: Executor,
              run: BuildRun) -> fetch.Download:
    run.read_outside(f"ADD {url}")  # the server may answer differently next time
    return fetch.download(url, executor.scratch_file("download"), checksum)


def _resolve_git(written: str, checksum: str | None, run: BuildRun) -> _GitInput:
    repo = git.parse(written)
    run.read_outside(f"git {git.redact(repo.remote)}")  # a branch may move: look again
    commit, ref_name = git.resolve(repo)
    if checksum is not None:
        # Dockerfile reference, ADD --checksum: for a git source, the commit sha or a prefix.
        if not re.fullmatch(r"[0-9a-f]{1,64}", checksum):
            raise BuildError(f"invalid ADD --checksum {checksum!r} for git source {repo.shown}",
                             hint="for a git source the checksum is the commit sha or a"
                                  " prefix of it")
        if not commit.startswith(checksum):
            raise BuildError(f"ADD checksum mismatch for {repo.shown}: expected commit"
                             f" {checksum}, got {commit}")
    return _GitInput(repo, commit, ref_name, written)


@dataclass(frozen=True, slots=True)
class _GitInput:
    """A git source of an ADD: as parsed, the commit its ref names and that ref's full name
    (`git.resolve`), and the source word as written (for the history text)."""

    source: git.GitSource
    commit: str
    ref_name: str
    written: str


def _parent_owner(executor: Executor, state: ImageState, chown: str, run: BuildRun,
                  where: str) -> Owner:
    """--link --chown: names are looked up in the parent image, mounted read-only."""
    owner = numeric_owner(chown.removesuffix(":"))  # here "uid:" is uid:uid too
    if owner is not None:
        return owner  # nothing to look up
    run.need_layers(state)
    lowers = [executor.store.layer_dir(d) for d in reversed(state.diff_ids)]
    with executor.readonly_root(executor.scratch_file("chown"), lowers) as root:
        return chown_owner(root, chown, where)


def _from(executor: Executor, copy: ins.Copy | ins.Add, platform: Platform, scope: Scope,
          run: BuildRun) -> ImageState | None:
    """The image state a `COPY --from` reads: an earlier stage's result, or an image: in the
    store, or in an archive or layout dir (`oci-archive:` …, as FROM takes them); of an
    image index, the entry of `platform` (the copying stage's, as BuildKit takes it). The
    key holds the state, so it changes when the archive's image does."""
    if not isinstance(copy, ins.Copy) or not copy.from_:
        return None
    name = scope.expand(copy.from_)
    named = run.named_source(name, copy)  # --build-context NAME wins over stages and images
    if named is not None:
        assert isinstance(named, ImageState), name  # _named_context took the directories
        return named
    stage = run.stages.find(name)
    if stage is not None:
        built: ImageState = run.results[stage.index]  # the stage graph made sure it is built
        return built
    if is_archive_name(name):  # imported into the store on first use, as for FROM
        run.read_outside(f"COPY --from={name}")  # the archive is not part of the context
        name = import_archive(executor.store, name, run.stages.filename, copy)
    state = load_state(executor.store, name, platform)
    if state is None:
        raise located(PlanError, run.stages.filename, copy,
                      f"COPY --from={name}: no stage or image of that name",
                      hint="name an earlier stage, or build or load the image first")
    return state


def _named_context(copy: ins.Copy | ins.Add, scope: Scope, run: BuildRun
                   ) -> BuildContext | None:
    """The directory a `COPY --from=NAME` reads when NAME is a directory --build-context."""
    if not isinstance(copy, ins.Copy) or not copy.from_:
        return None
    named = run.named_source(scope.expand(copy.from_), copy)
    return named if isinstance(named, BuildContext) else None


def _sources(executor: Executor, copy: ins.Copy | ins.Add, platform: Platform, scope: Scope,
             run: BuildRun, sources: Sequence[str], excludes: Sequence[str], parents: bool
             ) -> tuple[BuildContext | None, ImageState | None, Selection | None,
                        tuple[_Kept, ...] | None]:
    """Where the files come from: a directory --build-context (`COPY --from=NAME`), else a
    `--from` stage or image, else the build context; and the selection of a directory."""
    named = _named_context(copy, scope, run)
    source = _from(executor, copy, platform, scope, run) if named is None else None
    if sources and named is not None:
        return (named, None, *_select_named(named, sources, excludes, parents, copy, scope))
    if sources and source is None:
        return (None, None, *select(executor.context, sources, excludes, parents))
    return named, source, None, None


def _select_named(context: BuildContext, sources: Sequence[str], excludes: Sequence[str],
                  parents: bool, copy: ins.Copy | ins.Add, scope: Scope
                  ) -> tuple[Selection, tuple[_Kept, ...] | None]:
    """`select` in a directory --build-context; its errors name that context, not the main
    one (whose ignore-file hints would mislead)."""
    try:
        return select(context, sources, excludes, parents)
    except ContextChanged:
        raise  # the lifecycle prepares the step again
    except ContextError as exc:
        name = scope.expand(copy.from_) if isinstance(copy, ins.Copy) and copy.from_ else ""
        raise ContextError(f"{exc.message} in --build-context {name} ({context.root})"
                           ) from None


def _origin(copy: ins.Copy | ins.Add, scope: Scope, run: BuildRun) -> str:
    """`stage "NAME"` or `image "NAME"`: what a `COPY --from` reads, for its errors."""
    name = scope.expand(copy.from_) if isinstance(copy, ins.Copy) and copy.from_ else ""
    return f'{"stage" if run.stages.find(name) is not None else "image"} "{name}"'


def _from_error(exc: ContextError, work: CopyWork) -> BuildError:
    """A source error of `COPY --from`, said of the stage or image (no build context hint)."""
    if isinstance(exc, SourceNotFound):
        why = "excluded by --exclude" if exc.excluded else "no such file or directory"
        return BuildError(f"{work.where}: COPY --from: {exc.source}: {why} in {work.origin}")
    return BuildError(f"{work.where}: COPY --from ({work.origin}): {exc.message}")


def _chmod(value: str, run: BuildRun, copy: ins.Copy | ins.Add) -> modes.Chmod:
    try:
        return modes.parse(value)
    except ValueError as exc:  # the value a variable gave; the frontend checked the others
        raise located(PlanError, run.stages.filename, copy,
                      f"invalid chmod {value!r}: {exc}") from None


def destination(dest: str, workdir: str) -> str:
    """An absolute, clean destination; a trailing "/" (or "/.") is kept: it means "a dir"."""
    is_dir = dest.endswith(("/", "/.")) or dest in (".", "..")
    absolute = dest if dest.startswith("/") else workdir.rstrip("/") + "/" + dest
    cleaned = "/" + posixpath.normpath(absolute).lstrip("/")
    return cleaned.rstrip("/") + "/" if is_dir else cleaned


def perform(executor: Executor, work: CopyWork, merged: Path, tmp: Path,
            upper: Path | None) -> None:
    """Copy the step's sources into the image root `merged` (empty for --link): the mounted
    overlay whose upper dir is `upper`, or (chroot isolation, `upper` None) a plain copy."""
    source = work.source
    if source is None:
        _copy_all(work.context or executor.context, work.selection, work.layout, work, merged,
                  tmp, upper)
        return
    lowers = [executor.store.layer_dir(d) for d in reversed(source.diff_ids)]
    with executor.readonly_root(tmp / "from", lowers) as root:
        context = BuildContext(root)
        try:
            selection, layout = select(context, work.sources, work.excludes, work.parents)
        except ContextError as exc:  # its hint speaks of the build context: not this one
            raise _from_error(exc, work) from None
        _copy_all(context, selection, layout, work, merged, tmp, upper)


def _copy_all(context: BuildContext, selection: Selection | None, layout: Sequence[_Kept] | None,
              work: CopyWork, merged: Path, tmp: Path, upper_dir: Path | None = None) -> None:
    owner = work.owner or (chown_owner(merged, work.chown, work.where) if work.chown
                           else _default_owner(work))
    if owner is not None and not owner_mapped(owner.uid, owner.gid):  # rootless: not mapped
        raise BuildError(f"{work.where}: --chown={work.chown}: "
                         f"{unmapped_message(f'{owner.uid}:{owner.gid}')}")
    place = Placement(work.dest, owner, work.chmod)
    groups = selection.groups if selection else ()
    with open_root(merged) as root_fd:
        if layout is None:  # with --parents the destination is always a directory
            check_destination(place, len(groups) + len(work.inline) + len(
                work.downloads) + len(work.git), root_fd)
        copier = Copier(root_fd, place)
        # Writing below a new directory straight to the upper dir, only when it is all this
        # COPY writes: the entries of one walk never pass through each other's symlinks, while
        # a second source could (and must then resolve through the image, not the upper dir).
        alone = len(groups) == 1 and not (work.inline or work.downloads or work.git)
        upper = upper_dir if alone else None
        try:
            for index, group in enumerate(groups):
                if layout is None:
                    _copy_group(context, copier, group, place, root_fd, work.unpack, merged,
                                chowned=bool(work.chown), upper=upper)
                else:
                    _copy_kept(context, copier, group, layout[index], place)
            for name, data in work.inline:
                copier.write_file(file_target(place, name, root_fd), data.encode(), 0o644, 0)
            for download in work.downloads:
                _copy_download(copier, download, file_target(place, download.name, root_fd))
            for index, repo in enumerate(work.git):
                _copy_git(copier, repo, place, root_fd, tmp / f"git-{index}", work, merged)
            copier.finish()
        except _SourceChanged as exc:
            raise BuildError(f"{work.where}: {exc}",
                             hint="leave the build context alone while a build reads it") from None
        finally:
            copier.close()


def _default_owner(work: CopyWork) -> Owner | None:
    """The owner without --chown: None (each entry keeps its own) for `COPY --from`, as in
    Docker, BuildKit and Buildah; 0:0 for build context files, whose owners on the build
    host mean nothing in the image (Docker resets them)."""
    return None if work.source is not None else Owner()


class _SourceChanged(Exception):
    """A source file was swapped (for a symlink, a symlink loop, nothing) after the context
    was hashed: said at the instruction by `_copy_all`."""


def chown_owner(root: Path, chown: str, where: str) -> Owner:
    """--chown: names resolved in the image `root`; errors located at `where` ("FILE:LINE:COL")."""
    try:
        owner = numeric_owner(chown)
        if owner is None:
            ids = user_ids(root, chown)
            owner = Owner(ids.uid, ids.gid)
    except users.UserError as exc:  # a name the image lacks, an id out of range, no passwd
        raise BuildError(f"{where}: --chown={chown}: {exc.message}", hint=exc.hint) from None
    return owner


def numeric_owner(chown: str) -> Owner | None:
    """`uid[:gid]` given as numbers, else None (names to look up). A lone uid is also the gid
    (Dockerfile reference: "providing a UID without a GID uses the UID as the GID").
    UserError for an id out of range."""
    uid, colon, gid = chown.partition(":")
    if not users.is_numeric(uid) or not (users.is_numeric(gid) or not colon):
        return None  # "uid:" too: the group is then the user's primary group, from passwd
    return Owner(users.numeric_id(uid, "uid"), users.numeric_id(gid or uid, "gid"))


def _copy_group(context: BuildContext, copier: Copier, group: SourceGroup, place: Placement,
                root_fd: int, unpack: bool, merged: Path, chowned: bool,
                upper: Path | None) -> None:
    if not group.is_dir:
        entry = group.entries[0]
        archive = context.root / group.resolved
        if unpack and entry.kind == "file" and _is_archive(archive, group.resolved):
            owner = place.owner if chowned else None
            # Unpacked from a private copy checked against the key's hash: the context's
            # file may be replaced at any moment (an editor's save).
            snapshot = merged.parent / "archive"  # the step's tmp dir (overlay.mounted)
            _verified_copy(context, group.resolved, entry, snapshot)
            try:
                if not is_archive(snapshot):  # it was one a moment ago
                    raise ContextChanged(group.resolved)
                unpack_archive(snapshot, merged, place.dest.rstrip("/") or "/",
                               uid=owner.uid if owner else None,
                               gid=owner.gid if owner else None, label=str(archive))
            finally:
                snapshot.unlink()
            return
        _copy_entry(context, copier, group.resolved, file_target(place, group.name, root_fd),
                    entry)
        return
    base = place.dest.rstrip("/") or "/"
    fresh = fresh_directory(root_fd, base)
    copier.make_dir(base, os.lstat(context.root / group.resolved), top=True)
    if fresh and upper is not None and len(group.entries) > 1:  # made now, through the overlay
        upper_fd = upper_directory(root_fd, base, merged, upper)
        if upper_fd is not None:
            copier.write_below_directly(base, upper_fd)
    for entry in group.entries:
        source = f"{group.resolved}/{entry.path}" if group.resolved != "." else entry.path
        _copy_entry(context, copier, source, base.rstrip("/") + "/" + entry.path, entry)


def _is_archive(path: Path, source: str) -> bool:
    try:
        return is_archive(path)
    except OSError as exc:  # swapped since it was hashed: for a symlink loop, or removed
        raise _SourceChanged(f"{source} changed while the build read it: {exc.strerror}"
                             ) from exc


def _copy_entry(context: BuildContext, copier: Copier, source: str, target: str,
                entry: ContextEntry) -> None:
    """Copy one entry; `source` is relative to the context (or source image) root."""
    if entry.kind == "dir":
        copier.make_dir(target, os.lstat(context.root / source))
    elif entry.kind == "symlink":
        assert entry.link_target is not None  # every symlink entry has its target
        copier.copy_symlink(entry.link_target, target, os.lstat(context.root / source))
    else:
        try:
            fd = context.open_file(source)
        except OSError as exc:  # open_file never follows a symlink: ELOOP, ENOENT, ENOTDIR
            raise _SourceChanged(f"{source} changed while the build read it: "
                                 f"{exc.strerror}") from exc
        try:
            info = os.fstat(fd)
            if stat.S_IMODE(info.st_mode) != entry.mode:
                raise ContextChanged(source)
            copied = copier.copy_file(fd, target, info, hashed=True)
        finally:
            os.close(fd)
        # The bytes copied must be the bytes the key was made of (issue 11, item 8): a file
        # replaced since it was hashed is the lifecycle's to prepare again.
        if copied != entry.content_hash:
            raise ContextChanged(source)


def _verified_copy(context: BuildContext, source: str, entry: ContextEntry,
                   dest: Path) -> None:
    """Copy the context file `source` to the new file `dest`, checking its bytes against
    the hash `entry` has (ContextChanged if they differ)."""
    fd = context.open_file(source)
    try:
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            copied = copy_hashing(fd, out, entry.size)
        finally:
            os.close(out)
    finally:
        os.close(fd)
    if copied != entry.content_hash:
        dest.unlink()
        raise ContextChanged(source)


def _copy_download(copier: Copier, download: fetch.Download, target: str) -> None:
    # Docker: a downloaded file gets mode 600 and its Last-Modified time as mtime.
    os.chmod(download.path, 0o600)
    os.utime(download.path, (download.mtime, download.mtime))
    fd = os.open(download.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        copier.copy_file(fd, target, os.fstat(fd))
    finally:
        os.close(fd)


# --- --parents ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Kept:
    """Where one source group goes with --parents: `path` under the destination ("." for the
    pivot itself), and the source directories whose metadata the destination (`pivot`) and
    the parent directories on the way (`dirs`, relative to the destination) take; None for
    one that is not a real directory (reached through a symlink)."""

    path: str
    pivot: os.stat_result | None
    dirs: tuple[tuple[str, os.stat_result | None], ...]


def select(context: BuildContext, sources: Sequence[str], excludes: Sequence[str], parents: bool
           ) -> tuple[Selection, tuple[_Kept, ...] | None]:
    """The selection of `sources` in `context` and, with --parents, where each group goes.

    A source is split at its first "/./" (BuildKit: `strings.Cut(src, "/./")`); without one
    the pivot is the root. The groups are selected as usual (wildcards, ignore files, a
    top-level symlink followed), then each keeps its path relative to the pivot.
    """
    if not parents:
        return context.select(sources, excludes=excludes), None
    groups: list[SourceGroup] = []
    layout: list[_Kept] = []
    root_fd = os.open(context.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for raw in sources:
            pivot, cut, rest = raw.partition("/./")
            if not cut:
                pivot, rest = "", raw
            pivot = posixpath.normpath("/" + pivot).lstrip("/") or "."
            for group in context.select([f"{pivot}/{rest}"], excludes=excludes).groups:
                layout.append(_kept(root_fd, raw, pivot, group.source_path))
                groups.append(group)
    finally:
        os.close(root_fd)
    return Selection(tuple(groups)), tuple(layout)


def _kept(root_fd: int, raw: str, pivot: str, path: str) -> _Kept:
    if pivot == ".":
        kept = path
    elif path == pivot:
        kept = "."
    elif path.startswith(pivot + "/"):
        kept = path[len(pivot) + 1:]
    else:
        raise ContextError(f"COPY --parents source {raw} leads out of its pivot {pivot}/./",
                           hint="the part after /./ may not climb above it with ..")
    parts = kept.split("/") if kept != "." else []
    dirs = tuple(("/".join(parts[:i]), _dir_stat(root_fd, _join(pivot, "/".join(parts[:i]))))
                 for i in range(1, len(parts)))
    return _Kept(kept, _dir_stat(root_fd, pivot), dirs)


def _join(parent: str, name: str) -> str:
    return name if parent == "." else f"{parent}/{name}"


def _dir_stat(root_fd: int, path: str) -> os.stat_result | None:
    """lstat of a directory of the source root, resolved inside it; None if not a directory."""
    if path == ".":
        return os.fstat(root_fd)
    parent, name = rootpath.resolve_parent(root_fd, path)
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    finally:
        os.close(parent)
    return info if stat.S_ISDIR(info.st_mode) else None


def _layout_key(layout: Sequence[_Kept] | None) -> list[Any] | None:
    """What of the --parents layout the key needs beyond the selection digest: the kept paths
    and the modes of the directories they create (mtimes never go in keys)."""
    if layout is None:
        return None
    return [[kept.path, _mode(kept.pivot), [[rel, _mode(info)] for rel, info in kept.dirs]]
            for kept in layout]


def _mode(info: os.stat_result | None) -> int | None:
    return stat.S_IMODE(info.st_mode) if info else None


def _copy_kept(context: BuildContext, copier: Copier, group: SourceGroup, kept: _Kept,
               place: Placement) -> None:
    """Copy one group to `<dest>/<kept path>`, making the parent directories on the way."""
    base = place.dest.rstrip("/").removesuffix("/.")  # "" is the image root
    copier.make_dir(base or "/", kept.pivot, top=True)
    for rel, info in kept.dirs:
        copier.make_dir(f"{base}/{rel}", info)
    target = f"{base}/{kept.path}" if kept.path != "." else (base or "/")
    if not group.is_dir:
        _copy_entry(context, copier, group.resolved, target, group.entries[0])
        return
    if kept.path != ".":
        copier.make_dir(target, os.lstat(context.root / group.resolved))
    for entry in group.entries:
        source = f"{group.resolved}/{entry.path}" if group.resolved != "." else entry.path
        _copy_entry(context, copier, source, target.rstrip("/") + "/" + entry.path, entry)


# --- git sources --------------------------------------------------------------------------


def _copy_git(copier: Copier, repo: _GitInput, place: Placement, root_fd: int, target: Path,
              work: CopyWork, merged: Path) -> None:
    """Fetch the commit into the step's tmp dir and copy its tree (or subdir) like a
    directory source: its contents go into the destination, which is always a directory."""
    try:
        tree = git.checkout(repo.source, repo.commit, repo.ref_name, target,
                           work.keep_git_dir)
    except BuildError as exc:
        raise BuildError(f"{work.where}: {exc.message}", hint=exc.hint) from None
    context = BuildContext(tree)
    group = context.select(["."]).groups[0]
    _copy_group(context, copier, group, place, root_fd, False, merged,
                chowned=bool(work.chown), upper=None)
