"""Injection cells: (ASN, /24, port, hour) aggregation and the injection_cell alert."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from pathsentry.config import load_config
from pathsentry.detectors import build_detectors
from pathsentry.detectors.base import DetectorContext, Enriched
from pathsentry.detectors.injection import NOTES_KEY
from pathsentry.detectors.injection_cells import InjectionCellDetector
from pathsentry.engine import Engine
from pathsentry.enrich.geo import CsvPrefixTable, GeoInfo, GeoResolver
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
#: one /24 in each of five other ASNs
OTHER_NETS = ("100.70.0", "100.71.0", "100.72.0", "100.73.0", "100.74.0")
GEO += "".join(f"{p}.0/24,KR,{64500 + i},Other ISP {i},37.5,127.0,residential\n"
               for i, p in enumerate(OTHER_NETS))
INJECTING = ("203.0.113", "198.51.100")  # KT lines with the DPI box
CLEAN_KT, SKB = ("100.64.1",), ("192.0.2", "100.65.2")
CONFIG = CDN_ORIGINS
ROOT = Path(__file__).resolve().parents[2]
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
    something on the path, but not an injector that forges plaintext answers. The
    origin's genuine TLS answers reach it from the other networks too: one network's
    TTL-rewriting box does not teach the origin a +1."""
    odd: dict[str, Any] = {"ttl": {"syn_ack": 52, "response": 53}, "ttfb_ms": 3.0}
    before = DAY0 - timedelta(hours=1)
    clean_tls = [make_probe(1000 + i, line, 1 + i % 6, before + timedelta(seconds=i), t)
                 for i, line in enumerate(OTHER_NETS * 8)
                 for t in TARGETS if t[1] == 443]
    events = [make_probe(i, "192.0.2", 1 + i % 8, DAY0 + timedelta(minutes=i),
                         TARGETS[i % 3], **odd) for i in range(90)]
    alerts, flags = run(iter(clean_tls + events))
    assert flags == 60 and alerts == []
    plain_only = [e for e in events if e["target"]["port"] != 443]
    alerts, _ = run(iter(clean_tls + plain_only))
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
    alerts, _ = run(world(days=2, hosts=3), engine("[detectors.injection_cells]\n"
                                                   "min_suspect_clients = 3\nmin_probes = 8\n"))
    final = alerts[-1]
    assert (final.subject["prefixes"], final.subject["ports"], final.subject["hours"]) == (
        ["198.51.100.0/24", "203.0.113.0/24"], [80, 8080], "09–18")
    kinds = {("line" if c["hour"] is None else c["prefix"]) for c in final.evidence["cells"]}
    assert "line" in kinds and "+" in kinds and kinds <= {"line", "+", "*"}
    assert final.evidence["contrast_on"] == "the alerted lines"


# -- the detector driven directly: eviction, restore, stable event ids -------------------

LINE_A, LINE_B, LINE_C = "203.0.113", "198.51.100", "100.64.1"


def cell_detector(**settings: float | int | str) -> InjectionCellDetector:
    """A cell detector; these scenarios use two sources per line, and judge each cell
    as its probes come (no ``settle_s``) unless told."""
    settings = {"min_suspect_clients": 2, "settle_s": 0, **settings}
    extra = "[detectors.injection_cells]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    cfg = load_config(text=CONFIG + extra, env={})
    return InjectionCellDetector(DetectorContext(cfg, GeoResolver([])))


def judged(n: int, line: str, host_no: int, ts: datetime, port: int = 80,
           suspect: bool = True) -> Enriched:
    """A probe as the session stage leaves it: the verdict in ``notes["injection"]``."""
    target = next(t for t in TARGETS if t[1] == port)
    tls = port == 443
    probe = parse_event(make_probe(n, line, host_no, ts, target, forged=suspect and not tls))
    notes = {NOTES_KEY: {"tls": tls, "suspect": suspect and not tls,
                         "path_anomaly": suspect and tls}}
    return Enriched(probe, GeoInfo(asn=4766, as_name="Korea Telecom"), f"{line}.0/24",
                    notes=notes)


def feed(det: InjectionCellDetector, events: list[Enriched]) -> list[Alert]:
    out: list[Alert] = []
    for ev in events:
        found = det.process(ev)
        if found is not None:
            out.extend(found.alerts)
    return out


def forged(first: int, line: str, at: datetime, count: int = 4, port: int = 80) -> list[Enriched]:
    """``count`` forged answers from two hosts of ``line``, one a minute from ``at``."""
    return [judged(first + i, line, 1 + i % 2, at + timedelta(minutes=i), port)
            for i in range(count)]


def assert_consistent(det: InjectionCellDetector, alert: Alert | None = None) -> None:
    """Every bad cell is one the detector still holds (pooled ones: with probes), and
    an alert's evidence shows only cells with probes."""
    for group in det.groups.values():
        lines = InjectionCellDetector._lines(group)
        for key in group.bad:
            assert InjectionCellDetector._cell_at(group, key, lines).n > 0, key
            assert key[0] == "+" or key in group.cells, key
    if alert is not None:
        assert alert.evidence["cells"]
        for c in alert.evidence["cells"]:
            assert c["probes"] >= 4 and 0 < c["rate"] <= 1, c


def test_bad_cells_pushed_out_by_the_cell_cap_leave_the_alert() -> None:
    det = cell_detector(min_probes=4, max_cells=6)
    nine = DAY0 + timedelta(hours=9)
    first = feed(det, forged(0, LINE_A, nine))
    assert [a.version for a in first] == [1]
    assert first[0].subject["prefixes"] == ["203.0.113.0/24"]
    # line B's cells push line A's hourly cells (and the ASN-wide one) out of state
    second = feed(det, forged(10, LINE_B, nine + timedelta(hours=1), port=8080))
    # the ASN's all-port cells turn bad first, line B's cells with its later probes
    assert [a.version for a in second] == [2, 3]
    alert = second[-1]
    assert_consistent(det, alert)
    group = det.groups["asn:4766"]
    assert ("203.0.113.0/24", 80, 9) not in group.cells
    assert ("203.0.113.0/24", 80, 9) not in group.bad and ("*", 80, 9) not in group.bad
    assert ("+", 80, 9) not in group.bad  # its only member is gone
    assert {(c["prefix"], c["port"], c["hour"]) for c in alert.evidence["cells"]} == {
        ("198.51.100.0/24", 8080, None), ("198.51.100.0/24", 8080, 10), ("*", 8080, 10),
        ("*", 8080, None), ("+", 8080, 10), ("*", None, None), ("*", None, 10)}
    # the subject only grows: what was alerted before stays listed
    assert alert.subject["prefixes"] == ["198.51.100.0/24", "203.0.113.0/24"]
    assert (alert.subject["ports"], alert.subject["hours"]) == ([80, 8080], "09–11")


def test_idle_bad_cells_expire_and_the_last_version_stands() -> None:
    det = cell_detector(min_probes=4, idle_ttl_s=3600.0, refresh_s=0.0)
    nine = DAY0 + timedelta(hours=9)
    assert [a.version for a in feed(det, forged(0, LINE_A, nine))] == [1]
    # clean probes on line C keep the ASN alive while line A falls idle
    eleven = nine + timedelta(hours=2)
    feed(det, [judged(10 + i, LINE_C, 1 + i, eleven, suspect=False) for i in range(30)])
    assert det.flush(eleven.timestamp()) is None  # nothing left to say: no new version
    group = det.groups["asn:4766"]
    assert group.bad == set() and group.cells  # line C's cells are still held
    assert group.published is not None and group.published.version == 1
    assert_consistent(det)
    # line B turns bad later: the next versions show only cells still held (the ASN's
    # all-day cell, kept alive by line C, still counts line A's forgeries: it turns bad
    # first)
    alerts = feed(det, forged(20, LINE_B, eleven + timedelta(minutes=5)))
    assert [a.version for a in alerts] == [2, 3]
    for alert in alerts:
        assert_consistent(det, alert)
    assert {(c["prefix"], c["hour"]) for c in alerts[0].evidence["cells"]} == {("*", None)}
    assert {c["prefix"] for c in alerts[1].evidence["cells"]} == {"198.51.100.0/24", "*", "+"}
    assert alerts[1].subject["prefixes"] == ["198.51.100.0/24", "203.0.113.0/24"]


def test_refresh_after_some_cells_expired_lists_the_cells_still_held() -> None:
    det = cell_detector(min_probes=4, idle_ttl_s=3600.0, refresh_s=0.0)
    nine = DAY0 + timedelta(hours=9)
    eleven = nine + timedelta(hours=2)
    feed(det, forged(0, LINE_A, nine))
    feed(det, forged(10, LINE_B, eleven))
    refreshed = det.flush((eleven + timedelta(minutes=30)).timestamp())
    assert refreshed is not None
    [alert] = refreshed.alerts
    assert alert.version == 3
    assert_consistent(det, alert)
    assert {c["prefix"] for c in alert.evidence["cells"]} == {"198.51.100.0/24", "*", "+"}
    assert {c["hour"] for c in alert.evidence["cells"]} == {11, None}
    assert alert.evidence["in_hours"] == {"probes": 4, "suspect": 4}


def test_a_line_that_clears_takes_its_pooled_cells_along() -> None:
    """Clean answers dilute line A until none of its cells is bad: the pooled cell of
    the lines, which only ever held line A, is no longer bad either."""
    det = cell_detector(min_probes=4, refresh_s=0.0, min_rate=0.05)  # a floor dilutes
    nine = DAY0 + timedelta(hours=9)
    assert [a.version for a in feed(det, forged(0, LINE_A, nine))] == [1]
    clean = [judged(10 + i, LINE_A, 3 + i % 4, nine + timedelta(minutes=10 + i),
                    suspect=False) for i in range(40)]
    late = judged(60, LINE_A, 7, nine + timedelta(minutes=55))
    assert feed(det, [*clean, late]) == []
    assert det.groups["asn:4766"].bad == set()
    assert det.flush((nine + timedelta(minutes=56)).timestamp()) is None
    assert_consistent(det)


def test_restored_state_keeps_processing_and_flushing() -> None:
    settings: dict[str, float | int | str] = {
        "min_probes": 4, "max_cells": 6, "idle_ttl_s": 3600.0, "refresh_s": 0.0}
    nine = DAY0 + timedelta(hours=9)
    before = [*forged(0, LINE_A, nine), *forged(10, LINE_B, nine + timedelta(minutes=20))]
    after = [*forged(20, LINE_C, nine + timedelta(hours=1), port=8080),
             *forged(30, LINE_B, nine + timedelta(hours=2, minutes=30))]
    end = (nine + timedelta(hours=3)).timestamp()

    straight = cell_detector(**settings)
    expected = feed(straight, before + after)
    flushed = straight.flush(end)
    expected += flushed.alerts if flushed else []

    first = cell_detector(**settings)
    got = feed(first, before)
    restored = cell_detector(**settings)
    restored.load_state(json.loads(json.dumps(first.state())))
    got += feed(restored, after)
    flushed = restored.flush(end)
    got += flushed.alerts if flushed else []
    assert_consistent(restored)
    assert [a.model_dump() for a in got] == [a.model_dump() for a in expected]
    assert [a.version for a in got][-1] >= 3


def test_a_snapshot_naming_cells_it_does_not_hold_is_restored_cleanly() -> None:
    """A snapshot whose bad list names cells that are not in it (dropped before the
    snapshot was taken) restores to the cells it does hold."""
    det = cell_detector(min_probes=4, refresh_s=0.0)
    nine = DAY0 + timedelta(hours=9)
    feed(det, forged(0, LINE_A, nine))
    state = json.loads(json.dumps(det.state()))
    group = state["groups"]["asn:4766"]
    group["cells"] = [c for c in group["cells"] if c[0] != "*"]
    group["bad"] += [["198.51.100.0/24", 80, 9], ["+", 8080, 9]]
    restored = cell_detector(min_probes=4, refresh_s=0.0)
    restored.load_state(state)
    assert_consistent(restored)
    assert restored.groups["asn:4766"].bad == {
        ("203.0.113.0/24", 80, 9), ("203.0.113.0/24", 80, -1), ("+", 80, 9)}
    alerts = feed(restored, forged(10, LINE_A, nine + timedelta(minutes=10), count=2))
    flushed = restored.flush((nine + timedelta(minutes=30)).timestamp())
    assert flushed is not None
    alerts += flushed.alerts
    assert alerts and all(a.version >= 2 for a in alerts)
    assert_consistent(restored, alerts[-1])


def pooled_scenario() -> list[Alert]:
    """Three lines forged in the same hour: the pooled cell sums all three."""
    det = cell_detector(min_probes=4, max_examples=2, max_alert_events=20)
    nine = DAY0 + timedelta(hours=9)
    events = [judged(i * 3 + j, line, 1 + i % 2, nine + timedelta(minutes=i))
              for i in range(4) for j, line in enumerate((LINE_C, LINE_A, LINE_B))]
    return feed(det, events)


def test_event_ids_follow_the_cells_and_the_lines_in_order() -> None:
    final = pooled_scenario()[-1]
    assert final.subject["prefixes"] == ["100.64.1.0/24", "198.51.100.0/24", "203.0.113.0/24"]
    # "*" cell, then the pooled cell (lines in prefix order), then each line's cells
    assert final.event_ids == ["p0", "p1", "p3", "p2", "p5", "p4"]


SCENARIO = ("import json; from tests.detectors.test_injection_cells import pooled_scenario; "
            "print(json.dumps([a.model_dump(mode='json') for a in pooled_scenario()]))")


def test_alerts_do_not_depend_on_the_hash_seed() -> None:
    outs = set()
    for seed in ("0", "1", "2", "3"):
        proc = subprocess.run([sys.executable, "-c", SCENARIO], capture_output=True, text=True,
                              check=True, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": seed})
        outs.add(proc.stdout)
    assert len(outs) == 1
    alerts = json.loads(outs.pop())
    assert alerts and alerts[-1]["event_ids"] == pooled_scenario()[-1].event_ids
