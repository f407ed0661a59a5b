"""ADD <git URL>: resolve a ref to a commit, fetch that commit, check it out for copying.

Which sources are git repositories (BuildKit's `gitutil.ParseGitRef`): an http(s) URL whose
path ends in `.git`; its fragment is `#<ref>[:<subdir>]` (a branch, a tag or a full commit
sha; a directory of the repository). `git@host:…`, `ssh://` and `git://` are build
contexts only (`is_context_git_url`, `sources/remote.py`: the transports allowed are the
source's `protocols`), as in docker, whose ADD takes http(s) only. Not supported: BuildKit's
`##ref=…,subdir=…` form, submodules (BuildKit fetches them; we do not).

How (BuildKit's git source, `source/git`, does the same steps):

* `resolve` runs `git ls-remote` and picks the commit the ref names, before the step's cache
  key is computed: the key holds the commit sha, so a cache hit costs one ls-remote and no
  clone, and a new commit on the branch misses. A full 40-hex sha is taken as it is. Refs are
  matched like BuildKit: `refs/<ref>` exactly, else the branch `refs/heads/<ref>`, else the
  tag `refs/tags/<ref>` (its peeled `^{}` commit for an annotated tag).
* `checkout` (only when the step runs) fetches that one commit with `--depth=1` into a fresh
  repository in the step's scratch directory and checks it out. Without `--depth` for a
  server that cannot do shallow fetches (the dumb HTTP protocol), and by ref name for a
  server that refuses a sha it does not advertise (protocol v0 without
  `uploadpack.allowReachableSHA1InWant`); what was fetched is then checked to be the commit.
* The checkout is normalised so that the layer depends on the commit only: regular files
  0644, or 0755 when git marks them executable, directories 0755 (the Dockerfile reference,
  "Adding files from a Git repository"); every mtime (files, links, directories) is the
  commit's committer time — BuildKit's `git.mtime=commit` policy (moby/buildkit#6600), which
  it uses with SOURCE_DATE_EPOCH; its default mtime is the checkout time, which would give a
  different layer on every run. `.git` is removed unless `--keep-git-dir=true`; a kept
  `.git` has `origin` set to the URL without credentials, a local branch or tag named as the
  ref, a detached HEAD at the commit, no FETCH_HEAD and no reflogs (BuildKit: `remote
  set-url origin <redacted>`, `reflog expire --all`). Its own files keep git's modes. With
  a subdir only the subdir is copied, so a kept `.git` (at the top) is not part of it.

Safety (docs/security.md rule 9): the host's `git` runs outside any rootfs, in the store's tmp
dir, with no system or user configuration (`GIT_CONFIG_NOSYSTEM`, an empty HOME and
`GIT_CONFIG_GLOBAL`, as BuildKit's `gitutil` does), no terminal prompt, only the http and
https transports (`GIT_ALLOW_PROTOCOL`), no template (so no sample hooks), a timeout and a
low-speed abort. Nothing is executed from the repository: hooks are never fetched, and
checkout runs none of a fresh repository's hooks.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from stepbuild.errors import BuildError

TIMEOUT_SECONDS = 600
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# What ssh needs of the user's environment (their agent, their own ssh command); ssh reads
# its keys and known_hosts from the user's passwd home, not from $HOME.
_SSH_ENV = ("SSH_AUTH_SOCK", "GIT_SSH", "GIT_SSH_COMMAND")


class GitError(BuildError):
    """A git source cannot be resolved or fetched (unknown ref, unreachable repository...)."""


@dataclass(frozen=True, slots=True)
class GitSource:
    remote: str   # the URL to fetch, as written (credentials included), without fragment
    ref: str      # branch, tag or commit sha; "" for the remote's HEAD
    subdir: str   # a clean relative path inside the repository; "" for the whole tree
    # git's transports allowed (GIT_ALLOW_PROTOCOL): ADD takes http(s) only; a build
    # context also git:// and ssh (`git@host:repo.git`), as docker's does.
    protocols: str = "http:https"

    @property
    def shown(self) -> str:
        """The source for history, keys and messages: credentials removed."""
        fragment = self.ref + (f":{self.subdir}" if self.subdir else "")
        return redact(self.remote) + (f"#{fragment}" if fragment else "")


def is_git_url(source: str) -> bool:
    """An http(s) URL whose path ends in `.git` (BuildKit: only those are git refs)."""
    if not source.startswith(("http://", "https://")):
        return False
    return urllib.parse.urlsplit(source.partition("#")[0]).path.endswith(".git")


def is_context_git_url(source: str) -> bool:
    """A build context that is a git repository (docker's `urlutil.IsGitURL`, plus BuildKit's
    ssh://): an http(s) URL ending in `.git`, or a `git://`, `ssh://` or `git@host:` one."""
    return is_git_url(source) or source.startswith(("git://", "ssh://", "git@"))


def parse(source: str, protocols: str = "http:https") -> GitSource:
    remote, _, fragment = source.partition("#")
    ref, _, subdir = fragment.partition(":")
    if fragment.startswith("#"):
        raise GitError(f"git source {redact(remote)}: the '##key=value' fragment form is"
                       " not supported", hint="write the ref and subdirectory as #ref:subdir")
    parts = []
    for part in subdir.split("/"):
        if part in ("", "."):
            continue
        if part == ".." or "\0" in part:
            raise GitError(f"git source {redact(remote)}#{fragment}: the subdirectory must"
                           " stay inside the repository")
        parts.append(part)
    if ref.startswith("-") or any(ch.isspace() or ch == "\0" for ch in ref):
        raise GitError(f"git source {redact(remote)}: invalid ref {ref!r}")
    return GitSource(remote, ref, "/".join(parts), protocols)


def redact(url: str) -> str:
    """The URL without a user name or password."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def resolve(source: GitSource) -> tuple[str, str]:
    """The commit `source.ref` names in the remote repository (one `git ls-remote`), and the
    full name of the ref that matched ("" for a sha or the remote's HEAD)."""
    if _SHA.fullmatch(source.ref):
        return source.ref, ""
    ref = source.ref or "HEAD"
    with tempfile.TemporaryDirectory(prefix="stepbuild-git-") as home:
        output = _git(["ls-remote", "--", source.remote, ref, ref + "^{}"], Path(home),
                      source, "cannot read git repository")
    listed = {name: sha for sha, _, name in (line.partition("\t")
                                             for line in output.splitlines())}
    if not source.ref:
        if "HEAD" not in listed:
            raise GitError(f"git repository {redact(source.remote)} has no HEAD",
                           hint="name a branch, tag or commit after '#'")
        return listed["HEAD"], ""
    exact = "refs/" + ref.removeprefix("refs/")
    head = "refs/heads/" + ref.removeprefix("refs/heads/")
    tag = "refs/tags/" + ref.removeprefix("refs/tags/")
    # BuildKit's order: the exact ref, else a branch (git checkout prefers branches), else a
    # tag — the commit an annotated tag points to (its peeled "^{}" line), not the tag.
    for name in (exact, head, tag):
        sha = listed.get(name + "^{}") or listed.get(name)
        if sha:
            return sha, name
    raise GitError(f"git repository {redact(source.remote)} has no branch, tag or ref"
                   f" named {source.ref!r}",
                   hint="a commit must be given as its full 40-character sha")


def checkout(source: GitSource, commit: str, ref_name: str, target: Path,
             keep_git_dir: bool) -> Path:
    """Fetch `commit` into the new directory `target`, check it out and normalise it (see
    the module docstring). Returns the directory to copy: `target`, or its subdir."""
    home = target.with_name(target.name + "-home")
    home.mkdir()
    target.mkdir()
    repo = _Repo(source, target, home)
    try:
        repo.run(["init", "-q", "--template=", "."], "cannot create a git repository in")
        repo.fetch(commit)
        repo.run(["-c", "advice.detachedHead=false", "checkout", "-q", "--detach", commit],
                 f"cannot check out commit {commit} of")
        when = int(repo.run(["show", "-s", "--format=%ct", commit],
                            "cannot read the commit time of").strip())
        if keep_git_dir:
            repo.run(["remote", "add", "origin", redact(source.remote)], "cannot configure")
            if ref_name:
                repo.run(["update-ref", ref_name, commit], "cannot record the ref of")
            repo.run(["reflog", "expire", "--all", "--expire=now"], "cannot tidy")
            shutil.rmtree(target / ".git" / "logs", ignore_errors=True)
        else:
            shutil.rmtree(target / ".git")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    _normalise(target, when)
    return _subdir(source, commit, target)


class _Repo:
    """The repository being fetched into, and the git commands run on it."""

    def __init__(self, source: GitSource, path: Path, home: Path) -> None:
        self.source = source
        self.path = path
        self.home = home

    def run(self, args: list[str], why: str) -> str:
        return _git(["-C", str(self.path), *args], self.home, self.source, why)

    def fetch(self, commit: str) -> None:
        """Fetch the one commit: shallow by sha, else whole by sha (a dumb-protocol server),
        else by the ref's name (a server that refuses unadvertised shas), checking each time
        that the commit arrived (the ref may have moved since ls-remote)."""
        ref = self.source.ref
        attempts = [(["--depth=1"], commit), ([], commit)]
        if ref and ref != commit:
            attempts += [(["--depth=1"], ref), ([], ref)]
        error: GitError | None = None
        for options, wanted in attempts:
            try:
                self.run(["fetch", "-q", "--no-tags", "--no-write-fetch-head", *options, "--",
                          self.source.remote, wanted], "cannot fetch")
            except GitError as exc:
                if error is None or "shallow" in error.message:
                    error = exc  # the first failure says the most, unless it is "no --depth"
                continue
            try:
                self.run(["cat-file", "-e", commit + "^{commit}"], "no commit in")
            except GitError:
                continue
            return
        if error is not None:
            raise error
        raise GitError(f"cannot fetch commit {commit} from {redact(self.source.remote)}: its"
                       f" {ref!r} moved since it was resolved", hint="build again")


def _normalise(root: Path, when: int) -> None:
    """Modes 0644/0755 outside .git, every mtime the commit time (children first)."""
    git_dir = str(root / ".git")
    for top, dirs, files in os.walk(root, topdown=False):
        for name in (*files, *dirs):
            path = os.path.join(top, name)
            if path != git_dir and not path.startswith(git_dir + os.sep):
                mode = os.lstat(path).st_mode
                if stat.S_ISREG(mode):
                    os.chmod(path, 0o755 if mode & 0o111 else 0o644)
                elif stat.S_ISDIR(mode):
                    os.chmod(path, 0o755)
            os.utime(path, (when, when), follow_symlinks=False)
    os.chmod(root, 0o755)
    os.utime(root, (when, when))


def _subdir(source: GitSource, commit: str, root: Path) -> Path:
    """The subdirectory to copy, reached without following any symlink."""
    path = root
    for part in source.subdir.split("/") if source.subdir else ():
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = 0
        if not stat.S_ISDIR(mode) or part == ".git":
            raise GitError(f"git source {source.shown}: no directory {source.subdir!r} at"
                           f" commit {commit}")
    return path


def _git(args: list[str], home: Path, source: GitSource, why: str) -> str:
    """Run the host's git with no configuration of its own; GitError with git's last line."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
           "GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": source.protocols,
           "GIT_HTTP_LOW_SPEED_LIMIT": "1000", "GIT_HTTP_LOW_SPEED_TIME": "60", "LC_ALL": "C"}
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY",
                 "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "GIT_SSL_CAINFO", "SSL_CERT_FILE",
                 "SSL_CERT_DIR", *_SSH_ENV * ("ssh" in source.protocols)):
        if name in os.environ:
            env[name] = os.environ[name]
    try:
        result = subprocess.run(["git", *args], env=env, cwd=home, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, errors="replace",
                                timeout=TIMEOUT_SECONDS, close_fds=True, umask=0o022)
    except FileNotFoundError:
        raise GitError("a git source needs git on the build host",
                       hint="install it (apt-get install git)") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"{why} {redact(source.remote)}: git did not finish within"
                       f" {TIMEOUT_SECONDS} s") from None
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        detail = lines[-1] if lines else f"git exited with status {result.returncode}"
        detail = detail.replace(source.remote, redact(source.remote))
        raise GitError(f"{why} {redact(source.remote)}: {detail}")
    return result.stdout
