"""`--output` specs: what each value asks for, parsed and checked (writing is export.py's).

    type=TYPE,dest=PATH[,compression=C][,name=NAME]...   a file or directory (export.py)
    type=oci|docker|tar,dest=-                           that archive on standard output
    -                                                    type=tar,dest=- (as buildx: the root
                                                         filesystem as one tar, to stdout)
    PATH                                                 type=local,dest=PATH
    type=image[,name=REF]...[,push=true|false]           the image in the store under the
                                                         names (default: the -t names);
                                                         push=true also pushes it to each
    type=registry[,name=REF]...                          type=image,push=true (buildx's)

`dest=-` is standard output for the archive types (oci, docker, tar); a directory type
(local, oci-layout) cannot go there. At most one output may (`check_outputs`). The image
types take no `dest` and no `compression` (a push compresses with `--compression`); their
names are registry references when pushed (checked by the CLI, which knows references).
Paths containing commas cannot be given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stepbuild.errors import UsageError

__all__ = ["FILE_TYPES", "IMAGE_TYPES", "OUTPUT_TYPES", "STDOUT", "Output", "check_outputs",
           "parse_output"]

FILE_TYPES = frozenset({"oci", "docker", "tar"})  # one file each: these can go to stdout
COMPRESSED_TYPES = frozenset({"oci", "oci-layout"})
IMAGE_TYPES = frozenset({"image", "registry"})  # no file: the store, a registry
OUTPUT_TYPES = ("oci", "oci-layout", "docker", "local", "tar", "image", "registry")
STDOUT = Path("-")  # dest=- : standard output

_KEYS = frozenset({"type", "dest", "compression", "name", "push"})
_SPEC_HINT = "type=TYPE,dest=PATH[,compression=gzip|zstd|none][,name=N], or type=registry,name=REF"
# image-layout.md, "ref.name": component ("/" component)*, separators -._:@+ and "--".
_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")


@dataclass(frozen=True, slots=True)
class Output:
    """One `--output`: where to write what. `compression` None: the command's choice;
    `names` empty: the default names (export.py's module docstring). `dest` is None for the
    image types, `STDOUT` for standard output; `push`: type=image,push=true or registry."""

    type: str
    dest: Path | None
    compression: str | None = None
    names: tuple[str, ...] = ()
    push: bool = False

    @property
    def to_stdout(self) -> bool:
        return self.dest == STDOUT and self.type in FILE_TYPES

    @property
    def is_image(self) -> bool:
        return self.type in IMAGE_TYPES

    @property
    def where(self) -> str:
        """The destination as a user reads it: a path, "-" or the names."""
        return str(self.dest) if self.dest is not None else ",".join(self.names) or "-"


def parse_output(text: str) -> Output:
    """Parse an `--output` value; `UsageError` for anything wrong with it."""
    if text == "-":
        return Output("tar", STDOUT)
    if "=" not in text:
        if not text:
            raise UsageError("--output needs a value", hint="type=oci,dest=image.tar")
        return Output("local", Path(text))
    fields, names = _fields(text)
    kind = fields.get("type", "")
    if kind not in OUTPUT_TYPES:
        raise UsageError(f"--output {text!r}: unknown type {kind!r}",
                         hint=f"one of {', '.join(OUTPUT_TYPES)}")
    if kind in IMAGE_TYPES:
        return _image_output(text, kind, fields, names)
    if "push" in fields:
        raise UsageError(f"--output {text!r}: push applies to type=image",
                         hint="type=image,name=REF,push=true (or type=registry,name=REF)")
    dest = fields.get("dest", "")
    if not dest:
        raise UsageError(f"--output {text!r}: dest=PATH is required")
    if dest == "-" and kind not in FILE_TYPES:
        raise UsageError(f"--output {text!r}: type={kind} writes a directory, not a stream",
                         hint="dest=- takes type=tar, oci or docker")
    path = STDOUT if dest == "-" else Path(dest)
    if dest != "-" and path == STDOUT:  # dest=./- : a file named "-", which pathlib makes "-"
        path = Path.cwd() / "-"
    compression = fields.get("compression")
    if compression is not None:
        from stepbuild.layers.compress import check_compression

        check_compression(compression)
        if kind not in COMPRESSED_TYPES:
            raise UsageError(f"--output {text!r}: compression applies to oci and oci-layout",
                             hint="docker archives always hold uncompressed layers")
    return Output(kind, path, compression, tuple(names))


def _fields(text: str) -> tuple[dict[str, str], list[str]]:
    """The `key=value` fields of a spec (each once), and its `name=` values in order."""
    fields: dict[str, str] = {}
    names: list[str] = []
    for part in text.split(","):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in _KEYS:
            raise UsageError(f"--output {text!r}: unknown or malformed field {part!r}",
                             hint=_SPEC_HINT)
        if key == "name":
            names.append(_check_name(value))
        elif key in fields:
            raise UsageError(f"--output {text!r}: {key} given twice")
        else:
            fields[key] = value
    return fields, names


def _image_output(text: str, kind: str, fields: dict[str, str], names: list[str]) -> Output:
    """type=image / type=registry: names and push, nothing written to a path."""
    for key in ("dest", "compression"):
        if key in fields:
            raise UsageError(f"--output {text!r}: type={kind} takes no {key}",
                             hint="type=image[,name=REF][,push=true], or type=registry,name=REF"
                                  " (a push compresses with --compression)")
    push = _boolean(text, fields.get("push", "true" if kind == "registry" else "false"))
    if kind == "registry" and not push:
        raise UsageError(f"--output {text!r}: type=registry always pushes",
                         hint="type=image,push=false keeps the image in the store only")
    return Output(kind, None, None, tuple(names), push)


def _boolean(text: str, value: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise UsageError(f"--output {text!r}: push={value!r} is not true or false")


def _check_name(name: str) -> str:
    if not _REF_NAME.fullmatch(name):
        raise UsageError(f"invalid image name {name!r}",
                         hint="letters, digits and . _ - : @ + / between them, e.g. app:1.0")
    return name


def check_outputs(outputs: Sequence[Output], *, stdout_is_terminal: bool) -> None:
    """Refuse (`UsageError`) two outputs to standard output, and an archive to a terminal."""
    streamed = [output for output in outputs if output.to_stdout]
    if len(streamed) > 1:
        raise UsageError("two outputs go to standard output (dest=-)",
                         hint="give each archive but one a file: type=oci,dest=image.tar")
    if streamed and stdout_is_terminal:
        raise UsageError("refusing to write a tar to a terminal",
                         hint="redirect standard output: stepbuild build -o - . > rootfs.tar")
