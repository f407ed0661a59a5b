"""Build contexts that are not a local directory: `-` (standard input), a git URL, an http(s) URL.

docker's conventions (`docker build --help`, "Extended description"), which `kind` follows:

- `-`: a tar on standard input (plain, gzip, bzip2, xz or zstd) is the context; anything else
  there is the Stepfile, with an empty context (`docker build - < Dockerfile`);
- a git URL (`sources/git.is_context_git_url`): `https://host/repo.git#ref:subdir`,
  `git@host:repo.git`, `git://…`, `ssh://…`; `#ref` a branch, tag or full commit sha,
  `:subdir` the directory of the repository that is the context;
- any other http(s) URL: a tarball downloaded and unpacked, or a Stepfile (a text file) with
  an empty context, as for `-`.

Each is made into a plain directory under `work` — a fresh directory under the store's tmp/
that the caller owns and removes (`cli/context_flags.py`), so a killed builder's leftovers
go with the store's dead-work cleanup — and is then built as any directory context. Nothing
of it is trusted: the tar is unpacked by `context_tar.extract` (docs/security.md rules 1-3),
git runs as for ADD (`sources/git.py`, rule 9), downloads stream to disk with a size limit.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from stepbuild.errors import UsageError
from stepbuild.sources import context_tar, git

__all__ = ["MAX_DOWNLOAD", "Fetched", "fetch", "kind"]

# A context tarball bigger than this is a mistake (the wrong URL), not a context: 8 GiB.
MAX_DOWNLOAD = 8 << 30
# git's transports a context may use: docker's (its CLI runs the user's git), not file://.
CONTEXT_PROTOCOLS = "http:https:git:ssh"


@dataclass(frozen=True, slots=True)
class Fetched:
    """A context made local: the directory to build in, the Stepfile that came instead of a
    tar (None: look in `root` as usual), and how to name the source in messages."""

    root: Path
    stepfile: Path | None
    label: str


def kind(context: str) -> str:
    """"stdin", "git", "url" or "dir" for the context argument of `stepbuild build`."""
    if context == "-":
        return "stdin"
    if git.is_context_git_url(context):
        return "git"
    if context.startswith(("http://", "https://")):
        return "url"
    return "dir"


def fetch(context: str, work: Path, stdin: BinaryIO | None = None,
          max_download: int = MAX_DOWNLOAD) -> Fetched:
    """Make the context `context` (not "dir") a directory under the empty directory `work`.

    Raises ContextError (a bad or hostile tar), GitError (no such ref, an unreachable
    repository) or BuildError (a download failed: 404, too big), each naming the source;
    whatever was written stays in `work` for the caller to remove."""
    what = kind(context)
    if what == "git":
        return _git_context(context, work)
    data = work / "input"
    if what == "stdin":
        if stdin is None:
            raise UsageError("the build context is '-' but there is no standard input")
        label = "the context on standard input"
        with open(data, "wb") as out:
            shutil.copyfileobj(stdin, out, 1 << 20)
    else:
        from stepbuild.sources import url

        label = f"the context {git.redact(context)}"  # no credentials in messages
        url.fetch(context, data, what="cannot download the build context",
                  max_size=max_download)
    return _one_file(data, work, label)


def _one_file(data: Path, work: Path, label: str) -> Fetched:
    """A tar → its content in `work/context`; text → that Stepfile, and an empty context."""
    root = work / "context"
    root.mkdir(mode=0o755)
    if context_tar.sniff(data, label) == "text":
        stepfile = work / "Stepfile"
        data.rename(stepfile)
        return Fetched(root, stepfile, label)
    try:
        context_tar.extract(data, root, label)
    finally:
        data.unlink()
    return Fetched(root, None, label)


def _git_context(context: str, work: Path) -> Fetched:
    """Resolve the ref (one ls-remote), fetch that commit shallow, check it out without .git."""
    source = git.parse(context, CONTEXT_PROTOCOLS)
    commit, ref_name = git.resolve(source)
    tree = git.checkout(source, commit, ref_name, work / "repo", keep_git_dir=False)
    return Fetched(tree, None, f"the context {source.shown}")
