"""Link layers and encapsulations: the same conversation gives the same events however
it was captured; what cannot be decoded is refused or counted, by name."""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import pytest
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III
from scapy.contrib.mpls import MPLS
from scapy.contrib.tzsp import TZSP, TZSPTagEnd
from scapy.layers.dot11 import Dot11
from scapy.layers.inet import GRE, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1Q, Ether, Loopback
from scapy.layers.ppp import PPP, PPPoE
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet

from pathsentry.cli import main
from pathsentry.sensor import CaptureError, capture_events
from tests.sensor.support import (
    MAC_C,
    MAC_S,
    SERVER,
    Conversation,
    Link,
    ethernet,
    frames,
    write,
)

FORGED = b"HTTP/1.1 302 Found\r\nLocation: http://10.1.1.1/\r\nContent-Length: 0\r\n\r\n"
GENUINE = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\n\r\nhi"
TAP_A, TAP_B = "192.168.88.1", "192.168.88.2"


def conversations() -> list[Conversation]:
    clean = Conversation(50_300, 80).handshake()
    clean.client(0.02, b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n").server(0.04, GENUINE)
    raced = Conversation(50_301, 80).handshake()
    raced.client(0.02, b"GET / HTTP/1.1\r\nHost: b.example\r\n\r\n")
    raced.server(0.021, FORGED, ttl=60).server(0.04, GENUINE).server(0.3, GENUINE)
    return [clean, raced]


def tunnel(ip: Packet) -> Packet:
    return IP(src=TAP_A, dst=TAP_B)


LINKS: dict[str, Link] = {
    "vlan": lambda ip: Ether(src=MAC_C, dst=MAC_S) / Dot1Q(vlan=10) / ip,
    "qinq": lambda ip: Ether(src=MAC_C, dst=MAC_S) / Dot1Q(vlan=100) / Dot1Q(vlan=10) / ip,
    "sll": lambda ip: CookedLinux(pkttype=0, proto=0x0800) / ip,
    "sll2": lambda ip: CookedLinuxV2(proto=0x0800) / ip,
    "raw": lambda ip: ip,
    "loopback": lambda ip: Loopback(type=2) / ip,
    "ppp": lambda ip: PPP(proto=0x21) / ip,
    "mpls": lambda ip: Ether(src=MAC_C, dst=MAC_S) / MPLS(label=16, s=1) / ip,
    "pppoe": lambda ip: Ether(src=MAC_C, dst=MAC_S) / PPPoE(sessionid=7) / PPP(proto=0x21) / ip,
    "tzsp": lambda ip: ethernet(tunnel(ip) / UDP(sport=37008, dport=37008)
                                / TZSP(encapsulated_protocol=1) / TZSPTagEnd() / ethernet(ip)),
    "vxlan": lambda ip: ethernet(tunnel(ip) / UDP(sport=49152, dport=4789) / VXLAN(vni=42)
                                 / ethernet(ip)),
    "gre": lambda ip: ethernet(tunnel(ip) / GRE(proto=0x0800) / ip),
    "gre-ethernet": lambda ip: ethernet(tunnel(ip) / GRE(proto=0x6558) / ethernet(ip)),
    "ip-in-ip": lambda ip: ethernet(tunnel(ip) / ip),
    "erspan2": lambda ip: ethernet(tunnel(ip) / GRE(seqnum_present=1) / ERSPAN_II(session_id=3)
                                   / ethernet(ip)),
    "erspan3": lambda ip: ethernet(tunnel(ip) / GRE(seqnum_present=1) / ERSPAN_III(session_id=3)
                                   / ethernet(ip)),
}


@pytest.mark.parametrize("name", sorted(LINKS))
def test_every_link_and_encapsulation_gives_the_ethernet_events(
        name: str, tmp_path: Path) -> None:
    expected = list(capture_events([str(write(tmp_path / "eth.pcap", frames(conversations())))]))
    assert [(e["status"], e["seq_conflict"]) for e in expected] == [(200, False), (302, True)]
    path = write(tmp_path / f"{name}.pcap", frames(conversations(), LINKS[name]))
    skipped: Counter[str] = Counter()
    assert list(capture_events([str(path)], skipped=skipped)) == expected
    assert not skipped


def test_tzsp_around_802_11_is_counted_not_guessed(tmp_path: Path) -> None:
    def wifi(ip: Packet) -> Packet:
        return ethernet(tunnel(ip) / UDP(sport=37008, dport=37008)
                        / TZSP(encapsulated_protocol=18) / TZSPTagEnd() / Dot11() / ip)
    pkts = frames(conversations(), wifi)
    skipped: Counter[str] = Counter()
    assert list(capture_events([str(write(tmp_path / "w.pcap", pkts))], skipped=skipped)) == []
    assert skipped == Counter({"tzsp_802.11_not_decoded": len(pkts)})


def test_a_link_type_not_decoded_is_refused_by_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path / "good.pcap", frames(conversations()))
    radio = tmp_path / "radio.pcap"
    write(radio, frames(conversations()))
    data = bytearray(radio.read_bytes())
    data[20:24] = (127).to_bytes(4, "little")  # the header's link type: 802.11 radiotap
    radio.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match=r"link type 127 \(802\.11 radiotap\) is not decoded"):
        list(capture_events([str(good), str(radio)]))
    out = tmp_path / "probes.jsonl"
    assert main(["sensor", str(good), str(radio), "--out", str(out)]) == 2
    assert "radio.pcap: link type 127 (802.11 radiotap) is not decoded" in capsys.readouterr().err
    assert not out.exists()
    text = tmp_path / "notes.txt"
    text.write_text("not a capture\n")
    assert main(["sensor", str(text)]) == 2
    assert "notes.txt: not a pcap or pcapng capture" in capsys.readouterr().err


def _block(kind: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", kind, n) + body + struct.pack("<I", n)


def _interface(linktype: int, tsresol: int | None) -> bytes:
    opts = b"" if tsresol is None else struct.pack("<HHB3x", 9, 1, tsresol)
    return _block(1, struct.pack("<HHI", linktype, 0, 0) + opts + struct.pack("<HH", 0, 0))


def _packet(iface: int, ticks: int, frame: bytes) -> bytes:
    head = struct.pack("<IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame))
    return _block(6, head + frame)


def test_pcapng_interfaces_keep_their_own_link_type_and_clock(tmp_path: Path) -> None:
    """Client packets on an Ethernet interface (microseconds), server packets on a Linux
    cooked one (nanoseconds), and an 802.11 radiotap interface that is counted."""
    expected = list(capture_events([str(write(tmp_path / "eth.pcap", frames(conversations())))]))
    blocks = [_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
              _interface(1, None), _interface(113, 9), _interface(127, 6)]
    for p in frames(conversations(), lambda ip: ip):
        t = p.time
        if p[IP].dst == SERVER:
            blocks.append(_packet(0, round(t * 1_000_000), bytes(ethernet(p))))
        else:
            frame = bytes(CookedLinux(pkttype=0, proto=0x0800) / p)
            blocks.append(_packet(1, int(t) * 10**9 + round((t - int(t)) * 10**9), frame))
        blocks.append(_packet(2, round(t * 1_000_000), b"\x00" * 12))
    path = tmp_path / "multi.pcapng"
    path.write_bytes(b"".join(blocks))
    skipped: Counter[str] = Counter()
    assert list(capture_events([str(path)], skipped=skipped)) == expected
    assert skipped == Counter({"link_type_127_not_decoded": len(blocks) // 2 - 2})


def test_ipv6_flows(tmp_path: Path) -> None:
    v6 = {SERVER: "2001:db8::1", "10.0.0.5": "2001:db8:1::5"}

    def over_v6(ip: Packet) -> Packet:
        return ethernet(IPv6(src=v6[ip.src], dst=v6[ip.dst], hlim=ip.ttl) / ip[TCP].copy())

    v4 = list(capture_events([str(write(tmp_path / "v4.pcap", frames(conversations())))]))
    events = list(capture_events([str(write(tmp_path / "v6.pcap", frames(conversations(), over_v6)))]))
    keep = ("status", "seq_conflict", "ttl", "retransmits", "ttfb_ms", "connect_ms", "target")
    assert [{k: e[k] for k in keep} for e in events] == [{k: e[k] for k in keep} for e in v4]
    assert [e["flow"] for e in events] == [
        "[2001:db8:1::5]:50300>[2001:db8::1]:80", "[2001:db8:1::5]:50301>[2001:db8::1]:80"]
    assert {e["src_ip"] for e in events} == {"2001:db8:1::5"}
