"""Tar headers: a deterministic PAX writer and a streaming, bounded reader. No filesystem I/O.

This module owns the byte format of tar streams, and nothing else: `capture.py` decides what
goes into a layer, `unpack.py` what an extracted entry may do to a root directory.

Why not `tarfile`:
- Writing: the layer's diff_id is the sha256 of these bytes, so the header layout is part of
  stepbuild's output and must not drift with the interpreter (tarfile's handling of the
  device fields and PAX records has changed between releases). This writer is small and
  pinned by a golden-digest test.
- Reading: docs/security.md rule 3. The interpreter here is 3.11.7, whose tarfile has the PAX
  header ReDoS (CVE-2024-6232, fixed in 3.11.10) and the negative-offset infinite loop
  (CVE-2025-8194); tarfile also looks up user and group names, which we must never do. This
  reader parses with no regular expressions, bounds every metadata header (1 MiB, as Go's
  archive/tar does), never seeks, and never decides what an entry means for a filesystem.

Format written (POSIX.1-2001 pax, https://pubs.opengroup.org/onlinepubs/9699919799/utilities/pax.html):
a ustar header per entry, preceded by one `x` extended header only when needed (a name or link
longer than 100 bytes or not ASCII, a number too large for its octal field, xattrs as
`SCHILY.xattr.<name>`). Fixed fields: magic "ustar\\0" version "00", empty uname/gname,
device numbers 0 except for devices, the extended header named "././@PaxHeader" with mode,
ids and mtime 0, mtimes in whole seconds, and no atime/ctime. The archive ends with two zero
blocks and is not padded to a 10 KiB record (as Go's archive/tar, and so containerd, write it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from stepbuild.errors import LayerError

__all__ = [
    "BLKTYPE",
    "BLOCK",
    "CHRTYPE",
    "DIRTYPE",
    "END_OF_ARCHIVE",
    "FIFOTYPE",
    "LNKTYPE",
    "REGTYPE",
    "SYMTYPE",
    "Header",
    "Readable",
    "TarReader",
    "encode_header",
    "padding",
]

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)

REGTYPE = b"0"
LNKTYPE = b"1"
SYMTYPE = b"2"
CHRTYPE = b"3"
BLKTYPE = b"4"
DIRTYPE = b"5"
FIFOTYPE = b"6"
_ENTRY_TYPES = frozenset({REGTYPE, LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE})

_PAX_LOCAL = b"x"
_PAX_GLOBAL = b"g"
_GNU_LONGNAME = b"L"
_GNU_LONGLINK = b"K"
_GNU_VOLUME = b"V"
_META_TYPES = frozenset({_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK, _GNU_VOLUME})

_XATTR_PREFIX = b"SCHILY.xattr."
_MAX_META_SIZE = 1 << 20  # per metadata header; Go's archive/tar uses the same bound
_MAX_META_RUN = 16  # metadata headers in a row before a real entry
_ZERO_BLOCK = bytes(BLOCK)


class Readable(Protocol):
    """A byte stream: a file, or a decompressor reading one (`read` may return short)."""

    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Header:
    """One tar entry. Names are raw bytes (Linux file names are bytes).

    `type` is one of the *TYPE constants; `mtime_ns` is nanoseconds since the epoch (the
    writer records whole seconds); `xattrs` are (name, value) pairs.
    """

    name: bytes
    type: bytes
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()


def padding(size: int) -> bytes:
    """The zero bytes that follow `size` bytes of member data up to the next block."""
    return bytes(-size % BLOCK)


# ---------------------------------------------------------------------------------------------
# Writing


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _fits_octal(value: int, width: int) -> bool:
    return 0 <= value < 1 << (3 * (width - 1))  # width - 1 octal digits, then a NUL


def _pax_record(key: bytes, value: bytes) -> bytes:
    """`"%d %s=%s\\n"` where the length counts its own digits."""
    body = b" " + key + b"=" + value + b"\n"
    digits = len(str(len(body)))
    while len(str(len(body) + digits)) != digits:
        digits += 1
    return str(len(body) + digits).encode() + body


def _ustar_block(
    name: bytes,
    typeflag: bytes,
    mode: int,
    numbers: dict[str, int],
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
) -> bytes:
    """One ustar header block; names longer than a field are cut (a pax record has them)."""
    buf = bytearray(BLOCK)
    buf[0:100] = name[:100].ljust(100, b"\0")
    buf[100:108] = _octal(mode & 0o7777, 8)
    buf[108:116] = _octal(numbers["uid"], 8)
    buf[116:124] = _octal(numbers["gid"], 8)
    buf[124:136] = _octal(numbers["size"], 12)
    buf[136:148] = _octal(numbers["mtime"], 12)
    buf[148:156] = b" " * 8  # the checksum is summed with its own field as spaces
    buf[156:157] = typeflag
    buf[157:257] = linkname[:100].ljust(100, b"\0")
    buf[257:265] = b"ustar\x0000"
    buf[329:337] = _octal(devmajor, 8)
    buf[337:345] = _octal(devminor, 8)
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def _needs_pax_name(name: bytes) -> bool:
    return len(name) > 100 or not name.isascii()


def encode_header(h: Header) -> bytes:
    """The header block(s) for `h`: an optional pax `x` header, then the ustar block.

    The same Header always gives the same bytes. Data (h.size bytes) and `padding(h.size)`
    are the caller's to write after it.
    """
    if h.type not in _ENTRY_TYPES:
        raise ValueError(f"cannot write tar entry type {h.type!r}")
    if not (0 <= h.devmajor < 8**7 and 0 <= h.devminor < 8**7):
        raise ValueError(f"device number out of range for {h.name!r}")
    if b"\0" in h.name or b"\0" in h.linkname:
        raise ValueError(f"NUL byte in tar entry name {h.name!r}")
    records: list[bytes] = []
    binary = False
    for pax_key, value in ((b"path", h.name), (b"linkpath", h.linkname)):
        if _needs_pax_name(value):
            records.append(_pax_record(pax_key, value))
            binary = binary or not _is_utf8(value)
    if binary:
        # POSIX: names that are not UTF-8 are marked so readers keep their bytes as they are.
        records.insert(0, _pax_record(b"hdrcharset", b"BINARY"))
    numbers = {"size": h.size, "uid": h.uid, "gid": h.gid, "mtime": h.mtime_ns // 1_000_000_000}
    widths = {"size": 12, "uid": 8, "gid": 8, "mtime": 12}
    for key in ("size", "uid", "gid", "mtime"):
        if not _fits_octal(numbers[key], widths[key]):
            records.append(_pax_record(key.encode(), str(numbers[key]).encode()))
            numbers[key] = 0
    xattrs = sorted((_XATTR_PREFIX + k.encode("utf-8", "surrogateescape"), v) for k, v in h.xattrs)
    records += [_pax_record(k, v) for k, v in xattrs]
    block = _ustar_block(h.name, h.type, h.mode, numbers, h.linkname, h.devmajor, h.devminor)
    if not records:
        return block
    data = b"".join(records)
    pax = _ustar_block(
        b"././@PaxHeader", _PAX_LOCAL, 0, {"uid": 0, "gid": 0, "size": len(data), "mtime": 0}
    )
    return pax + data + padding(len(data)) + block


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Reading


def _cstring(field: bytes) -> bytes:
    """A NUL-terminated header field."""
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _number(field: bytes, what: str) -> int:
    """A numeric header field: octal text, or GNU base-256 when the top bit is set."""
    if field and field[0] & 0x80:
        # GNU/star base-256: 0x80 marks a positive number, 0xff a negative one (two's complement)
        if field[0] == 0xFF:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = _cstring(field).strip(b" ")
    if not text:
        return 0
    if text.strip(b"01234567"):
        raise LayerError(f"bad tar header: {what} field {field!r} is not a number")
    return int(text, 8)


def _checksum_ok(block: bytes) -> bool:
    try:
        stored = _number(block[148:156], "checksum")
    except LayerError:
        return False
    rest = block[:148] + block[156:]
    unsigned = sum(rest) + 8 * 0x20
    # Some old tars summed signed chars; accept both, as GNU tar and tarfile do.
    signed = unsigned - 256 * sum(1 for b in rest if b & 0x80)
    return stored in (unsigned, signed)


def _pax_records(data: bytes) -> list[tuple[bytes, bytes]]:
    """Parse `"%d %s=%s\\n"` records in one linear pass (no regular expressions)."""
    out: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # some writers NUL-pad the header data; nothing may follow
            if data[pos:].strip(b"\0"):
                raise LayerError("bad pax header: data after NUL padding")
            break
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space]
        if space < 0 or not digits.isdigit():
            raise LayerError("bad pax header: record without a length")
        end = pos + int(digits)
        if end <= space + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise LayerError("bad pax header: record length does not match")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise LayerError("bad pax header: record without a keyword")
        out.append((key, value))
        pos = end
    return out


def _pax_int(value: bytes, key: bytes) -> int:
    if not value.isdigit():
        raise LayerError(f"bad pax header: {key.decode(errors='replace')}={value!r}")
    return int(value)


def _pax_time_ns(value: bytes) -> int:
    """A pax time: decimal seconds with an optional sign and fraction, to nanoseconds."""
    text = value.decode("ascii", "replace")
    negative = text.startswith("-")
    whole, _, frac = text.lstrip("-").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise LayerError(f"bad pax header: mtime={value!r}")
    ns = int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])
    return -ns if negative else ns


@dataclass(slots=True)
class _Meta:
    """What metadata headers (pax x/g, GNU L/K) say about the next real entry."""

    pax: dict[bytes, bytes]
    longname: bytes | None = None
    longlink: bytes | None = None


class TarReader:
    """Iterate the headers of a tar stream without seeking; read each member's data on the way.

    Lifecycle: `for h in reader:` yields one Header per real entry (pax and GNU metadata
    headers are folded in); while on a header, `read(n)` returns the next bytes of that
    member's data (b"" at its end). Unread data is skipped when iteration moves on. Only
    regular files carry data; the size field of other types is ignored, as Go and tarfile do.

    Raises LayerError: "not a tar archive" when the first header is not one, and a message
    naming the problem for a corrupt or truncated stream, an oversized metadata header, or
    an unsupported entry type (GNU sparse files, multi-volume parts, ...). Names and links are
    returned as they are; making them safe is the caller's job.
    """

    def __init__(self, stream: Readable) -> None:
        self._f = stream
        self._left = 0  # data bytes of the current member not yet read
        self._pad = 0  # padding after them
        self._seen = False  # has any valid header been read?
        self._globals: dict[bytes, bytes] = {}

    def read(self, n: int) -> bytes:
        """Up to `n` more bytes of the current member's data."""
        n = min(n, self._left)
        if n <= 0:
            return b""
        data = self._f.read(n)
        if not data:
            raise LayerError("truncated tar archive: member data ends early")
        self._left -= len(data)
        return data

    def __iter__(self) -> Iterator[Header]:
        while True:
            self._skip_rest()
            header = self._next()
            if header is None:
                return
            yield header

    def first_is_header(self) -> bool:
        """Whether the stream starts with a valid tar header (consumes the first block)."""
        block = self._read_block()
        return block is not None and block != _ZERO_BLOCK and _checksum_ok(block)

    # -- internals -----------------------------------------------------------------------

    def _read_exact(self, n: int) -> bytes:
        chunks = []
        while n > 0:
            data = self._f.read(n)
            if not data:
                raise LayerError("truncated tar archive")
            chunks.append(data)
            n -= len(data)
        return b"".join(chunks)

    def _read_block(self) -> bytes | None:
        """The next 512-byte block; None at a clean end of the stream."""
        first = self._f.read(BLOCK)
        if not first:
            return None
        if len(first) < BLOCK:
            return first + self._read_exact(BLOCK - len(first))
        return first

    def _skip_rest(self) -> None:
        while self._left > 0:
            self.read(min(self._left, 1 << 20))
        if self._pad:
            self._read_exact(self._pad)
            self._pad = 0

    def _block(self) -> bytes | None:
        block = self._read_block()
        if block is None and not self._seen:
            raise LayerError("not a tar archive")  # no bytes at all
        if block is None or block == _ZERO_BLOCK:
            # Two zero blocks end an archive; like GNU tar and tarfile we accept one, or none.
            return None
        if not _checksum_ok(block):
            if not self._seen:
                raise LayerError("not a tar archive")
            raise LayerError("corrupt tar archive: bad header checksum")
        self._seen = True
        return block

    def _meta_data(self, size: int) -> bytes:
        if not 0 <= size <= _MAX_META_SIZE:
            raise LayerError(f"tar metadata header of {size} bytes (limit {_MAX_META_SIZE})")
        data = self._read_exact(size)
        self._read_exact(-size % BLOCK)
        return data

    def _next(self) -> Header | None:
        meta = _Meta(pax={})
        for _ in range(_MAX_META_RUN):
            block = self._block()
            if block is None:
                if meta.pax or meta.longname is not None or meta.longlink is not None:
                    raise LayerError("truncated tar archive: metadata header without an entry")
                return None
            typeflag = block[156:157]
            if typeflag not in _META_TYPES:
                return self._entry(block, typeflag, meta)
            data = self._meta_data(_number(block[124:136], "size"))
            self._fold_meta(typeflag, data, meta)
        raise LayerError(f"more than {_MAX_META_RUN} tar metadata headers in a row")

    def _fold_meta(self, typeflag: bytes, data: bytes, meta: _Meta) -> None:
        if typeflag == _PAX_LOCAL:
            for key, value in _pax_records(data):
                meta.pax[key] = value
        elif typeflag == _PAX_GLOBAL:
            for key, value in _pax_records(data):
                # A global name or size would apply to every later entry; no writer needs it.
                if key not in (b"path", b"linkpath", b"size"):
                    self._globals[key] = value
        elif typeflag == _GNU_LONGNAME:
            meta.longname = data.rstrip(b"\0")
        elif typeflag == _GNU_LONGLINK:
            meta.longlink = data.rstrip(b"\0")
        # _GNU_VOLUME: a volume label, nothing to extract

    def _entry(self, block: bytes, typeflag: bytes, meta: _Meta) -> Header:
        name = _cstring(block[0:100])
        if block[257:263] == b"ustar\0":  # POSIX ustar: a prefix field joins the name
            prefix = _cstring(block[345:500])
            if prefix:
                name = prefix + b"/" + name
        pax = {**self._globals, **meta.pax}
        # An empty value cancels a record (pax(1)); an xattr's value may be empty.
        pax = {k: v for k, v in pax.items() if v or k.startswith(_XATTR_PREFIX)}
        if meta.longname is not None:
            name = meta.longname
        name = pax.get(b"path", name)
        if typeflag in (b"\0", b"7"):  # old regular file, contiguous file: regular files
            typeflag = DIRTYPE if typeflag == b"\0" and name.endswith(b"/") else REGTYPE
        if typeflag not in _ENTRY_TYPES:
            raise LayerError(f"tar entry {name!r}: unsupported type {typeflag!r}")
        if any(k.startswith(b"GNU.sparse.") for k in pax):
            raise LayerError(f"tar entry {name!r}: sparse files are not supported")
        linkname = pax.get(b"linkpath", meta.longlink or _cstring(block[157:257]))
        size = (
            _pax_int(pax[b"size"], b"size") if b"size" in pax else _number(block[124:136], "size")
        )
        if size < 0:
            raise LayerError(f"tar entry {name!r}: negative size")
        header = Header(
            name=name,
            type=typeflag,
            mode=_number(block[100:108], "mode") & 0o7777,
            uid=_pax_int(pax[b"uid"], b"uid") if b"uid" in pax else _number(block[108:116], "uid"),
            gid=_pax_int(pax[b"gid"], b"gid") if b"gid" in pax else _number(block[116:124], "gid"),
            size=size if typeflag == REGTYPE else 0,
            mtime_ns=_pax_time_ns(pax[b"mtime"])
            if b"mtime" in pax
            else _number(block[136:148], "mtime") * 1_000_000_000,
            linkname=linkname,
            devmajor=_number(block[329:337], "devmajor") if typeflag in (CHRTYPE, BLKTYPE) else 0,
            devminor=_number(block[337:345], "devminor") if typeflag in (CHRTYPE, BLKTYPE) else 0,
            xattrs=tuple(
                (k[len(_XATTR_PREFIX) :].decode("utf-8", "surrogateescape"), v)
                for k, v in pax.items()
                if k.startswith(_XATTR_PREFIX)
            ),
        )
        if not (0 <= header.uid < 1 << 32 and 0 <= header.gid < 1 << 32):
            raise LayerError(f"tar entry {name!r}: uid/gid out of range")
        self._left = header.size
        self._pad = -header.size % BLOCK
        return header
