"""The scorer on hand-built cases with exact expected numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pathsentry.schemas import Alert
from pathsentry.sim.evaluate import render_markdown
from pathsentry.sim.score import (
    cell_matches,
    flag,
    forged_sources,
    score_all,
    score_cells,
    score_events,
    score_farms,
)
from pathsentry.sim.truth import AccountTruth, CellTruth, EventTruth, GroupTruth, Truth

T0 = datetime(2026, 3, 2, 10, tzinfo=UTC)
E0 = T0.timestamp()


def _alert(alert_id: str, kind: str, accounts: list[str] | None = None,
           subject: dict[str, Any] | None = None, at: float = 0.0) -> Alert:
    ts = T0 + timedelta(seconds=at)
    return Alert(alert_id=alert_id, ts=ts, kind=kind, severity="high",
                 score=0.9, subject=subject or {}, accounts=accounts or [], evidence={},
                 detector="test", first_seen=ts, last_seen=ts)


def _ev(eid: str, kind: str, label: str, klass: str, expect: tuple[str, ...] = (),
        account: str | None = None, at: float = 0.0) -> EventTruth:
    return EventTruth(eid, kind, label, klass, expect, account, E0 + at)


@pytest.fixture
def truth() -> Truth:
    t = Truth(hours=2.0)
    evs = [
        _ev("r1", "login", "l4_relay", "l4_relay", ("vpn_relay",), "u1", 0),
        _ev("r2", "login", "l4_relay", "l4_relay", ("vpn_relay",), "u1", 60),
        _ev("r3", "login", "l3_vpn", "l3_vpn", ("vpn_relay",), "u2", 10),
        _ev("r4", "login", "resi_proxy", "resi_proxy", ("vpn_relay",), "u3", 20),
        _ev("n1", "login", "benign", "pc_bang", (), "b1"),
        _ev("n2", "login", "benign", "pc_bang", (), "b2"),
        _ev("n3", "login", "benign", "cgnat", (), "b3"),
        _ev("n4", "login", "benign", "normal", (), "b4"),
        _ev("t1", "traceroute", "l3_vpn", "l3_vpn", (), "u2"),  # neutral for route_anomaly
        _ev("t2", "traceroute", "benign", "squatted_hop", (), "b4"),
        _ev("h1", "http_probe", "injection", "injection", ("path_injection",), None, 100),
        _ev("h2", "http_probe", "benign", "tls", ()),
    ]
    t.events = {e.event_id: e for e in evs}
    return t


def test_event_detector_counts(truth: Truth) -> None:
    flags = [flag("r2", "vpn_relay", T0), flag("r3", "vpn_relay", T0),
             flag("n1", "vpn_relay", T0), flag("t1", "vpn_relay", T0),  # t1: not a login
             flag("zz", "vpn_relay", T0), flag("n2", "route_anomaly", T0)]
    s = score_events(truth, flags, "vpn_relay", [_alert("a", "vpn_relay"), _alert("b", "farm_group")])
    assert (s["positives"], s["flagged"], s["tp"], s["fp"], s["fn"]) == (4, 3, 2, 1, 2)
    assert s["off_unit_flags"] == 2
    assert s["precision"] == pytest.approx(2 / 3, abs=1e-4) and s["recall"] == 0.5
    assert s["by_class"]["l4_relay"] == {"positives": 2, "found": 1, "recall": 0.5}
    assert s["by_class"]["resi_proxy"] == {"positives": 1, "found": 0, "recall": 0.0}
    assert s["fp_rate"]["pc_bang"] == {"negatives": 2, "flagged": 1, "rate": 0.5}
    assert s["fp_rate"]["cgnat"]["rate"] == 0.0
    assert s["alerts_per_hour"] == 0.5
    # u1 first relayed at 0 s, first caught at 60 s; u2 caught at once; u3 never
    assert s["ttd"] == {"entities": 3, "detected": 2, "median_s": 30.0, "max_s": 60.0}


def test_neutral_events_count_neither_way(truth: Truth) -> None:
    s = score_events(truth, [flag("t1", "route_anomaly", T0), flag("t2", "route_anomaly", T0)],
                     "route_anomaly")
    assert (s["positives"], s["tp"], s["fp"], s["neutral_flags"]) == (0, 0, 1, 1)
    assert s["precision"] == 0.0 and s["recall"] is None
    assert s["fp_rate"]["squatted_hop"]["rate"] == 1.0


def test_missing_detectors_score_zero_or_na(truth: Truth) -> None:
    report = score_all(truth, [], [])
    vpn = report["detectors"]["vpn_relay"]
    assert (vpn["tp"], vpn["precision"], vpn["recall"]) == (0, None, 0.0)
    assert report["detectors"]["injection_cell"]["recall"] is None
    assert report["attack_recall"]["l4_relay"]["vpn_relay"] == 0.0
    assert report["hard_negative_fpr"]["pc_bang"]["vpn_relay"] == 0.0
    md = render_markdown({**report, "world": {}, "replay": {}})
    assert "| vpn_relay | login | 4 | 0 | 0 | 0 | 4 | NA | 0.000 |" in md


def _farm_truth() -> Truth:
    t = Truth(hours=1.0)
    members_a = [f"xp{i:03d}" for i in range(1, 6)]
    members_b = ["qa", "qb", "qc", "qd", "qe"]
    for m in members_a:
        t.accounts[m] = AccountTruth(m, "farm_serial", "farm_serial", "g1")
    for m in members_b:
        t.accounts[m] = AccountTruth(m, "farm_route", "farm_route", "g2")
    for m, k in (("minsu_kim", "family_names"), ("minsu_lee", "family_names"), ("pc1", "pc_bang")):
        t.accounts[m] = AccountTruth(m, "benign", k)
    t.groups = {"g1": GroupTruth("g1", "farm_serial", tuple(members_a), E0, E0 + 100),
                "g2": GroupTruth("g2", "farm_route", tuple(members_b), E0, E0 + 200)}
    return t


def test_farm_ttd_runs_to_five_members_and_80_percent_separately() -> None:
    t = Truth(hours=1.0)
    members = [f"xp{i:03d}" for i in range(1, 9)]
    for m in members:
        t.accounts[m] = AccountTruth(m, "farm_serial", "farm_serial", "g")
    t.groups = {"g": GroupTruth("g", "farm_serial", tuple(members), E0, E0 + 100)}
    alerts = [_alert("A", "farm_group", members, at=400)]
    timeline = {"A": [(E0 + 101, tuple(members[:5])), (E0 + 160, tuple(members[:7])),
                      (E0 + 400, tuple(members))]}
    d = score_farms(t, [], alerts, timeline)["groups"]["detail"]["g"]
    # alerted 1 s after the fifth login; the 7th member (80 %) logged in a minute later
    assert (d["found"], d["ttd_from_fifth_login_s"], d["to_80pct_s"]) == (True, 1.0, 60.0)


def test_a_group_without_a_fifth_successful_login_is_not_planted() -> None:
    """Five members tried to log in, but the fifth one's login failed (the world's truth
    gives the group no fifth login time): four sessions make no group to find."""
    t = Truth(hours=1.0)
    members = [f"dl{i:02d}" for i in range(1, 6)]
    for m in members:
        t.accounts[m] = AccountTruth(m, "farm_serial", "farm_serial", "g")
    t.events = {f"e{i}": _ev(f"e{i}", "login", "farm_serial", "farm_serial", (), m, i)
                for i, m in enumerate(members)}
    t.groups = {"g": GroupTruth("g", "farm_serial", tuple(members), E0, None)}
    assert score_farms(t, [], [], {})["groups"]["planted"] == 0
    t.groups = {"g": GroupTruth("g", "farm_serial", tuple(members), E0, E0 + 4)}
    assert score_farms(t, [], [], {})["groups"]["planted"] == 1


def test_farm_groups_found_at_80_percent() -> None:
    t = _farm_truth()
    alerts = [
        _alert("A", "farm_group", ["xp001", "xp002", "xp003", "xp004", "minsu_kim"], at=400),
        _alert("B", "farm_group", ["qa", "qb", "minsu_lee", "pc1", "stranger"], at=500),
    ]
    timeline = {"A": [(E0 + 150, ("xp001", "xp002")), (E0 + 250, ("xp001", "xp002", "xp003",
                                                                   "xp004"))]}
    s = score_farms(t, [flag("e", "farm_member", T0, account="qd")], alerts, timeline)
    # accounts: 7 of 10 farm members predicted (qd by its flag); all 3 benign ones flagged
    assert (s["tp"], s["fp"], s["fn"], s["unknown_accounts"]) == (7, 3, 3, 1)
    assert s["fp_rate"]["family_names"] == {"negatives": 2, "flagged": 2, "rate": 1.0}
    g = s["groups"]
    assert g["detail"]["g1"]["found"] and g["detail"]["g1"]["best_share"] == 0.8
    assert g["detail"]["g1"]["ttd_from_fifth_login_s"] == 150.0  # 4/5 first held at +250 s
    assert g["detail"]["g1"]["to_80pct_s"] == 150.0
    assert not g["detail"]["g2"]["found"] and g["detail"]["g2"]["best_share"] == 0.4
    assert (g["found"], g["recall"], g["pure_alerts"], g["precision"]) == (1, 0.5, 1, 0.5)
    assert g["by_label"]["farm_route"]["recall"] == 0.0


def test_injection_cells_match_asn_ports_and_hours() -> None:
    t = Truth(hours=10.0)
    t.cells = [CellTruth(4766, ("14.32.0.0/24", "14.32.1.0/24"), (80, 8080), tuple(range(9, 18)))]
    t.events = {"h1": _ev("h1", "http_probe", "injection", "injection", ("path_injection",), at=60)}
    alerts = [
        _alert("c1", "injection_cell", subject={"asn": "AS4766", "ports": [80, 8080],
                                                "hours": "09-18", "prefixes": ["14.32.0.0/24"]},
               at=660),
        _alert("c2", "injection_cell", subject={"asn": 4766, "ports": [443]}),
        _alert("c3", "injection_cell", subject={"asn": 4766, "port": 80, "hours": [20, 21]}),
    ]
    s = score_cells(t, alerts)
    assert (s["tp"], s["fp"], s["fn"], s["recall"]) == (1, 2, 0, 1.0)
    assert s["precision"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["ttd"]["median_s"] == 600.0
    assert s["alerts_per_hour"] == 0.3
    assert not cell_matches({"asn": 4766, "ports": [80], "prefix": "58.224.0.0/24"}, t.cells[0])


def test_injectors_nameable_from_their_independent_sources() -> None:
    """KT's forged answers come from five subscribers (one of them also reporting without
    its account, and through a sensor, from its own address): nameable, and named.
    SK Broadband's from two accounts and one address that one of them used: two
    sources, not nameable, and not named; both count in the recall over all injectors."""
    t = Truth(hours=1.0)
    t.cells = [CellTruth(4766, ("14.32.0.0/24",), (80,), (9,)),
               CellTruth(9318, ("1.224.0.0/24",), (8080,), (9,))]
    probes: list[dict[str, Any]] = []

    def forged(src: str, account: str | None, reporter: str = "client") -> None:
        eid = f"f{len(probes)}"
        t.events[eid] = _ev(eid, "http_probe", "injection", "injection", ("path_injection",),
                            account)
        probes.append({"event_id": eid, "src_ip": src, "reporter": reporter})

    for i in range(1, 6):
        forged(f"14.32.0.{i}", f"kt{i}")
    forged("14.32.0.1", None)
    forged("14.32.0.1", None, "sensor")
    forged("1.224.0.1", "skb1")
    forged("1.224.0.2", "skb2")
    forged("1.224.0.1", None)
    t.events["tls"] = _ev("tls", "http_probe", "benign", "tls")
    probes.append({"event_id": "tls", "src_ip": "14.32.0.9", "reporter": "client"})
    sources = forged_sources(t, probes)
    assert sources == {4766: 5, 9318: 2}
    alerts = [_alert("c1", "injection_cell", subject={"asn": 4766, "ports": [80], "hours": "09–10"})]
    s = score_cells(t, alerts, sources=sources, min_sources=5)
    assert (s["by_class"]["injection"]["found"], s["positives"]) == (1, 2)
    assert {k: s["nameable"][k] for k in ("planted", "found")} == {"planted": 1, "found": 1}
    assert score_cells(t, alerts, sources=sources, min_sources=6)["nameable"]["planted"] == 0


def test_truth_file_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "truth.jsonl"
    p.write_text(
        '{"type":"world","seed":1,"accounts":100,"hours":2}\n'
        '{"type":"cell","asn":4766,"as_name":"KT","prefixes":["14.32.0.0/24"],'
        '"ports":[80],"hours":[9]}\n'
        '{"type":"group","group_id":"g","label":"farm_route","members":["a","b"],'
        '"first_login_ts":"2026-03-02T10:00:00+00:00","fifth_login_ts":null}\n', encoding="utf-8")
    t = Truth.load(p)
    assert t.hours == 2.0 and t.cells[0].ports == (80,)
    assert t.groups["g"].first_login_ts == E0 and t.groups["g"].fifth_login_ts is None


def test_suspected_cell_alerts_name_but_do_not_confirm() -> None:
    t = Truth(cells=[CellTruth(4766, ("14.32.0.0/24",), (80,), (9,)),
                     CellTruth(9318, ("1.224.0.0/24",), (8080,), (20,))])
    alerts = [_alert("c1", "injection_cell", subject={"asn": 4766, "ports": [80]}),
              _alert("c2", "injection_cell", subject={"asn": 9318, "ports": [8080]})]
    alerts[1] = alerts[1].model_copy(update={"evidence": {"level": "suspected"}})
    s = score_cells(t, alerts)
    assert (s["by_class"]["injection"]["found"], s["confirmed"]) == (
        2, {"planted": 2, "found": 1})
    s = score_cells(t, alerts[:1], sources={4766: 7, 9318: 2})
    assert s["missed"] == [{"asn": 9318, "sources": 2}]
