"""The build context: which files a COPY/ADD selects, and a content digest of that selection.

Owns: resolving COPY/ADD sources (paths, wildcards, a top-level symlink) inside the context
directory, the .dockerignore and `--exclude` filters, the walk of selected directories, the
content hash of every selected file, and a stat cache that lets an unchanged file go unread.
Writes nothing, except the stat cache file in `BuildContext.save()` (temp file, fsync, rename).

Safety (docs/security.md rule 1, family H): nothing outside the context is read. `..` past the
context root and symlinks that would lead out of it are refused; below the top-level source no
symlink is ever followed; directories and files are opened relative to their parent's fd with
O_NOFOLLOW, so a path swapped for a symlink while we read fails instead of escaping; fifos,
devices and sockets are refused (opening a fifo would hang the build). The context is the
user's own directory: what we guard against is a Stepfile or a checked-out repository that
points outside it (`COPY ../secrets`, `link -> ~/.ssh/id_rsa`), not a concurrent writer.

Lifecycle::

    ctx = BuildContext(root, ignore=read_ignore_file(text), stat_cache=path)
    selection = ctx.select(["src/", "*.toml"], excludes=["**/*.pyc"])
    key_input = selection.digest()     # paths, kinds, modes, sizes, link targets, hashes
    ctx.save()                         # keep the stat cache for the next run

How BuildKit does it, and where we differ (evidence read from the upstream code):

* Sources: dockerfile2llb (convert_copy.go) copies local sources with `FollowSymlinks: true,
  CopyDirContentsOnly: true, AllowWildcard: true, AllowEmptyWildcard: true`. A directory
  source is copied by its contents. A wildcard is split at its first wildcard component
  (fsutil `splitWildcards`); the fixed part is resolved, then every path under it is matched
  with Go's filepath.Match, a matched directory is not descended (`resolveWildcards`).
  A wildcard that matches nothing is not an error (`AllowEmptyWildcard`; moby/moby#26332
  relies on it for optional files such as `COPY requirements.* .`); a literal path that does
  not exist is. We do the same; a malformed wildcard, which BuildKit silently treats as
  matching nothing, is an error here.
* Top-level symlinks: fsutil copy `rootPath(root, p, followLinks=true)` calls continuity's
  `fs.RootPath`, which follows symlinks *scoped to the root*: an absolute target is re-anchored
  at the context root and `..` is clamped there, so `link -> /etc/passwd` becomes
  `<context>/etc/passwd`. Symlinks inside a copied directory are recreated as symlinks
  (`os.Readlink` + `os.Symlink`), never followed. We follow a top-level link the same way, but
  refuse (ContextError) exactly where BuildKit would silently reinterpret the link: an absolute
  target, or `..` past the root. Every link we do follow leads where it leads on the host, so
  the user never gets a copy of something other than what `cat link` shows them.
  BuildKit also clamps a source written with `..` (`COPY ../x` is `COPY x`); the legacy
  builder refused it ("Forbidden path outside the build context"); we refuse it too.
* `--exclude` patterns are matched against paths relative to the copied directory (fsutil
  copy's `srcComponents`); for a wildcard source also against each match, relative to the
  wildcard's fixed part, as the reference's example `COPY --exclude=*.txt hom* /mydir/` says.
* The digest leaves out mtimes (docs/architecture.md, "Cache keys": never mtimes) and uid/gid:
  BuildKit clients send the context with `resetUIDAndGID` (buildkit client/solve.go
  prepareSyncedDirs, the docker CLI's build session), so host ownership never reaches Docker's
  cache key, and COPY without `--chown` writes 0:0 anyway. Both are still recorded on each
  entry for the copy itself.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import xxhash

from stepbuild.errors import ContextChanged, ContextError, SourceNotFound
from stepbuild.fs.durable import write_file
from stepbuild.sources.patterns import (
    MatchState,
    PatternError,
    PatternMatcher,
    match_source,
    source_pattern_depth,
    split_wildcards,
)

FILE, DIR, SYMLINK = "file", "dir", "symlink"
_REFUSED_KINDS = {stat.S_IFIFO: "fifo", stat.S_IFCHR: "dev", stat.S_IFBLK: "dev",
                  stat.S_IFSOCK: "socket"}

HASH_CHUNK = 1 << 20
# Bump when the serialisation changes, so old keys cannot collide with new ones.
DIGEST_PREFIX = b"stepbuild-context-selection\0v1\0"
MAX_SYMLINK_HOPS = 40  # Linux's MAXSYMLINKS
# A file whose ctime is this close to the moment we hashed it is not remembered: a second write
# in the same timestamp tick would leave size, mtime and ctime unchanged (git's "racily clean"
# problem). 2 s covers filesystems with coarse timestamps.
RACY_WINDOW_NS = 2_000_000_000
STAT_CACHE_FORMAT = "stepbuild-stat-cache"
STAT_CACHE_VERSION = 1
STAT_CACHE_MAX_ENTRIES = 200_000

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: if a fifo is swapped in after our lstat, open() returns instead of waiting for a
# writer; fstat then shows it is not the regular file we saw. It changes nothing for files.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_HEX128 = re.compile(r"[0-9a-f]{32}")
_FS_ENCODING = sys.getfilesystemencoding()


@dataclass(frozen=True, slots=True)
class ContextEntry:
    """One path of a selection, relative to its source ("/"-separated, no leading "./")."""

    path: str
    kind: str  # "file" | "dir" | "symlink"
    mode: int  # permission and setuid/setgid/sticky bits, no file type bits
    size: int  # file size; len(target) for a symlink; 0 for a directory
    link_target: str | None
    content_hash: str | None  # xxh3-128 hex of a file's content
    uid: int  # recorded for the copy, not part of the digest (see the module docstring)
    gid: int
    mtime_ns: int  # Docker keeps mtimes when copying; never part of the digest


@dataclass(frozen=True, slots=True)
class SourceGroup:
    """What one source (or one match of a wildcard source) contributes to a COPY.

    A directory source contributes its contents: `entries` are relative to it and the
    directory itself is not one of them (its `mode` is kept: a destination directory that COPY
    creates gets it). A file or symlink source contributes one entry, named as the source was
    (`link -> real.txt` copies real.txt's content under the name "link", as BuildKit does).
    """

    source_path: str  # the source as matched in the context; "." is the context root
    resolved: str  # where the content is: source_path with a top-level symlink followed
    is_dir: bool
    mode: int
    entries: tuple[ContextEntry, ...]

    @property
    def source(self) -> str:
        """Where to read the content from, relative to the context root (= `resolved`)."""
        return self.resolved

    @property
    def name(self) -> str:
        """The name a file source takes in a directory destination."""
        return posixpath.basename(self.source_path)


@dataclass(frozen=True, slots=True)
class Selection:
    """Everything one COPY/ADD takes from the context, in source order."""

    groups: tuple[SourceGroup, ...]

    def digest(self) -> str:
        """xxh3-128 hex over a canonical serialisation of the selection.

        Covers, per group in order: the source path, file/dir, mode; per entry, sorted by
        path: path, kind, mode, size, link target, content hash. Not mtimes, not uid/gid.
        Fields are NUL-terminated (no path or link target can hold a NUL) and every record
        has a fixed number of them, so the serialisation cannot be ambiguous.
        """
        h = xxhash.xxh3_128(DIGEST_PREFIX)
        for group in self.groups:
            h.update(b"%s\0%s\0%o\0%d\0" % (os.fsencode(group.source_path),
                                             b"d" if group.is_dir else b"f",
                                             group.mode, len(group.entries)))
            # Sorted by str: the same names give the same order on every machine.
            entries = sorted(group.entries, key=_path_of)
            h.update(b"".join(map(_entry_record, entries)))
        return h.hexdigest()


def _path_of(entry: ContextEntry) -> str:
    return entry.path


def _entry_record(entry: ContextEntry) -> bytes:
    # Names are encoded back to the bytes the kernel gave (os.fsencode's error handler).
    return b"%s\0%s\0%o\0%d\0%s\0%s\0" % (
        entry.path.encode(_FS_ENCODING, "surrogateescape"), entry.kind.encode(), entry.mode,
        entry.size, (entry.link_target or "").encode(_FS_ENCODING, "surrogateescape"),
        (entry.content_hash or "").encode())


@dataclass(slots=True)
class CacheStats:
    """Counters of one BuildContext, for benchmarks and tests: stat-cache hits, files hashed."""

    hits: int = 0
    misses: int = 0
    bytes_hashed: int = 0


class BuildContext:
    """A build context directory, its ignore rules and its stat cache.

    `select` is safe to call many times (once per COPY); it reads the context each time, so a
    file changed between two COPYs is seen. `save` persists what was learnt; it is idempotent
    and writes only when something changed. A stat cache that cannot be read or parsed is
    ignored and rebuilt (docs/security.md rule 7: derived data is disposable).
    """

    def __init__(self, root: Path | str, *, ignore: Sequence[str] = (),
                 stat_cache: Path | None = None) -> None:
        # The context directory itself may be reached through a symlink; resolve it once.
        real = os.path.realpath(root)
        if not os.path.isdir(real):
            raise ContextError(f"build context is not a directory: {root}")
        self.root = Path(real)
        self._ignore = _matcher(ignore, ".dockerignore")
        self._cache = _StatCache.load(stat_cache)
        self.stats = CacheStats()

    def select(self, sources: Sequence[str], *, excludes: Sequence[str] = (),
               follow_top_symlink: bool = True) -> Selection:
        """The files the COPY/ADD sources select, with their content hashes.

        Raises ContextError for a literal source that does not exist, a source outside the
        context, a symlink leading out of it, a fifo/device/socket among the selected files,
        a malformed pattern, or a file that changes while it is read.
        """
        selector = _Selector(self.root, self._ignore, _matcher(excludes, "--exclude"),
                             self._cache, self.stats, follow_top_symlink)
        try:
            return Selection(tuple(g for source in sources for g in selector.source(source)))
        except OSError as exc:
            raise ContextError(f"cannot read the build context: {exc}") from exc
        finally:
            selector.close()

    def open_file(self, path: str) -> int:
        """Open a regular file of the context for reading, refusing symlinks on the way.

        `path` is relative to the root, as in `SourceGroup.resolved` + entry paths. Every
        component is opened with O_NOFOLLOW, so the bytes read are the ones under the
        context, whatever was swapped in since `select`. The caller closes the fd.
        """
        parent, _, name = _clean_relative(path).rpartition("/")
        root_fd = os.open(self.root, _DIR_FLAGS)
        try:
            dir_fd = _open_dir(root_fd, parent or ".")
        finally:
            os.close(root_fd)
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ContextError(f"not a regular file in the build context: {path}")
        return fd

    def save(self) -> None:
        """Persist the stat cache, if one was given and it changed."""
        self._cache.save()


def _matcher(patterns: Sequence[str], what: str) -> PatternMatcher:
    try:
        return PatternMatcher(patterns)
    except PatternError as exc:
        raise ContextError(f"bad {what} pattern: {exc}") from exc


def _clean_relative(path: str) -> str:
    """A source path made relative to the root: "/" and "." are the root; `..` may not climb
    above it (ContextError)."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ContextError(
                    f"COPY source outside the build context: {path}",
                    hint="sources are relative to the context directory; move the file into "
                         "it or build with a context that contains it")
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts) or "."


def _join(parent: str, name: str) -> str:
    return name if parent in ("", ".") else f"{parent}/{name}"


def _open_dir(root_fd: int, rel: str) -> int:
    """Open a directory under the root one component at a time, never following a symlink."""
    fd = os.dup(root_fd)
    if rel == ".":
        return fd
    try:
        for part in rel.split("/"):
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(slots=True)
class _Frame:
    """One directory of a walk: open while it is the innermost (`fd` is -1 while parked)."""

    fd: int
    entries: Iterator[os.DirEntry[str]]
    ctx_path: str  # relative to the context root
    src_path: str  # relative to the walk's start ("" at the start)
    ignore: MatchState
    exclude: MatchState
    depth: int = 0
    ident: tuple[int, int] = (0, 0)  # (st_ino, st_dev) of the dir, to check `..` against


class _Selector:
    """The work of one `select` call: an open root fd and the filters of this COPY."""

    def __init__(self, root: Path, ignore: PatternMatcher, excludes: PatternMatcher,
                 cache: _StatCache, stats: CacheStats, follow_top: bool) -> None:
        self.root = root
        self.root_fd = os.open(root, _DIR_FLAGS)
        self.ignore = ignore
        self.excludes = excludes
        self.cache = cache
        self.stats = stats
        self.follow_top = follow_top
        self.filtering = bool(ignore) or bool(excludes)

    def close(self) -> None:
        os.close(self.root_fd)

    # -- sources ------------------------------------------------------------------------------

    def source(self, raw: str) -> list[SourceGroup]:
        if not raw:
            raise ContextError("empty COPY source")
        rel = _clean_relative(raw)
        fixed, wild = split_wildcards(rel) if rel != "." else (rel, "")
        if not wild:
            group = self.group(raw, rel, literal=True)
            return [group] if group is not None else []
        groups = []
        for match, rel_to_fixed in self.expand(raw, fixed or ".", wild):
            if self.excludes and self.excludes.matches(rel_to_fixed):
                continue
            group = self.group(raw, match, literal=False)
            if group is not None:
                groups.append(group)
        return groups

    def group(self, raw: str, path: str, *, literal: bool) -> SourceGroup | None:
        """The group for one source path; None for a wildcard match that is not really in
        the context (an ignored directory with nothing re-included inside)."""
        resolved, info = self.resolve(raw, path, follow_last=self.follow_top)
        ignored, ign_state = self.ignore.start(resolved) if self.ignore else (False, 0)
        if stat.S_ISDIR(info.st_mode):
            if ignored and not self.ignore.may_reinclude_below(resolved):
                raise _not_found(raw, excluded=True)
            entries = self.walk(resolved, ign_state)
            if ignored and not entries:
                if literal:
                    raise _not_found(raw, excluded=True)
                return None
            return SourceGroup(path, resolved, True, stat.S_IMODE(info.st_mode), entries)
        if ignored:
            raise _not_found(raw, excluded=True)
        parent, _, name = resolved.rpartition("/")
        dir_fd = _open_dir(self.root_fd, parent or ".")
        try:
            entry = self.entry(dir_fd, name, info, posixpath.basename(path), raw)
        finally:
            os.close(dir_fd)
        return SourceGroup(path, resolved, False, entry.mode, (entry,))

    def resolve(self, raw: str, rel: str, *, follow_last: bool) -> tuple[str, os.stat_result]:
        """Follow symlinks in `rel` inside the context (see the module docstring).

        Raises ContextError where the path does not exist, a link is absolute, `..` climbs
        above the root, or links loop. Intermediate lstats go through directories we just saw
        to be real directories; the reads that follow re-check with O_NOFOLLOW.
        """
        pending = rel.split("/") if rel != "." else []
        done: list[str] = []
        hops = 0
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if not done:
                    raise _escape(raw, "a symlink in it leads out of the build context")
                done.pop()
                continue
            path = "/".join([*done, name])
            info = self._lstat(path)
            if info is None or (pending and not _is_dir_or_link(info)):
                raise _not_found(raw)
            if stat.S_ISLNK(info.st_mode) and (pending or follow_last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise ContextError(f"COPY source {raw}: too many levels of symbolic links")
                if self.ignore and self.ignore.matches(path):
                    raise _not_found(raw, excluded=True)
                target = os.readlink(path, dir_fd=self.root_fd)
                if target.startswith("/"):
                    raise _escape(raw, f"{path} is a symlink to the absolute path {target}")
                pending[:0] = target.split("/")
                continue
            done.append(name)
        resolved = "/".join(done) or "."
        info = self._lstat(resolved)
        if info is None:  # removed since we looked
            raise _not_found(raw)
        return resolved, info

    def _lstat(self, path: str) -> os.stat_result | None:
        if path == ".":
            return os.fstat(self.root_fd)
        try:
            return os.stat(path, dir_fd=self.root_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def expand(self, raw: str, fixed: str, wild: str) -> list[tuple[str, str]]:
        """Paths under `fixed` that the wildcard `wild` matches: (context path, path relative
        to fixed), in BuildKit's walk order (depth first, names sorted)."""
        try:
            depth = source_pattern_depth(wild)
        except PatternError as exc:
            raise ContextError(f"bad wildcard in COPY source {raw}: {exc}") from exc
        base, info = self.resolve(raw, fixed, follow_last=True)
        if not stat.S_ISDIR(info.st_mode):
            return []  # filepath.Walk of a file visits only "." itself, which never matches
        ign_state = self.ignore.start(base)[1] if self.ignore else 0
        matches: list[tuple[str, str]] = []
        stack = [self._frame(_open_dir(self.root_fd, base), base, "", ign_state, 0)]
        try:
            while stack:
                top = stack[-1]
                de = next(top.entries, None)
                if de is None:
                    os.close(stack.pop().fd)
                    continue
                ctx_path, rel = _join(top.ctx_path, de.name), _join(top.src_path, de.name)
                is_dir = de.is_dir(follow_symlinks=False)
                state = top.ignore
                if self.ignore:
                    ignored, state = self.ignore.step(top.ignore, ctx_path)
                    if ignored and not (is_dir and self.ignore.may_reinclude_below(ctx_path)):
                        continue  # not in the context at all
                if match_source(wild, rel):
                    matches.append((ctx_path, rel))
                elif is_dir and top.depth < depth:
                    fd = os.open(de.name, _DIR_FLAGS, dir_fd=top.fd)
                    stack.append(self._frame(fd, ctx_path, rel, state, 0, top.depth + 1))
        finally:
            for frame in stack:
                os.close(frame.fd)
        return matches

    # -- directory walk -----------------------------------------------------------------------

    @staticmethod
    def _frame(fd: int, ctx_path: str, src_path: str, ignore: MatchState,
               exclude: MatchState, depth: int = 0) -> _Frame:
        """A walk frame owning `fd` (closed here if the directory cannot be listed)."""
        try:
            with os.scandir(fd) as it:  # scandir dups the fd; names sorted like Go's ReadDir
                entries = sorted(it, key=lambda de: de.name)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return _Frame(fd, iter(entries), ctx_path, src_path, ignore, exclude, depth,
                      (st.st_ino, st.st_dev))

    def walk(self, resolved: str, ign_state: MatchState) -> tuple[ContextEntry, ...]:
        """Every path under the directory `resolved`, minus ignored and excluded ones.

        A directory that is excluded but may hold re-included paths is walked and kept only
        if something inside it is kept (it then exists as their parent, as in BuildKit).
        """
        stack = [self._frame(_open_dir(self.root_fd, resolved), resolved, "", ign_state, 0)]
        found: list[tuple[ContextEntry, bool]] = []
        try:
            while stack:
                top = stack[-1]
                de = next(top.entries, None)
                if de is None:
                    self._leave(stack)
                else:
                    self._visit(top, de, stack, found)
        finally:
            for frame in stack:
                if frame.fd >= 0:
                    os.close(frame.fd)
        return _drop_empty_conditional(found)

    @staticmethod
    def _leave(stack: list[_Frame]) -> None:
        """Pop the finished frame and take its parent's fd back by `..`.

        Only the innermost dir of a walk is open (a 10,000-level context must not take
        10,000 descriptors); `..` is checked to be the dir the walk came from, as someone
        may rename dirs of a context meanwhile (rootpath's `up` does the same)."""
        done = stack.pop()
        try:
            if stack:
                parent = stack[-1]
                fd = os.open("..", _DIR_FLAGS, dir_fd=done.fd)
                st = os.fstat(fd)
                if (st.st_ino, st.st_dev) != parent.ident:
                    os.close(fd)
                    raise _changed(parent.ctx_path)
                parent.fd = fd
        finally:
            os.close(done.fd)

    def _visit(self, top: _Frame, de: os.DirEntry[str], stack: list[_Frame],
               found: list[tuple[ContextEntry, bool]]) -> None:
        # The hot loop of a selection (once per path): kept lean on purpose.
        name = de.name
        info = de.stat(follow_symlinks=False)  # fstatat(dir fd, name, AT_SYMLINK_NOFOLLOW)
        src_path = _join(top.src_path, name)
        ign_state, exc_state, conditional = top.ignore, top.exclude, False
        if self.filtering:
            verdict = self._filter(top, _join(top.ctx_path, name), src_path, info)
            if verdict is None:
                return
            ign_state, exc_state, conditional = verdict
        if stat.S_ISREG(info.st_mode):
            digest = self.cache.lookup(info)
            if digest is None:
                digest = self.hash_miss(top.fd, name, info, _join(top.ctx_path, name))
            else:
                self.stats.hits += 1
            found.append((ContextEntry(src_path, FILE, info.st_mode & 0o7777, info.st_size,
                                       None, digest, info.st_uid, info.st_gid,
                                       info.st_mtime_ns), conditional))
            return
        ctx_path = _join(top.ctx_path, name)
        found.append((self.entry(top.fd, name, info, src_path, ctx_path), conditional))
        if stat.S_ISDIR(info.st_mode):
            fd = os.open(name, _DIR_FLAGS, dir_fd=top.fd)
            opened = os.fstat(fd)
            if (opened.st_ino, opened.st_dev) != (info.st_ino, info.st_dev):
                os.close(fd)
                raise _changed(ctx_path)
            child = self._frame(fd, ctx_path, src_path, ign_state, exc_state)
            os.close(top.fd)  # parked: `_leave` opens it again by `..`
            top.fd = -1
            stack.append(child)

    def _filter(self, top: _Frame, ctx_path: str, src_path: str,
                info: os.stat_result) -> tuple[MatchState, MatchState, bool] | None:
        """None to leave the path out; else its (ignore, exclude) states and whether it is a
        directory kept only if something inside it is kept."""
        is_dir = stat.S_ISDIR(info.st_mode)
        ign_state, exc_state, conditional = top.ignore, top.exclude, False
        if self.ignore:
            ignored, ign_state = self.ignore.step(top.ignore, ctx_path)
            if ignored:
                if not (is_dir and self.ignore.may_reinclude_below(ctx_path)):
                    return None
                conditional = True
        if self.excludes:
            excluded, exc_state = self.excludes.step(top.exclude, src_path)
            if excluded:
                if not (is_dir and self.excludes.may_reinclude_below(src_path)):
                    return None
                conditional = True
        return ign_state, exc_state, conditional

    # -- entries and content --------------------------------------------------------------------

    def entry(self, dir_fd: int, name: str, info: os.stat_result, path: str,
              shown: str) -> ContextEntry:
        """The entry for `name` in `dir_fd`, hashing a regular file's content if needed."""
        fmt = stat.S_IFMT(info.st_mode)
        link = digest = None
        size = 0
        if fmt == stat.S_IFREG:
            kind, size = FILE, info.st_size
            digest = self.content_hash(dir_fd, name, info, shown)
        elif fmt == stat.S_IFDIR:
            kind = DIR
        elif fmt == stat.S_IFLNK:
            kind = SYMLINK
            link = os.readlink(name, dir_fd=dir_fd)
            size = len(os.fsencode(link))
        else:
            raise ContextError(
                f"COPY source includes a {_REFUSED_KINDS.get(fmt, 'special file')}: {shown}",
                hint="only files, directories and symlinks can be copied from the context; "
                     "leave it out with .dockerignore or --exclude")
        return ContextEntry(path, kind, stat.S_IMODE(info.st_mode), size, link, digest,
                            info.st_uid, info.st_gid, info.st_mtime_ns)

    def content_hash(self, dir_fd: int, name: str, info: os.stat_result, shown: str) -> str:
        """The file's hash from the stat cache, or read and hashed (and remembered)."""
        cached = self.cache.lookup(info)
        if cached is not None:
            self.stats.hits += 1
            return cached
        return self.hash_miss(dir_fd, name, info, shown)

    def hash_miss(self, dir_fd: int, name: str, info: os.stat_result, shown: str) -> str:
        started = time.time_ns()
        digest = hash_file(dir_fd, name, info, shown)
        self.stats.misses += 1
        self.stats.bytes_hashed += info.st_size
        self.cache.store(info, digest, started)
        return digest


def hash_file(dir_fd: int, name: str, info: os.stat_result, shown: str) -> str:
    """xxh3-128 hex of the regular file `name` in `dir_fd`, which lstat showed as `info`.

    Opened with O_NOFOLLOW|O_NONBLOCK and checked with fstat to be the same inode, read in
    1 MiB chunks; a file that changes size while read is an error (its hash would describe
    neither version).
    """
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise _changed(shown, exc) from exc
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_ino, opened.st_dev) != (
                info.st_ino, info.st_dev):
            raise _changed(shown)
        h = xxhash.xxh3_128()
        total = 0
        while chunk := os.read(fd, HASH_CHUNK):
            h.update(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total != info.st_size:
        raise _changed(shown)
    return h.hexdigest()


def _is_dir_or_link(info: os.stat_result) -> bool:
    return stat.S_ISDIR(info.st_mode) or stat.S_ISLNK(info.st_mode)


def _drop_empty_conditional(found: list[tuple[ContextEntry, bool]]) -> tuple[ContextEntry, ...]:
    # Entries are in depth-first order, each directory right before its contents, so a
    # conditional directory has a kept descendant exactly when the next kept entry after it
    # lies under it. One pass from the end decides that for all of them.
    kept: list[ContextEntry] = []
    for entry, conditional in reversed(found):
        if conditional and not (kept and kept[-1].path.startswith(entry.path + "/")):
            continue
        kept.append(entry)
    kept.reverse()
    return tuple(kept)


def _not_found(raw: str, *, excluded: bool = False) -> ContextError:
    hint = ("it is excluded by .dockerignore" if excluded else
            "sources are relative to the build context; check the path and .dockerignore")
    return SourceNotFound(raw, excluded=excluded, hint=hint)


def _escape(raw: str, why: str) -> ContextError:
    return ContextError(
        f"COPY source {raw} leads outside the build context: {why}",
        hint="a top-level symlink is followed only when it stays inside the context (relative "
             "target, no '..' above the root); symlinks inside a copied directory are copied "
             "as links")


def _changed(shown: str, exc: OSError | None = None) -> ContextChanged:
    why = f" ({exc.strerror})" if exc is not None and exc.strerror else ""
    return ContextChanged(shown, detail=why)


class _StatCache:
    """(dev, ino) -> (size, mtime_ns, ctime_ns, content hash), kept between runs.

    A hit needs all of dev, ino, size, mtime_ns and ctime_ns to match; ctime cannot be set
    from user space, so `touch -d` back to an old mtime still misses. Stored as JSON
    {"format", "version", "entries": [[dev, ino, size, mtime_ns, ctime_ns, hash], ...]},
    written to a temp file, fsynced and renamed into place.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.table: dict[tuple[int, int], tuple[int, int, int, str]] = {}
        self.touched: set[tuple[int, int]] = set()
        self.dirty = False

    @classmethod
    def load(cls, path: Path | None) -> _StatCache:
        cache = cls(path)
        if path is None:
            return cache
        try:
            cache.table = _parse_stat_cache(path.read_bytes())
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError, RecursionError):
            # Unreadable or corrupt (RecursionError: absurdly nested JSON): a derived file,
            # so start empty and rewrite it on save.
            cache.dirty = True
        return cache

    def lookup(self, info: os.stat_result) -> str | None:
        key = (info.st_dev, info.st_ino)
        record = self.table.get(key)
        if (record is None or record[0] != info.st_size or record[1] != info.st_mtime_ns
                or record[2] != info.st_ctime_ns):
            return None
        self.touched.add(key)
        return record[3]

    def store(self, info: os.stat_result, digest: str, hashed_at_ns: int) -> None:
        if hashed_at_ns - info.st_ctime_ns <= RACY_WINDOW_NS:
            return  # changed too recently to trust its stat (see RACY_WINDOW_NS)
        key = (info.st_dev, info.st_ino)
        self.table[key] = (info.st_size, info.st_mtime_ns, info.st_ctime_ns, digest)
        self.touched.add(key)
        self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        table = self.table
        if len(table) > STAT_CACHE_MAX_ENTRIES:  # forget files not seen in this run
            table = {k: v for k, v in table.items() if k in self.touched}
        data = json.dumps({
            "format": STAT_CACHE_FORMAT, "version": STAT_CACHE_VERSION,
            "entries": [[dev, ino, *record] for (dev, ino), record in table.items()],
        }, separators=(",", ":")).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_file(self.path, data, 0o600)  # docs/security.md rule 5
        self.dirty = False


def _parse_stat_cache(data: bytes) -> dict[tuple[int, int], tuple[int, int, int, str]]:
    doc = json.loads(data)
    if (not isinstance(doc, dict) or doc.get("format") != STAT_CACHE_FORMAT
            or doc.get("version") != STAT_CACHE_VERSION or not isinstance(doc["entries"], list)):
        raise ValueError("not a stat cache of this version")
    table = {}
    for dev, ino, size, mtime_ns, ctime_ns, digest in doc["entries"]:
        if not (type(dev) is type(ino) is type(size) is type(mtime_ns) is type(ctime_ns) is int
                and type(digest) is str and _HEX128.fullmatch(digest)):
            raise ValueError("malformed stat cache entry")
        table[(dev, ino)] = (size, mtime_ns, ctime_ns, digest)
    return table
