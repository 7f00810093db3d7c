"""The end of a bounded input: a replay moves event time past its last event (the final
watermark, :meth:`pathsentry.engine.Engine.finish`), so that injection cells still
settling when the input ends are judged, by the rules a live stream judges them by
``settle_s`` later; the stream's own flush at the last event time judges nothing early.

The world is the eight-ISP one of :mod:`tests.detectors.test_injection_origin`, cut a few
minutes after KT's box starts forging: every suspect it forged waits ``settle_s``.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from pathsentry.config import load_config
from pathsentry.detectors import build_detectors
from pathsentry.detectors.base import DetectorContext
from pathsentry.engine import Engine
from pathsentry.enrich.geo import CsvPrefixTable, GeoResolver
from pathsentry.replay import replay
from pathsentry.schemas import Alert, parse_event
from tests.detectors.test_injection_origin import GEO, KT, Injector, World, events
from tests.fixtures import CDN_ORIGINS

#: KT's box forges port 80 from 03:00; every subscriber probes every 5 minutes
WORLD = World(injectors={KT: Injector((80,), range(3, 24), "page", 1)}, every_min=5)


@cache
def _sorted() -> list[dict[str, Any]]:
    return sorted(events(WORLD), key=lambda e: e["ts"])


def cut(after_s: float) -> list[dict[str, Any]]:
    """The world's events up to ``after_s`` past its first forged answer (copies)."""
    raw = _sorted()
    first = min(datetime.fromisoformat(e["ts"]) for e in raw if e["server_header"] is None)
    end = (first + timedelta(seconds=after_s)).isoformat()
    return [dict(e) for e in raw if e["ts"] <= end]


def engine(extra: str = "") -> Engine:
    cfg = load_config(text=CDN_ORIGINS + extra, env={})
    geo = GeoResolver([CsvPrefixTable.from_lines(io.StringIO(GEO))])
    dets = build_detectors(DetectorContext(cfg, geo), only=["injection", "injection_cells"])
    return Engine(cfg, geo=geo, detectors=dets)


def named(alerts: list[Alert]) -> dict[int, str]:
    """The ASNs named, with the level of their last alert."""
    return {a.subject["asn"]: a.evidence["level"] for a in alerts}


def test_cells_settling_when_the_input_ends_are_judged_at_its_end() -> None:
    """Five or more KT subscribers got forged answers in the last nine minutes of the
    input: judged at the last event's time (the stream's tick), every cell still waits;
    at the end of the input, ``settle_s`` later in event time, KT is named on port 80,
    and no other ISP."""
    raw = cut(540.0)
    forged = {e["src_ip"] for e in raw if e["server_header"] is None}
    assert len(forged) >= 5
    eng = engine()
    alerts = [a for e in raw for a in eng.process(parse_event(e)).alerts]
    assert alerts == []
    assert eng.flush().alerts == []  # (what a live stream's tick at that time judges)
    last = eng.last_ts
    found = eng.finish().alerts
    assert named(found) == {KT: "confirmed"}
    assert found[-1].subject["ports"] == [80] and found[-1].subject["hours"].startswith("03")
    assert found[-1].ts.timestamp() == last + 600.0  # (settle_s after the last event)
    assert eng.finish().alerts == []  # nothing held back any more


def test_a_live_stream_names_the_same_isp_settle_s_later() -> None:
    """The control: the same world running on, its later answers move the clock past
    the cells' ``settle_s`` and KT is named as the end of the input named it."""
    raw = cut(540.0)
    later = cut(1200.0)
    eng = engine()
    alerts = [a for e in later for a in eng.process(parse_event(e)).alerts]
    assert named(alerts) == {KT: "confirmed"}
    assert min(a.ts for a in alerts) > datetime.fromisoformat(raw[-1]["ts"])


def test_a_replay_judges_the_cells_settling_at_the_end_of_its_input(tmp_path: Path) -> None:
    """``pathsentry replay`` (and ``evaluate``, which runs it) finishes the engine at the
    end of its files; with ``settle_s = 0`` nothing is held back and the end of the
    input adds nothing."""
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in cut(540.0)), encoding="utf-8")
    res = replay([path], engine().config, engine())
    assert named(list(res.alerts.values())) == {KT: "confirmed"}
    eager = engine("[detectors.injection_cells]\nsettle_s = 0\n")
    assert named([a for e in cut(540.0) for a in eager.process(parse_event(e)).alerts]
                 ) == {KT: "confirmed"}
    assert eager.fire_pending().alerts == []


#: the witnesses that make most of an outage's first answers the origin's at once, off
NO_WITNESS = ("[detectors.injection]\ntls_witness = false\nlate_witness = false\n"
              "witness_origins = false\n")


def outage_until(end: str, extra: str) -> dict[int, str]:
    """The ASNs named when the input ends at ``end`` (10:30 is the first slot of a
    30-minute outage of the origin's fallback box, every subscriber probing every 30
    minutes), by the stream's flush and at the end of the input."""
    w = World(outages=[(615, 30, 502, False)], every_min=30, seed=12)
    eng = engine(extra)
    alerts = [a for e in sorted(events(w), key=lambda e: e["ts"]) if e["ts"] <= end
              for a in eng.process(parse_event(e)).alerts]
    return named(alerts + eng.finish().alerts)


def test_an_input_ending_during_an_origin_failure_names_nobody() -> None:
    """The input ends five minutes into an outage that the other networks' answers had
    shown by then: the failure's onset, which each ISP's next answer would have
    carried, takes the first answers of SK Telecom's five subscribers out of its
    cells before they are judged, as in a live stream. Without the onsets
    (``max_failures = 0``) the end of the input confirms SK Telecom."""
    end = "2026-03-02T10:35:00+09:00"
    assert outage_until(end, NO_WITNESS) == {}
    assert outage_until(end, NO_WITNESS + "max_failures = 0\n") == {9644: "confirmed"}
    assert outage_until(end, "") == {}  # (the witnesses on: the origin's at once)
