"""Read TCP segments out of pcap / pcapng captures (dpkt).

Link layers: Ethernet (with VLAN tags), raw IP, IPv4/IPv6 link types, Linux
cooked capture (v1 and v2) and BSD loopback. Non-TCP packets, fragments and
frames that do not decode are skipped and counted.

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

import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import dpkt

__all__ = ["Segment", "iter_segments", "open_capture"]

PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_ETHERNET = {1}
_RAW = {12, 14, 101, 228, 229}
_SLL, _SLL2 = 113, 276
_LOOPBACK = {0, 108}


@dataclass(frozen=True, slots=True)
class Segment:
    """One TCP segment as the capture point saw it."""

    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    ttl: int
    seq: int
    ack: int
    flags: int
    payload: bytes

    @property
    def syn(self) -> bool:
        return bool(self.flags & dpkt.tcp.TH_SYN)

    @property
    def has_ack(self) -> bool:
        return bool(self.flags & dpkt.tcp.TH_ACK)

    @property
    def fin(self) -> bool:
        return bool(self.flags & dpkt.tcp.TH_FIN)

    @property
    def rst(self) -> bool:
        return bool(self.flags & dpkt.tcp.TH_RST)


def open_capture(fh: IO[bytes]) -> Any:
    """A dpkt reader for ``fh``, pcap or pcapng by magic number."""
    magic = fh.read(4)
    fh.seek(0)
    return dpkt.pcapng.Reader(fh) if magic == PCAPNG_MAGIC else dpkt.pcap.Reader(fh)


def _ip_layer(linktype: int, frame: bytes) -> Any:
    if linktype in _ETHERNET:
        return dpkt.ethernet.Ethernet(frame).data
    if linktype == _SLL:
        return dpkt.sll.SLL(frame).data
    if linktype == _SLL2:
        return dpkt.sll2.SLL2(frame).data
    if linktype in _LOOPBACK:
        return dpkt.loopback.Loopback(frame).data
    if linktype in _RAW and frame:
        return dpkt.ip6.IP6(frame) if frame[0] >> 4 == 6 else dpkt.ip.IP(frame)
    return None


def _segment(ts: float, ip: Any) -> Segment | None:
    if isinstance(ip, dpkt.ip.IP):
        if ip.p != dpkt.ip.IP_PROTO_TCP or ip.mf or ip.offset:
            return None
        family, ttl = socket.AF_INET, ip.ttl
    elif isinstance(ip, dpkt.ip6.IP6):
        if getattr(ip, "p", ip.nxt) != dpkt.ip.IP_PROTO_TCP:
            return None
        family, ttl = socket.AF_INET6, ip.hlim
    else:
        return None
    tcp = ip.data
    if not isinstance(tcp, dpkt.tcp.TCP):
        return None
    return Segment(
        ts=float(ts), src=socket.inet_ntop(family, ip.src), sport=tcp.sport,
        dst=socket.inet_ntop(family, ip.dst), dport=tcp.dport, ttl=int(ttl),
        seq=tcp.seq, ack=tcp.ack, flags=tcp.flags, payload=bytes(tcp.data),
    )


def iter_segments(fh: IO[bytes], skipped: Counter[str] | None = None) -> Iterator[Segment]:
    """Every TCP segment of a capture, in capture order."""
    skipped = skipped if skipped is not None else Counter()
    reader = open_capture(fh)
    linktype = int(reader.datalink())
    for ts, frame in reader:
        try:
            seg = _segment(ts, _ip_layer(linktype, frame))
        except (dpkt.UnpackError, ValueError, IndexError):
            skipped["undecodable"] += 1
            continue
        if seg is None:
            skipped["not_tcp"] += 1
            continue
        yield seg
