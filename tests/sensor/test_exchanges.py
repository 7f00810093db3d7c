"""One ``http_probe`` per request/response exchange: keep-alive, pipelining,
``100 Continue``, and a race on one exchange of many."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathsentry.sensor import capture_events
from tests.sensor.support import SERVER, T0, Conversation, frames, write


@dataclass(frozen=True)
class Planned:
    method: str
    status: int
    body: bytes
    request: bytes
    response: bytes


def plan(i: int) -> Planned:
    """The i-th exchange of a keep-alive connection: GETs, POSTs with a body, HEADs,
    chunked answers, 304s and 404s in turn."""
    body = f"<p>page {i}</p>".encode() * (i % 5 + 1)
    kind = i % 5
    if kind == 1:  # a POST with a body
        form = f"name=player{i}".encode()
        req = (f"POST /form/{i} HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: "
               f"{len(form)}\r\n\r\n").encode() + form
    else:
        method = "HEAD" if kind == 2 else "GET"
        req = f"{method} /p/{i} HTTP/1.1\r\nHost: shop.example.com\r\n\r\n".encode()
    method = req.split(b" ", 1)[0].decode()
    status = {3: 304, 4: 404}.get(kind, 200)
    head = f"HTTP/1.1 {status} X\r\nServer: nginx\r\nX-Id: {i}\r\n"
    if status == 304:
        return Planned(method, status, b"", req, (head + "\r\n").encode())
    if kind == 0:  # chunked, two chunks and a trailer
        half = len(body) // 2
        chunks = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in (body[:half], body[half:]))
        resp = (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\nX-T: 1\r\n\r\n"
        return Planned(method, status, body, req, resp)
    resp = (head + f"Content-Length: {len(body)}\r\n\r\n").encode()
    return Planned(method, status, b"" if method == "HEAD" else body, req,
                   resp if method == "HEAD" else resp + body)


def by_exchange(path: Path) -> list[dict[str, Any]]:
    events = list(capture_events([str(path)]))
    assert [e["exchange"] for e in events] == list(range(len(events)))
    return events


def test_keep_alive_gives_one_event_per_exchange(tmp_path: Path) -> None:
    n, race_at, resent_at = 40, 23, 7
    c = Conversation(50_200, 80).handshake()
    c_at = s_at = 0
    plans = [plan(i) for i in range(n)]
    for i, p in enumerate(plans):
        t = 0.02 + 0.05 * i
        c.client(t, p.request, at=c_at)
        if i == race_at:  # a forged answer of the same length wins; the genuine loses
            forged = p.response.replace(b"X-Id", b"X-Ad").replace(b"nginx", b"proxy")
            assert len(forged) == len(p.response) and forged != p.response
            c.server(t + 0.001, forged, at=s_at, ttl=61)
        c.server(t + 0.004, p.response, at=s_at)
        if i == resent_at:
            c.server(t + 0.03, p.response, at=s_at)
        c_at, s_at = c_at + len(p.request), s_at + len(p.response)
    c.close(0.02 + 0.05 * n, c_at, s_at)
    events = by_exchange(write(tmp_path / "keepalive.pcap", frames([c])))

    assert len(events) == n
    assert [e["method"] for e in events] == [p.method for p in plans]
    assert [e["status"] for e in events] == [p.status for p in plans]
    expected_bodies = [(hashlib.sha256(p.body).hexdigest() if p.body else None, len(p.body))
                       for p in plans]
    assert [(e.get("body_sha256"), e["body_len"]) for e in events] == expected_bodies
    assert [e["seq_conflict"] for e in events] == [i == race_at for i in range(n)]
    assert [e["retransmits"] for e in events] == [int(i in (race_at, resent_at)) for i in range(n)]
    assert [e["ttfb_ms"] for e in events] == [1.0 if i == race_at else 4.0 for i in range(n)]
    assert [e["ttl"]["response"] for e in events] == [61 if i == race_at else 52 for i in range(n)]
    assert events[race_at]["server_header"] == "proxy"
    assert {e["connect_ms"] for e in events} == {12.0}
    assert len({e["event_id"] for e in events}) == n
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)


def test_pipelined_requests_are_paired_in_order(tmp_path: Path) -> None:
    plans = [plan(i) for i in (5, 2, 3, 6, 10)]  # GET, HEAD, 304, POST, chunked GET
    c = Conversation(50_210, 80).handshake()
    c.client(0.02, b"".join(p.request for p in plans))  # all in one segment
    answers = b"".join(p.response for p in plans)
    c.server(0.05, answers[:250]).server(0.051, answers[250:], at=250)
    events = by_exchange(write(tmp_path / "pipelined.pcap", frames([c])))
    assert [(e["method"], e["status"], e["body_len"]) for e in events] == [
        (p.method, p.status, len(p.body)) for p in plans]
    starts = [sum(len(p.response) for p in plans[:i]) for i in range(len(plans))]
    assert 0 < sum(s >= 250 for s in starts) < len(plans)  # answers in both segments
    assert [e["ttfb_ms"] for e in events] == [30.0 if s < 250 else 31.0 for s in starts]
    assert not any(e["seq_conflict"] for e in events)


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def test_100_continue_reports_the_final_answer(tmp_path: Path) -> None:
    body = b'{"score": 1200}'
    post = (b"POST /api/score HTTP/1.1\r\nHost: api.example.com\r\nExpect: 100-continue\r\n"
            b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n\r\n")
    created = (b"HTTP/1.1 201 Created\r\nServer: envoy\r\nLocation: /api/score/9\r\n"
               b"Content-Length: 2\r\n\r\nok")
    get = b"GET /api/me HTTP/1.1\r\nHost: api.example.com\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nServer: envoy\r\nContent-Length: 4\r\n\r\nuser"
    c = Conversation(50_220, 80).handshake()
    c.client(0.02, post).server(0.032, CONTINUE)
    c.client(0.033, body, at=len(post)).server(0.05, created, at=len(CONTINUE))
    c.client(0.1, get, at=len(post) + len(body))
    c.server(0.11, ok, at=len(CONTINUE) + len(created))
    first, second = by_exchange(write(tmp_path / "continue.pcap", frames([c])))
    assert (first["method"], first["request"], first["status"]) == ("POST", "get", 201)
    assert first["header_names"] == ["server", "location", "content-length"]
    assert (first["server_header"], first["body_len"]) == ("envoy", 2)
    assert (first["ttfb_ms"], first["retransmits"], first["seq_conflict"]) == (30.0, 0, False)
    assert (second["method"], second["status"], second["body_len"]) == ("GET", 200, 4)


def test_a_refused_upgrade_then_more_requests(tmp_path: Path) -> None:
    upgrade = (b"GET /ws HTTP/1.1\r\nHost: ws.example.com\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\n\r\n")
    refused = b"HTTP/1.1 426 Upgrade Required\r\nServer: nginx\r\nContent-Length: 0\r\n\r\n"
    accepted = b"HTTP/1.1 101 Switching Protocols\r\nServer: nginx\r\n\r\n"
    frame = b"\x81\x05HTTP/"  # a WebSocket text frame after the upgrade: not HTTP any more
    c = Conversation(50_230, 80).handshake()
    c.client(0.02, upgrade).server(0.03, refused)
    c.client(0.04, upgrade, at=len(upgrade)).server(0.05, accepted + frame, at=len(refused))
    events = by_exchange(write(tmp_path / "ws.pcap", frames([c])))
    assert [(e["protocol"], e["request"], e["status"]) for e in events] == [
        ("websocket", "ws_upgrade", 426), ("websocket", "ws_upgrade", 101)]


def test_answers_outside_the_contract_are_bounded_not_fatal(tmp_path: Path) -> None:
    long_host = "h" * 300 + ".example.com"
    odd = (b"HTTP/1.1 2000 Odd\r\nServer: " + b"s" * 400 + b"\r\n" + b"X" * 200
           + b": 1\r\nContent-Length: 0\r\n\r\n")
    slow = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    c = Conversation(50_240, 80, server_ttl=0).handshake()  # a crafted TTL of 0
    first = f"GET / HTTP/1.1\r\nHost: {long_host}\r\n\r\n".encode()
    second = b"GET /poll HTTP/1.1\r\nHost: Poll.Example.COM.:8080\r\n\r\n"
    c.client(0.02, first).server(0.03, odd)
    c.client(0.04, second, at=len(first)).server(90.04, slow, at=len(odd))  # a long poll
    one, two = by_exchange(write(tmp_path / "odd.pcap", frames([c])))
    assert (one["target"]["host"], one["status"], one.get("body_len")) == (SERVER, None, None)
    assert one["ttl"] == {"syn_ack": None, "response": None}
    assert one["server_header"] == "s" * 256 and one["header_names"][1] == "x" * 128
    assert (two["target"]["host"], two["status"], two["ttfb_ms"]) == ("poll.example.com", 200, None)


def test_a_connection_open_before_the_capture_is_picked_up_at_a_request(
        tmp_path: Path) -> None:
    """The capture starts inside the first request; its answer is not paired with the
    next request."""
    plans = [plan(i) for i in (6, 7, 8, 10)]
    c = Conversation(50_250, 80).handshake()
    c_at = s_at = 0
    for i, p in enumerate(plans):
        t = 0.02 + 0.05 * i
        c.client(t, p.request[:20], at=c_at).client(t + 0.001, p.request[20:], at=c_at + 20)
        c.server(t + 0.004, p.response, at=s_at)
        c_at, s_at = c_at + len(p.request), s_at + len(p.response)
    c.packets = [p for p in c.packets if float(p.time) - T0 > 0.0205]  # from A's 2nd segment
    events = by_exchange(write(tmp_path / "midway.pcap", frames([c])))
    assert [(e["method"], e["status"], e["body_len"]) for e in events] == [
        (p.method, p.status, len(p.body)) for p in plans[1:]]
    assert [e["ttfb_ms"] for e in events] == [4.0] * 3
    assert (events[0]["connect_ms"], events[0]["ttl"]["syn_ack"]) == (None, None)
