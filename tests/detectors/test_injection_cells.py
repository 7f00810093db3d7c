"""Injection cells: (ASN, /24, port, hour) aggregation and the injection_cell alert."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pathsentry.config import load_config
from pathsentry.detectors import build_detectors
from pathsentry.detectors.base import DetectorContext
from pathsentry.detectors.injection_cells import InjectionCellDetector
from pathsentry.engine import Engine
from pathsentry.enrich.geo import CsvPrefixTable, GeoResolver
from pathsentry.schemas import Alert, parse_event
from tests.fixtures import CDN_ORIGINS

KST = timezone(timedelta(hours=9))
DAY0 = datetime(2026, 3, 2, tzinfo=KST)
GEO = """cidr,country,asn,as_name,lat,lon,kind
203.0.113.0/24,KR,4766,Korea Telecom,37.5,127.0,residential
198.51.100.0/24,KR,4766,Korea Telecom,37.5,127.0,residential
100.64.1.0/24,KR,4766,Korea Telecom,37.5,127.0,residential
192.0.2.0/24,KR,9318,SK Broadband,37.5,127.0,residential
100.65.2.0/24,KR,9318,SK Broadband,37.5,127.0,residential
"""
INJECTING = ("203.0.113", "198.51.100")  # KT lines with the DPI box
CLEAN_KT, SKB = ("100.64.1",), ("192.0.2", "100.65.2")
CONFIG = CDN_ORIGINS
TARGETS = (("ws.example.com", 80, "ws", "ws_upgrade"), ("www.example.com", 8080, "http", "get"),
           ("ws.example.com", 443, "wss", "ws_upgrade"))


def make_probe(n: int, line: str, host_no: int, ts: datetime, target: tuple[str, int, str, str],
               forged: bool = False, **noise: Any) -> dict[str, Any]:
    host, port, scheme, request = target
    ev: dict[str, Any] = {
        "kind": "http_probe", "event_id": f"p{n}", "ts": ts.isoformat(),
        "src_ip": f"{line}.{host_no}", "account": f"user{line.replace('.', '')}{host_no}",
        "target": {"host": host, "port": port, "scheme": scheme}, "request": request,
        "status": 101 if request == "ws_upgrade" else 200,
        "header_names": ["server", "cf-ray"], "server_header": "cloudflare",
        "connect_ms": 11.0, "ttfb_ms": 24.0, "ttl": {"syn_ack": 52, "response": 52},
        "retransmits": 0, "seq_conflict": False, "reporter": "client",
    }
    if forged:
        ev.update(status=200, header_names=["content-type"], server_header=None, ttfb_ms=1.5,
                  ttl={"syn_ack": 52, "response": 53}, retransmits=5, seq_conflict=None)
    ev.update(noise)
    return ev


NOISE = ({"ttl": {"syn_ack": 52, "response": 51}}, {"retransmits": 7}, {"ttfb_ms": 4.0},
         {"ttl": {"syn_ack": 52, "response": 53}, "ttfb_ms": 3.0})


def world(days: int = 2, seed: int = 1, lines: tuple[str, ...] = INJECTING + CLEAN_KT + SKB,
          hosts: int = 6, noise_rate: float = 0.02) -> Iterator[dict[str, Any]]:
    """Each host probes the three targets every hour; the DPI box on the injecting KT
    lines answers 90% of the plaintext probes during 09-18 KST. Every line has random
    noise (one odd TTL, a retransmission burst, a fast answer, now and then two)."""
    rng, n = random.Random(seed), 0
    for hour in range(24 * days):
        for line in lines:
            for host_no in range(1, hosts + 1):
                for target in TARGETS:
                    n += 1
                    ts = DAY0 + timedelta(hours=hour, minutes=rng.randrange(60))
                    forged = (line in INJECTING and 9 <= ts.hour < 18 and target[1] != 443
                              and rng.random() < 0.9)
                    noise = rng.choice(NOISE) if rng.random() < noise_rate else {}
                    yield make_probe(n, line, host_no, ts, target, forged, **noise)


def engine(extra: str = "") -> Engine:
    cfg = load_config(text=CONFIG + extra, env={})
    geo = GeoResolver([CsvPrefixTable.from_lines(io.StringIO(GEO))])
    dets = build_detectors(DetectorContext(cfg, geo), only=["injection", "injection_cells"])
    return Engine(cfg, geo=geo, detectors=dets)


def run(events: Iterator[dict[str, Any]], eng: Engine | None = None,
        flush: bool = True) -> tuple[list[Alert], int]:
    eng = eng or engine()
    alerts: list[Alert] = []
    flags = 0
    for raw in sorted(events, key=lambda e: e["ts"]):
        found = eng.process(parse_event(raw))
        alerts.extend(found.alerts)
        flags += len(found.flags)
    if flush:
        alerts.extend(eng.flush().alerts)
    return alerts, flags


@pytest.fixture(scope="module")
def day_alerts() -> tuple[list[Alert], int]:
    return run(world())


def test_the_injecting_asn_alerts_with_ports_hours_and_prefixes(
        day_alerts: tuple[list[Alert], int]) -> None:
    alerts, flags = day_alerts
    assert flags > 0
    final = alerts[-1]
    assert final.kind == "injection_cell" and final.detector == "injection_cells"
    assert final.subject == {
        "asn": 4766, "as_name": "Korea Telecom",
        "prefixes": ["198.51.100.0/24", "203.0.113.0/24"],
        "ports": [80, 8080], "hours": "09–18", "timezone": "UTC+0900",
    }
    assert final.severity in ("high", "critical")
    assert final.first_seen.astimezone(KST).hour == 9
    assert final.last_seen.astimezone(KST).hour == 17
    assert final.evidence["off_hours"]["suspect"] <= 3
    assert final.evidence["in_hours"]["suspect"] > 200
    assert final.evidence["tls_same_hours"]["path_anomalous"] <= 3
    assert 0 < len(final.event_ids) <= 20
    assert all(a.startswith("user203") or a.startswith("user198") for a in final.accounts)
    assert "AS4766 (Korea Telecom)" in final.summary and "09–18" in final.summary


def test_one_alert_updated_not_repeated(day_alerts: tuple[list[Alert], int]) -> None:
    alerts, _ = day_alerts
    assert len({a.alert_id for a in alerts}) == 1
    versions = [a.version for a in alerts]
    assert versions == list(range(1, len(alerts) + 1)) and len(versions) > 1


def test_clean_asn_with_noise_does_not_alert() -> None:
    alerts, flags = run(world(lines=CLEAN_KT + SKB, noise_rate=0.05, seed=3))
    assert flags > 0  # some noisy probes are flagged one by one ...
    assert alerts == []  # ... but no cell is confidently bad


def test_path_wide_anomaly_also_seen_on_tls_is_not_injection() -> None:
    """A line whose every connection (TLS too) shows TTL +1 and early first bytes has
    something on the path, but not an injector that forges plaintext answers."""
    odd: dict[str, Any] = {"ttl": {"syn_ack": 52, "response": 53}, "ttfb_ms": 3.0}
    events = [make_probe(i, "192.0.2", 1 + i % 8, DAY0 + timedelta(minutes=i),
                         TARGETS[i % 3], **odd) for i in range(90)]
    alerts, flags = run(iter(events))
    assert flags == 60 and alerts == []
    plain_only = [e for e in events if e["target"]["port"] != 443]
    alerts, _ = run(iter(plain_only))
    assert [a.subject["asn"] for a in alerts[-1:]] == [9318]


def test_alert_ids_are_deterministic(day_alerts: tuple[list[Alert], int]) -> None:
    again, _ = run(world())
    assert [a.model_dump() for a in again] == [a.model_dump() for a in day_alerts[0]]


def test_state_round_trip_gives_the_same_alerts(day_alerts: tuple[list[Alert], int]) -> None:
    events = sorted(world(), key=lambda e: e["ts"])
    half = len(events) // 2
    first = engine()
    a1, _ = run(iter(events[:half]), first, flush=False)
    state = json.loads(json.dumps(first.state()))
    second = engine()
    second.load_state(state)
    a2, _ = run(iter(events[half:]), second)
    assert a2[-1].model_dump() == day_alerts[0][-1].model_dump()
    assert a1[0].alert_id == a2[-1].alert_id


def test_state_is_bounded_and_idle_groups_expire() -> None:
    eng = engine("[detectors.injection_cells]\nmax_groups = 1\nmax_cells = 10\n")
    run(world(days=1, lines=INJECTING + SKB), eng)
    det = next(d for d in eng.detectors if isinstance(d, InjectionCellDetector))
    assert len(det.groups) == 1
    group = next(iter(det.groups.values()))
    assert len(group.cells) <= 10 and len(group.tls) <= 10
    det.flush(eng.last_ts + 15 * 86400)
    assert det.groups == {}


def test_hours_follow_the_configured_timezone() -> None:
    eng = engine('[detectors.injection_cells]\ntimezone = "UTC"\n')
    alerts, _ = run(world(days=1, lines=INJECTING), eng)
    assert alerts[-1].subject["hours"] == "00–09"
    assert alerts[-1].subject["timezone"] == "UTC"


def test_sparse_lines_are_pooled_to_find_the_hours() -> None:
    """Three hosts per line: no hourly cell of one /24 reaches min_probes, but the
    lines' all-day cells do, and the lines pooled hour by hour give 09-18."""
    alerts, _ = run(world(days=2, hosts=3))
    final = alerts[-1]
    assert (final.subject["prefixes"], final.subject["ports"], final.subject["hours"]) == (
        ["198.51.100.0/24", "203.0.113.0/24"], [80, 8080], "09–18")
    kinds = {("line" if c["hour"] is None else c["prefix"]) for c in final.evidence["cells"]}
    assert "line" in kinds and "+" in kinds and kinds <= {"line", "+", "*"}
    assert final.evidence["contrast_on"] == "the alerted lines"
