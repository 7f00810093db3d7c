"""Injectors with three or four sources: the exact tails against the learned baselines
when the ISP's own TLS control is small, and cells judged only once the same minutes
have been seen from the other networks (the first answers of an origin failure).

The cell-stage scenarios feed probes as the session stage leaves them (the verdict and
the other networks' rates in ``notes["injection"]``); the outage scenarios run both
stages over the eight-ISP world of :mod:`tests.detectors.test_injection_origin`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import pytest

from pathsentry.config import load_config
from pathsentry.detectors.base import DetectorContext, Enriched
from pathsentry.detectors.injection import NOTES_KEY
from pathsentry.detectors.injection_cells import InjectionCellDetector
from pathsentry.enrich.geo import GeoInfo, GeoResolver
from pathsentry.schemas import Alert, parse_event
from tests.detectors.test_injection_cells import TARGETS, make_probe
from tests.detectors.test_injection_origin import KST, World, run
from tests.fixtures import CDN_ORIGINS

DAY0 = datetime(2026, 3, 2, tzinfo=KST)
LINE = "203.0.113"
#: the other networks' baselines early in a small world: none of about 150 plaintext
#: answers flagged, none of about 75 TLS answers path-anomalous (AS4766 in seed 246 of
#: ``pathsentry evaluate --worlds 60 --seed 201``)
BASELINE = {"others": 0.0, "others_tls": 0.0, "baseline": 0.0, "baseline_n": 150.0,
            "baseline_tls": 0.0, "baseline_tls_n": 75.0}


def detector(**settings: Any) -> InjectionCellDetector:
    extra = "[detectors.injection_cells]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    cfg = load_config(text=CDN_ORIGINS + extra, env={})
    return InjectionCellDetector(DetectorContext(cfg, GeoResolver([])))


def probe(n: int, host: int, ts: datetime, port: int, suspect: bool = False,
          notes: dict[str, Any] | None = None) -> Enriched:
    """A probe of subscriber ``host`` of KT's line as the session stage leaves it."""
    target = next((t for t in TARGETS if t[1] == port), ("www.example.com", port, "http", "get"))
    tls = port == 443
    ev = parse_event(make_probe(n, LINE, host, ts, target, forged=suspect))
    verdict = {"tls": tls, "suspect": suspect, "path_anomaly": False, "origin_wide": False,
               **({} if tls else (notes if notes is not None else BASELINE))}
    return Enriched(ev, GeoInfo(asn=4766, as_name="Korea Telecom"), f"{LINE}.0/24",
                    notes={NOTES_KEY: verdict})


def line_day(sources: int, plain: int = 24, tls: int = 22) -> list[Enriched]:
    """A day of one KT line on port 8080: ``plain`` plaintext probes from 09:00 to
    23:00, the box forging one answer each for ``sources`` subscribers among the last
    ones; ``tls`` TLS probes between them, none anomalous."""
    out = [probe(i, 1 + i % 12, DAY0 + timedelta(hours=9 + i * 14 / plain),
                 8080, suspect=i % 2 == 1 and i >= plain - 2 * sources) for i in range(plain)]
    out += [probe(100 + j, 20 + j, DAY0 + timedelta(hours=9, minutes=30 + 37 * j), 443)
            for j in range(tls)]
    return sorted(out, key=lambda e: e.ts)


def feed(det: InjectionCellDetector, events: list[Enriched],
         tick: float | None = None) -> list[Alert]:
    alerts: list[Alert] = []
    for ev in events:
        found = det.process(ev)
        if found is not None:
            alerts.extend(found.alerts)
    if tick is not None:
        found = det.flush(events[-1].ts + tick)
        if found is not None:
            alerts.extend(found.alerts)
    return alerts


@pytest.mark.parametrize("sources", [3, 4])
def test_a_small_tls_control_is_topped_up_with_every_answer_of_the_other_networks(
        sources: int) -> None:
    """Three (four) subscribers of one line forged once each in a day: 3 of 24 plaintext
    probes on port 8080. The other ISPs flagged none of their ~150 answers (tail 8e-4)
    and the line's 22 TLS probes show nothing, but with only the other ISPs' ~75 TLS
    answers to top them up, a TLS path-anomaly rate of a few percent is not ruled out
    (tail 2.4e-3, above ``alpha``; 2e-4 with them). A path like the others' is measured on all their
    answers, plaintext ones included (their flagged rate bounds their path-anomaly
    rate from above): the ISP is named, suspected."""
    alerts = feed(detector(), line_day(sources), tick=3600.0)
    assert alerts
    last = alerts[-1]
    assert (last.subject["asn"], last.subject["ports"]) == (4766, [8080])
    assert (last.evidence["level"], last.severity) == ("suspected", "low")
    assert last.evidence["sources"]["distinct"] == sources
    [cell] = [c for c in last.evidence["cells"] if c["prefix"] == f"{LINE}.0/24"]
    assert cell["suspect"] == sources and cell["tail_tls"] <= 0.001
    assert feed(detector(tls_borrow_plain=False), line_day(3), tick=3600.0) == []


def test_the_other_networks_answers_do_not_outweigh_a_line_whose_tls_is_anomalous() -> None:
    """The same three forged answers on a line whose own TLS shows path anomalies (4 of
    22): its path is not like the others', its own control stands alone, and three
    suspects in 24 are nothing against it."""
    events = line_day(3)
    tls = [e for e in events if e.event.target.port == 443]
    for e in tls[:4]:
        e.notes[NOTES_KEY]["path_anomaly"] = True
    assert feed(detector(), events, tick=3600.0) == []


def burst(at: datetime, hosts: range, notes: dict[str, Any]) -> list[Enriched]:
    """One suspect probe per subscriber in ``hosts``, a minute apart from ``at``."""
    return [probe(200 + h, h, at + timedelta(minutes=i), 80, suspect=True, notes=notes)
            for i, h in enumerate(hosts)]


def test_a_cell_is_judged_once_the_same_minutes_have_been_seen() -> None:
    """Four subscribers' answers look forged within four minutes, while the other
    networks' answers in the window before them showed nothing. Judged at once, the
    ISP would be named (its baselines show nothing either); the cell waits
    ``settle_s``, and the ISP's answers that follow carry what the other networks saw
    meanwhile: in an origin failure, half of their answers flagged, and nothing is
    named. When they keep showing nothing, a tick after ``settle_s`` names the ISP."""
    ten = DAY0 + timedelta(hours=10)
    quiet = [probe(i, 5 + i % 6, ten - timedelta(minutes=50 - 5 * i), 80) for i in range(8)]
    first = burst(ten, range(1, 5), BASELINE)
    failing = {**BASELINE, "others": 0.5}
    after = [probe(300 + i, 11 + i, ten + timedelta(minutes=5 + i), 80, notes=failing)
             for i in range(8)]

    assert feed(detector(settle_s=0), quiet + first)  # judged at once: named
    det = detector()
    assert feed(det, quiet + first) == []  # not yet
    assert feed(det, after, tick=600.0) == []  # the others saw it too
    det = detector()
    assert feed(det, quiet + first) == []
    later = feed(det, [probe(400, 12, ten + timedelta(minutes=8), 80)], tick=600.0)
    assert [a.evidence["level"] for a in later] == ["suspected"]
    assert later[0].subject["hours"] == "10–11"


def test_a_pending_cell_survives_a_restart() -> None:
    """Saved while its suspects wait, restored, ticked: the same alert as without."""
    ten = DAY0 + timedelta(hours=10)
    events = [probe(i, 5 + i % 6, ten - timedelta(minutes=50 - 5 * i), 80) for i in range(8)]
    events += burst(ten, range(1, 5), BASELINE)
    whole = feed(detector(), events, tick=700.0)
    det = detector()
    feed(det, events)
    saved = json.loads(json.dumps(det.state()))
    assert saved["groups"]["asn:4766"]["pending"]
    again = detector()
    again.load_state(saved)
    restored = again.flush(events[-1].ts + 700.0)
    assert restored is not None and whole
    assert [a.model_dump() for a in restored.alerts] == [a.model_dump() for a in whole]


def outage_sources(w: World, extra: str = "") -> tuple[
        list[Alert], dict[tuple[int | None, int], set[str]]]:
    """Both stages over ``w``: the alerts, and the sources of the flagged answers per
    (ASN, hour)."""
    alerts, flags = run(w, extra)
    sources: dict[tuple[int | None, int], set[str]] = defaultdict(set)
    for f in flags:
        sources[(f.asn, f.ts.astimezone(KST).hour)].add(str(f.src_ip))
    return alerts, sources


@pytest.mark.parametrize(("every_min", "start", "seed"), [(30, 615, 9), (30, 615, 25),
                                                          (60, 600, 11), (60, 600, 26)])
def test_an_outage_seen_by_three_or_four_subscribers_of_one_isp_first_names_nobody(
        every_min: int, start: int, seed: int) -> None:
    """Each subscriber probes every 30 (60) minutes; for 30 minutes (the hour) the
    origin's fallback box answers every ISP without the CDN's marks. Its first answers
    of one ISP, three or four subscribers', come before the other networks' answers in
    the same minutes show the failure: their rate in the window before them is 0, and
    the other ISPs' baselines show nothing. Judged once the same minutes have been
    seen, nobody is named; judged at once (``settle_s = 0``), the ISP of the 30-minute
    world is (the hourly cells of the 60-minute one stay under ``min_probes``). (The
    box's answers one hop nearer than its SYN-ACK, no sooner than the round trip, are
    the origin's once another network got them so, ``late_witness``, from either host,
    ``witness_origins``: both switched off here, and flags are not held for a later
    witness, ``hold_s = 0``, so that the first answers of each ISP stay flagged.)"""
    w = World(outages=[(start, 30, 502, False)], every_min=every_min, seed=seed)
    no_late = ("[detectors.injection]\nlate_witness = false\nwitness_origins = false\n"
               "hold_s = 0\n")
    alerts, sources = outage_sources(w, no_late)
    assert alerts == []
    hit = max(len(s) for s in sources.values())
    assert 3 <= hit <= 4 and len({asn for asn, _ in sources}) >= 3
    assert {hour for _, hour in sources} == {10}
    eager, _ = run(w, no_late + "[detectors.injection_cells]\nsettle_s = 0\n")
    if every_min == 30:  # (hourly cells of 60-minute probing are under ``min_probes``)
        assert eager


def test_an_outage_seen_first_by_five_subscribers_of_one_isp_names_nobody() -> None:
    """Probing every 30 minutes, the failure's first answers of SK Telecom are five
    subscribers' within three minutes, all to one origin on port 80; its next answer in
    that cell, after ``settle_s``, carries the other networks' rate (a third flagged),
    which is too little against five suspects in ten. The failure's onset as the
    session stage saw it (the minute from which some network saw the anomaly), carried
    to the ISP's later answers, tells them apart: nothing is named. Without it
    (``max_failures = 0``) SK Telecom is confirmed. (The fallback box's TLS answers to
    other networks in those minutes make most of the five the origin's at once; without
    that witness, ``tls_witness = false``, as behind a TLS proxy, and without the other
    networks' late answers one hop nearer, ``late_witness = false``, and with flags not
    held for a later witness, ``hold_s = 0``, the five are flagged.)"""
    w = World(outages=[(615, 30, 502, False)], every_min=30, seed=12)
    no_witness = ("[detectors.injection]\ntls_witness = false\nlate_witness = false\n"
                  "hold_s = 0\n")
    alerts, sources = outage_sources(w, no_witness)
    assert max(len(s) for s in sources.values()) == 5
    assert alerts == []
    _, witnessed = outage_sources(w)
    assert max((len(s) for s in witnessed.values()), default=0) < 5
    off, _ = run(w, no_witness + "max_failures = 0\n")
    assert [(a.subject["asn"], a.evidence["level"]) for a in off] == [(9644, "confirmed")]


def test_cells_awaiting_judgement_stay_within_the_cell_cap() -> None:
    """A bad line, then a flood of suspect answers on hundreds of ports of it: the
    cells awaiting judgement are held cells, or pooled over held line cells, however
    many ports the reports name."""
    det = detector(max_cells=60)
    nine = DAY0 + timedelta(hours=9)
    feed(det, [probe(i, 1 + i % 6, nine + timedelta(minutes=i), 80) for i in range(12)])
    feed(det, burst(nine + timedelta(minutes=20), range(1, 5), BASELINE))
    assert feed(det, [probe(50, 9, nine + timedelta(minutes=40), 80)])  # the line is bad
    group = det.groups["asn:4766"]
    assert group.lines
    for i in range(600):
        det.process(probe(1000 + i, 1 + i % 6, nine + timedelta(minutes=41, seconds=i),
                          1024 + i, suspect=True))
    assert len(group.cells) <= 60
    assert len(group.pending) <= len(group.cells) + 24
    assert all(k in group.cells or k[0] == "+" for k in group.pending)
