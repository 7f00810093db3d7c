"""Frames to TCP segments: link layers and the encapsulations around IP.

Link types decoded: Ethernet (802.1Q / QinQ VLAN tags, MPLS and PPPoE sessions,
through dpkt), raw IP, the IPv4 and IPv6 link types, Linux cooked capture v1
(SLL, 113) and v2 (SLL2, 276), BSD / OpenBSD loopback and PPP. Inside IP, the
tunnels a capture point commonly sees are opened: IP-in-IP, GRE (IP or Ethernet
inside, ERSPAN II and III port mirroring), TZSP (UDP 37008, Ethernet inside, as
MikroTik and other switches stream their captures) and VXLAN (UDP 4789). Any other
link type is refused up front by :func:`check_linktype` with a
:class:`CaptureError` naming it; frames that do not decode, fragments, non-TCP
packets and encapsulations of what is not Ethernet or IP (e.g. 802.11 inside TZSP)
are skipped and counted by reason.

>>> import dpkt
>>> tcp = dpkt.tcp.TCP(sport=40000, dport=80, seq=7, flags=dpkt.tcp.TH_SYN)
>>> ip = dpkt.ip.IP(src=bytes([10, 0, 0, 1]), dst=bytes([10, 0, 0, 2]), ttl=64,
...                 p=dpkt.ip.IP_PROTO_TCP, data=tcp)
>>> seg = decode_frame(1.5, 12, bytes(ip))
>>> (seg.src, seg.sport, seg.dst, seg.dport, seg.ttl, seg.syn)
('10.0.0.1', 40000, '10.0.0.2', 80, 64, True)
>>> decode_frame(1.5, 12, b"\\x45")
'undecodable'
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any

import dpkt

__all__ = ["LINK_TYPES", "CaptureError", "Segment", "check_linktype", "decode_frame"]

ETHERNET, SLL, SLL2, PPP = 1, 113, 276, 9
RAW = frozenset({12, 14, 101, 228, 229})
LOOPBACK = frozenset({0, 108})
#: Every link type decoded, with its name (for messages).
LINK_TYPES: dict[int, str] = {
    ETHERNET: "Ethernet", PPP: "PPP", 12: "raw IP", 14: "raw IP", 101: "raw IP",
    228: "IPv4", 229: "IPv6", SLL: "Linux cooked v1 (SLL)", SLL2: "Linux cooked v2 (SLL2)",
    0: "BSD loopback", 108: "OpenBSD loopback",
}
#: Names of common link types that are not decoded, for the refusal message.
_REFUSED_NAMES = {
    105: "IEEE 802.11", 127: "802.11 radiotap", 119: "802.11 Prism", 163: "802.11 AVS",
    192: "PPI", 50: "PPP in HDLC", 10: "FDDI", 6: "Token Ring", 220: "USB Linux",
}
TZSP_PORT, VXLAN_PORT = 37008, 4789
_TZSP_ENCAP_NAMES = {1: "ethernet", 18: "802.11", 119: "prism", 127: "wlan_avs"}
_MAX_DEPTH = 8


class CaptureError(ValueError):
    """A capture the sensor cannot read, and why."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One TCP segment as the capture point saw it (the innermost IP of a tunnel)."""

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


def check_linktype(linktype: int, source: str) -> None:
    """Raise :class:`CaptureError` unless frames of ``linktype`` can be decoded."""
    if linktype in LINK_TYPES:
        return
    name = _REFUSED_NAMES.get(linktype, "unknown")
    decoded = ", ".join(sorted(set(LINK_TYPES.values())))
    raise CaptureError(
        f"{source}: link type {linktype} ({name}) is not decoded; the sensor reads "
        f"{decoded}, with VLAN, MPLS, PPPoE, GRE, ERSPAN, IP-in-IP, TZSP and VXLAN inside")


def _raw_ip(buf: bytes) -> Any:
    if not buf:
        return None
    return dpkt.ip6.IP6(buf) if buf[0] >> 4 == 6 else dpkt.ip.IP(buf)


def _link(linktype: int, frame: bytes) -> Any:
    if linktype == ETHERNET:
        return dpkt.ethernet.Ethernet(frame)
    if linktype == SLL:
        return dpkt.sll.SLL(frame)
    if linktype == SLL2:
        return dpkt.sll2.SLL2(frame)
    if linktype in LOOPBACK:
        return dpkt.loopback.Loopback(frame)
    if linktype == PPP:  # RFC 1662 framing (ff 03) is optional
        return dpkt.ppp.PPP(frame if frame[:2] == b"\xff\x03" else b"\xff\x03" + frame)
    if linktype in RAW:
        return _raw_ip(frame)
    return None


def _tzsp(buf: bytes) -> Any:
    """The frame inside a TZSP packet, or the name of why it is skipped."""
    if len(buf) < 4 or buf[0] != 1:
        return "tzsp_undecodable"
    encap = struct.unpack("!H", buf[2:4])[0]
    pos = 4
    while pos < len(buf):  # tagged fields up to END (1); PADDING (0) has no length
        tag = buf[pos]
        if tag == 1:
            pos += 1
            break
        pos += 1 if tag == 0 else 2 + (buf[pos + 1] if pos + 1 < len(buf) else 0)
    else:
        return "tzsp_undecodable"
    if encap != 1:
        return f"tzsp_{_TZSP_ENCAP_NAMES.get(encap, str(encap))}_not_decoded"
    return dpkt.ethernet.Ethernet(buf[pos:])


def _inner(pkt: Any) -> Any:
    """One encapsulation opened: what ``pkt`` carries, or None at the end of the chain."""
    data = pkt.data
    if isinstance(pkt, dpkt.udp.UDP):
        if TZSP_PORT in (pkt.sport, pkt.dport):
            return _tzsp(bytes(data))
        if VXLAN_PORT in (pkt.sport, pkt.dport) and len(data) > 8:
            return dpkt.ethernet.Ethernet(bytes(data)[8:])
        return None
    if isinstance(pkt, dpkt.gre.GRE) and isinstance(data, bytes):
        if pkt.p == 0x6558:  # transparent Ethernet bridging
            return dpkt.ethernet.Ethernet(data)
        if pkt.p == 0x88BE and len(data) > 8:  # ERSPAN type II
            return dpkt.ethernet.Ethernet(data[8:])
        if pkt.p == 0x22EB and len(data) > 12:  # ERSPAN type III, optional 8-byte subheader
            return dpkt.ethernet.Ethernet(data[20:] if data[11] & 1 else data[12:])
        return None
    return data if not isinstance(data, bytes) else None


def _segment(ts: float, ip: Any) -> Segment | str:
    if isinstance(ip, dpkt.ip.IP):
        if ip.mf or ip.offset:
            return "fragment"
        family, ttl = socket.AF_INET, ip.ttl
    else:
        family, ttl = socket.AF_INET6, ip.hlim
    tcp = ip.data
    return Segment(
        ts=float(ts), src=socket.inet_ntop(family, ip.src), sport=tcp.sport,
        dst=socket.inet_ntop(family, ip.dst), dport=tcp.dport, ttl=int(ttl),
        seq=tcp.seq, ack=tcp.ack, flags=tcp.flags, payload=bytes(tcp.data),
    )


def decode_frame(ts: float, linktype: int, frame: bytes) -> Segment | str:
    """The TCP segment in ``frame``, or the reason it holds none."""
    try:
        pkt = _link(linktype, frame)
        for _ in range(_MAX_DEPTH):
            if isinstance(pkt, str):
                return pkt
            if pkt is None or isinstance(pkt, bytes):
                return "not_tcp"
            if isinstance(pkt, (dpkt.ip.IP, dpkt.ip6.IP6)) and isinstance(pkt.data, dpkt.tcp.TCP):
                return _segment(ts, pkt)
            pkt = _inner(pkt)
    except (dpkt.UnpackError, ValueError, IndexError, struct.error):
        return "undecodable"
    return "too_deep"
