"""Read TCP segments out of pcap / pcapng captures (dpkt), one file or many.

Several files are read as **one capture in time order**, whatever order they are
given in (a shell glob puts ``cap10.pcap`` before ``cap9.pcap``): the files are
sorted by their first timestamp and merged packet by packet on time, with only
the files that overlap the current time open. Within a file, capture order is
kept. pcapng is read by :mod:`pathsentry.sensor.pcapng` (each packet with its own
interface's link type); frame decoding (link layers, tunnels) is
:mod:`pathsentry.sensor.decode`.

>>> import dpkt, io
>>> tcp = dpkt.tcp.TCP(sport=40000, dport=80, seq=7, flags=dpkt.tcp.TH_SYN)
>>> ip = dpkt.ip.IP(src=bytes([10, 0, 0, 1]), dst=bytes([10, 0, 0, 2]), ttl=64,
...                 p=dpkt.ip.IP_PROTO_TCP, data=tcp)
>>> buf = io.BytesIO()
>>> w = dpkt.pcap.Writer(buf, linktype=dpkt.pcap.DLT_RAW)
>>> w.writepkt(bytes(ip), ts=1.5)
>>> _ = buf.seek(0)
>>> [(s.src, s.sport, s.dst, s.dport, s.ttl, s.syn) for s in iter_segments(buf)]
[('10.0.0.1', 40000, '10.0.0.2', 80, 64, True)]
"""

from __future__ import annotations

import heapq
import itertools
import struct
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import IO

import dpkt

from pathsentry.sensor.decode import (
    LINK_TYPES,
    CaptureError,
    Segment,
    check_linktype,
    decode_frame,
)
from pathsentry.sensor.pcapng import PcapngReader

__all__ = [
    "CaptureError",
    "Segment",
    "check_captures",
    "iter_segments",
    "merged_segments",
    "open_capture",
]

PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


class _Pcap:
    """A classic pcap file as ``(ts, link type, frame)`` (one link type per file)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.reader = dpkt.pcap.Reader(fh)

    def datalink(self) -> int:
        return int(self.reader.datalink())

    def __iter__(self) -> Iterator[tuple[float, int, bytes]]:
        linktype = self.datalink()
        for ts, frame in self.reader:
            yield float(ts), linktype, frame


def open_capture(fh: IO[bytes], source: str = "capture") -> _Pcap | PcapngReader:
    """A reader of ``(ts, link type, frame)`` for ``fh``, pcap or pcapng by magic
    number; the (first) link type checked."""
    magic = fh.read(4)
    fh.seek(0)
    try:
        reader = PcapngReader(fh) if magic == PCAPNG_MAGIC else _Pcap(fh)
    except (ValueError, struct.error, dpkt.UnpackError) as e:
        raise CaptureError(f"{source}: not a pcap or pcapng capture ({e})") from None
    check_linktype(reader.datalink(), source)
    return reader


def iter_segments(fh: IO[bytes], skipped: Counter[str] | None = None,
                  source: str = "capture") -> Iterator[Segment]:
    """Every TCP segment of one capture, in capture order; the rest counted in ``skipped``
    (packets of a further pcapng interface whose link type is not decoded by it)."""
    skipped = skipped if skipped is not None else Counter()
    for ts, linktype, frame in open_capture(fh, source):
        if linktype not in LINK_TYPES:
            skipped[f"link_type_{linktype}_not_decoded"] += 1
            continue
        seg = decode_frame(ts, linktype, frame)
        if isinstance(seg, str):
            skipped[seg] += 1
            continue
        yield seg


def _first_ts(path: str) -> float:
    """The timestamp of the first packet of ``path`` (inf if none); checks the file."""
    try:
        with open(path, "rb") as fh:
            for ts, _linktype, _frame in open_capture(fh, path):
                return ts
    except OSError as e:
        raise CaptureError(f"{path}: {e.strerror or e}") from None
    return float("inf")


def check_captures(paths: Iterable[str]) -> None:
    """Raise :class:`CaptureError` for the first file that cannot be read."""
    for path in paths:
        _first_ts(path)


def _file_segments(path: str, skipped: Counter[str]) -> Iterator[Segment]:
    with open(path, "rb") as fh:
        yield from iter_segments(fh, skipped, path)


def merged_segments(paths: Iterable[str],
                    skipped: Counter[str] | None = None) -> Iterator[Segment]:
    """The TCP segments of several captures merged on time, whatever the file order.

    Every file is checked (format, link type) before the first segment is
    yielded, so an unreadable file fails the run up front.
    """
    skipped = skipped if skipped is not None else Counter()
    files = sorted((_first_ts(p), i, p) for i, p in enumerate(paths))
    tie = itertools.count()
    heap: list[tuple[float, int, Segment, Iterator[Segment]]] = []
    pending = iter(files)
    upcoming = next(pending, None)
    while heap or upcoming is not None:
        # open every file that starts before the earliest segment waiting
        while upcoming is not None and (not heap or upcoming[0] <= heap[0][0]):
            it = _file_segments(upcoming[2], skipped)
            seg = next(it, None)
            if seg is not None:
                heapq.heappush(heap, (seg.ts, next(tie), seg, it))
            upcoming = next(pending, None)
        if not heap:
            continue
        _, _, seg, it = heapq.heappop(heap)
        yield seg
        nxt = next(it, None)
        if nxt is not None:
            heapq.heappush(heap, (nxt.ts, next(tie), nxt, it))
