"""The pcap sensor on captures built with scapy, with exact expectations."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from pathsentry.cli import main
from pathsentry.config import load_config
from pathsentry.detectors.base import DetectorContext
from pathsentry.detectors.injection import InjectionDetector
from pathsentry.enrich import GeoResolver
from pathsentry.enrich.enricher import Enricher
from pathsentry.schemas import HttpProbe, parse_event
from pathsentry.sensor import FlowTable, SensorSettings, Stream, capture_events, iter_segments
from tests.sensor.support import CLIENT, SERVER, Conversation, frames, write

UPGRADE = (b"GET /socket HTTP/1.1\r\nHost: ws.example.com\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")
GENUINE_101 = (b"HTTP/1.1 101 Switching Protocols\r\nServer: cloudflare\r\nCF-RAY: 8a1b2c3d4e5f-ICN\r\n"
               b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
PAGE = (b"<html><script>var c=document.createElement('canvas');"
        b"setTimeout(function(){location.href='http://10.1.1.1/auth'},2000)</script></html>")
FORGED_200 = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: "
              + str(len(PAGE)).encode() + b"\r\nConnection: close\r\n\r\n" + PAGE)
CLIENT_HELLO = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" + bytes(197)
SERVER_HELLO = b"\x16\x03\x03\x00\x5a\x02\x00\x00\x56\x03\x03" + bytes(1400)


PcapFactory = Callable[..., Path]


@pytest.fixture
def write_pcap(tmp_path: Path) -> PcapFactory:
    def f(*convs: Conversation, name: str = "capture.pcap", ng: bool = False) -> Path:
        return write(tmp_path / name, frames(convs), ng)
    return f


def genuine(cport: int = 50_000) -> Conversation:
    c = Conversation(cport, 80).handshake()
    return c.client(0.0125, UPGRADE).server(0.0250, GENUINE_101)


def injected(cport: int = 50_001) -> Conversation:
    """A forged 200 one hop nearer (TTL 53) wins the race; the genuine 101 loses
    and is retransmitted twice."""
    c = Conversation(cport, 80).handshake()
    c.client(0.0125, UPGRADE).server(0.0145, FORGED_200, ttl=53, flags="FPA")
    for t in (0.025, 0.225, 0.625):
        c.server(t, GENUINE_101)
    return c


def retransmitted(cport: int = 50_002) -> Conversation:
    return genuine(cport).server(0.225, GENUINE_101)


def tls_out_of_order(cport: int = 50_003) -> Conversation:
    c = Conversation(cport, 443).handshake()
    c.client(0.0125, CLIENT_HELLO)
    c.server(0.0250, SERVER_HELLO[1000:], at=1000)  # the second half arrives first
    return c.server(0.0252, SERVER_HELLO[:1000])


def probes(path: Path) -> dict[int, HttpProbe]:
    """Events of a capture by client port, each validated against contract v1."""
    out: dict[int, HttpProbe] = {}
    for raw in capture_events([str(path)]):
        ev = parse_event(raw)
        assert isinstance(ev, HttpProbe)
        out[int(raw["flow"].split(">")[0].rsplit(":", 1)[1])] = ev
    return out


def flagged(events: list[HttpProbe]) -> set[str]:
    cfg = load_config(text='[[origin]]\nhost = "ws.example.com"\nexpect_ws_status = 101\n'
                           'expect_server = "cloudflare"\nexpect_headers = ["server", "cf-ray"]\n',
                      env={})
    geo = GeoResolver([])
    det, enricher = InjectionDetector(DetectorContext(cfg, geo)), Enricher(cfg, geo)
    out: set[str] = set()
    for ev in events:
        found = det.process(enricher.enrich(ev))
        out.update(f.event_id for f in (found.flags if found else []))
    return out


def fields(ev: HttpProbe) -> dict[str, Any]:
    return ev.model_dump(mode="json", exclude={"event_id", "session_id", "account"})


def test_genuine_upgrade(write_pcap: PcapFactory) -> None:
    ev = probes(write_pcap(genuine()))[50_000]
    assert fields(ev) == {
        "kind": "http_probe", "ts": "2026-07-25T17:20:00Z", "src_ip": CLIENT,
        "target": {"host": "ws.example.com", "port": 80, "scheme": "ws"},
        "request": "ws_upgrade", "status": 101,
        "header_names": ["server", "cf-ray", "upgrade", "connection", "sec-websocket-accept"],
        "server_header": "cloudflare", "body_sha256": None, "body_len": 0,
        "connect_ms": 12.0, "ttfb_ms": 12.5, "ttl": {"syn_ack": 52, "response": 52},
        "retransmits": 0, "seq_conflict": False, "reporter": "sensor",
        "flow": f"{CLIENT}:50000>{SERVER}:80", "exchange": 0,
        "method": "GET", "protocol": "websocket",
    }
    assert flagged([ev]) == set()


def test_injected_200_racing_genuine_101(write_pcap: PcapFactory) -> None:
    ev = probes(write_pcap(injected()))[50_001]
    assert (ev.target.scheme, ev.request, ev.status) == ("ws", "ws_upgrade", 200)
    assert ev.header_names == ["content-type", "content-length", "connection"]
    assert ev.server_header is None
    assert (ev.body_sha256, ev.body_len) == (hashlib.sha256(PAGE).hexdigest(), len(PAGE))
    assert (ev.connect_ms, ev.ttfb_ms) == (12.0, 2.0)
    assert ev.ttl is not None and (ev.ttl.syn_ack, ev.ttl.response) == (52, 53)
    assert (ev.seq_conflict, ev.retransmits) == (True, 3)
    assert flagged([ev]) == {ev.event_id}


def test_same_bytes_retransmission_is_not_a_conflict(write_pcap: PcapFactory) -> None:
    ev = probes(write_pcap(retransmitted()))[50_002]
    assert (ev.status, ev.seq_conflict, ev.retransmits) == (101, False, 1)
    assert ev.ttl is not None and ev.ttl.response == 52
    assert flagged([ev]) == set()


def test_out_of_order_tls_is_reported_without_content(write_pcap: PcapFactory) -> None:
    ev = probes(write_pcap(tls_out_of_order()))[50_003]
    assert ev.target.model_dump() == {"host": SERVER, "port": 443, "scheme": "https"}
    assert (ev.status, ev.header_names, ev.body_sha256) == (None, None, None)
    assert (ev.seq_conflict, ev.retransmits) == (False, 0)
    assert ev.ttl is not None and (ev.ttl.syn_ack, ev.ttl.response) == (52, 52)
    assert (ev.connect_ms, ev.ttfb_ms) == (12.0, 12.7)  # the first byte came last
    assert flagged([ev]) == set()


def test_mixed_capture_flags_exactly_the_injected_flow(write_pcap: PcapFactory) -> None:
    events = probes(write_pcap(genuine(), injected(), retransmitted(), tls_out_of_order(),
                               name="mixed.pcapng", ng=True))
    assert sorted(events) == [50_000, 50_001, 50_002, 50_003]
    assert flagged(list(events.values())) == {events[50_001].event_id}


def test_event_ids_are_deterministic(write_pcap: PcapFactory) -> None:
    first = probes(write_pcap(genuine(), injected(), name="a.pcap"))
    again = probes(write_pcap(genuine(), injected(), name="b.pcap"))
    assert {k: e.event_id for k, e in first.items()} == {k: e.event_id for k, e in again.items()}
    assert first[50_000].event_id != first[50_001].event_id


def test_cli_writes_jsonl(write_pcap: PcapFactory, tmp_path: Path) -> None:
    out = tmp_path / "probes.jsonl"
    assert main(["sensor", str(write_pcap(genuine(), injected())), "--out", str(out)]) == 0
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [(e["status"], e["seq_conflict"]) for e in lines] == [(101, False), (200, True)]


def test_stream_sequence_wraparound_and_keepalive() -> None:
    s = Stream(base=(1 << 32) - 3)
    s.add((1 << 32) - 4, b"k", ts=0.0, ttl=60)  # keep-alive byte before the stream
    s.add((1 << 32) - 3, b"abc", ts=0.1, ttl=60)
    s.add(0, b"def", ts=0.2, ttl=60)  # wrapped past 2**32
    assert (bytes(s.contiguous()), s.retransmits, s.conflict) == (b"abcdef", 0, False)


def test_keepalive_probe_with_a_garbage_byte_is_not_a_conflict() -> None:
    s = Stream(base=0)
    s.add(0, b"GET / HTTP/1.1\r\n\r\n", ts=0.0, ttl=64)
    s.add(17, b"\x00", ts=45.0, ttl=64)  # Windows: one byte at the next expected - 1
    assert (bytes(s.contiguous()), s.retransmits, s.conflict) == (b"GET / HTTP/1.1\r\n\r\n", 0, False)
    s.add(16, b"X\x00", ts=46.0, ttl=64)  # two bytes, one of them different: a conflict
    assert (s.retransmits, s.conflict) == (1, True)


def test_stream_partial_overlap_with_different_bytes() -> None:
    s = Stream(base=0)
    s.add(0, b"HTTP/1.1 101", ts=0.0, ttl=52)
    s.add(9, b"101 Swi", ts=0.1, ttl=52)  # overlaps 3 equal bytes, adds 4 new
    assert (bytes(s.contiguous()), s.retransmits, s.conflict) == (b"HTTP/1.1 101 Swi", 1, False)
    s.add(9, b"200", ts=0.2, ttl=53)
    assert (bytes(s.contiguous()), s.retransmits, s.conflict) == (b"HTTP/1.1 101 Swi", 2, True)


def test_cli_to_kafka_hands_the_events_to_the_producer(
        write_pcap: PcapFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    import pathsentry.streams.producer as producer

    sent: list[dict[str, Any]] = []

    def fake_produce(config: object, events: Any, rate: float | None = None) -> int:
        assert rate is None
        sent.extend(events)
        return len(sent)

    monkeypatch.setattr(producer, "produce_stream", fake_produce)
    assert main(["sensor", str(write_pcap(injected(), tls_out_of_order())), "--to-kafka"]) == 0
    assert [(e["target"]["scheme"], e.get("status")) for e in sent] == [("ws", 200), ("https", None)]


def test_flows_are_reported_while_the_capture_is_read(write_pcap: PcapFactory) -> None:
    later = tls_out_of_order()
    for p in later.packets:
        p.time += 120  # two minutes after the first flow closed
    path = write_pcap(genuine(), later)
    table = FlowTable(SensorSettings(idle_timeout_s=30.0))
    streamed: list[dict[str, Any]] = []
    with open(path, "rb") as fh:
        for seg in iter_segments(fh):
            streamed.extend(table.add(seg))
    assert [e["target"]["port"] for e in streamed] == [80]
    assert [e["target"]["port"] for e in table.finish()] == [443]
