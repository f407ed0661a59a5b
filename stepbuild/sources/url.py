"""ADD <url>: download a remote file once per build, verified, into the store's tmp dir.

The content is an input of the step's cache key (its sha256), so the file is fetched before
the key is computed, as BuildKit does for HTTP sources. `--checksum=sha256:…` is verified
before anything else happens; a mismatch is an error. Only http and https; the body is
streamed to disk, never held in memory.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from stepbuild.errors import BuildError

_CHUNK = 1 << 20
TIMEOUT_SECONDS = 60
# The digests Docker accepts for ADD --checksum (opencontainers/go-digest): hex length by name.
_CHECKSUM_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}
_SCHEMES = ("http", "https")


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
    _check_checksum(checksum)
    hasher = hashlib.new(_algorithm(checksum))
    sha256 = hashlib.sha256()
    modified = fetch(url, target, (hasher, sha256), what="ADD failed to download")
    if checksum is not None and checksum.partition(":")[2] != hasher.hexdigest():
        raise BuildError(f"ADD checksum mismatch for {url}: expected {checksum},"
                         f" got {_algorithm(checksum)}:{hasher.hexdigest()}")
    return Download(url, target, "sha256:" + sha256.hexdigest(), _file_name(url),
                    _mtime(modified))


def fetch(url: str, target: Path, hashers: Sequence[Any] = (), *, what: str,
          max_size: int | None = None) -> str | None:
    """Stream `url`'s body to the file `target`, feeding `hashers` on the way; return its
    Last-Modified header. BuildError "<what> <url>: <reason>" on HTTP errors (404...), a body
    cut short, or one over `max_size` bytes (the file is left for the caller to remove)."""
    import http.client
    import urllib.error  # imported here: it costs ~10 ms and most builds fetch nothing

    request = _request(url)
    try:
        with _opener().open(request, timeout=TIMEOUT_SECONDS) as response, \
                open(target, "wb") as out:
            received = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                for hasher in hashers:
                    hasher.update(chunk)
                received += len(chunk)
                if max_size is not None and received > max_size:
                    raise BuildError(f"{what} {url}: larger than the limit of {max_size}"
                                     " bytes")
            # read(n) returns b"" when the server closes early, even with bytes still due
            # (http.client: "Ideally, we would raise IncompleteRead..."): check it here.
            if response.length:
                raise BuildError(f"{what} {url}: the connection closed after"
                                 f" {received} bytes, {response.length} more expected")
            modified: str | None = response.headers.get("Last-Modified")
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        # HTTPException: a body cut short (IncompleteRead), a garbled status line...;
        # ValueError: a URL urllib cannot use (port out of range, control characters).
        raise BuildError(f"{what} {url}: {_reason(exc)}") from None
    return modified


def _request(url: str) -> Any:
    import urllib.request

    try:
        return urllib.request.Request(url, headers={"User-Agent": "stepbuild"})
    except ValueError as exc:  # e.g. "http://" with no host
        raise BuildError(f"ADD cannot download {url}: {exc}") from None


@cache  # built once, when the first URL is fetched (urllib costs ~10 ms to import)
def _opener() -> Any:
    """urllib with only what ADD needs: http, https, proxies from the environment, and
    redirects to http/https only (urllib's default opener also follows ftp: and serves file:
    and data: URLs)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    class RedirectHandler(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                             newurl: str) -> Any:
            scheme = urllib.parse.urlsplit(newurl).scheme.lower()
            if scheme not in _SCHEMES:
                raise urllib.error.URLError(
                    f"redirected to {newurl}: only http and https redirects are followed")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(),
                    urllib.request.HTTPSHandler(), urllib.request.HTTPDefaultErrorHandler(),
                    RedirectHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def _check_checksum(checksum: str | None) -> None:
    """--checksum after expansion: `sha256:<64 hex>` (or sha384, sha512), as Docker wants.

    The parser checks a literal value; one that came from a variable is checked only here."""
    if checksum is None:
        return
    algorithm, _, hexdigest = checksum.partition(":")
    size = _CHECKSUM_HEX.get(algorithm)
    if size is None or not re.fullmatch(f"[0-9a-f]{{{size}}}", hexdigest):
        raise BuildError(f"invalid ADD --checksum {checksum!r}",
                         hint="expected sha256:<64 lowercase hex digits> (or sha384, sha512)")


def _algorithm(checksum: str | None) -> str:
    return checksum.partition(":")[0] if checksum else "sha256"


def _reason(exc: Exception) -> str:
    import http.client
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, http.client.IncompleteRead):  # a chunked body cut short
        return f"the connection closed in the middle of the body ({exc!r})"
    return str(exc) or type(exc).__name__


def _file_name(url: str) -> str:
    """The last segment of the URL's decoded path, as BuildKit's HTTP source names the file;
    "index" when there is none (`http://host/`, a path ending in `.` or `..`)."""
    import urllib.parse

    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    name = posixpath.basename(path.rstrip("/"))
    return name if name not in ("", ".", "..") and "\0" not in name else "index"


def _mtime(header: str | None) -> int:
    if not header:
        return 0
    import email.utils

    try:
        return int(email.utils.parsedate_to_datetime(header).timestamp())
    except (TypeError, ValueError):
        return 0
