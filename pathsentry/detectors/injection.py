"""Connection integrity of one ``http_probe``: was the answer forged on the path?

An on-path box (ISP DPI, a captive portal, a MITM) that answers plaintext HTTP or a
``ws://`` upgrade in the server's place leaves physical traces that need no
payload inspection:

- **content**: a WebSocket upgrade answered with anything but ``101``, a status or
  body hash different from the ``[[origin]]``'s, the CDN's headers (``server``,
  ``cf-ray``) missing;
- **path**: the response's IP TTL differs from the SYN-ACK's (``+1`` = sent by a
  box one hop nearer than the server), the first byte arrived sooner than a round
  trip to the server allows, two TCP segments carried different bytes for the same
  sequence range (``seq_conflict``: the forged and the genuine answer raced), and
  the server retransmitted again and again (its genuine segments were dropped).

Each piece of evidence has a weight in ``[0, 1]``; the probe's score is their
noisy-OR ``1 - prod(1 - w)`` and the probe is flagged ``path_injection`` when the
score reaches ``flag_score``. Hosts without an ``[[origin]]`` entry get the
origin-independent evidence only (path evidence, and RFC 6455's ``101`` for an
upgrade). TLS probes (``https``/``wss``) are the control: they are never flagged,
but their path evidence is recorded so the cell stage can contrast them.

The verdict is left in ``Enriched.notes["injection"]`` for
:mod:`pathsentry.detectors.injection_cells`.

>>> from pathsentry.config import Origin
>>> from pathsentry.schemas import parse_event
>>> origin = Origin(host="ws.example.com", expect_ws_status=101,
...                 expect_server="cloudflare", expect_headers=["server", "cf-ray"])
>>> probe = parse_event({"kind": "http_probe", "event_id": "p1",
...     "ts": "2026-03-02T10:15:00+09:00", "src_ip": "203.0.113.7",
...     "target": {"host": "ws.example.com", "port": 80, "scheme": "ws"},
...     "request": "ws_upgrade", "status": 200, "header_names": ["content-type"],
...     "connect_ms": 12.0, "ttfb_ms": 2.5, "ttl": {"syn_ack": 52, "response": 53}})
>>> v = assess(probe, origin, InjectionSettings())
>>> v.suspect, round(v.score, 3), [e.code for e in v.evidence]
(True, 0.91, ['ws_status', 'cdn_headers', 'ttl_delta', 'fast_answer'])
>>> print(v.evidence[2].reason)
response TTL 53 vs SYN-ACK 52 (+1: sent by a box 1 hop nearer than the server)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from pathsentry.config import Origin
from pathsentry.detectors import register
from pathsentry.detectors.base import Detector, DetectorContext, Enriched, Findings
from pathsentry.schemas import FlaggedEvent, HttpProbe

__all__ = [
    "Evidence",
    "InjectionDetector",
    "InjectionSettings",
    "Verdict",
    "assess",
    "noisy_or",
    "settings_from",
]

NOTES_KEY = "injection"
S = TypeVar("S")

#: ``str()`` of recently seen address objects, by identity: the event parser hands out
#: one object per distinct address, and ``IPv4Address.__str__`` is slow pure Python.
#: ``_IP_OBJECTS`` holds each object, so that its id is not reused meanwhile (two flat
#: dicts: no tuple per entry for the garbage collector to walk).
_IP_TEXT: dict[int, str] = {}
_IP_OBJECTS: dict[int, object] = {}
_IP_TEXT_MAX = 16_384


def ip_text(ip: object) -> str:
    """``str(ip)``, remembered for the last :data:`_IP_TEXT_MAX` address objects.

    >>> from ipaddress import ip_address
    >>> ip_text(ip_address("203.0.113.7"))
    '203.0.113.7'
    """
    key = id(ip)
    if _IP_OBJECTS.get(key) is ip:
        return _IP_TEXT[key]
    text = str(ip)
    if len(_IP_TEXT) >= _IP_TEXT_MAX:
        _IP_TEXT.clear()
        _IP_OBJECTS.clear()
    _IP_TEXT[key] = text
    _IP_OBJECTS[key] = ip
    return text


def settings_from(cls: type[S], raw: Mapping[str, Any]) -> S:
    """Build a settings dataclass from a ``[detectors.NAME]`` table.

    Values are coerced to the type of the field's default; unknown keys (such as
    ``enabled``) are ignored.

    >>> settings_from(InjectionSettings, {"flag_score": "0.7", "enabled": True}).flag_score
    0.7
    """
    defaults: dict[str, Any] = {f.name: f.default for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: type(defaults[k])(v) for k, v in raw.items() if k in defaults})


@dataclass(frozen=True, slots=True)
class InjectionSettings:
    """Weights and thresholds (``[detectors.injection]`` in ``pathsentry.toml``)."""

    flag_score: float = 0.6
    w_ws_status: float = 0.5
    w_status: float = 0.45
    w_body: float = 0.4
    w_cdn_headers: float = 0.4
    w_ttl_delta: float = 0.5
    w_fast_answer: float = 0.4
    w_seq_conflict: float = 0.55
    w_retransmits: float = 0.25
    #: TTFB below ``fast_ratio * connect_ms`` is faster than the server can answer.
    fast_ratio: float = 0.6
    #: Below this handshake RTT, timing jitter dominates and TTFB says nothing.
    min_connect_ms: float = 2.0
    #: This many retransmitted segments in one probe is a storm.
    retransmit_storm: int = 4



@dataclass(frozen=True, slots=True)
class Evidence:
    """One observation, its weight, and what it means in words."""

    code: str
    weight: float
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The assessment of one probe.

    ``score`` is the noisy-OR of all evidence (0 for TLS probes, which are never
    suspect); ``path_score`` the noisy-OR of the path evidence alone, comparable
    between plaintext and TLS probes.
    """

    score: float
    path_score: float
    suspect: bool
    tls: bool
    evidence: tuple[Evidence, ...]

    def notes(self, probe: HttpProbe, flag_score: float) -> dict[str, Any]:
        """The JSON-serialisable summary passed on to the cell stage."""
        return _notes(probe, self.score, self.path_score, self.suspect, self.tls, flag_score)


def _notes(probe: HttpProbe, score: float, path_score: float, suspect: bool, tls: bool,
           flag_score: float) -> dict[str, Any]:
    """:meth:`Verdict.notes` from the verdict's fields."""
    ttl = probe.ttl
    delta = (
        ttl.response - ttl.syn_ack
        if ttl is not None and ttl.response is not None and ttl.syn_ack is not None
        else None
    )
    return {
        "suspect": suspect,
        "score": round(score, 4),
        "tls": tls,
        "path_anomaly": path_score >= flag_score,
        "ttl_delta": delta,
        "status": probe.status,
    }


def noisy_or(weights: list[float]) -> float:
    """Combine independent pieces of evidence: ``1 - prod(1 - w)``.

    >>> noisy_or([]), noisy_or([0.5, 0.5])
    (0.0, 0.75)
    """
    keep = 1.0
    for w in weights:
        w = 0.0 if w < 0.0 else w  # min(max(w, 0.0), 1.0), exactly, without the builtins
        keep *= 1.0 - (1.0 if w > 1.0 else w)
    return 1.0 - keep


Check = Callable[[HttpProbe, Origin | None, InjectionSettings], Evidence | None]


def _ws_status(p: HttpProbe, origin: Origin | None, s: InjectionSettings) -> Evidence | None:
    if p.request != "ws_upgrade" or p.status is None:
        return None
    expected = origin.expect_ws_status if origin and origin.expect_ws_status else 101
    if p.status == expected:
        return None
    whose = "the origin answers" if origin else "the protocol requires"
    return Evidence(
        "ws_status", s.w_ws_status,
        f"WebSocket upgrade answered {p.status}, {whose} {expected}",
        {"status": p.status, "expected": expected},
    )


def _status(p: HttpProbe, origin: Origin | None, s: InjectionSettings) -> Evidence | None:
    if p.request != "get" or origin is None or origin.expect_status is None:
        return None
    if p.status is None or p.status == origin.expect_status:
        return None
    return Evidence(
        "status", s.w_status,
        f"answered {p.status}, the origin answers {origin.expect_status}",
        {"status": p.status, "expected": origin.expect_status},
    )


def _body(p: HttpProbe, origin: Origin | None, s: InjectionSettings) -> Evidence | None:
    if p.request != "get" or origin is None or origin.expect_body_sha256 is None:
        return None
    if p.body_sha256 is None or p.body_sha256.lower() == origin.expect_body_sha256.lower():
        return None
    return Evidence(
        "body", s.w_body,
        f"body hash {p.body_sha256[:12]}… ({p.body_len} bytes) is not the origin's "
        f"{origin.expect_body_sha256[:12]}…",
        {"body_sha256": p.body_sha256, "expected": origin.expect_body_sha256,
         "body_len": p.body_len},
    )


def _cdn_headers(p: HttpProbe, origin: Origin | None, s: InjectionSettings) -> Evidence | None:
    if origin is None or p.header_names is None:
        return None
    seen = set(map(str.lower, p.header_names))
    missing = [h for h in origin.expect_headers if h.lower() not in seen]
    server_ok = (
        origin.expect_server is None
        or (p.server_header or "").lower().startswith(origin.expect_server.lower())
    )
    if not missing and server_ok:
        return None
    parts = []
    if missing:
        parts.append("expected headers missing: " + ", ".join(missing))
    if not server_ok:
        parts.append(
            f"server header {p.server_header!r}, the origin's is {origin.expect_server!r}"
        )
    return Evidence(
        "cdn_headers", s.w_cdn_headers, "; ".join(parts),
        {"missing": missing, "server_header": p.server_header,
         "expected_server": origin.expect_server},
    )


def _ttl_delta(p: HttpProbe, origin: Origin | None, s: InjectionSettings) -> Evidence | None:
    if p.ttl is None or p.ttl.syn_ack is None or p.ttl.response is None:
        return None
    delta = p.ttl.response - p.ttl.syn_ack
    if delta == 0:
        return None
    hops = "hop" if abs(delta) == 1 else "hops"
    meaning = (
        f"sent by a box {delta} {hops} nearer than the server" if delta > 0
        else f"sent from {-delta} {hops} farther away or by another IP stack"
    )
    return Evidence(
        "ttl_delta", s.w_ttl_delta,
        f"response TTL {p.ttl.response} vs SYN-ACK {p.ttl.syn_ack} ({delta:+d}: {meaning})",
        {"syn_ack": p.ttl.syn_ack, "response": p.ttl.response, "delta": delta},
    )


def _fast_answer(p: HttpProbe, origin: Origin | None, s: InjectionSettings) -> Evidence | None:
    if p.connect_ms is None or p.ttfb_ms is None or p.connect_ms < s.min_connect_ms:
        return None
    if p.ttfb_ms >= s.fast_ratio * p.connect_ms:
        return None
    return Evidence(
        "fast_answer", s.w_fast_answer,
        f"first byte {p.ttfb_ms:.1f} ms after the request, sooner than the "
        f"{p.connect_ms:.1f} ms round trip to the server: something nearer answered",
        {"ttfb_ms": p.ttfb_ms, "connect_ms": p.connect_ms},
    )


def _seq_conflict(p: HttpProbe, origin: Origin | None, s: InjectionSettings) -> Evidence | None:
    if not p.seq_conflict:
        return None
    return Evidence(
        "seq_conflict", s.w_seq_conflict,
        "two TCP segments carried different bytes for the same sequence range "
        "(a forged answer raced the genuine one)",
        {"seq_conflict": True},
    )


def _retransmits(p: HttpProbe, origin: Origin | None, s: InjectionSettings) -> Evidence | None:
    if p.retransmits is None or p.retransmits < s.retransmit_storm:
        return None
    return Evidence(
        "retransmits", s.w_retransmits,
        f"{p.retransmits} retransmitted segments (the genuine answer kept being dropped)",
        {"retransmits": p.retransmits},
    )


#: Evidence that needs an ``[[origin]]`` or a readable payload (plaintext only).
CONTENT_CHECKS: tuple[Check, ...] = (_ws_status, _status, _body, _cdn_headers)
#: Evidence from the TCP/IP path alone: valid for TLS probes and unknown hosts too.
PATH_CHECKS: tuple[Check, ...] = (_ttl_delta, _fast_answer, _seq_conflict, _retransmits)


def _run(checks: tuple[Check, ...], p: HttpProbe, origin: Origin | None,
         s: InjectionSettings) -> list[Evidence]:
    out = []
    for check in checks:
        e = check(p, origin, s)
        if e is not None:
            out.append(e)
    return out


def _weigh(probe: HttpProbe, origin: Origin | None,
           s: InjectionSettings) -> tuple[float, float, bool, bool, list[Evidence]]:
    """``(score, path_score, suspect, tls, evidence)`` of :func:`assess`, without the
    :class:`Verdict` (most probes only leave their notes)."""
    path = _run(PATH_CHECKS, probe, origin, s)
    path_score = noisy_or([e.weight for e in path]) if path else 0.0
    if probe.target.encrypted:
        return 0.0, path_score, False, True, path
    evidence = _run(CONTENT_CHECKS, probe, origin, s)
    evidence += path
    score = noisy_or([e.weight for e in evidence]) if evidence else 0.0
    return score, path_score, score >= s.flag_score, False, evidence


def assess(probe: HttpProbe, origin: Origin | None, settings: InjectionSettings) -> Verdict:
    """Weigh the evidence of one probe against its origin's expectations."""
    score, path_score, suspect, tls, evidence = _weigh(probe, origin, settings)
    return Verdict(score, path_score, suspect, tls, tuple(evidence))


@register
class InjectionDetector(Detector):
    """Session stage: flag ``http_probe`` events whose answer was forged on the path."""

    name = "injection"
    consumes = frozenset({"http_probe"})
    stage = "session"

    def __init__(self, ctx: DetectorContext) -> None:
        super().__init__(ctx)
        self.settings = settings_from(InjectionSettings, ctx.settings(self.name))

    def process(self, ev: Enriched, key: str | None = None) -> Findings | None:
        probe = ev.event
        if not isinstance(probe, HttpProbe):
            return None
        origin = self.ctx.config.origin(probe.target.host)
        s = self.settings
        score, path_score, suspect, tls, found = _weigh(probe, origin, s)
        ev.notes[NOTES_KEY] = _notes(probe, score, path_score, suspect, tls, s.flag_score)
        if not suspect:
            return None
        verdict = Verdict(score, path_score, suspect, tls, tuple(found))
        t = probe.target
        evidence: dict[str, Any] = {
            "target": f"{t.scheme}://{t.host}:{t.port}",
            "request": probe.request,
            "reporter": probe.reporter,
            "origin_known": origin is not None,
            "prefix": ev.prefix,
            "as_name": ev.geo.as_name,
            **{e.code: e.detail for e in verdict.evidence},
        }
        flag = FlaggedEvent(
            event_id=probe.event_id,
            ts=probe.ts,
            kind="path_injection",
            account=ev.account,
            session_id=probe.session_id,
            src_ip=str(probe.src_ip),
            country=ev.geo.country,
            asn=ev.geo.asn,
            score=round(verdict.score, 4),
            reasons=[e.reason for e in verdict.evidence],
            evidence=evidence,
            detector=self.name,
        )
        return Findings(flags=[flag])
