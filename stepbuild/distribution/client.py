"""The OCI Distribution client: one `Registry` per registry host.

Speaks the Distribution API (https://github.com/opencontainers/distribution-spec, spec.md):
ping (`/v2/`), blob HEAD/GET, uploads (monolithic POST + PUT, or chunked PATCHes with
`Content-Range`), cross-repository mounts, manifest GET/PUT with content negotiation, tag
lists. Authentication follows the registry's `WWW-Authenticate` challenge (anonymous, Basic,
or Bearer tokens per scope: `auth.py`). go-containerregistry's `remote` and
`transport` packages are the model, kept small.

Contracts:
- Verified: `get_blob` hashes what it writes and checks the size (as soon as it is known to
  be wrong) and the digest before returning; on a mismatch `dest` is deleted and
  `DigestMismatch` raised. `get_manifest` checks the digest when asked for one by digest.
  `put_blob` hashes what it sends and checks the size before sending.
- Retried: 5xx, 429, 408 and network failures (refused, reset or dropped connections,
  timeouts) are retried `retries` times with exponential backoff (and `Retry-After`). A
  download resumes with `Range` where the server allows it; an upload restarts from a new
  upload session (after a HEAD: the blob may have landed after all).
- Errors are `RegistryError` (status, Distribution error codes, temporary) with messages
  for 401 (authentication), 404 (unknown repository, tag or blob) and network failures, or
  `DigestMismatch`. Nothing else escapes, except OSError from local files.
- Transport (`transport.py`): HTTPS, plain HTTP only for a loopback registry
  without TLS or when allowed; redirects (blob downloads from a storage backend) followed by
  hand, the `Authorization` header only ever sent to the registry's own origin.
- Threads: one `Registry` may serve many threads at once (one HTTP session per thread, one
  shared token cache).

Lifecycle:

    with Registry("localhost:5000", auth=creds) as reg:
        reg.put_blob("app", digest, size, path)
        reg.put_manifest("app", "1.0", data, MEDIA_TYPE_MANIFEST)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests

from stepbuild.distribution.auth import Credentials, repository_scope
from stepbuild.distribution.reference import check_identifier, check_repository
from stepbuild.distribution.transport import (
    DEFAULT_STALL_TIMEOUT,
    ProgressWatch,
    Retryable,
    Transport,
)
from stepbuild.errors import DigestMismatch, RegistryError
from stepbuild.oci.digest import PREFIX, Digest, is_digest, sha256_bytes
from stepbuild.oci.documents import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
    load_json,
)

MANIFEST_MEDIA_TYPES = (
    MEDIA_TYPE_MANIFEST, MEDIA_TYPE_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST,
)
MAX_MANIFEST_SIZE = 4 << 20  # what registries accept
_PROGRESS_STEP = 1 << 20  # bytes between two progress callbacks

Progress = Callable[[str, int, int], None]  # (digest, done bytes, total bytes; 0 if unknown)


class Registry:
    """A client for one registry host (`docker.io`, `ghcr.io`, `localhost:5000`).

    `auth` None means anonymous (pass what `registry_auth.load_credentials` found).
    `insecure_http`: None decides by itself (plain HTTP only for a loopback registry without
    TLS, or with `tls_verify=False`: see transport.py), True always uses plain
    HTTP, False never does. `retries` is how many times a temporary failure is retried,
    after `backoff` * 2^n seconds. A transfer that makes no progress for `stall_timeout`
    seconds fails (a temporary error: retried); `timeout`, (connect, read) in seconds,
    replaces it for the socket alone (transport.py). Methods take
    repository names without the host (`library/busybox`). `close()` (or `with`) at the end.
    """

    def __init__(
        self,
        host: str,
        *,
        auth: Credentials | None = None,
        tls_verify: bool = True,
        ca_file: str | None = None,
        insecure_http: bool | None = None,
        retries: int = 4,
        backoff: float = 0.5,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        timeout: float | tuple[float, float] | None = None,
    ) -> None:
        self.host = host
        self._http = Transport(host, auth=auth, tls_verify=tls_verify, ca_file=ca_file,
                               insecure_http=insecure_http, retries=retries, backoff=backoff,
                               stall_timeout=stall_timeout, timeout=timeout)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every thread's connections. The object stays usable (it reconnects)."""
        self._http.close()

    # --- the API ---------------------------------------------------------------------------

    def ping(self) -> None:
        """Check that the host is a registry and that the credentials (if any) work:
        `GET /v2/`, authenticated as the registry asks (a scope-less token for Bearer)."""
        self._http.retry(lambda: self._http.request("GET", "/v2/", what="the registry API").close())

    def has_blob(self, repo: str, digest: str) -> int | None:
        """The blob's size if the repository has it, else None (`HEAD`)."""
        check_repository(repo)
        Digest.parse(digest)
        return self._http.retry(lambda: self._head_blob(repo, digest))

    def get_blob(
        self, repo: str, digest: str, dest: Path, *, size: int | None = None,
        on_progress: Progress | None = None,
    ) -> None:
        """Download a blob into `dest` (created or truncated). `size`, when known (from a
        descriptor), is checked as soon as the server says or sends otherwise.

        Returns only when `dest` holds exactly the blob; on any failure `dest` is deleted.
        A dropped connection resumes with `Range` (or starts over if the server ignores it).
        """
        check_repository(repo)
        Digest.parse(digest)
        download = _Download(Path(dest), digest, size, on_progress)
        try:
            self._http.retry(lambda: self._download(repo, download))
            download.finish()
        except BaseException:
            download.abort()
            raise

    def put_blob(
        self, repo: str, digest: str, size: int, source: Path, *,
        chunk_size: int | None = None, on_progress: Progress | None = None,
    ) -> None:
        """Upload the file `source` as blob `digest` of `size` bytes, unless it is there.

        Monolithic (POST, then one PUT with the content) by default; with `chunk_size`,
        PATCHes of that many bytes (each held in memory) and a closing PUT. `source` must
        match `size` (checked before sending) and `digest` (hashed while sending; the
        registry checks too): `DigestMismatch` otherwise. Idempotent.
        """
        check_repository(repo)
        Digest.parse(digest)
        actual = os.stat(source).st_size
        if actual != size:
            raise DigestMismatch(digest, None, expected_size=size, actual_size=actual)
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        meter = _Meter(digest, size, on_progress)

        def attempt() -> None:
            if self._head_blob(repo, digest, push=True) is not None:
                meter.report(size, force=True)
                return
            location = self._start_upload(repo)
            with open(source, "rb") as f:
                if chunk_size:
                    self._upload_chunks(repo, digest, size, f, location, chunk_size, meter)
                else:
                    self._upload_whole(repo, digest, size, f, location, meter)

        self._http.retry(attempt)

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Ask the registry to link blob `digest` of `from_repo` into `repo` (no transfer).
        True if it did; False if it declined (the caller uploads instead)."""
        check_repository(repo)
        check_repository(from_repo)
        Digest.parse(digest)
        scopes = (repository_scope(repo, "pull", "push"), repository_scope(from_repo, "pull"))
        url = f"/v2/{repo}/blobs/uploads/?" + urlencode({"mount": digest, "from": from_repo})

        def attempt() -> bool:
            try:
                resp = self._http.request("POST", url, scopes=scopes, expect=(201, 202),
                                          what=f"mount of {digest} from {from_repo} into {repo}")
            except RegistryError as exc:
                if exc.status in (401, 403, 404):
                    return False  # no access to from_repo, or nothing there to mount
                raise
            with resp:
                if resp.status_code == 201:
                    return True
                self._cancel_upload(resp, scopes)  # it opened an upload session instead
                return False

        return self._http.retry(attempt)

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        """`(bytes, media type, digest)` of a manifest or index, by tag or digest.

        Accepts OCI and Docker schema 2 manifests and indexes. When `reference` is a digest
        the bytes are checked against it (`DigestMismatch`). At most 4 MiB.
        """
        what = _manifest_name(check_repository(repo), check_identifier(reference))
        return self._http.retry(lambda: self._get_manifest(repo, reference, what))

    def head_manifest(self, repo: str, reference: str) -> tuple[str, str, int] | None:
        """`(digest, media type, size)` of a manifest without fetching it, None if unknown.
        The digest is the registry's `Docker-Content-Digest` (unverified: fetch to verify)."""
        check_repository(repo)
        check_identifier(reference)
        return self._http.retry(lambda: self._head_manifest(repo, reference))

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        """Store a manifest under a tag (or its own digest); return its digest."""
        check_repository(repo)
        check_identifier(reference)
        digest = sha256_bytes(data)
        if is_digest(reference) and reference != digest:
            raise DigestMismatch(reference, digest)
        what = _manifest_name(repo, reference)

        def attempt() -> None:
            resp = self._http.request(
                "PUT", f"/v2/{repo}/manifests/{reference}", body=data, what=what,
                scopes=(repository_scope(repo, "pull", "push"),), expect=(200, 201),
                headers={"Content-Type": media_type},
            )
            with resp:
                said = resp.headers.get("Docker-Content-Digest")
                if said and said != digest:
                    raise DigestMismatch(digest, said)

        self._http.retry(attempt)
        return digest

    def delete_manifest(self, repo: str, digest: str) -> bool:
        """Delete the manifest `digest` (and, as Distribution does, every tag on it); False
        if it was not there. A registry with deletes off answers 405 (`RegistryError`)."""
        check_repository(repo)
        if not is_digest(digest):
            raise ValueError(f"a manifest is deleted by digest, not {digest!r}")

        def attempt() -> bool:
            resp = self._http.request(
                "DELETE", f"/v2/{repo}/manifests/{digest}", expect=(200, 202, 404),
                scopes=(repository_scope(repo, "delete"),),
                what=_manifest_name(repo, digest))
            with resp:
                return resp.status_code != 404

        return self._http.retry(attempt)

    def list_tags(self, repo: str) -> list[str]:
        """Every tag of the repository, following the registry's pagination (`Link`)."""
        check_repository(repo)
        return self._http.retry(lambda: self._list_tags(repo))

    # --- operations, one attempt each ------------------------------------------------------

    def _head_blob(self, repo: str, digest: str, *, push: bool = False) -> int | None:
        actions = ("pull", "push") if push else ("pull",)  # one token for a whole upload
        resp = self._http.request("HEAD", f"/v2/{repo}/blobs/{digest}", follow=True,
                                  scopes=(repository_scope(repo, *actions),), expect=(200, 404),
                                  what=f"blob {digest} in {repo}")
        with resp:
            if resp.status_code == 404:
                return None
            return _int_header(resp, "Content-Length")

    def _download(self, repo: str, download: _Download) -> None:
        headers = {"Accept-Encoding": "identity"}
        if download.done:
            headers["Range"] = f"bytes={download.done}-"
        what = f"blob {download.digest} in {repo}"
        resp = self._http.request("GET", f"/v2/{repo}/blobs/{download.digest}", stream=True,
                                  follow=True, headers=headers, expect=(200, 206),
                                  scopes=(repository_scope(repo, "pull"),), what=what)
        with resp:
            download.start(resp)
            for chunk in self._http.body(resp, "GET", what):
                download.write(chunk)
        download.check_complete()

    def _start_upload(self, repo: str) -> str:
        resp = self._http.request("POST", f"/v2/{repo}/blobs/uploads/", expect=(202,),
                                  scopes=(repository_scope(repo, "pull", "push"),),
                                  what=f"upload to {repo}")
        with resp:
            return self._http.location(resp)

    def _upload_whole(self, repo: str, digest: str, size: int, f: BinaryIO, location: str,
                      meter: _Meter) -> None:
        bodies: list[_UploadBody] = []
        what = f"blob {digest} to {repo}"

        def body() -> _UploadBody:
            bodies.append(_UploadBody(f, size, meter, self._http.watch("PUT", what)))
            return bodies[-1]

        try:
            self._http.request("PUT", _with_query(location, digest=digest), body=body,
                               headers={"Content-Type": "application/octet-stream"},
                               scopes=(repository_scope(repo, "pull", "push"),), expect=(201,),
                               what=what).close()
        except RegistryError as exc:
            if "DIGEST_INVALID" in exc.codes and bodies:
                raise DigestMismatch(digest, bodies[-1].digest) from exc
            raise
        if bodies and bodies[-1].digest != digest:  # a registry that did not check
            raise DigestMismatch(digest, bodies[-1].digest)

    def _upload_chunks(self, repo: str, digest: str, size: int, f: BinaryIO, location: str,
                       chunk_size: int, meter: _Meter) -> None:
        scopes = (repository_scope(repo, "pull", "push"),)
        hasher, offset = hashlib.sha256(), 0
        while offset < size:
            data = f.read(min(chunk_size, size - offset))
            if not data:
                raise OSError(f"{f.name}: file shrank while uploading it")
            end = offset + len(data) - 1
            headers = {"Content-Type": "application/octet-stream",
                       "Content-Range": f"{offset}-{end}"}
            resp = self._http.request("PATCH", location, body=data, scopes=scopes, expect=(202,),
                                      headers=headers, what=f"blob {digest} to {repo}")
            with resp:
                location = self._http.location(resp)
                said = resp.headers.get("Range", f"0-{end}").removeprefix("bytes=")
                if said != f"0-{end}":
                    raise Retryable(resp.status_code, (), f"{self.host}: upload of {digest}: "
                                     f"registry has {said}, expected 0-{end}", True)
            hasher.update(data)
            offset += len(data)
            meter.report(offset)
        if PREFIX + hasher.hexdigest() != digest:
            raise DigestMismatch(digest, PREFIX + hasher.hexdigest())
        self._http.request("PUT", _with_query(location, digest=digest), body=b"", scopes=scopes,
                           expect=(201,), what=f"blob {digest} to {repo}").close()
        meter.report(size, force=True)

    def _cancel_upload(self, resp: requests.Response, scopes: tuple[str, ...]) -> None:
        """Best effort: DELETE an upload session we will not use."""
        try:
            location = self._http.location(resp)
            self._http.request("DELETE", location, scopes=scopes, expect=(200, 202, 204, 404),
                               what="upload session").close()
        except RegistryError:
            pass

    def _get_manifest(self, repo: str, reference: str, what: str) -> tuple[bytes, str, str]:
        resp = self._http.request("GET", f"/v2/{repo}/manifests/{reference}", stream=True,
                                  headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
                                  scopes=(repository_scope(repo, "pull"),), what=what)
        with resp:
            data = b""
            for chunk in self._http.body(resp, "GET", what, decode=True):
                data += chunk
                if len(data) > MAX_MANIFEST_SIZE:
                    break
            if len(data) > MAX_MANIFEST_SIZE:
                raise RegistryError(resp.status_code, (), f"{what}: larger than "
                                    f"{MAX_MANIFEST_SIZE} bytes, not a manifest")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        digest = sha256_bytes(data)
        if is_digest(reference) and digest != reference:
            raise DigestMismatch(reference, digest)
        if media_type not in MANIFEST_MEDIA_TYPES:  # e.g. application/json: ask the document
            document = load_json(data, what)
            found = document.get("mediaType") if isinstance(document, dict) else None
            media_type = found if isinstance(found, str) else media_type
        return data, media_type, digest

    def _head_manifest(self, repo: str, reference: str) -> tuple[str, str, int] | None:
        resp = self._http.request("HEAD", f"/v2/{repo}/manifests/{reference}", expect=(200, 404),
                                  headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
                                  scopes=(repository_scope(repo, "pull"),),
                                  what=_manifest_name(repo, reference))
        with resp:
            if resp.status_code == 404:
                return None
            digest = resp.headers.get("Docker-Content-Digest", "")
            if not is_digest(digest):
                digest = reference if is_digest(reference) else ""
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            return digest, media_type, _int_header(resp, "Content-Length")

    def _list_tags(self, repo: str) -> list[str]:
        tags: list[str] = []
        url: str | None = f"/v2/{repo}/tags/list"
        for _page in range(10_000):
            if url is None:
                return tags
            resp = self._http.request("GET", url, scopes=(repository_scope(repo, "pull"),),
                                      what=f"tags of {repo}")
            with resp:
                document = load_json(resp.content, f"tags of {repo}")
                found = document.get("tags") if isinstance(document, dict) else None
                tags += [t for t in found or () if isinstance(t, str)]
                following = resp.links.get("next", {}).get("url")
                url = urljoin(resp.url, following) if following else None
        return tags


class _Meter:
    """Progress callbacks for one transfer, at most one per MiB (and at the end)."""

    def __init__(self, digest: str, total: int, callback: Progress | None) -> None:
        self.digest, self.total, self._callback, self._last = digest, total, callback, -1

    def report(self, done: int, *, force: bool = False) -> None:
        if self._callback and (force or done - self._last >= _PROGRESS_STEP or done < self._last
                               or done == self.total):
            self._last = done
            self._callback(self.digest, done, self.total)


class _UploadBody:
    """A file as a request body of exactly `size` bytes, hashed as it is read. http.client
    reads the next block only once the last one is sent, so `watch` sees the upload's pace."""

    def __init__(self, file: BinaryIO, size: int, meter: _Meter, watch: ProgressWatch) -> None:
        file.seek(0)
        self._file, self._size, self._meter, self._watch = file, size, meter, watch
        self._hash, self._done = hashlib.sha256(), 0

    @property
    def digest(self) -> str:
        return PREFIX + self._hash.hexdigest()

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._done
        data = self._file.read(left if n < 0 else min(n, left)) if left > 0 else b""
        if left > 0 and not data:
            raise OSError(f"{self._file.name}: file shrank while uploading it")
        self._hash.update(data)
        self._done += len(data)
        self._meter.report(self._done)
        self._watch.moved(len(data))  # the last block was sent: a stalled registry shows
        return data


class _Download:
    """The state of one blob download across attempts: the file, the hash, the bytes done."""

    def __init__(self, dest: Path, digest: str, size: int | None, on_progress: Progress | None
                 ) -> None:
        self.dest, self.digest, self.size = dest, digest, size
        self.file = open(dest, "wb")  # noqa: SIM115 - closed by finish() or abort()
        self.hash, self.done = hashlib.sha256(), 0
        self.meter = _Meter(digest, size or 0, on_progress)

    def start(self, resp: requests.Response) -> None:
        """Take a response: continue after a 206 that starts where we are, else restart."""
        content_range = resp.headers.get("Content-Range", "")
        if resp.status_code != 206 or not content_range.startswith(f"bytes {self.done}-"):
            self.file.seek(0)
            self.file.truncate()
            self.hash, self.done = hashlib.sha256(), 0
        length = resp.headers.get("Content-Length")
        if resp.status_code == 200 and length and length.isdigit():
            if self.size is not None and int(length) != self.size:
                raise DigestMismatch(self.digest, None, expected_size=self.size,
                                     actual_size=int(length))
            self.size = int(length) if self.size is None else self.size
            self.meter.total = self.size

    def write(self, chunk: bytes) -> None:
        if self.size is not None and self.done + len(chunk) > self.size:
            raise DigestMismatch(self.digest, None, expected_size=self.size,
                                 actual_size=self.done + len(chunk))
        self.file.write(chunk)
        self.hash.update(chunk)
        self.done += len(chunk)
        self.meter.report(self.done)

    def check_complete(self) -> None:
        if self.size is not None and self.done < self.size:
            raise Retryable(None, (), f"download of {self.digest}: connection closed after "
                             f"{self.done} of {self.size} bytes", True)

    def finish(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if self.size is not None and self.done != self.size:
            raise DigestMismatch(self.digest, None, expected_size=self.size,
                                 actual_size=self.done)
        actual = PREFIX + self.hash.hexdigest()
        if actual != self.digest:
            raise DigestMismatch(self.digest, actual, actual_size=self.done)

    def abort(self) -> None:
        self.file.close()
        self.dest.unlink(missing_ok=True)


def _manifest_name(repo: str, reference: str) -> str:
    return f"manifest {repo}{'@' if is_digest(reference) else ':'}{reference}"


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _int_header(resp: requests.Response, name: str) -> int:
    value = resp.headers.get(name, "")
    return int(value) if value.isdigit() else 0
