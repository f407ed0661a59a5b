"""Image references: `[registry[:port]/]repository[:tag][@digest]`, with Docker's defaults.

`parse_reference("busybox")` is `docker.io/library/busybox:latest`, exactly as `docker pull`
reads it. The grammar and the normalisation follow distribution's `reference` package
(reference.go's grammar, normalize.go's `ParseNormalizedNamed` / `splitDockerDomain`):

- The first path component is a registry host when it contains `.` or `:`, is `localhost`,
  or has an upper-case letter (`Example/app` names the host `Example`); otherwise the
  registry is `docker.io` (`index.docker.io` is the same registry, written `docker.io`).
- On `docker.io` a one-component repository gets `library/` in front (`docker.io/busybox`
  is `docker.io/library/busybox`).
- No tag and no digest means `:latest`. A tag and a digest may both be given; the digest is
  what is fetched (`Reference.identifier`), the tag is kept for display.
- Repositories are lower case; a bare 64-hex-digit name is refused (it would read as an
  image id); the whole name is at most 255 characters; tags are `[A-Za-z0-9_][A-Za-z0-9_.-]`,
  at most 128 characters.
- Digests must be `sha256:` + 64 lower-case hex digits (the only algorithm the store takes;
  Docker also accepts others, which we refuse with a clear message).

Pure: no network, no configuration. Which host serves `docker.io` and which credentials
apply are `client.py`'s and `auth.py`'s business. Errors are `InvalidReference`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stepbuild.errors import InvalidReference
from stepbuild.oci.digest import is_digest, is_digest_hex

DOCKER_HUB = "docker.io"  # how Docker Hub is written in a normalised reference
LEGACY_DOCKER_HUB = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255  # distribution's NameTotalLengthMax, over "registry/repository"
TAG_MAX = 128

# distribution/reference regexp.go, ASCII only (Go's \w is ASCII; Python's is not).
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_REPOSITORY = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*", re.ASCII)
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_REGISTRY = re.compile(rf"{_HOST}(?::[0-9]+)?", re.ASCII)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_ANY_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference. Construct with `parse_reference`, or from parts (each
    part is validated; no defaults are applied then).

    `registry` is a host with an optional port (`docker.io`, `localhost:5000`, `[::1]:5000`);
    `repository` the path inside it (`library/busybox`); `tag` and `digest` may be None, but
    not both. `str()` is the full form, `familiar()` the short one Docker prints.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        text = _render(self.registry, self.repository, self.tag, self.digest)
        if not _REGISTRY.fullmatch(self.registry):
            raise InvalidReference(text, f"invalid registry host {self.registry!r}")
        if not _REPOSITORY.fullmatch(self.repository):
            raise InvalidReference(text, _repository_problem(self.repository))
        if is_digest_hex(self.repository):
            raise InvalidReference(text, "a repository cannot be a 64-digit hexadecimal string")
        if len(self.registry) + 1 + len(self.repository) > NAME_MAX:
            raise InvalidReference(text, f"name longer than {NAME_MAX} characters")
        if self.tag is None and self.digest is None:
            raise InvalidReference(text, "neither a tag nor a digest")
        if self.tag is not None and not _TAG.fullmatch(self.tag):
            raise InvalidReference(text, _tag_problem(self.tag))
        if self.digest is not None and not is_digest(self.digest):
            raise InvalidReference(text, _digest_problem(self.digest))

    def __str__(self) -> str:
        return _render(self.registry, self.repository, self.tag, self.digest)

    @property
    def name(self) -> str:
        """`registry/repository`, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest if there is one,
        else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def familiar(self) -> str:
        """The short form Docker shows: `busybox:latest`, `someone/app:1`, `ghcr.io/x/y:2`."""
        repository = self.repository
        if self.registry == DOCKER_HUB:
            if repository.startswith(OFFICIAL_PREFIX) and repository.count("/") == 1:
                repository = repository[len(OFFICIAL_PREFIX) :]
            return _render(None, repository, self.tag, self.digest)
        return str(self)

    def with_tag(self, tag: str) -> Reference:
        """The same repository with this tag and no digest."""
        return Reference(self.registry, self.repository, tag, None)

    def with_digest(self, digest: str) -> Reference:
        """The same repository with this digest (the tag is kept for display)."""
        return Reference(self.registry, self.repository, self.tag, digest)


def parse_reference(text: str, *, default_tag: str | None = DEFAULT_TAG) -> Reference:
    """Parse and normalise `text` as Docker does; raise `InvalidReference` when it is not a
    reference. With `default_tag=None` a reference without tag and digest is refused."""
    if not isinstance(text, str) or not text:
        raise InvalidReference(str(text), "empty")
    if is_digest_hex(text):
        raise InvalidReference(text, "a repository cannot be a 64-digit hexadecimal string")
    rest, digest = _split_digest(text)
    registry, rest = _split_registry(rest)
    repository, tag = _split_tag(text, rest)
    if repository.lower() != repository:
        raise InvalidReference(text, f"repository name {repository!r} must be lower case")
    if registry == DOCKER_HUB and "/" not in repository:
        repository = OFFICIAL_PREFIX + repository
    if tag is None and digest is None:
        if default_tag is None:
            raise InvalidReference(text, "a tag or a digest is required")
        tag = default_tag
    try:
        return Reference(registry, repository, tag, digest)
    except InvalidReference as exc:
        raise InvalidReference(text, exc.problem) from None


def valid_registry_host(host: str) -> bool:
    """Is `host` a registry as a reference names it: `host[:port]`, `[v6]:port`?"""
    return isinstance(host, str) and _REGISTRY.fullmatch(host) is not None


def check_repository(repository: str) -> str:
    """`repository` if it is a valid repository path (`library/busybox`), else raise
    `InvalidReference`. What the registry client checks before a name goes into a URL."""
    if not isinstance(repository, str) or not _REPOSITORY.fullmatch(repository):
        raise InvalidReference(str(repository), _repository_problem(str(repository)))
    return repository


def check_identifier(identifier: str) -> str:
    """`identifier` if it is a valid tag or digest, else raise `InvalidReference`."""
    if isinstance(identifier, str) and (_TAG.fullmatch(identifier) or is_digest(identifier)):
        return identifier
    raise InvalidReference(str(identifier), "not a valid tag or sha256 digest")


def _split_digest(text: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    rest, _, digest = text.partition("@")
    if not _ANY_DIGEST.fullmatch(digest):
        raise InvalidReference(text, f"invalid digest {digest!r}")
    if not is_digest(digest):
        raise InvalidReference(text, _digest_problem(digest))
    return rest, digest


def _split_registry(name: str) -> tuple[str, str]:
    """distribution's splitDockerDomain: is the first component a host?"""
    first, slash, remainder = name.partition("/")
    is_host = slash and (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    )
    if not is_host:
        return DOCKER_HUB, name
    if first == LEGACY_DOCKER_HUB:
        first = DOCKER_HUB
    return first, remainder


def _split_tag(text: str, rest: str) -> tuple[str, str | None]:
    """`repo:tag` → (repo, tag). The registry (with its port) is already split off, so the
    only `:` left belongs to a tag."""
    if ":" not in rest:
        return rest, None
    repository, _, tag = rest.partition(":")
    if not _TAG.fullmatch(tag):
        raise InvalidReference(text, _tag_problem(tag))
    return repository, tag


def _render(registry: str | None, repository: str, tag: str | None, digest: str | None) -> str:
    text = f"{registry}/{repository}" if registry else repository
    if tag:
        text += f":{tag}"
    if digest:
        text += f"@{digest}"
    return text


def _repository_problem(repository: str) -> str:
    if not repository:
        return "empty repository name"
    if repository.lower() != repository:
        return f"repository name {repository!r} must be lower case"
    return (
        f"invalid repository name {repository!r}: components are lower-case letters and "
        "digits, separated by '/', and inside a component by '.', '_', '__' or dashes"
    )


def _tag_problem(tag: str) -> str:
    if not tag:
        return "an empty tag after ':'"
    if len(tag) > TAG_MAX:
        return f"invalid tag {tag[:16]!r}...: longer than {TAG_MAX} characters"
    if tag[:1] in (".", "-"):
        return f"invalid tag {tag!r}: it cannot start with '.' or '-'"
    return f"invalid tag {tag!r}: letters, digits, '_', '.' and '-' only"


def _digest_problem(digest: str) -> str:
    if _ANY_DIGEST.fullmatch(digest) and not digest.startswith("sha256:"):
        return f"unsupported digest algorithm in {digest!r}: only sha256 is supported"
    return f"invalid digest {digest!r}: expected sha256:<64 lower-case hex digits>"
