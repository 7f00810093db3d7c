"""HTTP/1.x message framing on a reassembled stream, and the TLS the sensor recognises.

A request stream is cut into requests (header block, then a body framed by
``Content-Length`` or chunked encoding); a response stream into responses
(interim 1xx answers such as ``100 Continue`` are kept apart from the final
answer; ``101`` and a ``2xx`` to ``CONNECT`` end HTTP on the connection; a body
with neither length nor chunking runs to the end of the stream). Cutting stops
where the bytes are no longer HTTP or are missing, and starts again at the next
received range that begins a message.

>>> reqs = split_requests(b"GET /a HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"
...                       b"POST /b HTTP/1.1\\r\\nContent-Length: 2\\r\\n\\r\\nhi"
...                       b"GET /c HTTP/1.1\\r\\n\\r\\n", [(0, 88)])
>>> [(m.start, m.line) for m in reqs]
[(0, 'GET /a HTTP/1.1'), (28, 'POST /b HTTP/1.1'), (69, 'GET /c HTTP/1.1')]
>>> resp = split_responses(b"HTTP/1.1 100 Continue\\r\\n\\r\\n"
...                        b"HTTP/1.1 201 Created\\r\\nContent-Length: 0\\r\\n\\r\\n", [(0, 68)],
...                        ["POST"])
>>> [(m.status, m.start) for m in resp]
[(100, 0), (201, 25)]
>>> tls_server_name(bytes.fromhex("16030100") + bytes(60)) is None
True
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "HttpMessage",
    "is_request",
    "is_response",
    "is_tls",
    "line_starts",
    "parse_http",
    "split_requests",
    "split_responses",
    "tls_server_name",
]

METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ",
           b"CONNECT ", b"TRACE ")
_REQUEST_LINE = re.compile(rb"[A-Z][A-Z_-]{1,19} \S+ HTTP/1\.[019]\r?\n")
_AFTER_BREAK = {
    "request": re.compile(rb"\r\n(?:" + b"|".join(m.strip() for m in METHODS)
                          + rb") \S+ HTTP/1\.[01]\r\n"),
    "response": re.compile(rb"\r\nHTTP/1\.[01] \d{3}[ \r]"),
}
NO_BODY = frozenset({204, 304})
#: Longest header block read.
MAX_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class HttpMessage:
    """An HTTP/1.x message: where it starts in its stream, its head, and its body."""

    start: int
    line: str
    headers: list[tuple[str, str]]
    #: The body as far as it was seen (dechunked), or None when it has none.
    body: bytes | None
    #: The header block was complete.
    complete: bool
    #: Offset after the message, or None when it runs to the end of what was seen.
    end: int | None = None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def status(self) -> int | None:
        parts = self.line.split(" ", 2)
        ok = self.line.startswith("HTTP/") and len(parts) > 1 and len(parts[1]) == 3 \
            and parts[1].isdigit()
        return int(parts[1]) if ok else None

    @property
    def method(self) -> str:
        return self.line.split(" ", 1)[0]


def is_request(data: bytes | memoryview) -> bool:
    head = bytes(data[:64])
    return head.startswith(METHODS) or _REQUEST_LINE.match(head) is not None


def line_starts(data: bytes, kind: Literal["request", "response"]) -> Iterator[int]:
    """Offsets in ``data`` (the first ``MAX_HEAD`` bytes) where a request or response line
    begins after a line break: where to pick HTTP up in a connection captured midway.

    >>> list(line_starts(b"ody\\r\\n\\r\\nGET /n HTTP/1.1\\r\\nHost: x\\r\\n", "request"))
    [7]
    """
    for m in _AFTER_BREAK[kind].finditer(data, 0, MAX_HEAD):
        yield m.start() + 2


def is_response(data: bytes | memoryview) -> bool:
    return bytes(data[:5]) == b"HTTP/"


def is_tls(data: bytes | memoryview) -> bool:
    """A TLS record header: content type 20-23 (handshake, alert, data...), version 3.x."""
    return len(data) >= 3 and 20 <= data[0] <= 23 and data[1] == 3 and data[2] <= 4


def parse_http(data: bytes, pos: int = 0,
               limit: int | None = None) -> tuple[str, list[tuple[str, str]], int, bool] | None:
    """The message head at ``pos``: ``(start line, headers, offset after the header block,
    complete)``; header names lower-case, in order.

    >>> parse_http(b"HTTP/1.1 101 Switching Protocols\\r\\nServer: cloudflare\\r\\n"
    ...            b"CF-RAY: 8a1\\r\\n\\r\\n")
    ('HTTP/1.1 101 Switching Protocols', [('server', 'cloudflare'), ('cf-ray', '8a1')], 69, True)
    """
    limit = min(len(data) if limit is None else limit, pos + MAX_HEAD)
    cut = data.find(b"\r\n\r\n", pos, limit)
    head = data[pos:limit] if cut < 0 else data[pos:cut]
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0]:
        return None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon and name and " " not in name:
            headers.append((name.strip().lower(), value.strip()))
    return lines[0], headers, (limit if cut < 0 else cut + 4), cut >= 0


def _chunked(data: bytes, pos: int, limit: int) -> tuple[bytes, int | None]:
    """Dechunk from ``pos`` up to ``limit``: the body seen, and the offset after the last
    chunk (None if it is not reached)."""
    out = bytearray()
    while pos < limit:
        eol = data.find(b"\r\n", pos, limit)
        if eol < 0:
            break
        try:
            size = int(data[pos:eol].split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:  # then trailers, up to an empty line
            blank = eol if data.startswith(b"\r\n\r\n", eol) else data.find(
                b"\r\n\r\n", eol, limit)
            return bytes(out), (blank + 4 if blank >= 0 else None)
        out += data[eol + 2 : min(eol + 2 + size, limit)]
        pos = eol + 2 + size + 2
    return bytes(out), None


def _framed(data: bytes, pos: int, limit: int, headers: list[tuple[str, str]],
            to_close: bool) -> tuple[bytes, int | None]:
    """The body after a header block ending at ``pos`` (as far as ``limit``, where the
    received bytes end) and the offset after it, None when unknown. Without length or
    chunking the body is empty, or runs to the end of the stream if ``to_close``."""
    te = next((v for k, v in headers if k == "transfer-encoding"), "")
    if te.lower().endswith("chunked"):
        return _chunked(data, pos, limit)
    length = next((v for k, v in headers if k == "content-length"), "").strip()
    if length.isdigit():
        end = pos + int(length)
        return data[pos : min(end, limit)], (end if end <= len(data) else None)
    if to_close:
        return data[pos:limit], None
    return b"", pos


#: ``framer(data, pos, limit) -> (message, no HTTP after it)``
Framer = Callable[[bytes, int, int], tuple[HttpMessage | None, bool]]


def _split(data: bytes, ranges: Sequence[Sequence[int]], framer: Framer,
           begins: Callable[[bytes | memoryview], bool]) -> list[HttpMessage]:
    """Messages one after the other; after a gap or an unframed message, the next one
    is looked for at the start of the next received range."""
    out: list[HttpMessage] = []
    i, pos = 0, 0
    while i < len(ranges):
        a, b = ranges[i][0], ranges[i][1]
        pos = max(pos, a)
        if pos >= b:
            i += 1
            continue
        msg, stop = framer(data, pos, b) if begins(memoryview(data)[pos:b]) else (None, False)
        if msg is None:
            i += 1
            continue
        out.append(msg)
        if stop:
            break
        if msg.end is None:
            i += 1
        else:
            pos = msg.end
    return out


def split_requests(data: bytes, ranges: Sequence[Sequence[int]]) -> list[HttpMessage]:
    """The requests in a client stream; ``ranges`` are the received ``[start, end)``."""
    def framer(buf: bytes, pos: int, limit: int) -> tuple[HttpMessage | None, bool]:
        parsed = parse_http(buf, pos, limit)
        if parsed is None:
            return None, False
        line, headers, end_of_head, complete = parsed
        body, end = (_framed(buf, end_of_head, limit, headers, False) if complete
                     else (None, None))
        return HttpMessage(pos, line, headers, body or None, complete, end), False
    return _split(data, ranges, framer, is_request)


def split_responses(data: bytes, ranges: Sequence[Sequence[int]],
                    methods: list[str]) -> list[HttpMessage]:
    """The responses in a server stream; ``methods`` are the requests' methods, in order
    (a HEAD answer has no body, a 2xx to CONNECT ends HTTP)."""
    finals = 0

    def framer(buf: bytes, pos: int, limit: int) -> tuple[HttpMessage | None, bool]:
        nonlocal finals
        parsed = parse_http(buf, pos, limit)
        if parsed is None:
            return None, False
        line, headers, end_of_head, complete = parsed
        if not complete:
            return HttpMessage(pos, line, headers, None, False), False
        method = methods[finals] if finals < len(methods) else "GET"
        # a status line without a status is framed as a final answer
        status = HttpMessage(pos, line, headers, None, True).status or 200
        if status >= 200 or status == 101:
            finals += 1
        if status == 101 or (method == "CONNECT" and 200 <= status < 300):
            return HttpMessage(pos, line, headers, None, True), True  # no HTTP after
        if status < 200 or status in NO_BODY or method == "HEAD":
            return HttpMessage(pos, line, headers, None, True, end_of_head), False
        body, end = _framed(buf, end_of_head, limit, headers, True)
        return HttpMessage(pos, line, headers, body, True, end), False
    return _split(data, ranges, framer, is_response)


def tls_server_name(data: bytes | memoryview) -> str | None:
    """The server name (SNI) of a TLS ClientHello, if the record holds one."""
    buf = bytes(data[: 16 * 1024 + 5])
    try:
        if buf[0] != 22 or buf[5] != 1:  # handshake record, ClientHello
            return None
        pos = 5 + 4 + 2 + 32  # record header, handshake header, version, random
        pos += 1 + buf[pos]  # session id
        pos += 2 + struct.unpack_from("!H", buf, pos)[0]  # cipher suites
        pos += 1 + buf[pos]  # compression methods
        end = pos + 2 + struct.unpack_from("!H", buf, pos)[0]
        pos += 2
        while pos + 4 <= min(end, len(buf)):
            kind, size = struct.unpack_from("!HH", buf, pos)
            pos += 4
            if kind == 0:  # server_name: list length, type 0 (host_name), length, name
                name_len = struct.unpack_from("!H", buf, pos + 3)[0]
                name = buf[pos + 5 : pos + 5 + name_len].decode("ascii")
                return name or None
            pos += size
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return None
