"""The TLS control of the injection cells against the origin's own fallback pages.

A TLS answer can only be the origin's or that of a box that terminates TLS on the path,
which shows in its TTLs or timing: a TLS answer whose one path mark is the origin's
headers missing is the origin's own (a fallback page), and must not count as a path
anomaly of the network that received it. Counted, the other networks' sporadic fallback
pages raised the borrowed TLS control of an ISP whose box forged plaintext answers for
seven of its subscribers above their suspect rate, and the ISP went unnamed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pathsentry.detectors.injection import NOTES_KEY
from pathsentry.detectors.injection_cells import InjectionCellDetector
from pathsentry.schemas import parse_event
from tests.detectors.test_injection_cells import DAY0, OTHER_NETS, TARGETS, engine, make_probe, run

WS_TLS = next(t for t in TARGETS if t[1] == 443)
#: The origin's fallback page behind its TLS front: none of the origin's headers, the
#: same TTLs and timing as its usual answers.
FALLBACK: dict[str, Any] = {"status": 502, "server_header": None,
                            "header_names": ["date", "content-type", "content-length"]}
INJECTING, CLEAN_KT = "203.0.113", "100.64.1"


def test_a_tls_fallback_page_is_not_a_path_anomaly_but_a_nearer_ttl_is() -> None:
    from pathsentry.detectors.injection import InjectionDetector

    eng = engine()
    det = next(d for d in eng.detectors if isinstance(d, InjectionDetector))

    def note(n: int, line: str, at: timedelta, **answer: Any) -> dict[str, Any]:
        ev = parse_event(make_probe(n, line, 1 + n % 5, DAY0 + at, WS_TLS, **answer))
        enriched = eng.enricher.enrich(ev)
        det.process(enriched)
        return dict(enriched.notes[NOTES_KEY])

    for i in range(40):  # the origin's usual TLS answers, learned first
        note(100 + i, OTHER_NETS[i % 5], timedelta(seconds=30 * i - 3600))
    fallback = note(1, INJECTING, timedelta(0), **FALLBACK)
    assert fallback["tls"] and fallback["anomaly"] is not None  # the page is recorded ...
    assert fallback["path_anomaly"] is False  # ... as the origin's, not the path's
    nearer = note(2, INJECTING, timedelta(minutes=1), **FALLBACK, ttl={"syn_ack": 52, "response": 54})
    assert nearer["path_anomaly"] is True  # a box two hops nearer answered: the path's


def _world() -> list[dict[str, Any]]:
    """Five other ISPs probe every hour, TLS and plaintext, and one TLS answer in
    fifteen is the origin's fallback page, each far from the others in time. The KT
    line with the box: seven subscribers, one forged plaintext answer each, one an hour;
    a clean KT line beside it. KT's lines probe TLS a third as often as each plaintext
    port, so their TLS control borrows the other networks' rate for the rest."""
    events: list[dict[str, Any]] = []
    n = 0
    for hour in range(12):
        for line in OTHER_NETS:
            for host in range(1, 4):
                for target in TARGETS:
                    n += 1
                    ts = DAY0 + timedelta(hours=hour, minutes=(7 * n) % 60)
                    answer = FALLBACK if target[1] == 443 and n % 15 == 0 else {}
                    events.append(make_probe(n, line, host, ts, target, **answer))
        for line in (INJECTING, CLEAN_KT):
            for host in range(1, 8):
                for target in TARGETS:
                    if target[1] == 443 and (hour + host) % 3:
                        continue  # (their TLS probes are a third of a port's)
                    n += 1
                    ts = DAY0 + timedelta(hours=hour, minutes=(11 * n) % 60)
                    forged = (line == INJECTING and target[1] == 80 and hour < 7
                              and host == hour + 1)
                    events.append(make_probe(n, line, host, ts, target, forged))
    return events


def test_the_origins_tls_fallback_pages_do_not_hide_an_injecting_isp() -> None:
    events = _world()
    assert sum(1 for e in events if e.get("status") == 502) >= 10
    eng = engine()
    alerts, flags = run(iter(events), eng)
    assert flags == 7
    assert alerts, "the ISP whose box forged answers for seven subscribers is named"
    first, final = alerts[0], alerts[-1]
    # named once five subscribers' forged answers confirm it ...
    assert max(c["suspect"] for c in first.evidence["cells"]) == 5
    assert final.subject["asn"] == 4766 and final.subject["ports"] == [80]
    assert final.evidence["level"] == "confirmed"
    # ... and still held bad at the end: the other networks' fallback pages, counted in
    # the TLS control, had cleared its cells again
    cells = next(d for d in eng.detectors if isinstance(d, InjectionCellDetector))
    assert [g.asn for g in cells.groups.values() if g.bad] == [4766]
