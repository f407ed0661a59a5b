"""Running cached steps for real: RUN in the sandbox, COPY/ADD into an overlay, then capture.

`Executor.prepare` turns an instruction into a `PreparedStep`: its expanded inputs and cache
key, without side effects (ADD of a URL downloads here, because the content is an input).
`Executor.execute` runs a step that missed the cache: it mounts an overlay of the image's
layers with a fresh upper dir in the builder's private mount namespace, runs the RUN in the
sandbox or copies the files, unmounts, captures the upper dir as a layer and commits it.
On any failure the step's temporary directory is removed and nothing is committed.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepbuild import fetch, keys, layer, overlay, rootpath, users
from stepbuild import instructions as ins
from stepbuild.copy import Copier, Owner, Placement, check_destination, file_target, open_root
from stepbuild.errors import BuildError, SourcePosition, StepFailed
from stepbuild.image import ImageState
from stepbuild.plan import Scope
from stepbuild.syntax import chomp_heredoc, heredoc_marker

# Paths the sandbox mounts over; created as empty stubs when the image lacks them and removed
# from the layer afterwards, so that they never land in an image (BuildKit does the same).
MOUNT_STUBS = ("proc", "dev", "sys", "etc/hosts", "etc/resolv.conf", "etc/hostname")


@dataclass(frozen=True, slots=True)
class PreparedStep:
    """A cached step ready to run: its key, its inputs (recorded), and what to do."""

    instruction: ins.Run | ins.Copy | ins.Add
    key: str
    inputs: dict[str, Any]
    created_by: str
    work: dict[str, Any] = field(default_factory=dict)


class Executor:
    """Prepares and executes RUN/COPY/ADD steps. Collaborators are injected."""

    def __init__(self, store: Any, context: Any, sandbox: Any, progress: Any,
                 build_args: dict[str, str] | None = None, network: str = "host",
                 source_date_epoch: int | None = None) -> None:
        self.store = store
        self.context = context
        self.sandbox = sandbox
        self.progress = progress
        self.build_args = build_args or {}
        self.network = network
        self.source_date_epoch = source_date_epoch
        self._scratch: Path | None = None

    def close(self) -> None:
        """Remove the build's scratch files (downloads)."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _scratch_file(self, name: str) -> Path:
        if self._scratch is None:
            self._scratch = self.store.tmp_dir("build-")
        return self._scratch / f"{len(os.listdir(self._scratch))}-{name}"

    # --- prepare -------------------------------------------------------------------------------

    def prepare(self, instruction: ins.Run | ins.Copy | ins.Add, state: ImageState,
                scope: Scope, run: Any) -> PreparedStep:
        if isinstance(instruction, ins.Run):
            return self._prepare_run(instruction, state, scope)
        return self._prepare_copy(instruction, state, scope, run)

    def _prepare_run(self, run: ins.Run, state: ImageState, scope: Scope) -> PreparedStep:
        if run.mounts:
            raise BuildError("RUN --mount is not supported yet", hint="see issue #4")
        argv = run_argv(run.command, state.shell)
        env = scope.run_env(self.build_args)
        network = run.network if run.network not in (None, "default") else self.network
        inputs = {"op": "run", "argv": argv, "env": keys.without_proxies(env),
                  "user": state.user, "cwd": state.workdir, "network": network}
        key = keys.step_key(state.key, inputs)
        created_by = "RUN " + " ".join(argv)
        work = {"argv": argv, "env": env, "network": network}
        return PreparedStep(run, key, inputs, created_by, work)

    def _prepare_copy(self, copy: ins.Copy | ins.Add, state: ImageState, scope: Scope,
                      run: Any) -> PreparedStep:
        word = "ADD" if isinstance(copy, ins.Add) else "COPY"
        if isinstance(copy, ins.Copy) and copy.from_:
            raise BuildError("COPY --from is not supported yet", hint="see issue #4")
        expanded = [scope.expand(s) for s in copy.sources]
        urls = [s for s in expanded if fetch.is_url(s)]
        if urls and isinstance(copy, ins.Copy):
            raise BuildError("COPY cannot fetch URLs; use ADD", hint=urls[0])
        sources = [s for s in expanded if not fetch.is_url(s)]
        dest = _destination(scope.expand(copy.dest), state.workdir)
        excludes = [scope.expand(e) for e in copy.excludes]
        selection = self.context.select(sources, excludes=excludes) if sources else None
        checksum = scope.expand(copy.checksum) if isinstance(copy, ins.Add) and (
            copy.checksum) else None
        downloads = [fetch.download(url, self._scratch_file("download"), checksum)
                     for url in urls]
        inline = [(s.name, scope.expand(s.data) if s.expand else s.data) for s in copy.inline]
        chown = scope.expand(copy.chown) if copy.chown else None
        inputs = {"op": word.lower(), "selection": selection.digest() if selection else None,
                  "dest": dest, "chown": chown, "chmod": copy.chmod, "excludes": excludes,
                  "inline": [[name, keys.digest(data)] for name, data in inline],
                  "urls": [[d.url, d.digest] for d in downloads], "sde": self.source_date_epoch}
        key = keys.step_key(state.key, inputs)
        created_by = f"{word} {' '.join([*expanded, *(n for n, _ in inline)])} {dest}"
        work = {"selection": selection, "dest": dest, "inline": inline, "chown": chown,
                "downloads": downloads,
                "chmod": int(copy.chmod, 8) if copy.chmod else None,
                "unpack": isinstance(copy, ins.Add) and copy.unpack is not False}
        return PreparedStep(copy, key, inputs, created_by, work)

    # --- execute -------------------------------------------------------------------------------

    def execute(self, step: PreparedStep, state: ImageState, run: Any) -> str | None:
        """Run a step that missed the cache; return its layer's diff_id (None: no change)."""
        lowers = [self.store.layer_dir(d) for d in reversed(state.diff_ids)]
        tmp = self.store.tmp_dir("step-")
        try:
            upper = tmp / "upper"
            with overlay.mounted(tmp, lowers) as merged:
                if isinstance(step.instruction, ins.Run):
                    stubs = self._run(step, state, merged, tmp, run)
                else:
                    stubs = []
                    self._copy(step, merged)
            _remove_stubs(upper, stubs)
            blob = layer.capture(upper, lowers, tmp / "layer.tar",
                                 source_date_epoch=self.source_date_epoch)
            if blob is None:
                return None
            self.store.commit_layer(upper, blob.diff_id, blob.path)
            return str(blob.diff_id)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _run(self, step: PreparedStep, state: ImageState, merged: Path, tmp: Path,
             run: Any) -> list[str]:
        from stepbuild.sandbox.spec import SandboxSpec

        ids = user_ids(merged, state.user)
        etc = tmp / "etc"
        write_etc_files(etc, "stepbuild")
        stubs = _make_stubs(merged)
        spec = SandboxSpec(
            rootfs=str(merged), argv=tuple(step.work["argv"]), env=tuple(step.work["env"]),
            cwd=state.workdir, uid=ids.uid, gid=ids.gid, groups=ids.groups,
            hostname="stepbuild", network=step.work["network"], etc_dir=str(etc),
        )
        result = self.sandbox.run(spec, on_output=self.progress.output)
        self.progress.flush_output()
        for notice in result.notices:  # e.g. the chroot fallback, a skipped /etc bind
            self.progress.note(notice)
        if result.exit_code != 0:
            loc = step.instruction.loc
            text = step.instruction.text.split("\n", 1)[0]
            raise StepFailed(SourcePosition(run.stages.filename, loc.line, loc.column, text),
                             step.created_by, result.exit_code, result.output_tail)
        return stubs

    def _copy(self, step: PreparedStep, merged: Path) -> None:
        work = step.work
        owner = Owner()
        if work["chown"]:
            ids = user_ids(merged, work["chown"])
            owner = Owner(ids.uid, ids.gid)
        place = Placement(work["dest"], owner, work["chmod"])
        selection = work["selection"]
        groups = selection.groups if selection else ()
        with open_root(merged) as root_fd:
            check_destination(place, len(groups) + len(work["inline"]) + len(work["downloads"]),
                              root_fd)
            copier = Copier(root_fd, place)
            for group in groups:
                self._copy_group(copier, group, place, root_fd, work["unpack"], merged)
            for name, data in work["inline"]:
                path = file_target(place, name, root_fd)
                copier.write_file(path, data.encode(), 0o644, 0)
            for download in work["downloads"]:
                self._copy_download(copier, download, file_target(place, download.name,
                                                                  root_fd))
            copier.finish()

    def _copy_group(self, copier: Copier, group: Any, place: Placement, root_fd: int,
                    unpack: bool, merged: Path) -> None:
        if not group.is_dir:
            entry = group.entries[0]
            if unpack and entry.kind == "file" and layer.is_archive(
                    self.context.root / group.resolved):
                owner = place.owner
                layer.unpack_archive(self.context.root / group.resolved, merged,
                                     place.dest.rstrip("/") or "/", uid=owner.uid or None,
                                     gid=owner.gid or None)
                return
            target = file_target(place, group.name, root_fd)
            self._copy_entry(copier, group.resolved, target, entry)
            return
        base = place.dest.rstrip("/") or "/"
        copier.make_dir(base)
        for entry in group.entries:
            source = f"{group.resolved}/{entry.path}" if group.resolved != "." else entry.path
            self._copy_entry(copier, source, base.rstrip("/") + "/" + entry.path, entry)

    @staticmethod
    def _copy_download(copier: Copier, download: fetch.Download, target: str) -> None:
        # Docker: a downloaded file gets mode 600 and its Last-Modified time as mtime.
        os.chmod(download.path, 0o600)
        os.utime(download.path, (download.mtime, download.mtime))
        fd = os.open(download.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            copier.copy_file(fd, target, os.fstat(fd))
        finally:
            os.close(fd)

    def _copy_entry(self, copier: Copier, source: str, target: str, entry: Any) -> None:
        """Copy one context entry; `source` is relative to the context root."""
        if entry.kind == "dir":
            copier.make_dir(target, os.lstat(self.context.root / source))
        elif entry.kind == "symlink":
            info = os.lstat(self.context.root / source)
            copier.copy_symlink(entry.link_target, target, info)
        else:
            fd = self.context.open_file(source)
            try:
                copier.copy_file(fd, target, os.fstat(fd))
            finally:
                os.close(fd)


def _destination(dest: str, workdir: str) -> str:
    """An absolute, clean destination; a trailing "/" (or "/.") is kept: it means "a dir"."""
    import posixpath

    is_dir = dest.endswith(("/", "/.")) or dest in (".", "..")
    absolute = dest if dest.startswith("/") else workdir.rstrip("/") + "/" + dest
    cleaned = posixpath.normpath(absolute)
    cleaned = "/" + cleaned.lstrip("/")
    return cleaned.rstrip("/") + "/" if is_dir else cleaned


def run_argv(command: ins.Command, shell: tuple[str, ...]) -> list[str]:
    """The argv of a RUN: exec form as is; shell form through SHELL, heredocs included.

    `RUN <<EOF` alone makes the heredoc the script; otherwise the shell gets the command line
    followed by the heredoc bodies and their terminators, and does the redirection itself.
    """
    if not command.shell_form:
        return list(command.args)
    text = command.args[0] if command.args else ""
    heredocs = command.heredocs
    if len(heredocs) == 1 and heredoc_marker(text.strip()) is not None:
        doc = heredocs[0]
        return [*shell, chomp_heredoc(doc.content) if doc.chomp else doc.content]
    for doc in heredocs:
        text += "\n" + doc.content + doc.name
    return [*shell, text]


def user_ids(root: Path, user: str) -> users.Ids:
    """USER or --chown resolved in the image's own /etc/passwd and /etc/group (root: 0:0)."""
    if not user:
        return users.Ids(0, 0)
    return users.resolve(user, _read_image_file(root, "/etc/passwd"),
                         _read_image_file(root, "/etc/group"))


def _read_image_file(root: Path, path: str) -> str:
    try:
        return rootpath.read_file_in_root(root, path).decode("utf-8", "replace")
    except (FileNotFoundError, NotADirectoryError):
        return ""


def write_etc_files(etc: Path, hostname: str) -> None:
    etc.mkdir()
    (etc / "hostname").write_text(hostname + "\n")
    (etc / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        f"127.0.1.1\t{hostname}\n")
    try:
        resolv = Path("/etc/resolv.conf").read_text()
    except OSError:
        resolv = ""
    (etc / "resolv.conf").write_text(resolv)


def _make_stubs(merged: Path) -> list[str]:
    """Create the mount points the image lacks (they land in the upper dir; removed later)."""
    made = []
    for stub in MOUNT_STUBS:
        path = merged / stub
        if os.path.lexists(path):
            continue
        if not path.parent.is_dir() or path.parent.is_symlink():
            continue  # e.g. no /etc at all: the sandbox skips that mount
        if "/" in stub:
            path.touch(mode=0o644)
        else:
            path.mkdir(mode=0o755)
        made.append(stub)
    return made


def _remove_stubs(upper: Path, stubs: list[str]) -> None:
    """Remove mount-point stubs the sandbox created, if they are still empty."""
    for stub in sorted(stubs, reverse=True):
        path = upper / stub
        try:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            elif path.is_file() and path.stat().st_size == 0:
                path.unlink()
        except OSError:
            pass  # not empty: the step wrote there, keep it
        parent = path.parent
        while parent != upper:
            try:
                parent.rmdir()  # a parent dir created only to hold a stub
            except OSError:
                break
            parent = parent.parent
