"""Exporters: an image in the store → the files other tools read.

`stepbuild build --output SPEC` (after the build) and `stepbuild export IMAGE --output SPEC`;
the specs are parsed in `outputs.py` (`type=TYPE,dest=PATH[,compression=C][,name=NAME]...`, a
bare path for `type=local`, `dest=-` and a bare `-` for standard output; `type=image` and
`type=registry` are the CLI's business: they write no file).

| type       | dest     | what is written                                                   |
|------------|----------|-------------------------------------------------------------------|
| oci        | file, -  | an OCI image layout in a tar (`skopeo … oci-archive:D`, `podman load`) |
| oci-layout | dir      | an OCI image layout (`skopeo … oci:D:NAME`, `umoci unpack`)       |
| docker     | file, -  | a docker-archive (`docker load`, `podman load`)                   |
| local      | dir      | the image's root filesystem, flattened (`layers/flatten.py`)      |
| tar        | file, -  | that same tree as one deterministic tar                           |

An image index (several platforms, `store.put_index`): oci and oci-layout write it whole, the
layout's index.json pointing at the index blob, which names each platform's manifest (as
BuildKit and `skopeo copy --all` lay it out); docker, local and tar write one platform's
image, `--platform`'s or this machine's. `--platform` with oci/oci-layout writes that
platform's image alone.

Standard output (`-`): the archive is written straight to the stream the caller gives
(`export_image(stdout=...)`), as it is made, with the bytes of the file form; at most one output
goes there. A failure midway leaves a truncated archive on the stream (the command then fails).
`--annotation index:`/`manifest-descriptor:` annotations (oci/annotations.py) go into the
index.json that oci and oci-layout outputs write.

Layers: oci and oci-layout carry them compressed with `--compression` (gzip by default;
`compression=` per output wins), each compressed once per store (`layers/compress.py`), so every
export and push of a layer has the same digest; the docker archive carries them uncompressed.
Names (index entries' `org.opencontainers.image.ref.name`, docker RepoTags) come from `name=`
if given, else the build's `-t` tags, else the image argument of `export` when it is a tag.
What goes into each archive: `write.py`.

Destinations (decided; checked before a build starts, `check_destination`):
- Missing parent directories of `dest` are created when the output is written, as `mkdir -p`
  does (0777 less the umask), for every type (`docker buildx build -o type=local,dest=a/b/c`
  does so too). The nearest existing ancestor must be a directory (or a symlink to one).
- Files (oci, docker, tar) are written to a temp file beside `dest`, fsynced and renamed over
  it: an existing file is replaced whole or not at all; a directory there is refused.
- oci-layout: a missing or empty dir becomes a new layout (built beside it, renamed into
  place). An existing OCI layout (it has `oci-layout`) is *added to*, as `skopeo copy` does:
  blobs not there yet are written (temp + rename each), then index.json is rewritten (temp +
  rename) with our entries replacing those of the same ref names, under a flock on the
  directory (other stepbuilds wait; other tools do not lock). Anything else is refused.
- local: a missing or empty dir, or a previous local export (marked by the xattr
  `user.stepbuild.export` on its root), is replaced: the tree is built in a sibling temp dir,
  then renamed into place (a previous export is renamed away first, then deleted). A
  non-empty dir without the mark is refused, never merged into. On a filesystem without user
  xattrs the mark cannot be set, and the next export there asks for the dir to be removed.

Determinism: archive members have mtime 0, uid/gid 0, modes 0644/0755, a fixed order; JSON is
canonical; compression is fixed (`layers/compress.py`); the flattened tree has fixed directory
mtimes. The same image exported twice gives byte-identical files.

Verification (docs/security.md rule 4): every blob is hashed while it is copied out of the store
and compared with its descriptor (size first); a mismatch raises `DigestMismatch` and the
destination is left as it was.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from stepbuild.archive.outputs import (
    COMPRESSED_TYPES,
    FILE_TYPES,
    OUTPUT_TYPES,
    STDOUT,
    Output,
    check_outputs,
    parse_output,
)
from stepbuild.archive.write import (
    ImageSource,
    OciImage,
    fill_layout,
    load_image,
    oci_image,
    oci_index,
    umask,
    write_docker_archive,
    write_oci_archive,
)
from stepbuild.errors import StepbuildError, UsageError
from stepbuild.fs.durable import fsync_dir, replacing, replacing_path
from stepbuild.fs.locks import flocked
from stepbuild.fs.owner import is_dead_work, owner_tag
from stepbuild.fs.trees import remove_tree
from stepbuild.layers.compress import DEFAULT_COMPRESSION, check_compression
from stepbuild.layers.tar import END_OF_ARCHIVE
from stepbuild.oci.annotations import Annotations
from stepbuild.oci.digest import sha256_bytes
from stepbuild.store.images import entry_for, is_index, resolve_image

if TYPE_CHECKING:
    from stepbuild.oci.documents import Descriptor
    from stepbuild.oci.platform import Platform
    from stepbuild.store.store import Store

__all__ = ["OUTPUT_TYPES", "STDOUT", "Exported", "Output", "check_destination",
           "check_outputs", "export_image", "parse_output"]

EXPORT_XATTR = "user.stepbuild.export"


@dataclass(frozen=True, slots=True)
class Exported:
    """What one output wrote. `digest`: oci/oci-layout the manifest (or image index)
    written, docker the config (the image ID docker and podman show), local None, tar the
    sha256 of the tar."""

    output: Output
    digest: str | None


def _path(output: Output) -> Path:
    """The destination of an output that writes one (not an image type)."""
    if output.dest is None:
        raise UsageError(f"type={output.type} writes no file",
                         hint="type=image and type=registry are build outputs")
    return output.dest


def check_destination(output: Output) -> None:
    """Refuse now (`UsageError`) an output that could not be written, so that a build does
    not run for nothing. Called again when writing. Standard output is always writable."""
    dest = _path(output)
    if output.to_stdout:
        return
    _missing_parents(dest)
    if output.type in FILE_TYPES:
        if dest.is_dir():
            raise UsageError(f"cannot write {dest}: it is a directory",
                             hint=f"type={output.type} writes a file")
    elif output.type == "local":
        _local_state(dest)
    else:
        _layout_state(dest)


def _missing_parents(dest: Path) -> list[Path]:
    """The parents of `dest` that do not exist yet, outermost first; `UsageError` if the
    nearest one that exists is not a directory (a file, a dangling symlink)."""
    missing = []
    parent = dest.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {dest}: {parent} is not a directory")
    return missing[::-1]


def _make_parents(dest: Path) -> None:
    """Create the missing parents of `dest` as `mkdir -p` does (0777 less the umask); each
    new directory is fsynced into its parent, as the renames that follow are."""
    for directory in _missing_parents(dest):
        try:
            os.mkdir(directory)
        except FileExistsError:
            continue  # made meanwhile by someone else; the next mkdir or write checks it
        except OSError as exc:
            raise UsageError(f"cannot write {dest}: cannot create {directory}: "
                             f"{exc.strerror}") from None
        fsync_dir(directory.parent)


def _dir_state(dest: Path) -> str:
    """"absent", "empty" or "full"; `UsageError` if `dest` is there but not a directory."""
    if not os.path.lexists(dest):
        return "absent"
    if dest.is_symlink() or not dest.is_dir():
        raise UsageError(f"cannot write {dest}: it exists and is not a directory")
    return "full" if any(os.scandir(dest)) else "empty"


def _local_state(dest: Path) -> str:
    state = _dir_state(dest)
    if state == "full":
        try:
            os.getxattr(dest, EXPORT_XATTR, follow_symlinks=False)
        except OSError:
            raise UsageError(f"{dest} is not empty and not a previous stepbuild export",
                             hint="remove it, or choose another dest") from None
        return "previous"
    return state


def _layout_state(dest: Path) -> str:
    state = _dir_state(dest)
    if state == "full":
        if not (dest / "oci-layout").is_file() or not (dest / "index.json").is_file():
            raise UsageError(f"{dest} is not empty and not an OCI image layout",
                             hint="remove it, or choose another dest")
        return "layout"
    return state


# --- writing -----------------------------------------------------------------------------------


def export_image(store: Store, image: str, outputs: Sequence[Output], *,
                 compression: str = DEFAULT_COMPRESSION,
                 names: Sequence[str] | None = None,
                 annotations: Annotations | None = None,
                 stdout: BinaryIO | None = None,
                 platform: Platform | None = None) -> list[Exported]:
    """Write image `image` (a tag or digest in `store`) to every output, in order.

    An image index (multi-platform): oci and oci-layout outputs carry the whole index
    (index.json → the index → its manifests), unless `platform` picks one; docker, local
    and tar outputs carry one platform's image, `platform`'s or else this machine's
    (store/images.entry_for; `PlatformNotFound` lists what there is).

    `compression` applies to outputs that do not name their own. `names` are the image's
    names for index entries and RepoTags (None: `[image]` if it is a tag, else none); an
    output's `name=` fields win. `annotations`: the index and manifest-descriptor ones go
    into the index.json of oci and oci-layout outputs (oci/annotations.py). `stdout`: where
    an output with dest=- is written, straight (at most one; the caller refuses a terminal),
    the same bytes as the file form; a failure midway leaves a truncated stream, which tar
    readers reject. Holds the store lock shared (prune waits). Each file output is complete
    or untouched when this returns or raises; outputs already written stay.
    """
    check_compression(compression)
    check_outputs(outputs, stdout_is_terminal=False)
    for output in outputs:
        check_destination(output)
        if output.to_stdout and stdout is None:
            raise UsageError("dest=- needs a standard output to write to")
    with store.lock(exclusive=False):
        if names is None:
            names = [image] if any(name == image for name, _ in store.images()) else []
        job = _Job(store, image, resolve_image(store, image), platform, compression,
                   annotations or Annotations(), stdout)
        return [_export_or_say_why(job, output, output.names or tuple(names))
                for output in outputs]


@dataclass(frozen=True, slots=True)
class _Job:
    """What every output of one `export_image` call shares."""

    store: Store
    name: str
    found: Descriptor  # a manifest or an index
    platform: Platform | None
    compression: str
    annotations: Annotations
    stdout: BinaryIO | None

    def source(self) -> ImageSource:
        """The one image (of an index: the platform's) that docker, local and tar write."""
        entry = entry_for(self.store, self.found, self.name, self.platform)
        return load_image(self.store, entry.digest)

    def oci(self, compression: str) -> OciImage:
        """What oci and oci-layout write: the whole index, unless a platform was asked."""
        if is_index(self.found) and self.platform is None:
            return oci_index(self.store, self.found, compression)
        return oci_image(self.store, self.source(), compression)


def _export_or_say_why(job: _Job, output: Output, names: Sequence[str]) -> Exported:
    """`_export_one`, with a full disk said as one error. Nothing half-written stays: each
    writer removes its temp file or dir on the way out (`replacing`, `_write_local`)."""
    try:
        if output.to_stdout:
            return _stream(job, output, names)
        return _export_one(job, output, names)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StepbuildError(
            f"cannot write {output.dest}: no space left on device (nothing half-written was left)",
            hint="free some space where it goes (or in the store: `stepbuild prune`), or"
                 " choose another dest") from exc


def _export_one(job: _Job, output: Output, names: Sequence[str]) -> Exported:
    kind, dest, store = output.type, _path(output), job.store
    _make_parents(dest)
    _clear_dead_leftovers(dest)
    if kind in COMPRESSED_TYPES:
        image = job.oci(output.compression or job.compression)
        if kind == "oci":
            with replacing(dest, 0o666 & ~umask()) as f:
                write_oci_archive(f, store, image, names, job.annotations)
        else:
            _write_oci_layout(dest, store, image, names, job.annotations)
        return Exported(output, image.manifest.digest)
    source = job.source()
    if kind == "docker":
        with replacing(dest, 0o666 & ~umask()) as f:
            write_docker_archive(f, store, source, names)
        return Exported(output, source.manifest.config.digest)
    if kind == "local":
        _write_local(dest, store, source)
        return Exported(output, None)
    return Exported(output, _write_tar(dest, store, source))


def _stream(job: _Job, output: Output, names: Sequence[str]) -> Exported:
    """An archive output to standard output: written as it is made, never to a temp file
    first (a root filesystem can be bigger than the disk has room for twice)."""
    out, store = job.stdout, job.store
    assert out is not None  # export_image checked
    digest: str
    if output.type == "oci":
        image = job.oci(output.compression or job.compression)
        write_oci_archive(out, store, image, names, job.annotations)
        digest = image.manifest.digest
    elif output.type == "docker":
        source = job.source()
        write_docker_archive(out, store, source, names)
        digest = source.manifest.config.digest
    else:
        digest = _stream_tar(out, store, job.source())
    out.flush()
    return Exported(output, digest)


def _write_oci_layout(dest: Path, store: Store, image: OciImage, names: Sequence[str],
                      annotations: Annotations | None = None) -> None:
    state = _layout_state(dest)
    if state == "layout":
        with flocked(dest, exclusive=True, directory=True):  # other writers of it wait
            fill_layout(dest, store, image, names, annotations)
        return
    tmp = _temp_dir(dest, ".tmp")
    try:
        os.chmod(tmp, 0o777 & ~umask())
        fill_layout(tmp, store, image, names, annotations)
        _rename_dir(tmp, dest)
    except _DestinationTaken:  # another export made a layout there meanwhile: add to it
        remove_tree(tmp, best_effort=True)
        _write_oci_layout(dest, store, image, names, annotations)
        return
    except BaseException:
        remove_tree(tmp, best_effort=True)
        raise
    fsync_dir(dest.parent)


def _temp_dir(dest: Path, suffix: str) -> Path:
    """A new dir beside `dest`, `.<name>.<owner tag>-XXXX<suffix>`: hidden, and known to be
    garbage once its owner is dead (`_clear_dead_leftovers`)."""
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.{owner_tag()}-", suffix=suffix,
                                 dir=dest.parent))


def _clear_dead_leftovers(dest: Path) -> None:
    """Remove the temp files and dirs that killed exports (SIGKILL: no cleanup ran) left
    beside `dest`, and in it when it is an OCI layout they were adding blobs to; those of
    live exports, and anything not ours, stay."""
    _clear_dead_temps(dest.parent, f".{dest.name}.")
    if (dest / "oci-layout").is_file():
        _clear_dead_temps(dest, ".index.json.")
        _clear_dead_temps(dest / "blobs" / "sha256", ".")


def _clear_dead_temps(directory: Path, prefix: str) -> None:
    with suppress(FileNotFoundError, NotADirectoryError), os.scandir(directory) as entries:
        doomed = [Path(e.path) for e in entries
                  if e.name.startswith(prefix) and e.name.endswith((".tmp", ".old"))
                  and is_dead_work(e.name)]
    for path in doomed:
        remove_tree(path, best_effort=True)


class _DestinationTaken(Exception):
    """A directory appeared at the destination after it was checked."""


def _rename_dir(tmp: Path, dest: Path, *, previous: bool = False) -> None:
    """Move the finished tree `tmp` to `dest`: onto nothing or an empty directory (rename(2)
    replaces those atomically), or, with `previous`, in place of the tree there, which is
    renamed away first (and put back if the second rename fails) and then deleted."""
    trash = None
    if previous:
        trash = _temp_dir(dest, ".old")
        os.rename(dest, trash / "tree")
    try:
        os.rename(tmp, dest)
    except OSError as exc:
        if trash is not None:
            os.rename(trash / "tree", dest)
            remove_tree(trash, best_effort=True)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise _DestinationTaken(str(dest)) from exc
        raise
    if trash is not None:
        remove_tree(trash, best_effort=True)


# --- root filesystem ---------------------------------------------------------------------------


def _write_local(dest: Path, store: Store, source: ImageSource) -> None:
    from stepbuild.layers.flatten import flatten

    state = _local_state(dest)
    tmp = _temp_dir(dest, ".tmp")
    try:
        flatten(store, source.config.diff_ids, tmp)
        with suppress(OSError):  # no user xattrs there: the next export asks for a clean dir
            os.setxattr(tmp, EXPORT_XATTR, source.digest.encode(), follow_symlinks=False)
        _rename_dir(tmp, dest, previous=state == "previous")
    except _DestinationTaken:
        remove_tree(tmp, best_effort=True)
        raise UsageError(f"{dest} was filled by someone else during the export") from None
    except BaseException:
        remove_tree(tmp, best_effort=True)
        raise
    fsync_dir(dest.parent)


def _write_tar(dest: Path, store: Store, source: ImageSource) -> str:
    """The flattened tree as one tar (`layer.capture` of it: sorted, PAX, numeric ids,
    xattrs, hard links kept); returns its sha256."""
    from stepbuild.layers.capture import capture

    with _flattened(store, source) as work, replacing_path(dest, 0o666 & ~umask()) as tmp:
        blob = capture(work, [], tmp)  # capture writes by path
        if blob is not None:
            return blob.diff_id
        tmp.write_bytes(END_OF_ARCHIVE)
        return sha256_bytes(END_OF_ARCHIVE)


def _stream_tar(out: BinaryIO, store: Store, source: ImageSource) -> str:
    """`_write_tar` to a stream: the same bytes; returns their sha256."""
    from stepbuild.layers.capture import capture_stream

    with _flattened(store, source) as work:
        diff_id = capture_stream(work, [], out)
    if diff_id is not None:
        return diff_id
    out.write(END_OF_ARCHIVE)
    return sha256_bytes(END_OF_ARCHIVE)


@contextmanager
def _flattened(store: Store, source: ImageSource) -> Iterator[Path]:
    """The image's root filesystem in a temp dir of the store, removed afterwards."""
    from stepbuild.layers.flatten import flatten

    work = store.tmp_dir("flatten-")
    try:
        flatten(store, source.config.diff_ids, work)
        yield work
    finally:
        remove_tree(work, best_effort=True)
