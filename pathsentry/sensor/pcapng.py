"""A pcapng reader that keeps each packet's interface (dpkt's assumes the first one).

A pcapng file may hold several interfaces (e.g. Ethernet and loopback captured
together), each with its own link type and timestamp resolution; every section
(SHB) may change byte order and restarts the interface list. Enhanced and obsolete
packet blocks are read; simple packet blocks (no timestamp) and other blocks are
skipped. A file cut short ends at its last whole block.

>>> import io, struct
>>> shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
>>> idb = struct.pack("<IIHHI", 1, 20, 113, 0, 0) + struct.pack("<I", 20)
>>> epb = struct.pack("<IIIIIII", 6, 36, 0, 0, 2_000_000, 4, 4) + b"abcd" + struct.pack("<I", 36)
>>> r = PcapngReader(io.BytesIO(shb + idb + epb))
>>> r.datalink(), list(r)
(113, [(2.0, 113, b'abcd')])
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import IO

__all__ = ["PcapngReader"]

SHB, IDB, PB, EPB = 0x0A0D0D0A, 1, 2, 6
_BYTE_ORDER = 0x1A2B3C4D
_TSRESOL, _TSOFFSET = 9, 14


class PcapngReader:
    """``(ts, link type, frame)`` of every packet, in file order."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.endian = "<"
        #: ``(link type, seconds per tick, offset s)`` by interface id, this section.
        self.interfaces: list[tuple[int, float, float]] = []
        self._pending: list[tuple[float, int, bytes]] = []
        head = fh.read(12)
        if len(head) < 12 or struct.unpack("<I", head[:4])[0] != SHB:
            raise ValueError("no section header block")
        fh.seek(0)
        # read up to the first interface, so datalink() is known
        self._blocks = self._iter_blocks()
        while not self.interfaces:
            block = next(self._blocks, False)
            if block is False:
                raise ValueError("no interface description block")
            if isinstance(block, tuple):
                self._pending.append(block)

    def datalink(self) -> int:
        """The link type of the first interface."""
        return self.interfaces[0][0]

    def __iter__(self) -> Iterator[tuple[float, int, bytes]]:
        yield from self._pending
        self._pending = []
        for block in self._blocks:
            if block is not None:
                yield block

    def _iter_blocks(self) -> Iterator[tuple[float, int, bytes] | None]:
        """Each packet, or None after a block that is not one."""
        while True:
            head = self.fh.read(8)
            if len(head) < 8:
                return
            if struct.unpack("<I", head[:4])[0] == SHB:
                magic = self.fh.read(4)
                if len(magic) < 4:
                    return
                self.endian = "<" if struct.unpack("<I", magic)[0] == _BYTE_ORDER else ">"
                self.interfaces = []
                length = struct.unpack(self.endian + "I", head[4:])[0]
                body = magic + self.fh.read(max(0, length - 12))
            else:
                length = struct.unpack(self.endian + "I", head[4:])[0]
                body = self.fh.read(max(0, length - 8))
            if length < 12 or len(body) < length - 8:
                return  # cut short
            kind = struct.unpack(self.endian + "I", head[:4])[0]
            yield self._block(kind, body[:-4])

    def _block(self, kind: int, body: bytes) -> tuple[float, int, bytes] | None:
        e = self.endian
        if kind == IDB and len(body) >= 8:
            linktype = struct.unpack(e + "H", body[:2])[0]
            tick, offset = 1e-6, 0.0
            for code, value in _options(body[8:], e):
                if code == _TSRESOL and value:
                    v = value[0]
                    tick = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
                elif code == _TSOFFSET and len(value) >= 8:
                    offset = float(struct.unpack(e + "q", value[:8])[0])
            self.interfaces.append((linktype, tick, offset))
            return None
        if kind in (EPB, PB) and len(body) >= 20:
            if kind == EPB:
                iface, hi, lo, caplen = struct.unpack(e + "IIII", body[:16])
            else:
                iface, _drops, hi, lo, caplen = struct.unpack(e + "HHIII", body[:16])
            if iface >= len(self.interfaces):
                return None
            linktype, tick, offset = self.interfaces[iface]
            ts = offset + ((hi << 32) | lo) * tick
            return ts, linktype, body[20 : 20 + caplen]
        return None


def _options(buf: bytes, e: str) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 4 <= len(buf):
        code, size = struct.unpack(e + "HH", buf[pos : pos + 4])
        if code == 0:
            return
        yield code, buf[pos + 4 : pos + 4 + size]
        pos += 4 + size + (-size % 4)
