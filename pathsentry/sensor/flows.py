"""TCP connections, and the ``http_probe`` events each becomes.

A :class:`Flow` holds both directions of a connection as :class:`Stream` s and
reports, when it finishes:

- **one event per HTTP request/response exchange** (keep-alive and pipelined
  requests are paired with their answers in order; an interim ``1xx`` answer such
  as ``100 Continue`` is skipped for the final one; after a ``101`` upgrade the rest
  of the connection belongs to the upgrade). Each exchange carries its own time to
  first byte, answer TTL, and the retransmissions and sequence conflicts that fell in
  its bytes (the bytes of exchange *i* run from its request, or answer, to the next);
- one event for a TLS connection, without content (``protocol`` ``tls``, the target
  host from the ClientHello's server name), whatever the port -- TLS sent to port 80
  is reported as TLS on port 80;
- one event for a connection that is neither HTTP nor TLS, only when it holds a
  sequence conflict (``protocol`` ``other``; the scheme from the port: ``https`` for
  443/8443, else ``http``).

The handshake gives the bases of both streams, the connect time and the SYN-ACK's
TTL; a SYN or SYN-ACK seen after data (out of order) moves the data to the real base
rather than restarting the stream. A new SYN on a finished 4-tuple starts a new flow.
In a connection already open when the capture began, HTTP is picked up at the first
request line that starts a packet or follows a line break, and at the first answer
not sent before it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pathsentry.schemas import EventError, parse_event
from pathsentry.schemas.events import MAX_HEADERS
from pathsentry.sensor.http import (
    MAX_HEAD,
    HttpMessage,
    is_request,
    is_response,
    is_tls,
    line_starts,
    split_requests,
    split_responses,
    tls_server_name,
)
from pathsentry.sensor.reader import Segment, merged_segments
from pathsentry.sensor.stream import MAX_BYTES, SEQ_MOD, Stream

__all__ = [
    "Exchange",
    "Flow",
    "FlowTable",
    "SensorSettings",
    "capture_events",
]

IDLE_TIMEOUT_S = 60.0
TLS_PORTS = frozenset({443, 8443})
PLAIN_PORTS = frozenset({80, 8080})
_END = 1 << 62  # past any offset
MAX_RTT_S = 60.0


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


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and its final answer, with the byte windows that belong to them."""

    request: HttpMessage
    response: HttpMessage | None
    #: ``[start, end)`` of the client stream and of the server stream owned by the exchange.
    c2s: tuple[int, int]
    s2c: tuple[int, int]


def pair_exchanges(requests: list[HttpMessage], responses: list[HttpMessage]) -> list[Exchange]:
    """Requests and answers paired in order (HTTP/1.x answers in request order)."""
    finals: list[tuple[HttpMessage | None, HttpMessage | None]] = []
    j = 0
    for _ in requests:
        first = final = None
        while j < len(responses) and final is None:
            r = responses[j]
            j += 1
            first = first or r
            if r.status is None or r.status >= 200 or r.status == 101:
                final = r
        finals.append((first, final))
    out: list[Exchange] = []
    for i, (req, (_, final)) in enumerate(zip(requests, finals, strict=True)):
        c_end = requests[i + 1].start if i + 1 < len(requests) else _END
        s_start = 0 if i == 0 else _start(finals[i][0])
        s_end = _start(finals[i + 1][0]) if i + 1 < len(requests) else _END
        out.append(Exchange(req, final, (0 if i == 0 else req.start, c_end), (s_start, s_end)))
    return out


def _pickups(stream: Stream, kind: Literal["request", "response"]) -> Iterator[int]:
    """Offsets in the first received bytes of ``stream`` where a ``kind`` line begins at
    a packet's first byte or after a line break, in order."""
    view = stream.contiguous()
    begins = is_request if kind == "request" else is_response
    packets = {a for a, _, _, _ in stream.deliveries
               if a < len(view) and begins(view[a : a + 64])}
    head = bytes(view[:MAX_HEAD])
    yield from sorted(packets | set(line_starts(head, kind)))


def _from(ranges: list[list[int]], start: int) -> list[tuple[int, int]]:
    """``ranges`` from ``start`` on."""
    return [(max(a, start), b) for a, b in ranges if b > start]


def _start(msg: HttpMessage | None) -> int:
    return _END if msg is None else msg.start


def _host(value: str | None, fallback: str) -> str:
    """The host of a ``Host`` header or server name; ``fallback`` (the server's address)
    when there is none or it is not a plausible host name."""
    value = (value or "").strip().lower()
    if value.startswith("["):  # [v6]:port
        value = value[1 : value.find("]")]
    elif value.count(":") == 1:
        value = value.rsplit(":", 1)[0]
    value = value.rstrip(".")
    ok = 0 < len(value) <= 253 and value.isascii() and value.isprintable() and " " not in value
    return value if ok else fallback


def _ms(a: float | None, b: float | None) -> float | None:
    """Milliseconds from ``a`` to ``b``; None beyond the contract's 60 s (a long poll)."""
    if a is None or b is None or b < a or b - a > MAX_RTT_S:
        return None
    return round((b - a) * 1000.0, 3)


def _answer(resp: HttpMessage | None) -> dict[str, Any]:
    """Status (None if the status line has none), header names, server header and body
    of an answer."""
    if resp is None:
        return {}
    out: dict[str, Any] = {
        "status": resp.status,
        "header_names": [k[:128] for k, _ in resp.headers][:MAX_HEADERS],
        "server_header": (resp.header("server") or "")[:256] or None,
    }
    if resp.status is None:
        return out
    if resp.body is not None:
        out.update(body_sha256=hashlib.sha256(resp.body).hexdigest(), body_len=len(resp.body))
    elif resp.complete:
        out["body_len"] = 0
    return out


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
        self.first_ts = min(self.first_ts, seg.ts)
        self.last_ts = max(self.last_ts, seg.ts)
        data_seq = seg.seq
        if seg.syn:
            data_seq = (seg.seq + 1) % SEQ_MOD
            if from_client and not seg.has_ack:
                # the SYN answered is the last one sent before the SYN-ACK
                before_answer = self.syn_ack_ts is None or seg.ts <= self.syn_ack_ts
                if before_answer and (self.syn_ts is None or seg.ts >= self.syn_ts):
                    self.syn_ts = seg.ts
                    stream.rebase(data_seq)
            elif not from_client and (self.syn_ack_ts is None or seg.ts < self.syn_ack_ts):
                self.syn_ack_ts, self.syn_ack_ttl = seg.ts, seg.ttl
                stream.rebase(data_seq)
        stream.add(data_seq, seg.payload, seg.ts, seg.ttl)
        if seg.fin:
            self.fins.add("c" if from_client else "s")
        if (seg.rst or len(self.fins) == 2) and self.closed_ts is None:
            self.closed_ts = seg.ts

    def is_new_connection(self, seg: Segment) -> bool:
        """A client SYN that starts another connection on this 4-tuple."""
        if not seg.syn or seg.has_ack or (seg.src, seg.sport) != self.client:
            return False
        if self.c2s.base is None or (seg.seq + 1) % SEQ_MOD == self.c2s.base:
            return False
        if seg.ts < self.last_ts:  # an earlier SYN, seen late: the same connection
            return False
        return self.closed_ts is not None or self.syn_ack_ts is not None

    def _http_start(self) -> int | None:
        """Where the first request begins in the client stream: its start, or -- in a
        connection whose start was not captured -- the first request line at a packet
        start or after a line break. None when the client does not speak HTTP."""
        if is_request(self.c2s.contiguous()):
            return 0
        if self.c2s.anchored:
            return None
        return next(_pickups(self.c2s, "request"), None)

    def _answer_start(self, request_ts: float | None) -> int:
        """Where answers begin in the server stream: its start, or in a connection whose
        start was not captured, the first response line not sent before the first request
        seen (earlier ones answer requests that were not captured)."""
        if self.s2c.anchored:
            return 0
        for at in _pickups(self.s2c, "response"):
            ts = self.s2c.at(at)[0]
            if request_ts is None or (ts is not None and ts >= request_ts):
                return at
        return _END

    def to_events(self) -> list[dict[str, Any]]:
        """The ``http_probe`` events of this flow (each validated against contract v1)."""
        request = self.c2s.contiguous()
        http_start = self._http_start()
        if http_start is not None:
            events = self._http_events(http_start)
        elif (is_tls(request) or self.c2s.conflict or self.s2c.conflict or (not request and (
                is_tls(self.s2c.contiguous()) or self.server[1] in TLS_PORTS))):
            events = [self._flow_event()]
        else:
            return []
        for event in events:
            parse_event(event)  # contract v1, or raise
        return events

    def _common(self, index: int, c_at: int, s_at: int | None,
                c_win: tuple[int, int], s_win: tuple[int, int]) -> dict[str, Any]:
        """Fields every event of the flow has; ``c_at``/``s_at`` are the offsets of the
        request's and the answer's first byte."""
        c_ts = self.c2s.at(c_at)[0]
        s_ts, s_ttl = self.s2c.at(s_at) if s_at is not None else (None, None)
        start = (self.syn_ts or self.first_ts) if index == 0 else (c_ts or self.first_ts)
        c_rx, c_conflict = self.c2s.window(*c_win)
        s_rx, s_conflict = self.s2c.window(*s_win)
        return {
            "kind": "http_probe",
            "event_id": self._event_id(index),
            "ts": datetime.fromtimestamp(start, tz=UTC).isoformat(),
            "src_ip": self.client[0],
            "connect_ms": _ms(self.syn_ts, self.syn_ack_ts),
            "ttfb_ms": _ms(c_ts, s_ts),
            "ttl": {"syn_ack": self.syn_ack_ttl or None, "response": s_ttl or None},  # 0: none
            "retransmits": c_rx + s_rx,
            "seq_conflict": c_conflict or s_conflict,
            "reporter": "sensor",
            "flow": f"{_endpoint(self.client)}>{_endpoint(self.server)}",
            "exchange": index,
        }

    def _http_events(self, c_start: int) -> list[dict[str, Any]]:
        c_data, s_data = bytes(self.c2s.buf), bytes(self.s2c.buf)
        requests = split_requests(c_data, _from(self.c2s.ranges, c_start))
        s_start = self._answer_start(self.c2s.at(c_start)[0])
        responses = split_responses(s_data, _from(self.s2c.ranges, s_start),
                                    [r.method for r in requests])
        events = []
        for i, ex in enumerate(pair_exchanges(requests, responses)):
            req = ex.request
            upgrade = (req.header("upgrade") or "").lower() == "websocket"
            s_at = ex.response.start if ex.response is not None else None
            events.append({
                **self._common(i, req.start, s_at, ex.c2s, ex.s2c),
                "target": {
                    "host": _host(req.header("host"), self.server[0]),
                    "port": self.server[1],
                    "scheme": "ws" if upgrade else "http",
                },
                "request": "ws_upgrade" if upgrade else "get",
                "method": req.method[:32],
                "protocol": "websocket" if upgrade else "http",
                **_answer(ex.response),
            })
        return events

    def _flow_event(self) -> dict[str, Any]:
        """The one event of a flow that is not HTTP: TLS on any port (no content, unless
        the server answered in plaintext HTTP), or other bytes holding a conflict."""
        hello, answer = self.c2s.contiguous(), self.s2c.contiguous()
        tls = is_tls(hello) or (not hello and is_tls(answer))  # the client speaks TLS first
        plain = split_responses(bytes(answer), [(0, len(answer))], ["GET"]) \
            if is_response(answer) else []
        port = self.server[1]
        scheme = "https" if tls or (port in TLS_PORTS and not plain) else "http"
        return {
            **self._common(0, 0, 0, (0, _END), (0, _END)),
            "target": {"host": _host(tls_server_name(hello) if tls else None, self.server[0]),
                       "port": port, "scheme": scheme},
            "request": "get",
            "protocol": "tls" if tls else ("other" if hello or answer else None),
            **_answer(plain[0] if plain else None),
        }

    def _event_id(self, index: int) -> str:
        ends = f"{_endpoint(self.client)}|{_endpoint(self.server)}"
        key = f"{ends}|{self.c2s.base}|{self.first_ts:.6f}" + (f"|{index}" if index else "")
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
    ``idle_timeout_s`` (capture time), when a new SYN reuses its 4-tuple, when the
    table is full (oldest first), or at :meth:`finish`.
    """

    def __init__(self, settings: SensorSettings | None = None) -> None:
        self.settings = settings or SensorSettings()
        #: Flows whose events the contract refused, by reason.
        self.rejected: Counter[str] = Counter()
        self.flows: dict[FlowKey, Flow] = {}
        self._swept = 0.0

    def add(self, seg: Segment) -> Iterator[dict[str, Any]]:
        a, b = (seg.src, seg.sport), (seg.dst, seg.dport)
        key = (a, b) if a <= b else (b, a)
        flow = self.flows.get(key)
        if flow is not None and flow.is_new_connection(seg):
            yield from self._emit([key])
            flow = None
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
        for key in sorted(keys, key=lambda k: (self.flows[k].first_ts, k)):
            flow = self.flows.pop(key)
            try:
                yield from flow.to_events()
            except EventError as e:  # a flow the contract cannot carry: counted, not fatal
                self.rejected[e.reason] += 1

    def finish(self) -> Iterator[dict[str, Any]]:
        """Events of every flow still in progress, by start time (then addresses)."""
        yield from self._emit(list(self.flows))


def capture_events(paths: Iterable[str], settings: SensorSettings | None = None,
                   skipped: Counter[str] | None = None) -> Iterator[dict[str, Any]]:
    """The ``http_probe`` events of several capture files read as one capture in time
    order (one flow table); frames without a TCP segment and flows whose events the
    contract refused (``flow_rejected_<reason>``) are counted in ``skipped``."""
    table = FlowTable(settings)
    for seg in merged_segments(paths, skipped):
        yield from table.add(seg)
    yield from table.finish()
    if skipped is not None:
        skipped.update({f"flow_rejected_{r}": n for r, n in table.rejected.items()})
