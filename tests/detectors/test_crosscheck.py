"""Cross-checks: farm groups and relay alerts against the game's labels and interactions."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from pathsentry.config import load_config
from pathsentry.detectors.crosscheck import CrossCheck, CrossCheckSettings
from pathsentry.detectors.farm import FarmDetector
from pathsentry.engine import Engine
from pathsentry.enrich.geo import GeoResolver
from pathsentry.replay import iter_events
from pathsentry.schemas import AccountLabel, Alert, EventError, Interaction, parse_feedback
from tests.detectors.test_farm import serial_farm

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
_n = 0


def label(account: str, kind: str, days: float = 0.0) -> AccountLabel:
    global _n
    _n += 1
    ev = parse_feedback({"kind": "account_label", "event_id": f"lb{_n}", "account": account,
                         "label": kind, "source": "ban-system",
                         "ts": (T0 + timedelta(days=days)).isoformat()})
    assert isinstance(ev, AccountLabel)
    return ev


def trade(a: str, b: str, days: float = 0.0, kind: str = "trade") -> Interaction:
    global _n
    _n += 1
    ev = parse_feedback({"kind": "interaction", "event_id": f"it{_n}", "interaction": kind,
                         "account": a, "peer": b, "value": 1000.0,
                         "ts": (T0 + timedelta(days=days)).isoformat()})
    assert isinstance(ev, Interaction)
    return ev


def engine(**settings: Any) -> Engine:
    toml = "[detectors.crosscheck]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
    cfg = load_config(text=toml, env={})
    return Engine(cfg, geo=GeoResolver([]), detectors=[FarmDetector(
        Engine(cfg, geo=GeoResolver([]), detectors=[]).ctx)])


def farm_alert(eng: Engine, stem: str = "xiaopai", n: int = 12, t0: float = 0.0,
               exit_ip: str = "203.0.113.9", first: int = 1) -> tuple[Alert, list[Alert]]:
    """The farm group of a serial farm run through the engine's group stage (as the stream
    does), and every version it emitted."""
    versions: list[Alert] = []
    last = 0.0
    for ev in sorted(serial_farm(stem, n, t0, exit_ip, "sigCN1", first=first), key=lambda e: e.ts):
        last = ev.ts
        for name, key in eng.group_routes(ev):
            versions += eng.groups.process(ev, name, key).alerts
    eng.groups.ts = last + 3600
    versions += eng.groups.flush().alerts
    farm = [a for a in versions if a.kind == "farm_group"]
    assert farm
    return farm[-1], farm


def test_farm_alert_counts_labelled_and_traded_members_and_scores_higher() -> None:
    plain, _ = farm_alert(engine())
    eng = engine()
    for acc in ("xiaopai001", "xiaopai002", "xiaopai003"):
        eng.feedback(label(acc, "farm", days=-3))
    eng.feedback(label("mule99", "fraud", days=-3))
    eng.feedback(trade("xiaopai004", "mule99", days=-1))
    eng.feedback(trade("xiaopai005", "mule99", days=-1, kind="mail"))
    eng.feedback(trade("xiaopai006", "honest1", days=-1))  # an unlabelled peer
    checked, versions = farm_alert(eng)
    x = checked.evidence["crosscheck"]
    assert (x["labelled_members"], x["traded_with_labelled"]) == (3, 2)
    assert x["labels"] == {"farm": 3} and x["contacts_by_kind"] == {"trade": 1, "mail": 1}
    assert x["labelled_peers_outside"] == ["mule99"]
    assert x["score"]["detector"] == plain.score
    expected = 1 - (1 - plain.score) * 0.75 ** 3 * 0.9 ** 2
    assert abs(checked.score - round(expected, 4)) < 1e-4 and checked.score > plain.score
    assert all("crosscheck" in a.evidence for a in versions)
    # the plain engine's alert also carries the (empty) cross-check
    assert plain.evidence["crosscheck"]["labelled_members"] == 0


def test_interactions_outside_the_window_do_not_count() -> None:
    eng = engine(window_s=86400)
    eng.feedback(label("mule99", "fraud", days=-30))
    eng.feedback(trade("xiaopai004", "mule99", days=-10))
    alert, _ = farm_alert(eng)
    assert alert.evidence["crosscheck"]["traded_with_labelled"] == 0
    eng2 = engine(window_s=30 * 86400)
    eng2.feedback(label("mule99", "fraud", days=-30))
    eng2.feedback(trade("xiaopai004", "mule99", days=-10))
    alert2, _ = farm_alert(eng2)
    assert alert2.evidence["crosscheck"]["traded_with_labelled"] == 1


def test_a_late_label_re_versions_the_alert_and_the_detector_keeps_counting_on() -> None:
    eng = engine()
    first, _ = farm_alert(eng, n=8)
    out = eng.feedback(label("xiaopai002", "bot", days=3))
    (again,) = out.alerts
    assert again.alert_id == first.alert_id and again.version == first.version + 1
    assert again.evidence["crosscheck"]["labelled_members"] == 1
    assert again.evidence["crosscheck"]["relabelled_at"] == (T0 + timedelta(days=3)).timestamp()
    assert again.score > first.score
    # the farm grows: its next version is newer than the re-version
    grown, _ = farm_alert(eng, n=3, t0=200.0, stem="xiaopai", exit_ip="203.0.113.9")
    assert grown.alert_id == first.alert_id and grown.version > again.version
    # a label older than the account's latest changes nothing
    assert not eng.feedback(label("xiaopai002", "cleared", days=1)).alerts


def test_cleared_members_lower_the_score_and_a_cleared_template_discounts_later_groups() -> None:
    eng = engine()
    first, _ = farm_alert(eng, n=10)
    s0 = first.score
    outs = [eng.feedback(label(f"xiaopai00{i}", "cleared", days=2)).alerts[0] for i in (1, 2, 3)]
    assert [a.evidence["crosscheck"]["cleared_members"] for a in outs] == [1, 2, 3]
    assert outs[0].score < s0
    template = f"template:{first.subject['template']}"
    assert outs[2].evidence["crosscheck"]["discounted_handles"] == {
        template: 3, "exit:203.0.113.0/24": 3}
    assert abs(outs[2].score - round(s0 * (1 - 0.5 * 3 / 10) * 0.7, 4)) < 1e-4
    # another farm of the same template elsewhere (at most a stray cleared member): discounted
    plain, _ = farm_alert(engine(), n=10, t0=5000.0, exit_ip="198.51.100.9", first=101)
    other, _ = farm_alert(eng, n=10, t0=5000.0, exit_ip="198.51.100.9", first=101)
    assert other.alert_id != first.alert_id
    assert other.evidence["crosscheck"]["discounted_handles"] == {template: 3}
    x = other.evidence["crosscheck"]
    kept = (1 - 0.5 * x["cleared_members"] / x["members"]) * 0.7
    assert x["cleared_members"] < 3
    assert abs(other.score - round(x["score"]["detector"] * kept, 4)) < 1e-4
    assert other.score < plain.score


def test_relay_alert_of_a_cleared_account_keeps_half_its_score() -> None:
    cc = CrossCheck(CrossCheckSettings())
    cc.observe(label("hero", "cleared"))
    a = Alert(alert_id="r1", ts=T0, kind="vpn_relay", severity="high", score=0.8,
              subject={"account": "hero"}, accounts=["hero"], detector="latency",
              evidence={"claimed": {"prefix": "203.0.113.0/24"}}, first_seen=T0, last_seen=T0)
    out = cc.enrich(a)
    assert out.score == 0.4 and out.severity == "low"
    other = a.model_copy(update={"alert_id": "x", "kind": "injection_cell"})
    assert cc.enrich(other) is other  # other kinds pass unchanged


def test_the_latest_label_wins_and_the_stores_are_bounded() -> None:
    cc = CrossCheck(CrossCheckSettings(max_labels=5, max_fanout=3, max_graph_accounts=4))
    cc.observe(label("a", "farm", days=2))
    cc.observe(label("a", "cleared", days=1))
    got = cc.labels.get("a")
    assert got is not None and got.label == "farm"
    for i in range(10):
        cc.observe(label(f"b{i}", "bot"))
        cc.observe(trade("hub", f"b{i}", days=i / 10))
    assert len(cc.labels) == 5 and len(cc.graph) == 4
    assert sorted(p for p, _, _ in cc.graph.peers("hub", since=0.0)) == ["b7", "b8", "b9"]


def test_replay_reads_labels_and_interactions_mixed_with_events(tmp_path: Path) -> None:
    f = tmp_path / "mixed.jsonl"
    rows = [label("a", "farm").model_dump(mode="json"), trade("a", "b").model_dump(mode="json"),
            {"kind": "account_label", "event_id": "bad", "ts": T0.isoformat(), "account": "a",
             "label": "martian", "source": "x"},
            {"kind": "mystery", "event_id": "m"}]
    f.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    rejected: Counter[str] = Counter()
    got = list(iter_events([f], rejected))
    assert [e.kind for e in got] == ["account_label", "interaction"]
    assert rejected == Counter({"invalid": 1, "unknown_kind": 1})
    try:
        parse_feedback(b'{"kind": "interaction", "event_id": "i", "ts": "2026-01-01T00:00:00Z",'
                       b' "account": "a", "interaction": "trade"}')
    except EventError as e:
        assert e.reason == "invalid" and "peer" in e.detail
    else:
        raise AssertionError("an interaction without a peer was accepted")


def test_feedback_tally_counts_mixed_kinds_and_evictions_as_per_key_records() -> None:
    """Accounts flagged under the tally's first key keep a bare time, the others a flat
    tuple: the counts are what a record of every (account, key) says, through earlier
    re-flags, a second key and the least recently flagged accounts' eviction."""
    from datetime import UTC, datetime

    from pathsentry.detectors.crosscheck import FeedbackTally, LabelStore
    from pathsentry.schemas import AccountLabel

    labels = LabelStore(100)
    tally = FeedbackTally(labels, cap=4)
    tally.flagged("latency", "vpn_relay", ["a", "b"], 100.0)
    tally.flagged("farm", "farm_group", ["b", "c"], 90.0)
    tally.flagged("latency", "vpn_relay", ["b"], 50.0)  # earlier: b's time moves back
    t = datetime.fromtimestamp(80.0, UTC)
    for acc in ("a", "b", "c"):
        labels.set(AccountLabel(kind="account_label", event_id=f"l{acc}", ts=t, account=acc,
                                label="bot", source="ban"))
        tally.relabelled(acc)
    # labelled at 80: after b's latency flag (50), before a's (100) and b's, c's farm (90)
    assert tally.counts["latency/vpn_relay"] == {"flagged_accounts": 2, "labelled_bad": 1, "cleared": 0}
    assert tally.counts["farm/farm_group"] == {"flagged_accounts": 2, "labelled_bad": 0, "cleared": 0}
    tally.flagged("latency", "vpn_relay", ["d", "e"], 200.0)  # a (least recent) goes
    assert tally.counts["latency/vpn_relay"] == {"flagged_accounts": 3, "labelled_bad": 1, "cleared": 0}
    tally.flagged("latency", "vpn_relay", ["f"], 200.0)  # then c (b was flagged after it)
    assert tally.counts["latency/vpn_relay"] == {"flagged_accounts": 4, "labelled_bad": 1, "cleared": 0}
    assert tally.counts["farm/farm_group"] == {"flagged_accounts": 1, "labelled_bad": 0, "cleared": 0}
    tally.flagged("latency", "vpn_relay", ["g"], 200.0)  # then b, with both of its keys
    assert tally.counts["latency/vpn_relay"] == {"flagged_accounts": 4, "labelled_bad": 0, "cleared": 0}
    assert tally.counts["farm/farm_group"] == {"flagged_accounts": 0, "labelled_bad": 0, "cleared": 0}
