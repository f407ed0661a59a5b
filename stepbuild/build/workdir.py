"""WORKDIR as a step: its directory is made at once, as BuildKit makes it.

BuildKit (dockerfile2llb's dispatchWorkdir) turns a WORKDIR other than `/` into a `mkdir -p`
file operation: every directory it makes is 0755 and owned by the USER in effect, with the
rules of a `--chown` (llb.WithUser): a name is looked up in the image's own /etc/passwd and
/etc/group, a lone uid is the gid too, `root` is 0. A directory that is there already, or a
symlink to one, is left as it is. So `USER nobody` then `WORKDIR /data` gives a /data owned by
65534:65534 even if no later step uses it.

The step is cached like RUN and COPY (`lifecycle.py`): its key covers the parent state, the
directory and the user. Where BuildKit adds a layer (an empty one when the directory was
there), stepbuild adds none for a step that changed nothing, as for every step; the builder
then keeps WORKDIR's config-only history entry (`builder.py`), so an image whose WORKDIR
directories exist has the digest it had before WORKDIR made directories. A name the image
the image does not have gives root, as in BuildKit (its readUser leaves the id at 0 when the
passwd or group file has no such entry): a Stepfile such as `USER app` + `WORKDIR /srv` on a
base without that user builds with docker, so it builds here too. An id out of range, or a
passwd file that cannot be read, is still an error located at the WORKDIR.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stepbuild.build import keys, users
from stepbuild.build.config import workdir_path
from stepbuild.build.copy_files import Owner, open_root
from stepbuild.build.run import user_ids
from stepbuild.build.step import PreparedStep
from stepbuild.errors import BuildError
from stepbuild.fs import rootpath

if TYPE_CHECKING:
    from pathlib import Path

    from stepbuild.build.execute import Executor
    from stepbuild.build.plan import Scope
    from stepbuild.build.seams import BuildRun
    from stepbuild.build.state import ImageState
    from stepbuild.frontend import instructions as ins

MODE = 0o755  # BuildKit's llb.Mkdir(wd, 0755, WithParents)


@dataclass(frozen=True, slots=True)
class WorkdirWork:
    """The directory to make, the USER in effect (its owner, looked up when the step runs),
    and `where` ("Stepfile:LINE:COLUMN") for errors."""

    path: str
    user: str
    where: str


def prepare(executor: Executor, workdir: ins.Workdir, state: ImageState, scope: Scope,
            run: BuildRun) -> PreparedStep:
    """The step of a WORKDIR other than `/` (the builder never makes one for `/`)."""
    path = workdir_path(workdir, state, scope)
    inputs = {"op": "workdir", "path": path, "user": state.user,
              "sde": executor.source_date_epoch}
    where = f"{run.stages.filename}:{workdir.loc.line}:{workdir.loc.column}"
    return PreparedStep(workdir, keys.step_key(state.key, inputs), inputs, f"WORKDIR {path}",
                        WorkdirWork(path, state.user, where))


def perform(work: WorkdirWork, merged: Path) -> None:
    """`mkdir -p` the directory in the mounted image root `merged`, symlinks resolved in it."""
    owner = _owner(merged, work)
    with open_root(merged) as root_fd:
        try:
            fd = rootpath.makedirs_in_root(root_fd, work.path, mode=MODE, uid=owner.uid,
                                           gid=owner.gid)
        except (OSError, ValueError) as exc:  # a file in the way, a symlink loop, ...
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if isinstance(exc, OSError) and why.endswith(" in"):  # rootpath's "'x' ... in" <dir>
                why += f" {exc.filename}"
            raise BuildError(f"{work.where}: WORKDIR {work.path}: cannot make the directory:"
                             f" {why}") from None
        os.close(fd)


def _owner(root: Path, work: WorkdirWork) -> Owner:
    """The USER in effect as the owner of the directories made (BuildKit's WithUser)."""
    user_part, _, group_part = work.user.partition(":")
    try:
        uid, gid = _user_ids(root, user_part)
        if group_part:
            gid = _group_id(root, group_part, gid)
    except users.UserError as exc:  # an id out of range, an unreadable passwd or group file
        raise BuildError(f"{work.where}: WORKDIR as USER {work.user}: {exc.message}",
                         hint=exc.hint) from None
    return Owner(uid, gid)


def _user_ids(root: Path, user: str) -> tuple[int, int]:
    """uid and primary gid of `user`; a name the image lacks is 0:0, as in BuildKit."""
    if not user or user == "root":
        return 0, 0
    if users.is_numeric(user):
        uid = users.numeric_id(user, "uid")
        return uid, uid  # llb.WithUser: a lone uid is the gid too
    try:
        ids = user_ids(root, user)
    except users.UserError:
        if _passwd_unreadable(root):
            raise
        return 0, 0
    return ids.uid, ids.gid


def _group_id(root: Path, group: str, fallback: int) -> int:
    """gid of `group`; a name the image lacks keeps the user's gid, as in BuildKit."""
    if users.is_numeric(group):
        return users.numeric_id(group, "gid")
    try:
        return user_ids(root, f"0:{group}").gid
    except users.UserError:
        if _passwd_unreadable(root):
            raise
        return fallback


def _passwd_unreadable(root: Path) -> bool:
    """Whether the lookup failed because a file could not be read (rather than lacked the
    name): then the owner cannot be known, and that is an error, not root."""
    try:
        user_ids(root, "0")
    except users.UserError:
        return True
    return False
