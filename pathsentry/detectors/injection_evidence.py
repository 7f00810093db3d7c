"""What one ``http_probe``'s answer shows of its path: the evidence and its weighing.

Owns the checks that read an answer against its origin's :class:`Expectation` (the
learned or configured marks, TTL relation and first-byte ratio,
:mod:`pathsentry.detectors.injection_profile`): the **path marks** (the origin's marks
missing, a TTL delta the origin's answers do not show, a first byte sooner than the
round trip allows, a sequence race, a retransmission storm) and the **content
evidence** (a WebSocket upgrade not answered ``101``, a status or body other than the
``[[origin]]``'s), each an :class:`Evidence` with its weight; and their weighing into a
:class:`Verdict` (:func:`weigh`, :func:`assess`): the noisy-OR of the path marks, with
content joining once the path score reaches ``path_gate``. What the detector makes of
a verdict with the learned tables (a failover, a failure many networks see, an answer
nothing places) is :mod:`pathsentry.detectors.injection`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pathsentry.config import Origin
from pathsentry.detectors.injection_profile import Expectation, features_of
from pathsentry.detectors.injection_settings import InjectionSettings
from pathsentry.schemas import HttpProbe

__all__ = [
    "CONTENT_CHECKS",
    "PATH_CHECKS",
    "Evidence",
    "Verdict",
    "assess",
    "frozen_marks",
    "is_tls",
    "noisy_or",
    "prior_marks",
    "profile_key",
    "ttl_delta",
    "weigh",
]


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

    ``score`` is the noisy-OR of the evidence that counts (0 for TLS probes, which are
    never suspect); ``path_score`` the noisy-OR of the path marks alone, comparable
    between plaintext and TLS probes.
    """

    score: float
    path_score: float
    suspect: bool
    tls: bool
    evidence: tuple[Evidence, ...]


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


def ttl_delta(p: HttpProbe) -> int | None:
    ttl = p.ttl
    if ttl is None or ttl.response is None or ttl.syn_ack is None:
        return None
    return ttl.response - ttl.syn_ack


def prior_marks(origin: Origin | None) -> set[str] | None:
    """The configured marks of ``origin`` (``None``: nothing configured).

    >>> sorted(prior_marks(Origin(host="a", expect_server="cf", expect_headers=["CF-Ray"])))
    ['h:cf-ray', 's:cf']
    """
    if origin is None or not (origin.expect_headers or origin.expect_server):
        return None
    return features_of(origin.expect_headers, origin.expect_server)


def is_tls(p: HttpProbe) -> bool:
    """Whether the answer travelled inside TLS: what the reporter saw (``protocol``: TLS
    on a plaintext port is TLS; bytes that were neither HTTP nor TLS are not, whatever
    the port), else the scheme."""
    if p.protocol is not None:
        return p.protocol == "tls"
    return p.target.encrypted


def profile_key(p: HttpProbe) -> str:
    return f"{p.target.host.lower()}|{p.request}"


Check = Callable[[HttpProbe, Origin | None, Expectation, InjectionSettings], Evidence | None]


def _ws_status(p: HttpProbe, origin: Origin | None, x: Expectation,
               s: InjectionSettings) -> Evidence | None:
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


def _status(p: HttpProbe, origin: Origin | None, x: Expectation,
            s: InjectionSettings) -> Evidence | None:
    if p.request != "get" or origin is None or origin.expect_status is None:
        return None
    if p.status is None or p.status == origin.expect_status:
        return None
    return Evidence(
        "status", s.w_status,
        f"answered {p.status}, the origin answers {origin.expect_status}",
        {"status": p.status, "expected": origin.expect_status},
    )


def _body(p: HttpProbe, origin: Origin | None, x: Expectation,
          s: InjectionSettings) -> Evidence | None:
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


def _mark_present(mark: str, seen: set[str], server: str) -> bool:
    if mark.startswith("s:"):
        return server.startswith(mark[2:])
    return mark in seen


def _origin_marks(p: HttpProbe, origin: Origin | None, x: Expectation,
                  s: InjectionSettings) -> Evidence | None:
    if x.features is None or not x.features or p.header_names is None:
        return None
    seen = features_of(p.header_names, None)
    server = (p.server_header or "").lower()
    # (``seen`` holds header marks only: a server mark is never in it)
    missing = [m for m in x.features - seen if not _mark_present(m, seen, server)]
    if not missing:
        return None
    missing.sort()
    share = len(missing) / len(x.features)
    full = s.marks_full_share if x.exact or x.source == "configured" else s.marks_full_share_other
    weight = s.w_origin_marks * min(1.0, share / full)
    headers = [m[2:] for m in missing if m.startswith("h:")]
    servers = [m[2:] for m in missing if m.startswith("s:")]
    parts = []
    if headers:
        parts.append("the origin's headers missing: " + ", ".join(headers))
    if servers:
        parts.append(f"server header {p.server_header!r}, the origin's is "
                     + " or ".join(repr(v) for v in servers))
    return Evidence(
        "origin_marks", weight,
        "; ".join(parts) + f" ({len(missing)} of {len(x.features)} marks, {x.source})",
        {"missing": headers, "server_header": p.server_header,
         "expected_server": servers or None,
         "expected_headers": sorted(m[2:] for m in x.features if m.startswith("h:")),
         "measured_headers": sorted(h.lower() for h in p.header_names),
         "missing_share": round(share, 3), "learned_from": x.source},
    )


def _ttl_delta(p: HttpProbe, origin: Origin | None, x: Expectation,
               s: InjectionSettings) -> Evidence | None:
    delta = ttl_delta(p)
    if delta is None or delta in x.deltas:
        return None
    assert p.ttl is not None and p.ttl.response is not None and p.ttl.syn_ack is not None
    usual = "/".join(f"{d:+d}" for d in x.deltas)
    nearer = delta - max(x.deltas)
    if nearer > 0:
        hops = "hop" if nearer == 1 else "hops"
        meaning = f"sent by a box {nearer} {hops} nearer than the server"
        weight = s.w_ttl_delta if x.delta_source != "default" else s.w_ttl_unlearned
    else:
        meaning = "another route or IP stack"
        weight = s.w_ttl_other
    return Evidence(
        "ttl_delta", weight,
        f"response TTL {p.ttl.response} vs SYN-ACK {p.ttl.syn_ack} ({delta:+d}; the "
        f"origin's answers show {usual}, {x.delta_source}): {meaning}",
        {"syn_ack": p.ttl.syn_ack, "response": p.ttl.response, "delta": delta,
         "expected_deltas": list(x.deltas), "learned_from": x.delta_source},
    )


def _fast_answer(p: HttpProbe, origin: Origin | None, x: Expectation,
                 s: InjectionSettings) -> Evidence | None:
    if p.connect_ms is None or p.ttfb_ms is None or p.connect_ms < s.min_connect_ms:
        return None
    ratio = s.fast_ratio if x.fast_ratio is None else min(s.fast_ratio, x.fast_ratio)
    if p.ttfb_ms >= ratio * p.connect_ms:
        return None
    return Evidence(
        "fast_answer", s.w_fast_answer,
        f"first byte {p.ttfb_ms:.1f} ms after the request, sooner than the "
        f"{p.connect_ms:.1f} ms round trip to the server allows (the origin's answers "
        f"take at least {ratio * p.connect_ms:.1f} ms): something nearer answered",
        {"ttfb_ms": p.ttfb_ms, "connect_ms": p.connect_ms,
         "expected_min_ms": round(ratio * p.connect_ms, 3),
         "learned_ratio": None if x.fast_ratio is None else round(x.fast_ratio, 4)},
    )


def _seq_conflict(p: HttpProbe, origin: Origin | None, x: Expectation,
                  s: InjectionSettings) -> Evidence | None:
    if not p.seq_conflict:
        return None
    return Evidence(
        "seq_conflict", s.w_seq_conflict,
        "two TCP segments carried different bytes for the same sequence range "
        "(a forged answer raced the genuine one)",
        {"seq_conflict": True},
    )


def _retransmits(p: HttpProbe, origin: Origin | None, x: Expectation,
                 s: InjectionSettings) -> Evidence | None:
    if p.retransmits is None or p.retransmits < s.retransmit_storm:
        return None
    return Evidence(
        "retransmits", s.w_retransmits,
        f"{p.retransmits} retransmitted segments (the genuine answer kept being dropped)",
        {"retransmits": p.retransmits},
    )


#: Evidence from the answer's content: only ever adds to path marks.
CONTENT_CHECKS: tuple[Check, ...] = (_ws_status, _status, _body)
#: Marks of a box on the path: valid for TLS probes and unknown hosts too.
PATH_CHECKS: tuple[Check, ...] = (_origin_marks, _ttl_delta, _fast_answer, _seq_conflict,
                                  _retransmits)


def _run(checks: tuple[Check, ...], p: HttpProbe, origin: Origin | None, x: Expectation,
         s: InjectionSettings) -> list[Evidence]:
    out = []
    for check in checks:
        e = check(p, origin, x, s)
        if e is not None:
            out.append(e)
    return out


def weigh(probe: HttpProbe, origin: Origin | None, x: Expectation,
          s: InjectionSettings) -> tuple[Verdict, list[Evidence]]:
    """The verdict, and the content evidence (counted or not: recorded either way)."""
    path = _run(PATH_CHECKS, probe, origin, x, s)
    path_score = noisy_or([e.weight for e in path]) if path else 0.0
    content = _run(CONTENT_CHECKS, probe, origin, x, s)
    if is_tls(probe):
        return Verdict(0.0, path_score, False, True, tuple(path)), content
    if path_score < s.path_gate:
        return Verdict(path_score, path_score, path_score >= s.flag_score, False,
                       tuple(path)), content
    evidence = path + content
    score = noisy_or([e.weight for e in evidence])
    return Verdict(score, path_score, score >= s.flag_score, False, tuple(evidence)), content


def assess(probe: HttpProbe, origin: Origin | None, settings: InjectionSettings,
           expect: Expectation | None = None) -> Verdict:
    """Weigh the evidence of one probe against its origin's marks (``expect``; default:
    the configured ``[[origin]]`` and a TTL delta of 0, nothing learned)."""
    if expect is None:
        expect = Expectation(frozen_marks(prior_marks(origin)), "configured", False, (0,), "default",
                             None)
    return weigh(probe, origin, expect, settings)[0]


def frozen_marks(marks: set[str] | None) -> frozenset[str] | None:
    """``marks`` frozen (``None`` stays ``None``)."""
    return None if marks is None else frozenset(marks)
