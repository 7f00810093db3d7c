"""Event contract v1: the four event kinds a game backend publishes.

Every event is one JSON object per Kafka message. ``logins`` are keyed by
account, ``network-telemetry`` by session id. Unknown extra fields are kept
(``extra="allow"``) so producers can add context without breaking consumers.

>>> ev = parse_event(b'{"kind": "login", "event_id": "e1", "ts": "2026-01-01T09:00:00+09:00",'
...                  b' "src_ip": "211.234.10.7", "account": "xiaopai001", "server_id": "kr-sel-1",'
...                  b' "app_rtt_ms": [4.1, 3.9], "tcp_rtt_ms": 3.8, "guild": "x"}')
>>> ev.kind, ev.account, str(ev.src_ip), ev.min_app_rtt
('login', 'xiaopai001', '211.234.10.7', 3.9)
>>> ev.model_extra
{'guild': 'x'}
"""

from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

__all__ = [
    "CONTRACT_VERSION",
    "MAX_EVENT_BYTES",
    "ClientInfo",
    "Event",
    "EventError",
    "Hop",
    "HttpProbe",
    "HttpTarget",
    "Login",
    "ObservedTtl",
    "RttProbe",
    "Traceroute",
    "event_adapter",
    "message_object",
    "parse_event",
    "topic_for",
]

CONTRACT_VERSION = 1
#: Largest accepted message; anything bigger is dead-lettered unparsed.
MAX_EVENT_BYTES = 256 * 1024
MAX_RTT_SAMPLES = 64
MAX_HOPS = 64
MAX_HEADERS = 128


#: A round-trip time in ms: finite, non-negative, at most 60 s (checked in pydantic-core).
Rtt = Annotated[float, Field(ge=0.0, le=60_000.0, allow_inf_nan=False)]
RttSamples = Annotated[list[Rtt], Field(min_length=1, max_length=MAX_RTT_SAMPLES)]
#: Address texts whose parsed object is kept (about 0.25 KiB each with the object): the
#: events of sessions in progress, the span the enrichment's memo (by address
#: object) covers too.
@lru_cache(maxsize=65_536)
def _ip_from_str(value: str) -> IPv4Address | IPv6Address:
    return ip_address(value)


def _parse_ip(value: Any) -> IPv4Address | IPv6Address:
    """An IPv4/IPv6 address from its text (cached: the same addresses recur constantly)."""
    if isinstance(value, (IPv4Address, IPv6Address)):
        return value
    if not isinstance(value, str) or len(value) > 45:
        raise ValueError("value is not a valid IPv4 or IPv6 address")
    try:
        return _ip_from_str(value)
    except ValueError:
        raise ValueError("value is not a valid IPv4 or IPv6 address") from None


IpAddr = Annotated[
    IPv4Address | IPv6Address,
    PlainValidator(_parse_ip),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "format": "ipvanyaddress"}),
]
Ident = Annotated[str, Field(min_length=1, max_length=128)]
ShortText = Annotated[str, Field(max_length=256)]
Ttl = Annotated[int, Field(ge=1, le=255)]


class _Base(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, str_strip_whitespace=False)

    event_id: Ident
    ts: AwareDatetime
    src_ip: IpAddr
    session_id: Ident | None = None

    @property
    def ts_epoch(self) -> float:
        return self.ts.timestamp()


class ClientInfo(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    local_ip: IpAddr | None = None
    device_id: Annotated[str, Field(max_length=128)] | None = None
    os: Annotated[str, Field(max_length=64)] | None = None
    #: client platform (e.g. ``pc``, ``android``, ``console``) and build: the game may
    #: answer its ping on a different loop per platform or build, so the relay detector
    #: learns the application overhead per (server, platform) when a login names one
    platform: Annotated[str, Field(max_length=64)] | None = None
    build: Annotated[str, Field(max_length=64)] | None = None


class Login(_Base):
    """A login (or session start) seen by a game server."""

    kind: Literal["login"]
    account: Annotated[str, Field(min_length=1, max_length=64)]
    server_id: Ident
    app_rtt_ms: RttSamples
    tcp_rtt_ms: Rtt | None = None
    outcome: Literal["success", "failure"] = "success"
    client: ClientInfo | None = None

    @property
    def min_app_rtt(self) -> float:
        return min(self.app_rtt_ms)


class RttProbe(_Base):
    """RTT samples from one vantage server to the client."""

    kind: Literal["rtt_probe"]
    vantage_id: Ident
    method: Literal["icmp", "tcp", "app"]
    rtt_ms: RttSamples
    account: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class Hop(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    ttl: Ttl
    ip: IpAddr | None = None
    rtt_ms: Annotated[list[Rtt], Field(max_length=MAX_RTT_SAMPLES)] = Field(default_factory=list)


class Traceroute(_Base):
    """A traceroute between the client and a vantage (a server id, or ``client``)."""

    kind: Literal["traceroute"]
    vantage_id: Ident
    direction: Literal["client_to_server", "server_to_client"]
    hops: Annotated[list[Hop], Field(min_length=1, max_length=MAX_HOPS)]
    account: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class HttpTarget(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)]
    scheme: Literal["http", "ws", "https", "wss"]

    @property
    def encrypted(self) -> bool:
        return self.scheme in ("https", "wss")


class ObservedTtl(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    syn_ack: Ttl | None = None
    response: Ttl | None = None


class HttpProbe(_Base):
    """A connection-integrity report from a client, an edge or a passive sensor."""

    kind: Literal["http_probe"]
    target: HttpTarget
    request: Literal["ws_upgrade", "get"]
    status: Annotated[int, Field(ge=0, le=999)] | None = None
    header_names: Annotated[
        list[Annotated[str, Field(max_length=128)]], Field(max_length=MAX_HEADERS)
    ] | None = None
    server_header: ShortText | None = None
    body_sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    body_len: Annotated[int, Field(ge=0)] | None = None
    connect_ms: Rtt | None = None
    ttfb_ms: Rtt | None = None
    ttl: ObservedTtl | None = None
    retransmits: Annotated[int, Field(ge=0)] | None = None
    seq_conflict: bool | None = None
    #: What the bytes were, when the reporter could tell (the passive sensor always
    #: does): ``http``, ``websocket``, ``tls`` (also on a plaintext port) or ``other``
    #: (neither; reported only with a sequence conflict, ``scheme`` then from the port).
    protocol: Literal["http", "websocket", "tls", "other"] | None = None
    #: The HTTP request method (``request`` only tells an upgrade from the rest).
    method: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    reporter: Literal["client", "edge", "sensor"] = "client"
    account: Annotated[str, Field(min_length=1, max_length=64)] | None = None


Event = Annotated[Login | RttProbe | Traceroute | HttpProbe, Field(discriminator="kind")]
event_adapter: TypeAdapter[Login | RttProbe | Traceroute | HttpProbe] = TypeAdapter(Event)


class EventError(ValueError):
    """Why a message is not a contract-v1 event (the dead-letter reason)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    more = err.error_count() - 5
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _has_non_finite(obj: Any, depth: int = 0) -> bool:
    if isinstance(obj, float):
        return obj != obj or obj in (float("inf"), float("-inf"))
    if depth > 64:
        return False
    if isinstance(obj, dict):
        return any(_has_non_finite(v, depth + 1) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_has_non_finite(v, depth + 1) for v in obj)
    return False


def message_object(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """The JSON object of one message (bytes, text or an already decoded dict), or
    :class:`EventError`: ``oversized``, ``bad_json``, ``invalid`` (a dict JSON cannot
    carry) or ``not_an_object``. Every topic's parser starts here."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        if len(raw) > MAX_EVENT_BYTES:
            raise EventError("oversized", f"{len(raw)} bytes > {MAX_EVENT_BYTES}")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise EventError("bad_json", str(e)[:200]) from None
    elif isinstance(raw, str):
        size = len(raw.encode("utf-8", "surrogatepass"))
        if size > MAX_EVENT_BYTES:
            raise EventError("oversized", f"{size} bytes > {MAX_EVENT_BYTES}")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise EventError("bad_json", str(e)[:200]) from None
    else:
        # a dict must be what a JSON message could carry: it is sent on as JSON
        try:
            orjson.dumps(raw)
        except (TypeError, orjson.JSONEncodeError) as e:
            raise EventError("invalid", f"not representable as JSON: {e}"[:200]) from None
        if _has_non_finite(raw):
            raise EventError("invalid", "NaN or infinity is not JSON")
        obj = raw
    if not isinstance(obj, dict):
        raise EventError("not_an_object", type(obj).__name__)
    return obj


def parse_event(raw: bytes | str | dict[str, Any]) -> Login | RttProbe | Traceroute | HttpProbe:
    """Decode and validate one message; raise :class:`EventError` with a reason."""
    obj = message_object(raw)
    kind = obj.get("kind")
    if kind not in ("login", "rtt_probe", "traceroute", "http_probe"):
        raise EventError("unknown_kind", repr(kind)[:64])
    try:
        return event_adapter.validate_python(obj)
    except ValidationError as e:
        raise EventError("invalid", _describe(e)) from None
    except RecursionError:
        raise EventError("invalid", "nesting too deep") from None


def topic_for(event: Login | RttProbe | Traceroute | HttpProbe) -> tuple[str, str]:
    """Return the (logical topic, key) a producer must use for ``event``."""
    if isinstance(event, Login):
        return "logins", event.account
    return "network-telemetry", event.session_id or str(event.src_ip)
