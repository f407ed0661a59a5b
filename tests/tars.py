"""Hand-made tar streams for the layer and unpack tests (tests/unit/layers/test_capture.py,
tests/unit/layers/test_unpack.py): entries made by our own writer, plus raw metadata headers for
what the writer must refuse to write (NUL in names, malformed pax records); and the
`needs_root` mark and capability blob both files use.
"""

from __future__ import annotations

import os
import struct

import pytest

from stepbuild.layers.tar import (
    BLOCK,
    END_OF_ARCHIVE,
    REGTYPE,
    Header,
    _pax_record,
    encode_header,
    padding,
)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.root  # mknod, trusted.* xattrs, chown (conftest: fails if not root)

# security.capability for cap_net_bind_service+ep (struct vfs_cap_data, revision 2)
CAP_NET_BIND = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


def make_tar(*entries: Header | tuple[Header, bytes], end: bool = True) -> bytes:
    """A tar made by our own writer; names with NUL go into a hand-made pax header."""
    out = bytearray()
    for entry in entries:
        header, data = entry if isinstance(entry, tuple) else (entry, b"")
        if data and header.size != len(data):
            header = Header(**{**_fields(header), "size": len(data)})
        if b"\0" in header.name or b"\0" in header.linkname:
            out += raw_meta(
                b"x", _pax_record(b"path", header.name) + _pax_record(b"linkpath", header.linkname)
            )
            header = Header(**{**_fields(header), "name": b"placeholder", "linkname": b"x"})
        out += encode_header(header) + data + padding(len(data))
    if end:
        out += END_OF_ARCHIVE
    return bytes(out)


def _fields(h: Header) -> dict[str, object]:
    return {f: getattr(h, f) for f in Header.__slots__}


def reg(name: str | bytes, data: bytes = b"", **kw: object) -> tuple[Header, bytes]:
    n = name.encode() if isinstance(name, str) else name
    mode = kw.pop("mode", 0o644)
    return Header(name=n, type=REGTYPE, mode=mode, size=len(data), **kw), data  # type: ignore[arg-type]


def entry(kind: bytes, name: str, link: str = "", **kw: object) -> Header:
    mode = kw.pop("mode", 0o755)
    return Header(name=name.encode(), type=kind, mode=mode, linkname=link.encode(), **kw)  # type: ignore[arg-type]


def raw_meta(kind: bytes, data: bytes) -> bytes:
    header = encode_header(Header(name=b"meta", type=REGTYPE, size=len(data)))
    block = bytearray(header[-BLOCK:])
    block[156:157] = kind
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block) + data + padding(len(data))
