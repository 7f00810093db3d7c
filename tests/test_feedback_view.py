"""The ``detector_feedback`` view on chDB: labels stored by the sink against alerts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pathsentry.detectors.crosscheck import CrossCheck, CrossCheckSettings
from pathsentry.infra.clickhouse import connect
from pathsentry.schemas import AccountLabel, Alert
from pathsentry.streams.metrics import Stats, prometheus_text
from pathsentry.streams.sinks import ClickHouseSink

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _alert(aid: str, kind: str, detector: str, accounts: list[str], version: int = 1) -> Alert:
    return Alert(alert_id=aid, ts=T0, kind=kind, severity="high", score=0.8,  # type: ignore[arg-type]
                 subject={}, accounts=accounts, evidence={}, detector=detector,
                 first_seen=T0, last_seen=T0, version=version)


def _label(i: int, account: str, label: str, days: float) -> AccountLabel:
    return AccountLabel(kind="account_label", event_id=f"lb{i}", ts=T0 + timedelta(days=days),
                        account=account, label=label, source="analyst")  # type: ignore[arg-type]


def _alerts() -> list[Alert]:
    return [
        _alert("g1", "farm_group", "farm", ["a", "b", "c"]),
        _alert("g1", "farm_group", "farm", ["a", "b", "c", "d", "e"], version=2),  # grown
        _alert("r1", "vpn_relay", "latency", ["x"]),
        _alert("r2", "vpn_relay", "latency", ["z"]),
        _alert("t1", "account_takeover", "takeover", ["y"]),
    ]


def _labels() -> list[AccountLabel]:
    return [
        _label(1, "a", "farm", 2),
        _label(2, "b", "cleared", 1),
        _label(3, "c", "bot", -5),        # labelled before the alert: not "later"
        _label(4, "d", "fraud", 1),
        _label(5, "d", "cleared", 3),     # the latest label decides
        _label(6, "x", "bot", 4),
        _label(7, "y", "takeover", 0.5),
        _label(8, "nobody", "farm", 1),   # never flagged
    ]


def test_detector_feedback_counts_later_labels_per_detector_and_kind(chdb_dir: Path) -> None:
    ch = connect(f"chdb://{chdb_dir}")
    ch.apply_ddl(30)
    sink = ClickHouseSink(ch)
    alerts, labels = _alerts(), _labels()

    async def run() -> None:
        await sink.write([], alerts)
        await sink.write_labels(labels)
        await sink.write_labels(labels)  # a retried batch counts once

    asyncio.run(run())
    cols, all_rows = ch.query(
        "SELECT detector, kind, flagged_accounts, labelled_bad, cleared, judged, precision, "
        "bad_share, cleared_share FROM pathsentry.detector_feedback ORDER BY detector")
    got = {r[0]: dict(zip(cols, r, strict=True)) for r in all_rows}
    rows = [r[:5] for r in all_rows]
    assert set(got) == {"farm", "latency", "takeover"}
    farm = got["farm"]
    assert (farm["kind"], farm["flagged_accounts"], farm["labelled_bad"], farm["cleared"]) == \
        ("farm_group", 5, 1, 2)
    assert farm["precision"] == pytest.approx(1 / 3, abs=1e-4)
    assert farm["bad_share"] == pytest.approx(0.2) and farm["cleared_share"] == pytest.approx(0.4)
    relay = got["latency"]
    assert (relay["flagged_accounts"], relay["labelled_bad"], relay["cleared"]) == (2, 1, 0)
    assert relay["precision"] == 1.0
    assert (got["takeover"]["labelled_bad"], got["takeover"]["precision"]) == (1, 1.0)
    _, stored = ch.query("SELECT count() FROM pathsentry.account_labels")
    assert stored[0][0] == 8
    # the engine's live tally (the /metrics gauges) says the same, in either arrival order
    view = {f"{r[0]}/{r[1]}": {"flagged_accounts": r[2], "labelled_bad": r[3], "cleared": r[4]}
            for r in rows}
    for labels_first in (False, True):
        cc = CrossCheck(CrossCheckSettings())
        if labels_first:
            for lb in labels:
                cc.observe(lb)
        cc.enrich_all(alerts)
        if not labels_first:
            for lb in labels:
                cc.observe(lb)
        assert cc.tally.counts == view
    text = prometheus_text(Stats(worker="w1", detector_feedback=view)).decode()
    assert 'pathsentry_feedback_precision{detector="farm",kind="farm_group",worker="w1"} 0.3333' \
        in text
    assert 'pathsentry_feedback_labelled_bad{detector="latency",kind="vpn_relay",worker="w1"} 1.0' \
        in text
    assert 'detector="latency",kind="vpn_relay",worker="w1"} 1.0' in \
        text.split("# TYPE pathsentry_feedback_precision")[-1]


def test_view_and_tally_match_a_simulated_worlds_labels(chdb_dir: Path, tmp_path: Path) -> None:
    from pathsentry.config import load_config
    from pathsentry.engine import Engine
    from pathsentry.replay import replay
    from pathsentry.schemas import BAD_LABELS, parse_feedback
    from pathsentry.sim.params import draw_params
    from pathsentry.sim.social import with_social
    from pathsentry.sim.world import write_world
    from pathsentry.sim.worlds import world_spec

    write_world(world_spec(5, 600, 3.0, with_social(draw_params(5, 3.0))), tmp_path)
    engine = Engine(load_config(tmp_path / "pathsentry.toml", env={}))
    res = replay([tmp_path / "events.jsonl"], engine.config, engine)
    labels = [lb for line in (tmp_path / "events.jsonl").open("rb") if b'"account_label"' in line
              for lb in [parse_feedback(line)] if isinstance(lb, AccountLabel)]
    ch = connect(f"chdb://{chdb_dir}")
    ch.apply_ddl(3650)  # the world is dated months ago: keep its rows
    sink = ClickHouseSink(ch)

    async def run() -> None:
        await sink.write([], list(res.alerts.values()))
        await sink.write_labels(labels)

    asyncio.run(run())
    _, rows = ch.query("SELECT detector, kind, flagged_accounts, labelled_bad, cleared "
                       "FROM pathsentry.detector_feedback")
    view = {f"{r[0]}/{r[1]}": {"flagged_accounts": r[2], "labelled_bad": r[3], "cleared": r[4]}
            for r in rows}
    assert view == engine.crosscheck.tally.counts
    # and both say what the world's labels say: the latest label per account, made after
    # the account's first alert
    latest: dict[str, AccountLabel] = {}
    for lb in labels:
        if lb.account not in latest or lb.ts >= latest[lb.account].ts:
            latest[lb.account] = lb
    first: dict[tuple[str, str], dict[str, datetime]] = {}
    for a in res.alerts.values():
        for acc in a.accounts:
            per = first.setdefault((a.detector, a.kind), {})
            per[acc] = min(per.get(acc, a.first_seen), a.first_seen)
    for (det, kind), accs in first.items():
        later = [latest[acc] for acc, t in accs.items() if acc in latest and latest[acc].ts >= t]
        assert view[f"{det}/{kind}"] == {
            "flagged_accounts": len(accs),
            "labelled_bad": sum(lb.label in BAD_LABELS for lb in later),
            "cleared": sum(lb.label == "cleared" for lb in later)}
    assert view["takeover/account_takeover"]["labelled_bad"] > 0
    assert sum(v["labelled_bad"] for v in view.values()) > view["takeover/account_takeover"][
        "labelled_bad"]  # labels of other detectors' accounts too (farms banned later)
