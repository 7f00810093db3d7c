"""An origin failure's onset, found by the session stage and carried to the cell stage:
the first answers of an ISP that saw the failure before the other networks are the
origin's, while injectors that forge at the same time, to another origin or something
else, are still named.

The cell-stage scenarios feed probes as the session stage leaves them; the others run
both stages over the eight-ISP world of :mod:`tests.detectors.test_injection_origin`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from pathsentry.detectors.injection_window import NetworkWindow, WindowSettings
from pathsentry.schemas import Alert
from tests.detectors.test_injection_few import BASELINE, DAY0, detector, feed, probe
from tests.detectors.test_injection_origin import (
    KST,
    KT,
    TARGETS,
    Injector,
    World,
    events,
    final,
    run,
)

TEN = DAY0 + timedelta(hours=10)
WS = "ws.example.com"


def notes(anomaly: str | None, onsets: list[list[Any]] | None = None,
          others: float = 0.0) -> dict[str, Any]:
    return {**BASELINE, "others": others, "anomaly": anomaly, "onsets": onsets or []}


def first_five_then(later: dict[str, Any]) -> list[Alert]:
    """A quiet hour of one KT line on port 80, then five subscribers' answers to
    ``ws.example.com`` flagged within five minutes (a 502 without the CDN's marks, the
    other networks showing nothing yet), then, 12 minutes on, eight answers of the
    line with ``later`` notes."""
    quiet = [probe(i, 5 + i % 6, TEN - timedelta(minutes=50 - 5 * i), 80) for i in range(8)]
    first = [probe(200 + h, h, TEN + timedelta(minutes=h), 80, suspect=True,
                   notes=notes("status 502")) for h in range(1, 6)]
    after = [probe(300 + i, 11 + i, TEN + timedelta(minutes=12 + i), 80, notes=later)
             for i in range(8)]
    return feed(detector(), quiet + first + after, tick=600.0)


def test_suspects_at_or_after_an_onset_named_later_are_the_origins() -> None:
    """The ISP's later answers name the failure of ``ws.example.com`` (status 502) with
    its onset a minute before the first suspect: the five are the origin's, and
    nothing is named. Named for another origin, for another anomaly of the same one,
    or with an onset after them, the five confirm the ISP."""
    onset = TEN.timestamp() - 60.0
    assert first_five_then(notes(None, [[WS, "status 502", onset]], others=1 / 3)) == []
    for other in ([["www.example.com", "status 502", onset]], [[WS, "status 403", onset]],
                  [[WS, "status 502", onset + 600.0]], []):
        named = first_five_then(notes(None, other, others=1 / 3))
        assert [a.evidence["level"] for a in named][-1:] == ["confirmed"], other


def test_an_onset_takes_the_suspects_out_of_every_cell_and_the_alerts_accounts() -> None:
    det = detector()
    quiet = [probe(i, 5 + i % 6, TEN - timedelta(minutes=50 - 5 * i), 80) for i in range(8)]
    first = [probe(200 + h, h, TEN + timedelta(minutes=h), 80, suspect=True,
                   notes=notes("status 502")) for h in range(1, 6)]
    feed(det, quiet + first)
    group = det.groups["asn:4766"]
    assert len(group.retractable.records) == 5 and len(group.accounts) == 5
    hit = {k for k, c in group.cells.items() if c.k}
    assert hit and all(group.cells[k].k == 5 for k in hit)
    later = probe(400, 12, TEN + timedelta(minutes=12), 80,
                  notes=notes(None, [[WS, "status 502", TEN.timestamp()]]))
    feed(det, [later])
    assert all(c.k == 0 and not c.suspect_clients for c in group.cells.values())
    assert group.cells[("*", -1, -1)].n == 14  # (the answers stay counted)
    assert group.retractable.records == [] and group.accounts == []
    # a suspect whose own notes name its failure is not one
    feed(det, [probe(401, 3, TEN + timedelta(minutes=13), 80, suspect=True,
                     notes=notes("status 502", [[WS, "status 502", TEN.timestamp()]]))])
    assert all(c.k == 0 for c in group.cells.values())


def test_the_onset_is_where_the_run_of_minutes_showing_the_anomaly_began() -> None:
    """The window's minutes back from an answer, while they show the anomaly (a minute
    without answers to the origin does not end the run, one whose answers show none
    of it does)."""
    w = NetworkWindow(WindowSettings())
    t0 = 3600.0 * 100
    w.add("www", "AS1", t0, "status 502", flagged=True)  # a stray 502, then a clean minute
    w.add("www", "AS2", t0 + 60.0, None, flagged=False)
    w.add("www", "AS3", t0 + 120.0, "status 502", flagged=True)
    w.add("www", "AS4", t0 + 240.0, "status 502", flagged=True)  # (a minute without answers)
    assert w.onset("www", "status 502", t0 + 250.0) == t0 + 120.0
    assert w.onset("www", "status 503", t0 + 250.0) == t0 + 240.0  # (none: its own minute)


def named(alerts: list[Alert]) -> dict[int, tuple[list[int], set[int]]]:
    """ASN -> (ports, hours) of the last version of each alert."""
    out = {}
    for asn, a in final(alerts).items():
        hours: set[int] = set()
        for part in a.subject["hours"].split(", "):
            start, end = (int(x) for x in part.split("–"))
            hours.update(h % 24 for h in range(start, end if end > start else end + 24))
        out[asn] = (a.subject["ports"], hours)
    return out


@pytest.mark.parametrize(("every_min", "seed"), [(20, 1), (20, 2), (30, 1), (30, 4)])
def test_an_injector_that_starts_with_another_origins_outage_is_named(
        every_min: int, seed: int) -> None:
    """KT's box forges a 403 block page for every answer from ``www.example.com:8080``
    from 10:00 to 11:00, while ``ws.example.com`` fails for that hour on every ISP (its
    fallback answers 403 too, without the CDN's marks, TLS ones included). The onset of
    ``ws``'s failure takes nothing of ``www``'s, and ``ws``'s TLS answers that show the
    failure are the origin's, not a path anomaly of KT's TLS control: KT is named on
    port 8080 for 10-11, nobody else."""
    w = World(outages=[(600, 60, 403, False)], outage_hosts=(WS,), every_min=every_min,
              seed=seed, targets=(*TARGETS, TARGETS[2]),
              injectors={KT: Injector((8080,), range(10, 11), "block", 1, rate=1.0)})
    alerts, _ = run(w)
    assert named(alerts) == {KT: ([8080], {10})}


@pytest.mark.parametrize(("every_min", "seed"), [(20, 1), (30, 2), (30, 3)])
def test_an_injector_whose_origin_fails_is_named_from_its_other_hours(
        every_min: int, seed: int) -> None:
    """KT's box forges 403 block pages on port 80 from 09:00 to 17:00; at 12:15 both
    origins fail for 30 minutes on every ISP with a 403 of their own, the same anomaly
    as the box's. KT's forged answers in the failure's minutes are the origin's, its
    others still name it on port 80, in the hours outside the failure; nobody else."""
    w = World(outages=[(735, 30, 403, False)], every_min=every_min, seed=seed,
              injectors={KT: Injector((80,), range(9, 17), "block", 1)})
    alerts, _ = run(w)
    found = named(alerts)
    assert list(found) == [KT]
    ports, hours = found[KT]
    assert ports == [80] and {9, 10, 11, 13, 14, 15, 16} <= hours <= set(range(9, 17))


def test_the_first_answers_stay_the_origins_across_a_restart() -> None:
    """The world of the first five answers of SK Telecom (see
    ``test_an_outage_seen_first_by_five_subscribers_of_one_isp_names_nobody``), both
    stages saved and restored after its five suspects and the failure was seen
    origin-wide, before its later answers: still nobody named. Without the onsets
    (``max_failures = 0``) an ISP is (the session stage's window does not survive a
    restart: the failure's first answers after it, some other ISP's, are suspect
    until it is seen origin-wide again; the onset saved still covers them). The other
    networks' late answers one hop nearer (``late_witness``) and the other host's
    answers (``witness_origins``) are no witness here, so that the failure's first
    answers are flagged."""
    w = World(outages=[(615, 30, 502, False)], every_min=30, seed=12)
    ordered = sorted(events(w), key=lambda e: e["ts"])
    cut = TEN.replace(minute=40).astimezone(KST).isoformat()
    at = next(i for i, e in enumerate(ordered) if e["ts"] >= cut)
    no_late = "[detectors.injection]\nlate_witness = false\nwitness_origins = false\n"
    alerts, _ = run(w, no_late, restart_at=at)
    assert alerts == []
    off, _ = run(w, no_late + "max_failures = 0\n", restart_at=at)
    assert off
