"""Per-probe injection evidence against the [[origin]] expectations."""

from __future__ import annotations

import json
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
        """The probe's flag, flagged at once or held for a witness (``injection_hold``:
        the verdict at its time, whether or not a later answer then drops it)."""
        ev = self.enricher.enrich(parse_event(probe(**kw)))
        before = self.det.held.held.get(ev.event.event_id)  # (an earlier probe's, same id)
        found = self.det.process(ev)
        flags = [f for f in (found.flags if found else []) if f.event_id == ev.event.event_id]
        held = self.det.held.held.get(ev.event.event_id)
        if held is not None and held is not before:
            flags.append(held.flag)
        assert len(flags) <= 1
        return (flags[0] if flags else None), ev


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_genuine_upgrade_with_cdn_headers(h: Harness) -> None:
    flag, ev = h.run()
    assert flag is None
    assert ev.notes["injection"] == {
        "suspect": False, "score": 0.0, "tls": False, "path_anomaly": False, "ttl_delta": 0,
        "status": 101, "origin_wide": False, "tls_witness": None, "quiet_witness": None,
        "late_witness": None,
        "anomaly": None, "onsets": [],
        "others": None,
        "others_tls": None, "baseline": None, "baseline_n": None, "baseline_tls": None,
        "baseline_tls_n": None, "content": [], "moved": False, "unplaced": False,
        "answer_farther": False,
        "handshake": None}


def test_injected_200_one_hop_nearer(h: Harness) -> None:
    flag, ev = h.run(**INJECTED)
    assert flag is not None
    assert flag.kind == "path_injection" and flag.detector == "injection"
    # marks 0.6, TTL +1 before the origin's relation is learned 0.45, fast 0.4, status 0.4
    assert flag.score == pytest.approx(1 - 0.4 * 0.55 * 0.6 * 0.6, abs=1e-4)
    assert flag.reasons == [
        "the origin's headers missing: cf-ray, server; server header None, the origin's is "
        "'cloudflare' (3 of 3 marks, configured)",
        "response TTL 53 vs SYN-ACK 52 (+1; the origin's answers show +0, default): sent by "
        "a box 1 hop nearer than the server",
        "first byte 2.0 ms after the request, sooner than the 12.0 ms round trip to the "
        "server allows (the origin's answers take at least 7.2 ms): something nearer answered",
        "WebSocket upgrade answered 200, the origin answers 101",
    ]
    assert flag.evidence["ttl_delta"]["expected_deltas"] == [0]
    assert flag.evidence["origin_marks"]["expected_headers"] == ["cf-ray", "server"]
    assert flag.evidence["origin_marks"]["measured_headers"] == [
        "content-length", "content-type"]
    assert flag.evidence["fast_answer"]["expected_min_ms"] == 7.2
    assert flag.evidence["target"] == "ws://ws.example.com:80"
    assert ev.notes["injection"]["suspect"] is True
    assert ev.notes["injection"]["ttl_delta"] == 1


WWW = {"target": {"host": "www.example.com", "port": 8080, "scheme": "http"}, "request": "get",
       "body_sha256": BODY, "body_len": 18432, "status": 200,
       "header_names": ["server", "cf-ray", "content-type"]}


def test_forged_page_on_plain_get(h: Harness) -> None:
    flag, _ = h.run(**{**WWW, "body_sha256": "cd" * 32, "body_len": 312,
                       "header_names": ["content-type"], "server_header": None})
    assert flag is not None
    assert [k for k in flag.evidence if k in ("status", "body", "origin_marks")] == [
        "origin_marks", "body"]
    assert flag.score == pytest.approx(1 - 0.4 * 0.7)


FORGERIES: dict[str, dict[str, Any]] = {
    "302 redirect, no TTL, fast": {"status": 302, "header_names": ["location", "content-length"],
                                   "server_header": None, "body_sha256": None, "ttl": None,
                                   "ttfb_ms": 4.0},
    "block page 403, TTL +2": {"status": 403, "header_names": ["content-type"],
                               "server_header": "nginx", "body_sha256": "ef" * 32,
                               "ttl": {"syn_ack": 52, "response": 54}},
    "200 page, TTL 0": {"header_names": ["content-type", "content-length", "connection"],
                        "server_header": None, "body_sha256": "cd" * 32},
    "200 page, no TTL, short handshake": {"header_names": ["content-type"], "server_header": None,
                                          "body_sha256": "cd" * 32, "ttl": None,
                                          "connect_ms": 1.2, "ttfb_ms": 2.0},
}


@pytest.mark.parametrize("forgery", FORGERIES.values(), ids=list(FORGERIES))
def test_forged_answers_of_every_kind_are_flagged(h: Harness, forgery: dict[str, Any]) -> None:
    flag, _ = h.run(**{**WWW, **forgery})
    assert flag is not None
    assert "origin_marks" in flag.evidence and flag.evidence["origin_marks"]["missing"]


def test_ttl_delta_of_two_with_the_headers_there_is_a_box_on_the_path(h: Harness) -> None:
    """A TTL two hops nearer is a path mark by itself once the origin's relation is
    learned from its TLS answers."""
    teach_tls(h, 40)
    flag, _ = h.run(**{**WWW, "ttl": {"syn_ack": 52, "response": 54}})
    assert flag is not None and flag.evidence["ttl_delta"]["expected_deltas"] == [0]
    assert "learned (TLS answers)" in flag.reasons[0]


GENUINE: dict[str, dict[str, Any]] = {
    "CDN 503": {"status": 503, "body_sha256": "11" * 32},
    "origin 404": {"status": 404, "body_sha256": "22" * 32,
                   "header_names": ["server", "cf-ray", "content-type"]},
    "301 to https": {"status": 301, "body_sha256": None,
                     "header_names": ["server", "cf-ray", "location"]},
    "maintenance page": {"status": 200, "body_sha256": "33" * 32},
    "ws upgrade refused 503": {"target": {"host": "ws.example.com", "port": 80, "scheme": "ws"},
                               "request": "ws_upgrade", "status": 503},
}


@pytest.mark.parametrize("answer", GENUINE.values(), ids=list(GENUINE))
def test_the_origins_own_answers_are_recorded_not_flagged(
        h: Harness, answer: dict[str, Any]) -> None:
    """Status or body not the expected ones, every path mark the origin's: its own."""
    flag, ev = h.run(**{**WWW, "server_header": "cloudflare", **answer})
    assert flag is None
    notes = ev.notes["injection"]
    assert notes["suspect"] is False and notes["content"]
    # the same answer with one path mark more is suspect: the content joins the score
    flag, ev = h.run(**{**WWW, "server_header": "cloudflare", **answer, "seq_conflict": True})
    assert flag is not None and ev.notes["injection"]["content"][0] in flag.evidence


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
    {"ttl": {"syn_ack": 52, "response": 53}},     # not learned yet: one hop alone is not enough
    {"ttfb_ms": 5.0},
    {"retransmits": 6},
    {"header_names": ["server", "upgrade"]},        # one header stripped
    {"ttl": {"syn_ack": 52, "response": 53}, "connect_ms": 1.2, "ttfb_ms": 0.3},
])
def test_single_noise_is_not_injection(h: Harness, noise: dict[str, Any]) -> None:
    flag, ev = h.run(**noise)
    assert flag is None
    assert ev.notes["injection"]["suspect"] is False


def test_a_sequence_race_is_a_path_mark_on_its_own(h: Harness) -> None:
    flag, _ = h.run(seq_conflict=True)
    assert flag is not None and list(flag.evidence)[-1] == "seq_conflict"


def test_unknown_host_gets_origin_independent_evidence_only(h: Harness) -> None:
    target = {"host": "api.unknown.example", "port": 80, "scheme": "http"}
    flag, _ = h.run(target=target, request="get", status=302, header_names=["location"],
                    server_header=None, body_sha256="cd" * 32)
    assert flag is None
    flag, _ = h.run(target=target, request="get", status=302, header_names=["location"],
                    ttl={"syn_ack": 50, "response": 51}, seq_conflict=True)
    assert flag is not None
    assert [k for k in ("status", "origin_marks", "ttl_delta", "seq_conflict")
            if k in flag.evidence] == ["ttl_delta", "seq_conflict"]
    assert flag.evidence["origin_known"] is False


def test_unknown_host_ws_upgrade_uses_the_protocol_status(h: Harness) -> None:
    flag, _ = h.run(target={"host": "chat.unknown.example", "port": 80, "scheme": "ws"},
                    **INJECTED)
    assert flag is not None
    assert "WebSocket upgrade answered 200, the protocol requires 101" in flag.reasons
    assert "origin_marks" not in flag.evidence


# -- what is learned of the origins ----------------------------------------------------

def teach_tls(h: Harness, count: int, host: str = "www.example.com", **kw: Any) -> None:
    """``count`` TLS answers of ``host`` (``get``), from a few networks."""
    for i in range(count):
        h.run(**{**WWW, "target": {"host": host, "port": 443, "scheme": "https"},
                 "src_ip": f"198.51.{i % 7}.9", "event_id": f"tls-{i}", **kw})


def test_a_load_balancer_ttl_relation_is_learned_from_tls(h: Harness) -> None:
    """The origin's SYN-ACKs come from a box one hop nearer than its answers half the
    time (delta -1) and from the server itself otherwise: both are the origin's."""
    genuine_lb = {**WWW, "ttl": {"syn_ack": 52, "response": 53}}
    for i in range(40):
        ttl = {"syn_ack": 52, "response": 52 + i % 2}
        teach_tls(h, 1, ttl=ttl)
    flag, ev = h.run(**genuine_lb)
    assert flag is None and ev.notes["injection"]["score"] == 0.0
    flag, _ = h.run(**{**WWW, "ttl": {"syn_ack": 52, "response": 54}})
    assert flag is not None
    assert flag.evidence["ttl_delta"]["expected_deltas"] == [0, 1]
    assert flag.reasons[0].endswith("sent by a box 1 hop nearer than the server")
    forged = {**genuine_lb, "header_names": ["content-type"], "server_header": None}
    assert h.run(**forged)[0] is not None  # same TTL as the origin's: its marks are missing


def test_the_header_set_of_an_unconfigured_origin_is_learned(h: Harness) -> None:
    host = "cdn.other.example"
    marks = {"header_names": ["server", "x-amz-cf-id", "via", "content-type"],
             "server_header": "AmazonS3"}
    forged = {**WWW, "target": {"host": host, "port": 80, "scheme": "http"},
              "header_names": ["content-type"], "server_header": None}
    assert h.run(**forged)[0] is None  # nothing known of it yet
    teach_tls(h, 40, host=host, **marks)
    flag, _ = h.run(**forged)
    assert flag is not None
    e = flag.evidence["origin_marks"]
    assert e["missing"] == ["server", "via", "x-amz-cf-id"]
    assert e["expected_server"] == ["amazons3"] and e["learned_from"] == "learned (status 200)"
    # a 503 of the same origin: not seen yet, its marks are those of every known status
    flag, _ = h.run(**{**forged, "status": 503})
    assert flag is not None
    assert flag.evidence["origin_marks"]["learned_from"] == "learned (all statuses)"


def test_the_fast_bound_is_learned_from_the_origins_tls_timings(h: Harness) -> None:
    """A jittery origin: its TLS answers arrive down to 0.3 handshake RTTs."""
    ratio = 0.45
    fast = {**WWW, "connect_ms": 20.0, "ttfb_ms": 20.0 * ratio,
            "ttl": {"syn_ack": 52, "response": 53}}  # with a TTL +1 (0.45): flagged
    assert h.run(**fast)[0] is not None
    for i in range(300):
        teach_tls(h, 1, connect_ms=20.0, ttfb_ms=20.0 * (0.3 + (i % 50) / 10))
    flag, ev = h.run(**{**fast, "ttl": None})
    assert flag is None and ev.notes["injection"]["score"] == 0.0
    flag, _ = h.run(**{**fast, "ttfb_ms": 2.0, "seq_conflict": True})
    assert flag is not None and flag.evidence["fast_answer"]["learned_ratio"] < 0.3


def test_an_anomaly_many_networks_see_at_once_is_the_origins(h: Harness) -> None:
    """A maintenance page served without the CDN's marks, seen from eight networks in
    the same minutes: the first networks' answers are flagged, then it is origin-wide."""
    page = {**WWW, "status": 503, "header_names": ["content-type"], "server_header": "nginx"}
    flags = []
    for i in range(8):
        flag, ev = h.run(**page, src_ip=f"100.{64 + i}.0.7", event_id=f"m{i}",
                         ts=f"2026-03-02T10:{15 + i:02d}:00+09:00")
        flags.append(flag is not None)
        assert ev.notes["injection"]["origin_wide"] is (flag is None)
    # the second network got the same page no sooner than the round trip, as the first
    assert flags == [True] + [False] * 7
    # the same page from one network, an hour later: no other network sees it
    flag, ev = h.run(**page, src_ip="100.64.0.8", ts="2026-03-02T11:30:00+09:00")
    assert flag is not None and ev.notes["injection"]["origin_wide"] is False
    # without those witnesses, four networks and half of those reaching the origin
    h = Harness("[detectors.injection]\nquiet_witness = false\nlate_witness = false\n")
    flags = [h.run(**page, src_ip=f"100.{64 + i}.0.7", event_id=f"m{i}",
                   ts=f"2026-03-02T10:{15 + i:02d}:00+09:00")[0] is not None for i in range(8)]
    assert flags == [True] * 3 + [False] * 5


def test_what_was_learned_survives_a_restart_and_warms_another_worker(h: Harness) -> None:
    teach_tls(h, 40, host="cdn.other.example", header_names=["server", "x-cache"],
              server_header="ECS")
    forged = {**WWW, "target": {"host": "cdn.other.example", "port": 80, "scheme": "http"},
              "header_names": ["content-type"], "server_header": None}
    snapshot = json.loads(json.dumps(h.det.state()))
    restored, warmed = Harness(), Harness()
    restored.det.load_state(snapshot)
    warmed.det.load_learned(json.loads(json.dumps(h.det.learned_state())))
    for other in (restored, warmed):
        flag, _ = other.run(**forged)
        assert flag is not None and flag.evidence["origin_marks"]["missing"] == [
            "server", "x-cache"]


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


def test_made_up_hosts_do_not_push_the_configured_origins_out() -> None:
    h = Harness("[detectors.injection]\nmax_origins = 4\n")
    teach_tls(h, 40)
    for i in range(20):
        h.run(target={"host": f"x{i}.example", "port": 80, "scheme": "http"}, request="get")
    assert len(h.det.profiles.origins) <= 4
    assert "www.example.com|get" in h.det.profiles.origins
    assert "x19.example|get" in h.det.profiles.origins and "x0.example|get" not in (
        h.det.profiles.origins)


def test_what_the_reporter_saw_decides_tls_not_the_port(h: Harness) -> None:
    """TLS on port 80 is the control; bytes that were neither HTTP nor TLS racing the
    genuine ones on port 443 are a forged answer."""
    flag, ev = h.run(target={"host": "ws.example.com", "port": 80, "scheme": "ws"},
                     protocol="tls", seq_conflict=True, **INJECTED)
    assert flag is None and ev.notes["injection"]["tls"] is True
    flag, ev = h.run(target={"host": "ws.example.com", "port": 443, "scheme": "wss"},
                     protocol="other", status=None, header_names=None, seq_conflict=True,
                     reporter="sensor")
    assert flag is not None and ev.notes["injection"]["tls"] is False
    assert list(flag.evidence).count("seq_conflict") == 1


@pytest.mark.parametrize(("connect_ms", "ttfb_ms", "unplaced"), [
    (12.0, 40.0, True),  # no sooner than the round trip
    (12.0, 4.0, False),  # sooner than the round trip allows: a nearer box
    (1.2, 2.0, False),  # a handshake too short to time, the first byte within its jitter
    (1.2, 9.0, True),  # ...and well after it
])
def test_an_answer_without_ttls_is_flagged_only_when_it_shows_a_nearer_box(
        connect_ms: float, ttfb_ms: float, unplaced: bool) -> None:
    """A page without the origin's marks and no TTLs seen: when its first byte came no
    sooner than the round trip (and no race, no storm), nothing places the box that
    answered nearer than the server: recorded as ``unplaced``, not flagged, not a
    suspect; ``flag_unplaced = true`` flags it on the missing marks and content."""
    page = {**WWW, "header_names": ["content-type"], "server_header": None,
            "body_sha256": "cd" * 32, "ttl": None, "connect_ms": connect_ms, "ttfb_ms": ttfb_ms}
    flag, ev = Harness().run(**page)
    notes = ev.notes["injection"]
    assert (flag is None) == unplaced and notes["unplaced"] == unplaced
    assert notes["suspect"] == (not unplaced) and notes["anomaly"] == "status 200"
    flag, ev = Harness("[detectors.injection]\nflag_unplaced = true\n").run(**page)
    assert flag is not None and not ev.notes["injection"]["unplaced"]
    # with a race seen, whatever the timing, a box on the path answered
    flag, _ = Harness().run(**{**page, "seq_conflict": True})
    assert flag is not None
