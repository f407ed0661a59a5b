"""ADD <url>: download a remote file once per build, verified, into the store's tmp dir.

The content is an input of the step's cache key (its sha256), so the file is fetched before
the key is computed, as BuildKit does for HTTP sources. `--checksum=sha256:…` is verified
before anything else happens; a mismatch is an error. Only http and https; the body is
streamed to disk, never held in memory.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from pathlib import Path

from stepbuild.errors import BuildError

_CHUNK = 1 << 20
TIMEOUT_SECONDS = 60


@dataclass(frozen=True, slots=True)
class Download:
    url: str
    path: Path          # the downloaded file (in the store's tmp dir)
    digest: str         # "sha256:<hex>" of the content
    name: str           # the file name ADD gives it in a directory destination
    mtime: int          # from Last-Modified, else 0


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def download(url: str, target: Path, checksum: str | None = None) -> Download:
    """Fetch `url` to `target`; raise BuildError on HTTP errors or a checksum mismatch."""
    import urllib.error
    import urllib.request  # imported here: it costs ~10 ms and most builds fetch nothing

    request = urllib.request.Request(url, headers={"User-Agent": "stepbuild"})
    hasher = hashlib.new(_algorithm(checksum))
    sha256 = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response, \
                open(target, "wb") as out:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                hasher.update(chunk)
                sha256.update(chunk)
            modified = response.headers.get("Last-Modified")
    except (urllib.error.URLError, OSError) as exc:
        raise BuildError(f"ADD failed to download {url}: {_reason(exc)}") from None
    if checksum is not None and checksum.partition(":")[2] != hasher.hexdigest():
        raise BuildError(f"ADD checksum mismatch for {url}: expected {checksum},"
                         f" got {_algorithm(checksum)}:{hasher.hexdigest()}")
    return Download(url, target, "sha256:" + sha256.hexdigest(), _file_name(url),
                     _mtime(modified))


def _algorithm(checksum: str | None) -> str:
    return checksum.partition(":")[0] if checksum else "sha256"


def _reason(exc: Exception) -> str:
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc)


def _file_name(url: str) -> str:
    import urllib.parse

    name = posixpath.basename(urllib.parse.urlparse(url).path.rstrip("/"))
    return name or "index.html"


def _mtime(header: str | None) -> int:
    if not header:
        return 0
    import email.utils

    try:
        return int(email.utils.parsedate_to_datetime(header).timestamp())
    except (TypeError, ValueError):
        return 0
