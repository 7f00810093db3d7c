"""Per-probe injection evidence against the [[origin]] expectations."""

from __future__ import annotations

from typing import Any

import pytest

from pathsentry.config import load_config
from pathsentry.detectors import build_detectors
from pathsentry.detectors.base import DetectorContext, Enriched
from pathsentry.detectors.injection import InjectionDetector
from pathsentry.enrich import GeoResolver
from pathsentry.enrich.enricher import Enricher
from pathsentry.schemas import FlaggedEvent, parse_event
from tests.fixtures import CDN_ORIGINS

BODY = "ab" * 32
ORIGINS = CDN_ORIGINS + f'expect_body_sha256 = "{BODY}"\n'


def probe(**kw: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "kind": "http_probe", "event_id": "p-1", "ts": "2026-03-02T10:15:00+09:00",
        "src_ip": "203.0.113.7", "session_id": "s-1",
        "target": {"host": "ws.example.com", "port": 80, "scheme": "ws"},
        "request": "ws_upgrade", "status": 101, "header_names": ["server", "cf-ray", "upgrade"],
        "server_header": "cloudflare", "connect_ms": 12.0, "ttfb_ms": 25.0,
        "ttl": {"syn_ack": 52, "response": 52}, "retransmits": 0, "seq_conflict": False,
    }
    ev.update(kw)
    return ev


INJECTED = {"status": 200, "header_names": ["content-type", "content-length"],
            "server_header": None, "ttfb_ms": 2.0, "ttl": {"syn_ack": 52, "response": 53}}


class Harness:
    def __init__(self, extra_toml: str = "") -> None:
        cfg = load_config(text=ORIGINS + extra_toml, env={})
        geo = GeoResolver([])
        self.det = InjectionDetector(DetectorContext(cfg, geo))
        self.enricher = Enricher(cfg, geo)

    def run(self, **kw: Any) -> tuple[FlaggedEvent | None, Enriched]:
        ev = self.enricher.enrich(parse_event(probe(**kw)))
        found = self.det.process(ev)
        flags = found.flags if found else []
        assert len(flags) <= 1
        return (flags[0] if flags else None), ev


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_genuine_upgrade_with_cdn_headers(h: Harness) -> None:
    flag, ev = h.run()
    assert flag is None
    assert ev.notes["injection"] == {"suspect": False, "score": 0.0, "tls": False,
                                     "path_anomaly": False, "ttl_delta": 0, "status": 101}


def test_injected_200_one_hop_nearer(h: Harness) -> None:
    flag, ev = h.run(**INJECTED)
    assert flag is not None
    assert flag.kind == "path_injection" and flag.detector == "injection"
    assert flag.score == 0.91  # 1 - 0.5 * 0.6 * 0.5 * 0.6
    assert flag.reasons == [
        "WebSocket upgrade answered 200, the origin answers 101",
        "expected headers missing: server, cf-ray; server header None, the origin's is "
        "'cloudflare'",
        "response TTL 53 vs SYN-ACK 52 (+1: sent by a box 1 hop nearer than the server)",
        "first byte 2.0 ms after the request, sooner than the 12.0 ms round trip to the "
        "server: something nearer answered",
    ]
    assert flag.evidence["ttl_delta"] == {"syn_ack": 52, "response": 53, "delta": 1}
    assert flag.evidence["target"] == "ws://ws.example.com:80"
    assert ev.notes["injection"]["suspect"] is True
    assert ev.notes["injection"]["ttl_delta"] == 1


def test_forged_page_on_plain_get(h: Harness) -> None:
    flag, _ = h.run(target={"host": "www.example.com", "port": 8080, "scheme": "http"},
                    request="get", status=200, body_sha256="cd" * 32, body_len=312,
                    header_names=["content-type"], server_header=None)
    assert flag is not None
    assert [k for k in flag.evidence if k in ("status", "body", "cdn_headers")] == [
        "body", "cdn_headers"]
    assert flag.score == pytest.approx(1 - 0.6 * 0.6)


@pytest.mark.parametrize("scheme,port", [("wss", 443), ("https", 443), ("https", 8443)])
def test_tls_is_never_flagged_but_counted(h: Harness, scheme: str, port: int) -> None:
    flag, ev = h.run(target={"host": "ws.example.com", "port": port, "scheme": scheme},
                     seq_conflict=True, retransmits=9, **INJECTED)
    assert flag is None
    notes = ev.notes["injection"]
    assert (notes["tls"], notes["suspect"], notes["score"], notes["path_anomaly"]) == (
        True, False, 0.0, True)


@pytest.mark.parametrize("noise", [
    {"ttl": {"syn_ack": 52, "response": 51}},
    {"ttfb_ms": 5.0},
    {"retransmits": 6},
    {"seq_conflict": True},
    {"status": 503},                                # a CDN error page: its headers are there
    {"header_names": ["server", "upgrade"]},        # one header stripped
    {"ttl": {"syn_ack": 52, "response": 53}, "connect_ms": 1.2, "ttfb_ms": 0.3},
])
def test_single_noise_is_not_injection(h: Harness, noise: dict[str, Any]) -> None:
    flag, ev = h.run(**noise)
    assert flag is None
    assert ev.notes["injection"]["suspect"] is False


def test_unknown_host_gets_origin_independent_evidence_only(h: Harness) -> None:
    target = {"host": "api.unknown.example", "port": 80, "scheme": "http"}
    flag, _ = h.run(target=target, request="get", status=302, header_names=["location"],
                    server_header=None, body_sha256="cd" * 32)
    assert flag is None
    flag, _ = h.run(target=target, request="get", status=302, header_names=["location"],
                    ttl={"syn_ack": 50, "response": 51}, seq_conflict=True)
    assert flag is not None
    assert [k for k in ("status", "cdn_headers", "ttl_delta", "seq_conflict")
            if k in flag.evidence] == ["ttl_delta", "seq_conflict"]
    assert flag.evidence["origin_known"] is False


def test_unknown_host_ws_upgrade_uses_the_protocol_status(h: Harness) -> None:
    flag, _ = h.run(target={"host": "chat.unknown.example", "port": 80, "scheme": "ws"},
                    **INJECTED)
    assert flag is not None
    assert flag.reasons[0] == "WebSocket upgrade answered 200, the protocol requires 101"
    assert "cdn_headers" not in flag.evidence


def test_thresholds_come_from_the_config() -> None:
    strict = Harness("[detectors.injection]\nflag_score = \"0.95\"\nenabled = true\n")
    flag, _ = strict.run(**INJECTED)
    assert flag is None
    flag, _ = strict.run(**INJECTED, seq_conflict=True)
    assert flag is not None


def test_both_stages_are_registered_in_order() -> None:
    cfg = load_config(text="", env={})
    names = [d.name for d in build_detectors(DetectorContext(cfg, GeoResolver([])),
                                             only=["injection", "injection_cells"])]
    assert names == ["injection", "injection_cells"]
