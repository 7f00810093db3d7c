"""Captures the sensor tests build with scapy: TCP conversations, link layers, files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import PcapNgWriter, wrpcap

CLIENT, SERVER = "10.0.0.5", "104.16.0.1"
T0 = 1_785_000_000.0
MAC_C, MAC_S = "02:00:00:00:00:05", "02:00:00:00:00:01"

Link = Callable[[Packet], Packet]


def ethernet(ip: Packet) -> Packet:
    return Ether(src=MAC_C, dst=MAC_S) / ip


@dataclass
class Conversation:
    """One TCP connection as a capture point near the client sees it (IP packets)."""

    cport: int
    sport: int
    server_ttl: int = 52
    c_isn: int = 1_000
    s_isn: int = 5_000
    packets: list[Packet] = field(default_factory=list)

    def _add(self, t: float, from_client: bool, flags: str, seq: int, ack: int,
             payload: bytes = b"", ttl: int | None = None) -> Conversation:
        src, dst = (CLIENT, SERVER) if from_client else (SERVER, CLIENT)
        sp, dp = (self.cport, self.sport) if from_client else (self.sport, self.cport)
        ip_ttl = 64 if from_client else (ttl or self.server_ttl)
        pkt = IP(src=src, dst=dst, ttl=ip_ttl) / TCP(
            sport=sp, dport=dp, flags=flags, seq=seq % (1 << 32), ack=ack % (1 << 32)) / payload
        pkt.time = T0 + t
        self.packets.append(pkt)
        return self

    def handshake(self, t: float = 0.0, rtt: float = 0.012) -> Conversation:
        self._add(t, True, "S", self.c_isn, 0)
        self._add(t + rtt, False, "SA", self.s_isn, self.c_isn + 1)
        return self._add(t + rtt + 0.0001, True, "A", self.c_isn + 1, self.s_isn + 1)

    def client(self, t: float, data: bytes, at: int = 0) -> Conversation:
        return self._add(t, True, "PA", self.c_isn + 1 + at, self.s_isn + 1, data)

    def server(self, t: float, data: bytes, at: int = 0, ttl: int | None = None,
               flags: str = "PA") -> Conversation:
        return self._add(t, False, flags, self.s_isn + 1 + at, self.c_isn + 1, data, ttl)

    def close(self, t: float, c_at: int, s_at: int) -> Conversation:
        self._add(t, True, "FA", self.c_isn + 1 + c_at, self.s_isn + 1 + s_at)
        return self._add(t + 0.01, False, "FA", self.s_isn + 1 + s_at, self.c_isn + 2 + c_at)


def frames(convs: Sequence[Conversation], link: Link = ethernet) -> list[Packet]:
    """The packets of ``convs`` in time order, each wrapped by ``link``."""
    out = []
    for p in sorted((p for c in convs for p in c.packets), key=lambda p: float(p.time)):
        framed = link(p.copy())
        framed.time = p.time
        out.append(framed)
    return out


def write(path: Path, pkts: Sequence[Packet], ng: bool = False) -> Path:
    if ng:
        w = PcapNgWriter(str(path))
        for p in pkts:
            w.write(p)
        w.close()
    else:
        wrpcap(str(path), list(pkts))
    return path
