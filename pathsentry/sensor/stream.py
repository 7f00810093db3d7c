"""One direction of a TCP connection, reassembled; where each byte came from.

Bytes are placed at their offset from the stream's base (the initial sequence
number + 1), **first arrival wins** (as in the receiving host's stack, which is
why a forged answer that arrives first is what the client sees). A segment that
covers sequence space already received is a retransmission; if its bytes differ
from those already there, the stream has a *sequence conflict* -- two senders
answered for the same bytes (the race Zeek reports as ``rexmit_inconsistency``).
Out-of-order segments fill gaps and are neither, nor is a TCP keep-alive probe
(one byte, often garbage, sent again just before the next expected sequence number).

The stream remembers which packet delivered each byte (time, TTL) and where each
retransmission fell, so a connection carrying several exchanges can report each
with its own timing, TTL, retransmissions and conflict.

When the base becomes known only after data arrived (a SYN-ACK captured after the
first answer bytes, e.g. in another file), :meth:`Stream.rebase` moves what is
held to the new base instead of mixing offsets from two bases.

>>> s = Stream(base=1000)
>>> s.add(1005, b"world", ts=0.2, ttl=52)   # out of order: fills a gap later
>>> s.add(1000, b"hello", ts=0.3, ttl=52)
>>> s.add(1000, b"hello", ts=0.4, ttl=52)   # same bytes again: a retransmission
>>> bytes(s.contiguous()), s.retransmits, s.conflict
(b'helloworld', 1, False)
>>> s.add(1003, b"XX", ts=0.5, ttl=53)      # different bytes for the same range
>>> bytes(s.contiguous()), s.retransmits, s.conflict
(b'helloworld', 2, True)
>>> s.at(6)                                  # 'o' of world: time and TTL of its packet
(0.2, 52)
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["HALF", "MAX_BYTES", "SEQ_MOD", "Stream"]

SEQ_MOD = 1 << 32
HALF = 1 << 31
MAX_BYTES = 4 << 20


@dataclass(slots=True)
class Stream:
    """One direction of a TCP connection, reassembled."""

    base: int | None = None
    max_bytes: int = MAX_BYTES
    buf: bytearray = field(default_factory=bytearray)
    #: Received ranges ``[start, end)``, sorted and merged.
    ranges: list[list[int]] = field(default_factory=list)
    #: ``(start, end, ts, ttl)`` of the bytes each packet delivered first, sorted.
    deliveries: list[tuple[int, int, float, int]] = field(default_factory=list)
    #: ``(offset, conflicting)`` of each retransmission, in arrival order.
    overlaps: list[tuple[int, bool]] = field(default_factory=list)
    truncated: bool = False
    #: The base is the handshake's (given, or from :meth:`rebase`), not the first data's:
    #: bytes before it are not the stream's. An unanchored stream grows backwards.
    anchored: bool | None = None

    def __post_init__(self) -> None:
        if self.anchored is None:
            self.anchored = self.base is not None

    @property
    def retransmits(self) -> int:
        return len(self.overlaps)

    @property
    def conflict(self) -> bool:
        return any(c for _, c in self.overlaps)

    @property
    def first_ts(self) -> float | None:
        return self.at(0)[0]

    @property
    def first_ttl(self) -> int | None:
        return self.at(0)[1]

    def at(self, offset: int) -> tuple[float | None, int | None]:
        """Time and TTL of the packet that delivered the byte at ``offset``."""
        i = bisect.bisect_right(self.deliveries, (offset, SEQ_MOD)) - 1
        if i >= 0 and self.deliveries[i][0] <= offset < self.deliveries[i][1]:
            _, _, ts, ttl = self.deliveries[i]
            return ts, ttl
        return None, None

    def window(self, start: int, end: int) -> tuple[int, bool]:
        """``(retransmissions, conflict)`` of the retransmissions starting in ``[start, end)``."""
        hits = [c for off, c in self.overlaps if start <= off < end]
        return len(hits), any(hits)

    def add(self, seq: int, data: bytes, ts: float, ttl: int) -> None:
        """Place ``data`` that starts at sequence number ``seq``."""
        if not data:
            return
        if self.base is None:
            self.base = seq
        off = (seq - self.base) % SEQ_MOD
        if off >= HALF and not self.anchored and SEQ_MOD - off + len(self.buf) <= self.max_bytes:
            self._move(seq)  # earlier bytes of a stream whose start was not seen
            off = 0
        if off >= HALF:  # starts before the stream (e.g. a keep-alive probe)
            before = SEQ_MOD - off
            if before >= len(data):
                return
            data, off = data[before:], 0
        if off + len(data) > self.max_bytes:
            self.truncated = True
            data = data[: max(0, self.max_bytes - off)]
            if not data:
                return
        end = off + len(data)
        if len(data) == 1 and self.ranges and end == self.ranges[-1][1]:
            return  # a keep-alive probe: one (garbage) byte just before the next expected
        overlapped = conflict = False
        for a, b in self.ranges:
            lo, hi = max(a, off), min(b, end)
            if lo < hi:
                overlapped = True
                conflict = conflict or self.buf[lo:hi] != data[lo - off : hi - off]
        if overlapped:
            self.overlaps.append((off, conflict))
        if len(self.buf) < end:
            self.buf.extend(bytes(end - len(self.buf)))
        for lo, hi in list(self._gaps(off, end)):
            self.buf[lo:hi] = data[lo - off : hi - off]
            bisect.insort(self.deliveries, (lo, hi, ts, ttl))
        self._merge(off, end)

    def rebase(self, base: int) -> None:
        """Make ``base`` (from the handshake) the stream's base, moving the bytes already
        held to match."""
        self.anchored = True
        self._move(base)

    def _move(self, base: int) -> None:
        if self.base is None or base == self.base:
            self.base = base
            return
        shift = (self.base - base) % SEQ_MOD  # > 0: the held bytes move up
        self.base = base
        if shift >= HALF:  # the new base is after held bytes: those before it go
            self._shift(shift - SEQ_MOD)
        elif shift + len(self.buf) > self.max_bytes:
            self.truncated = True
            self._clear()
        else:
            self._shift(shift)

    def _shift(self, by: int) -> None:
        if by > 0:
            self.buf[:0] = bytes(by)
        else:
            del self.buf[: -by]
        self.ranges = [[max(a + by, 0), b + by] for a, b in self.ranges if b + by > 0]
        self.deliveries = [(max(a + by, 0), b + by, t, ttl)
                           for a, b, t, ttl in self.deliveries if b + by > 0]
        self.overlaps = [(max(o + by, 0), c) for o, c in self.overlaps]

    def _clear(self) -> None:
        self.buf, self.ranges, self.deliveries = bytearray(), [], []

    def _gaps(self, off: int, end: int) -> Iterator[tuple[int, int]]:
        pos = off
        for a, b in self.ranges:
            if b <= pos:
                continue
            if a >= end:
                break
            if a > pos:
                yield pos, a
            pos = max(pos, b)
        if pos < end:
            yield pos, end

    def _merge(self, off: int, end: int) -> None:
        merged: list[list[int]] = []
        for a, b in sorted([*self.ranges, [off, end]]):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.ranges = merged

    def contiguous(self, start: int = 0) -> memoryview:
        """The bytes from ``start`` up to the next gap (empty if ``start`` is not held)."""
        for a, b in self.ranges:
            if a <= start < b:
                return memoryview(self.buf)[start:b]
        return memoryview(b"")

    def range_starts(self) -> list[int]:
        """Where each held range begins (the places to resynchronise after a gap)."""
        return [a for a, _ in self.ranges]
