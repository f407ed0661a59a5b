"""The one exception family of stepbuild.

Every error a user can cause or meet is a `StepbuildError` carrying what they need to fix it.
Errors are raised below `cli/main.py` and rendered once, there (see `render`); nothing else prints
or exits. Tests assert on the type and attributes, not on the wording.
"""

from __future__ import annotations

from dataclasses import dataclass


class StepbuildError(Exception):
    """Root of all expected errors. `hint` is an optional one-line suggestion for the user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        """The text the CLI prints: the message, then the hint if there is one."""
        text = self.message
        if self.hint:
            text += f"\nhint: {self.hint}"
        return text


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where in a Stepfile something is: 1-based line and column, and the line's text."""

    file: str
    line: int
    column: int
    text: str = ""


class StepfileError(StepbuildError):
    """Something is wrong with the Stepfile itself. Exit status 2, as for bad usage."""

    exit_code = 2

    def __init__(
        self, message: str, position: SourcePosition | None = None, *, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.position = position

    def render(self) -> str:
        pos = self.position
        if pos is None:
            return super().render()
        head = f"{pos.file}:{pos.line}:{pos.column}: {self.message}" if pos.line else (
            f"{pos.file}: {self.message}"
        )
        lines = [head]
        if pos.text:
            shown = pos.text.expandtabs(1)
            lines.append(f"  {shown}")
            lines.append("  " + " " * max(pos.column - 1, 0) + "^")
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


class ParseError(StepfileError):
    """The Stepfile's syntax is wrong: unknown instruction, bad flag, bad JSON, ..."""


class ExpansionError(StepfileError):
    """A variable or quote in a word cannot be expanded (`${X?unset}`, unterminated quote)."""


class PlanError(StepfileError):
    """The Stepfile parses but does not make sense: unknown stage, instruction before FROM."""


class BaseImageError(PlanError):
    """A FROM's image is not in the store or could not be fetched (network, TLS, credentials):
    shown at the FROM line, but not the Stepfile's fault, so exit status 1 (as docker's)."""

    exit_code = 1


class UsageError(StepbuildError):
    """The command line is wrong (missing file, bad option value)."""

    exit_code = 2


class BuildError(StepbuildError):
    """The build could not be completed (exit status 1)."""


class StepFailed(BuildError):
    """A RUN step's command exited non-zero: where, what, its status and its last output."""

    def __init__(
        self, position: SourcePosition, command: str, exit_code: int, output_tail: tuple[str, ...]
    ) -> None:
        super().__init__(f"{position.file}:{position.line}: step failed with exit code {exit_code}")
        self.position = position
        self.command = command
        self.status = exit_code
        self.output_tail = output_tail

    def render(self) -> str:
        lines = [self.message, f"  {self.command}"]
        if self.output_tail:
            lines.append(f"last {len(self.output_tail)} lines of output:")
            lines += [f"  | {line}" for line in self.output_tail]
        return "\n".join(lines)


class StepOutOfMemory(StepFailed):
    """A RUN step was killed by the kernel's OOM killer at its --memory limit (`limit`, in
    words: "64 MiB"), whatever exit status that left."""

    def __init__(self, position: SourcePosition, command: str, exit_code: int,
                 output_tail: tuple[str, ...], limit: str) -> None:
        super().__init__(position, command, exit_code, output_tail)
        self.message = f"{position.file}:{position.line}: RUN killed: out of memory (limit {limit})"
        self.limit = limit


class ContainerOutOfMemory(StepbuildError):
    """`stepbuild run`'s command was killed by the OOM killer at its --memory limit: exit
    status 137 (128 + SIGKILL), as `docker run` gives, so scripts that test for it still work."""

    exit_code = 137


class StoreError(StepbuildError):
    """The store (blobs, layer dirs, tags, cache records) cannot do what was asked (exit 1)."""


class BlobNotFound(StoreError):
    """No blob with this digest in the store."""

    def __init__(self, digest: str, *, hint: str | None = None) -> None:
        super().__init__(f"blob {digest} not found in the store", hint=hint)
        self.digest = digest


class DigestMismatch(StoreError):
    """Content does not match the digest (or size) it was named or described by.

    `actual` is None when the size was already wrong and the content was not hashed.
    """

    def __init__(
        self,
        expected: str,
        actual: str | None,
        *,
        expected_size: int | None = None,
        actual_size: int | None = None,
    ) -> None:
        if actual is None:
            msg = f"size mismatch for {expected}: {actual_size} bytes, expected {expected_size}"
        else:
            msg = f"digest mismatch: expected {expected}, got {actual}"
        super().__init__(msg, hint="the content is corrupt or was tampered with; fetch it again")
        self.expected = expected
        self.actual = actual
        self.expected_size = expected_size
        self.actual_size = actual_size


class ImageNotFound(StoreError):
    """No image tagged with this name (or with this manifest digest) in the store."""

    def __init__(self, name: str, *, hint: str | None = None) -> None:
        super().__init__(f"image {name!r} not found in the store", hint=hint)
        self.name = name


class PlatformNotFound(StoreError):
    """An image index has no manifest of the platform asked for (or of this machine's), or a
    single image is of another platform than asked. `available`: the platforms it has."""

    def __init__(self, name: str, wanted: str, available: tuple[str, ...]) -> None:
        super().__init__(f"image {name!r} has no {wanted} image (it has: "
                         f"{', '.join(available) or 'none'})",
                         hint="pick one with --platform, e.g. --platform "
                              f"{available[0] if available else wanted}")
        self.name, self.wanted, self.available = name, wanted, available


class InvalidDigest(StoreError, ValueError):
    """A string that should be a digest is not `sha256:` + 64 lower-case hex digits."""

    def __init__(self, value: object) -> None:
        super().__init__(f"invalid digest {value!r}", hint="expected sha256:<64 lower-case hex>")
        self.value = value


class InvalidDocument(StoreError, ValueError):
    """An OCI document (layout, index, manifest, config, descriptor) is malformed.

    `where` names the document and the field, e.g. "manifest sha256:ab…: layers[2].size".
    """

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


class LayerError(BuildError):
    """A layer cannot be captured or an archive cannot be unpacked safely.

    Raised for unknown overlay state in an upper dir (redirect_dir, metacopy), tar entries
    that cannot be contained (NUL in a name, the root itself, device numbers out of range),
    corrupt or unsupported archives. The message names the entry.
    """


class Cancelled(BuildError):
    """The work was stopped before it finished because the build failed elsewhere (a stage
    running beside it); the error that failed the build is the one reported."""


class SandboxError(BuildError):
    """Setting up a step's sandbox failed (a mount, pivot_root, exec of a missing program, ...).

    Never raised for the step's own command exiting non-zero: that is an exit code, not a setup
    failure. `op` names what was being done ("exec make", "mount proc /proc"); `errno` is the
    kernel's error number, 0 when there is none (the sandbox child died unexpectedly).
    """

    def __init__(self, op: str, errno: int, *, hint: str | None = None) -> None:
        import os  # local: keeps this module's imports as they were

        reason = f": {os.strerror(errno)}" if errno else ""
        super().__init__(f"sandbox: {op}{reason}", hint=hint)
        self.op = op
        self.errno = errno


class RootlessError(StepbuildError):
    """Rootless stepbuild could not make or map its user namespace (user namespaces off,
    newuidmap missing, ranges in /etc/subuid it refuses), or the kernel cannot mount its
    overlay there."""


class IsolationUnavailable(StepbuildError):
    """The isolation asked for (or, with `--isolation=auto`, every one) cannot be had in this
    environment; the message names what is missing, the hint the options."""


class EmulationUnavailable(StepbuildError):
    """A step of a foreign platform (linux/arm64 on amd64) cannot run here: no QEMU for it, or
    its binfmt_misc entry cannot be made or is unusable (no fix-binary flag, disabled).
    `platform` is the platform's short form; the message is "cannot run <platform> steps
    here: <why>", the hint the fix (sandbox/binfmt.py)."""

    def __init__(self, platform: str, why: str, *, hint: str | None = None) -> None:
        super().__init__(f"cannot run {platform} steps here: {why}", hint=hint)
        self.platform = platform
        self.why = why


class ContextError(StepbuildError):
    """A COPY/ADD source cannot be taken from the build context: it does not exist, it lies
    outside the context (`..`, a symlink leading out), it is a fifo/device/socket, or the
    context changed while it was read. Raised by `sources/context.py`; the message names the
    source."""


class SourceNotFound(ContextError):
    """A COPY/ADD source names nothing: `source` as written; `excluded` when it exists but
    the ignore rules leave it out. `COPY --from` re-words it for the stage or image."""

    def __init__(self, source: str, *, excluded: bool = False, hint: str | None = None) -> None:
        super().__init__(f"COPY source not found: {source}", hint=hint)
        self.source = source
        self.excluded = excluded


class ContextChanged(ContextError):
    """A file of the build context changed while it was read, or between being hashed for a
    step's key and being copied: the step is prepared again (build/lifecycle.py), so a key
    never names other bytes than its layer holds. `path` is the file, relative to the
    context."""

    def __init__(self, path: str, *, detail: str = "") -> None:
        super().__init__(f"build context changed while it was read: {path}{detail}",
                         hint="run the build again once the files have stopped changing")
        self.path = path


class InvalidReference(UsageError, ValueError):
    """An image reference (`registry/repository:tag@digest`) is malformed. Exit status 2.

    `value` is the text given; `problem` says what is wrong with it.
    """

    def __init__(self, value: str, problem: str) -> None:
        super().__init__(
            f"invalid image reference {value!r}: {problem}",
            hint="expected [REGISTRY[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST], lower-case",
        )
        self.value = value
        self.problem = problem


class ConfigError(UsageError):
    """A configuration file (config.toml, registries.conf) is unreadable or says something
    wrong. Exit status 2. `path` is the file, `key` the dotted key (None for a syntax error),
    `line` the line when known."""

    def __init__(self, path: str, problem: str, *, key: str | None = None,
                 line: int | None = None, hint: str | None = None) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key + ' ' if key else ''}{problem}", hint=hint)
        self.path, self.key, self.line, self.problem = path, key, line, problem


class RegistryBlocked(StepbuildError):
    """A configuration file blocks the registry (or the prefix) of `name`: `source` names it."""

    def __init__(self, name: str, prefix: str, source: str) -> None:
        where = f" by {source}" if source else ""
        super().__init__(f"{name} is blocked{where} (blocked = true for {prefix!r})",
                         hint="pull from another registry, or remove the block there")
        self.name, self.prefix, self.source = name, prefix, source


class RegistryError(StepbuildError):
    """A registry refused or failed a request, or could not be reached (exit status 1).

    Modelled on go-containerregistry's `transport.Error`. `status` is the HTTP status, None
    when no response came (DNS, refused or dropped connection, TLS); `codes` are the
    Distribution error codes of the response body (`MANIFEST_UNKNOWN`, `UNAUTHORIZED`, ...);
    `temporary` is True when the same request may succeed later (5xx, 429, network failures):
    the client has already retried those with backoff before raising.
    """

    def __init__(
        self,
        status: int | None,
        codes: tuple[str, ...],
        message: str,
        temporary: bool = False,
        *,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.codes = codes
        self.temporary = temporary


class LazyLayerError(StepbuildError):
    """A team cache hit's layer, left to fetch when needed (teamcache.materialize), could
    not be fetched: the build starts again with `key` a miss (build/builder.py). Here, not in
    teamcache/cache.py, so that a build without a team cache does not import it to catch this."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
