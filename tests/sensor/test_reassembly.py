"""Reassembly that does not depend on file or packet order, and what is reported for
flows that are not plain HTTP (TLS on any port, other bytes holding a race)."""

from __future__ import annotations

import itertools
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from pathsentry.sensor import FlowTable, capture_events, iter_segments
from tests.sensor.support import SERVER, Conversation, frames, write

PAGE = b"<html>" + b"x" * 300 + b"</html>"


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: www.example.com\r\n\r\n".encode()


def response(status: int, body: bytes, server: str = "nginx") -> bytes:
    return (f"HTTP/1.1 {status} X\r\nServer: {server}\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def clean_keepalive(cport: int) -> Conversation:
    """Three exchanges with the retransmissions a lossy path causes, nothing forged."""
    c = Conversation(cport, 80, c_isn=4_294_967_000, s_isn=77_000).handshake()  # wraps 2**32
    c_at = s_at = 0
    for i, t in enumerate((0.02, 0.4, 0.8)):
        req, resp = request(f"/{i}"), response(200, PAGE + bytes([65 + i]))
        c.client(t, req, at=c_at)
        if i == 1:
            c.client(t + 0.2, req, at=c_at)  # the client retransmits its request
        c.server(t + 0.015, resp[200:], at=s_at + 200)  # the tail first
        c.server(t + 0.016, resp[:200], at=s_at)
        c.server(t + 0.25, resp, at=s_at)  # and the whole answer again
        c_at, s_at = c_at + len(req), s_at + len(resp)
    return c


def forged(cport: int) -> Conversation:
    """A forged 302 one hop nearer wins the race; the genuine answer is retransmitted."""
    c = Conversation(cport, 80).handshake()
    c.client(0.02, request("/"))
    c.server(0.022, response(302, b"", server="")[:60], ttl=53)
    for t in (0.035, 0.3, 0.9):
        c.server(t, response(200, PAGE))
    return c


def by_port(events: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        out.setdefault(int(e["flow"].split(">")[0].rsplit(":", 1)[1]), []).append(e)
    return out


def test_file_order_does_not_change_the_events(tmp_path: Path) -> None:
    pkts = frames([clean_keepalive(50_100), forged(50_101)])
    t0 = float(pkts[0].time)
    cuts = [[p for p in pkts if lo <= float(p.time) - t0 < hi]
            for lo, hi in ((0, 0.02), (0.02, 0.5), (0.5, 99))]
    assert all(cuts) and sum(map(len, cuts)) == len(pkts)
    files = [str(write(tmp_path / f"cap_{9 + i}.pcap", cut)) for i, cut in enumerate(cuts)]
    assert sorted(files) == [files[1], files[2], files[0]]  # the order a shell glob gives

    orders = [list(p) for p in itertools.permutations(files)]
    runs = [list(capture_events(order)) for order in orders]
    assert all(run == runs[0] for run in runs)
    # two capture points writing at once: packets interleaved across two files
    halves = [write(tmp_path / f"if{i}.pcap", pkts[i::2]) for i in (0, 1)]
    assert list(capture_events([str(halves[1]), str(halves[0])])) == runs[0]

    flows = by_port(runs[0])
    clean = flows[50_100]
    assert [e["status"] for e in clean] == [200, 200, 200]
    assert [e["seq_conflict"] for e in clean] == [False, False, False]
    assert [e["retransmits"] for e in clean] == [1, 2, 1]
    assert [e["body_len"] for e in clean] == [len(PAGE) + 1] * 3
    [race] = flows[50_101]
    assert (race["status"], race["seq_conflict"], race["ttl"]["response"]) == (302, True, 53)


def test_a_syn_ack_seen_after_the_data_moves_the_data_to_its_base(tmp_path: Path) -> None:
    path = write(tmp_path / "c.pcap", frames([clean_keepalive(50_110)]))
    with open(path, "rb") as fh:
        segs = list(iter_segments(fh))
    syn_ack = segs.pop(1)
    segs.insert(8, syn_ack)  # after the first answer and its retransmission started
    table = FlowTable()
    shuffled = [e for s in segs for e in table.add(s)] + list(table.finish())
    expected = list(capture_events([str(path)]))
    assert shuffled == expected
    assert [e["seq_conflict"] for e in shuffled] == [False, False, False]


def test_a_new_syn_on_a_closed_four_tuple_is_a_new_connection(tmp_path: Path) -> None:
    first = Conversation(50_120, 80, c_isn=10, s_isn=20).handshake()
    first.client(0.02, request("/a")).server(0.03, response(200, b"first"))
    first.close(0.05, len(request("/a")), len(response(200, b"first")))
    second = Conversation(50_120, 80, c_isn=90_000, s_isn=70_000).handshake(t=1.0)
    second.client(1.02, request("/b")).server(1.03, response(404, b"second!"))
    events = list(capture_events([str(write(tmp_path / "r.pcap", frames([first, second])))]))
    assert [(e["status"], e["body_len"], e["seq_conflict"]) for e in events] == [
        (200, 5, False), (404, 7, False)]
    assert events[0]["event_id"] != events[1]["event_id"]


def client_hello(server_name: str) -> bytes:
    """A TLS 1.3 ClientHello carrying a server_name extension."""
    name = server_name.encode()
    sni = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    ext = struct.pack("!HH", 0, len(sni)) + sni
    body = (b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
            + struct.pack("!H", len(ext)) + ext)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


SERVER_HELLO = b"\x16\x03\x03\x00\x5a\x02\x00\x00\x56\x03\x03" + bytes(86)


def events_of(tmp_path: Path, *convs: Conversation) -> dict[int, list[dict[str, Any]]]:
    return by_port(list(capture_events([str(write(tmp_path / "t.pcap", frames(convs)))])))


def test_tls_is_reported_as_tls_whatever_the_port(tmp_path: Path) -> None:
    on_80 = Conversation(50_130, 80).handshake()
    on_80.client(0.02, client_hello("vpn.example.org")).server(0.035, SERVER_HELLO)
    on_443 = Conversation(50_131, 443).handshake()
    on_443.client(0.02, client_hello("www.example.com")).server(0.035, SERVER_HELLO)
    blocked = Conversation(50_132, 80).handshake()  # a box answers TLS with a block page
    blocked.client(0.02, client_hello("news.example.net"))
    blocked.server(0.021, response(403, b"blocked", server="fw"), ttl=60)
    flows = events_of(tmp_path, on_80, on_443, blocked)
    [a], [b], [c] = flows[50_130], flows[50_131], flows[50_132]
    assert (a["protocol"], a["target"]) == (
        "tls", {"host": "vpn.example.org", "port": 80, "scheme": "https"})
    assert (b["protocol"], b["target"]) == (
        "tls", {"host": "www.example.com", "port": 443, "scheme": "https"})
    assert a.get("status") is None and b.get("status") is None
    assert (c["protocol"], c["target"]["host"], c["status"], c["server_header"]) == (
        "tls", "news.example.net", 403, "fw")
    assert (c["ttl"]["response"], c["ttfb_ms"]) == (60, 1.0)


def test_tls_captured_mid_connection_is_tls(tmp_path: Path) -> None:
    c = Conversation(50_140, 443)  # no handshake: the capture began later
    c.client(0.0, b"\x17\x03\x03\x00\x20" + bytes(32)).server(0.02, b"\x17\x03\x03\x00\x10" + bytes(16))
    [ev] = events_of(tmp_path, c)[50_140]
    assert (ev["protocol"], ev["target"]["scheme"], ev["seq_conflict"]) == ("tls", "https", False)
    assert (ev["connect_ms"], ev["ttfb_ms"]) == (None, 20.0)


OPAQUE_C = b"\x00\x2a" + bytes(range(42))
OPAQUE_S = b"\x00\x30" + bytes(range(100, 148))


def opaque(cport: int, port: int, forged_segment: bool) -> Conversation:
    """A flow that is neither HTTP nor TLS; optionally an 11-byte segment forged by a
    box 8 hops nearer races the server's first bytes."""
    c = Conversation(cport, port).handshake()
    c.client(0.02, OPAQUE_C)
    if forged_segment:
        c.server(0.021, b"\x15\x03\x01\x00\x02\x02\x28" + bytes(4), ttl=60)
    c.server(0.035, OPAQUE_S)
    return c.server(0.3, OPAQUE_S)  # and a plain retransmission


def test_a_race_on_a_flow_that_is_neither_http_nor_tls_is_reported(tmp_path: Path) -> None:
    alert = Conversation(50_154, 443).handshake()  # plaintext to a TLS server: an alert
    alert.client(0.02, OPAQUE_C).server(0.03, b"\x15\x03\x03\x00\x02\x02\x32")
    flows = events_of(tmp_path, opaque(50_150, 443, True), opaque(50_151, 5222, True),
                      opaque(50_152, 443, False), opaque(50_153, 5222, False), alert)
    assert sorted(flows) == [50_150, 50_151]  # the clean ones are not probes of anything
    [a], [b] = flows[50_150], flows[50_151]
    assert (a["protocol"], a["target"]["scheme"], a["seq_conflict"]) == ("other", "https", True)
    assert (b["protocol"], b["target"]["scheme"], b["seq_conflict"]) == ("other", "http", True)
    assert (a["target"]["host"], a["ttl"], a["retransmits"]) == (
        SERVER, {"syn_ack": 52, "response": 60}, 2)


def test_a_flow_the_contract_cannot_carry_is_counted_and_the_rest_reported(
        tmp_path: Path) -> None:
    to_port_0 = Conversation(50_160, 0).handshake()
    to_port_0.client(0.02, client_hello("odd.example")).server(0.03, SERVER_HELLO)
    fine = Conversation(50_161, 443).handshake()
    fine.client(0.02, client_hello("ok.example")).server(0.03, SERVER_HELLO)
    skipped: Counter[str] = Counter()
    path = write(tmp_path / "p0.pcap", frames([to_port_0, fine]))
    events = list(capture_events([str(path)], skipped=skipped))
    assert [e["target"]["host"] for e in events] == ["ok.example"]
    assert skipped == Counter({"flow_rejected_invalid": 1})


PIECES = [request("/x"), response(200, PAGE), response(302, b""), b"HTTP/1.1 100 Continue\r\n\r\n",
          b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
          client_hello("fuzz.example"), SERVER_HELLO, b"\x00", b"\r\n\r\n", b"HTTP/1.1 ",
          b"\x17\x03\x03\x00\x05hello", bytes(range(256))]


def test_random_segments_never_break_the_sensor(tmp_path: Path) -> None:
    """Seeded random traffic: any flags, overlapping and wrapping sequence numbers,
    pieces of HTTP and TLS cut anywhere, truncated frames. Every event is contract v1
    (checked as it is made); nothing raises."""
    import random

    from scapy.layers.inet import IP, TCP
    rng = random.Random(19)
    pkts = []
    for i in range(1500):
        cport, sport = 40_000 + rng.randrange(6), rng.choice((80, 443, 8080, 5222))
        from_client = rng.random() < 0.5
        piece = rng.choice(PIECES)
        cut = 0 if rng.random() < 0.5 else rng.randrange(len(piece) + 1)
        payload = piece[cut : cut + rng.randrange(1, 600)]
        seq = 1000 if rng.random() < 0.3 else (
            rng.choice((0, 2**32 - 5, 1000)) + rng.randrange(-50, 1500))
        src, dst = ("10.0.0.5", SERVER) if from_client else (SERVER, "10.0.0.5")
        sp, dp = (cport, sport) if from_client else (sport, cport)
        pkt = IP(src=src, dst=dst, ttl=rng.randrange(0, 256)) / TCP(
            sport=sp, dport=dp, seq=seq % 2**32, flags=rng.choice(("S", "SA", "A", "PA", "FA", "R")),
        ) / payload
        pkt.time = 1_785_000_000 + i * rng.choice((0.001, 0.5, 30))
        pkts.append(pkt)
    path = write(tmp_path / "fuzz.pcap", frames([], lambda ip: ip) + [
        p.__class__(bytes(p)[: rng.randrange(20, 60)]) if rng.random() < 0.05 else p for p in pkts])
    skipped: Counter[str] = Counter()
    events = list(capture_events([str(path)], skipped=skipped))
    assert events and all(isinstance(e["seq_conflict"], bool) for e in events)
    assert not any(k.startswith("flow_rejected") for k in skipped)
