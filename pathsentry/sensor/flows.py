"""TCP reassembly per flow, and the ``http_probe`` each flow becomes.

Each direction of a connection is a :class:`Stream`: bytes placed at their offset
from the initial sequence number, **first arrival wins** (as in the receiving
host's stack, which is why a forged answer that arrives first is what the client
sees). A segment that covers sequence space already received is a
retransmission; if its bytes differ from those already there, the stream has a
*sequence conflict* -- two senders answered for the same bytes (the race Zeek
reports as ``rexmit_inconsistency``). Out-of-order segments fill gaps and are
neither.

>>> s = Stream(base=1000)
>>> s.add(1005, b"world", ts=0.2, ttl=52)   # out of order: fills a gap later
>>> s.add(1000, b"hello", ts=0.3, ttl=52)
>>> s.add(1000, b"hello", ts=0.4, ttl=52)   # same bytes again: a retransmission
>>> bytes(s.contiguous()), s.retransmits, s.conflict
(b'helloworld', 1, False)
>>> s.add(1003, b"XX", ts=0.5, ttl=53)      # different bytes for the same range
>>> bytes(s.contiguous()), s.retransmits, s.conflict
(b'helloworld', 2, True)
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pathsentry.schemas import parse_event
from pathsentry.sensor.reader import Segment, iter_segments

__all__ = [
    "Flow",
    "FlowTable",
    "HttpMessage",
    "SensorSettings",
    "Stream",
    "capture_events",
    "parse_http",
]

SEQ_MOD = 1 << 32
MAX_BYTES = 4 << 20
IDLE_TIMEOUT_S = 60.0
HALF = 1 << 31
TLS_PORTS = frozenset({443, 8443})
PLAIN_PORTS = frozenset({80, 8080})
METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ")
NO_BODY = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class SensorSettings:
    """Bounds of the reassembler."""

    #: Bytes kept per direction; beyond, the body hash covers what was kept.
    max_bytes: int = MAX_BYTES
    #: A flow silent this long (capture time) is finished.
    idle_timeout_s: float = IDLE_TIMEOUT_S
    #: A closed flow (FIN both ways or RST) is kept this long for late retransmissions.
    linger_s: float = 3.0
    #: Flows tracked at once; the least recently active is finished first.
    max_flows: int = 50_000


@dataclass(slots=True)
class Stream:
    """One direction of a TCP connection, reassembled."""

    base: int | None = None
    max_bytes: int = MAX_BYTES
    buf: bytearray = field(default_factory=bytearray)
    #: Received ranges ``[start, end)``, sorted and merged.
    ranges: list[list[int]] = field(default_factory=list)
    retransmits: int = 0
    conflict: bool = False
    truncated: bool = False
    #: Time and TTL of the packet that delivered the first byte.
    first_ts: float | None = None
    first_ttl: int | None = None

    def add(self, seq: int, data: bytes, ts: float, ttl: int) -> None:
        """Place ``data`` that starts at sequence number ``seq``."""
        if not data:
            return
        if self.base is None:
            self.base = seq
        off = (seq - self.base) % SEQ_MOD
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
        overlapped = False
        for a, b in self.ranges:
            lo, hi = max(a, off), min(b, end)
            if lo < hi:
                overlapped = True
                if self.buf[lo:hi] != data[lo - off : hi - off]:
                    self.conflict = True
        if overlapped:
            self.retransmits += 1
        if len(self.buf) < end:
            self.buf.extend(bytes(end - len(self.buf)))
        for lo, hi in self._gaps(off, end):
            self.buf[lo:hi] = data[lo - off : hi - off]
        if off == 0 and self.first_ts is None:
            self.first_ts, self.first_ttl = ts, ttl
        self._merge(off, end)

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

    def contiguous(self) -> memoryview:
        """The bytes from the start up to the first gap."""
        if not self.ranges or self.ranges[0][0] != 0:
            return memoryview(b"")
        return memoryview(self.buf)[: self.ranges[0][1]]


@dataclass(frozen=True, slots=True)
class HttpMessage:
    """The start line and header block of an HTTP/1.x message, and what follows."""

    start: str
    headers: list[tuple[str, str]]
    rest: bytes
    complete: bool

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


def parse_http(data: bytes) -> HttpMessage | None:
    """Split an HTTP/1.x message; header names lower-case, in order.

    >>> m = parse_http(b"HTTP/1.1 101 Switching Protocols\\r\\nServer: cloudflare\\r\\n"
    ...                b"CF-RAY: 8a1\\r\\n\\r\\n")
    >>> m.start, m.headers, m.complete
    ('HTTP/1.1 101 Switching Protocols', [('server', 'cloudflare'), ('cf-ray', '8a1')], True)
    """
    head, sep, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0]:
        return None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon and name and " " not in name:
            headers.append((name.strip().lower(), value.strip()))
    return HttpMessage(lines[0], headers, rest, bool(sep))


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while pos < len(data):
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            break
        try:
            size = int(data[pos:eol].split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += data[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2
    return bytes(out)


def _body(resp: HttpMessage, status: int, request_method: str) -> bytes | None:
    """The response body as far as it was seen; None when the response has none."""
    if status < 200 or status in NO_BODY or request_method == "HEAD":
        return None
    if (resp.header("transfer-encoding") or "").lower().endswith("chunked"):
        return _dechunk(resp.rest)
    length = resp.header("content-length")
    if length is not None and length.isdigit():
        return resp.rest[: int(length)]
    return resp.rest


def _is_tls(data: bytes) -> bool:
    return len(data) >= 3 and data[0] == 0x16 and data[1] == 0x03


def _host(value: str | None, fallback: str) -> str:
    if not value:
        return fallback
    if value.startswith("["):  # [v6]:port
        return value[1 : value.find("]")] or fallback
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _ms(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b < a:
        return None
    return round((b - a) * 1000.0, 3)


@dataclass(slots=True)
class Flow:
    """A TCP connection between a client and a server, both directions reassembled."""

    client: tuple[str, int]
    server: tuple[str, int]
    c2s: Stream
    s2c: Stream
    first_ts: float
    last_ts: float
    syn_ts: float | None = None
    syn_ack_ts: float | None = None
    syn_ack_ttl: int | None = None
    fins: set[str] = field(default_factory=set)
    closed_ts: float | None = None

    def add(self, seg: Segment) -> None:
        from_client = (seg.src, seg.sport) == self.client
        stream = self.c2s if from_client else self.s2c
        self.last_ts = seg.ts
        data_seq = seg.seq
        if seg.syn:
            data_seq = (seg.seq + 1) % SEQ_MOD
            if from_client and not seg.has_ack:
                if self.syn_ack_ts is None:  # the SYN answered is the last one sent
                    self.syn_ts = seg.ts
                    stream.base = data_seq
            elif not from_client and self.syn_ack_ts is None:
                self.syn_ack_ts, self.syn_ack_ttl = seg.ts, seg.ttl
                stream.base = data_seq
        stream.add(data_seq, seg.payload, seg.ts, seg.ttl)
        if seg.fin:
            self.fins.add("c" if from_client else "s")
        if (seg.rst or len(self.fins) == 2) and self.closed_ts is None:
            self.closed_ts = seg.ts

    def to_event(self) -> dict[str, Any] | None:
        """The ``http_probe`` this flow reports, or None if it is neither HTTP nor TLS."""
        request = bytes(self.c2s.contiguous())
        server_ip, port = self.server
        common: dict[str, Any] = {
            "kind": "http_probe",
            "event_id": self._event_id(),
            "ts": datetime.fromtimestamp(self.syn_ts or self.first_ts, tz=UTC).isoformat(),
            "src_ip": self.client[0],
            "connect_ms": _ms(self.syn_ts, self.syn_ack_ts),
            "ttfb_ms": _ms(self.c2s.first_ts, self.s2c.first_ts),
            "ttl": {"syn_ack": self.syn_ack_ttl, "response": self.s2c.first_ttl},
            "retransmits": self.c2s.retransmits + self.s2c.retransmits,
            "seq_conflict": self.c2s.conflict or self.s2c.conflict,
            "reporter": "sensor",
            "flow": f"{_endpoint(self.client)}>{_endpoint(self.server)}",
        }
        if _is_tls(request) or (not request and port in TLS_PORTS):
            fields = {"target": {"host": server_ip, "port": port, "scheme": "https"},
                      "request": "get"}
        elif request.startswith(METHODS):
            fields = self._http_fields(request)
        else:
            return None
        event = {**common, **fields}
        parse_event(event)  # contract v1, or raise
        return event

    def _http_fields(self, request: bytes) -> dict[str, Any]:
        req = parse_http(request)
        assert req is not None  # starts with a method
        method = req.start.split(" ", 1)[0]
        upgrade = (req.header("upgrade") or "").lower() == "websocket"
        out: dict[str, Any] = {
            "target": {
                "host": _host(req.header("host"), self.server[0]).lower(),
                "port": self.server[1],
                "scheme": "ws" if upgrade else "http",
            },
            "request": "ws_upgrade" if upgrade else "get",
        }
        resp = parse_http(bytes(self.s2c.contiguous()))
        if resp is None or not resp.start.startswith("HTTP/"):
            return out
        parts = resp.start.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        out.update(
            status=status,
            header_names=[k for k, _ in resp.headers][:128],
            server_header=(resp.header("server") or None),
        )
        body = _body(resp, status, method) if resp.complete and status is not None else None
        if body is not None:
            out.update(body_sha256=hashlib.sha256(body).hexdigest(), body_len=len(body))
        elif resp.complete:
            out["body_len"] = 0
        return out

    def _event_id(self) -> str:
        ends = f"{_endpoint(self.client)}|{_endpoint(self.server)}"
        key = f"{ends}|{self.c2s.base}|{self.first_ts:.6f}"
        return "sensor-" + hashlib.blake2b(key.encode(), digest_size=10).hexdigest()


def _endpoint(ep: tuple[str, int]) -> str:
    ip, port = ep
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _server_side(seg: Segment) -> bool:
    """Guess whether the sender of ``seg`` is the server (no handshake seen)."""
    if seg.syn:
        return seg.has_ack
    known = PLAIN_PORTS | TLS_PORTS
    if (seg.sport in known) != (seg.dport in known):
        return seg.sport in known
    return seg.sport < seg.dport


FlowKey = tuple[tuple[str, int], tuple[str, int]]


class FlowTable:
    """Flows in progress; :meth:`add` yields the events of flows that finished.

    A flow finishes when it has been closed for ``linger_s`` or silent for
    ``idle_timeout_s`` (capture time), when the table is full (oldest first), or at
    :meth:`finish`.
    """

    def __init__(self, settings: SensorSettings | None = None) -> None:
        self.settings = settings or SensorSettings()
        self.flows: dict[FlowKey, Flow] = {}
        self._swept = 0.0

    def add(self, seg: Segment) -> Iterator[dict[str, Any]]:
        a, b = (seg.src, seg.sport), (seg.dst, seg.dport)
        key = (a, b) if a <= b else (b, a)
        flow = self.flows.get(key)
        if flow is None:
            if ipaddress.ip_address(seg.src).version != ipaddress.ip_address(seg.dst).version:
                return
            client, server = (b, a) if _server_side(seg) else (a, b)
            mk = self.settings.max_bytes
            flow = Flow(client, server, Stream(max_bytes=mk), Stream(max_bytes=mk),
                        seg.ts, seg.ts)
            self.flows[key] = flow
            if len(self.flows) > self.settings.max_flows:
                oldest = min(self.flows, key=lambda k: self.flows[k].last_ts)
                yield from self._emit([oldest])
        flow.add(seg)
        if seg.ts - self._swept >= 1.0:
            self._swept = seg.ts
            yield from self._emit([k for k, f in self.flows.items() if self._done(f, seg.ts)])

    def _done(self, flow: Flow, now: float) -> bool:
        s = self.settings
        if flow.closed_ts is not None and now - flow.closed_ts >= s.linger_s:
            return True
        return now - flow.last_ts >= s.idle_timeout_s

    def _emit(self, keys: Iterable[FlowKey]) -> Iterator[dict[str, Any]]:
        for key in sorted(keys, key=lambda k: self.flows[k].first_ts):
            event = self.flows.pop(key).to_event()
            if event is not None:
                yield event

    def finish(self) -> Iterator[dict[str, Any]]:
        """Events of every flow still in progress, by start time."""
        yield from self._emit(list(self.flows))


def capture_events(
    paths: Iterable[str], settings: SensorSettings | None = None
) -> Iterator[dict[str, Any]]:
    """The ``http_probe`` events of a sequence of capture files (one flow table)."""
    table = FlowTable(settings)
    for path in paths:
        with open(path, "rb") as fh:
            for seg in iter_segments(fh):
                yield from table.add(seg)
    yield from table.finish()
