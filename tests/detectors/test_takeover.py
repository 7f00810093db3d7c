"""Account takeover: logins that break an account's own history, and the hard negatives."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from pathsentry.config import load_config
from pathsentry.detectors.base import DetectorContext, Enriched, Findings
from pathsentry.detectors.takeover import TakeoverDetector
from pathsentry.engine import Engine
from pathsentry.enrich.geo import CsvPrefixTable, GeoInfo, GeoResolver
from pathsentry.schemas import parse_event

T0 = datetime(2026, 11, 1, tzinfo=UTC)
SEOUL = GeoInfo(country="KR", asn=4766, lat=37.57, lon=126.98, precision="city")
BUSAN = GeoInfo(country="KR", asn=9318, lat=35.18, lon=129.08, precision="city")
TOKYO = GeoInfo(country="JP", asn=2516, lat=35.68, lon=139.65, precision="city")
SAO_PAULO = GeoInfo(country="BR", asn=28573, lat=-23.55, lon=-46.63, precision="city")
NEW_YORK = GeoInfo(country="US", asn=7922, lat=40.71, lon=-74.0, precision="city")
LOS_ANGELES = GeoInfo(country="US", asn=7018, lat=34.05, lon=-118.24, precision="city")


def detector(**settings: Any) -> TakeoverDetector:
    toml = "[detectors.takeover]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
    return TakeoverDetector(DetectorContext(load_config(text=toml, env={}), GeoResolver([])))


_n = 0


def login(det: TakeoverDetector, account: str, hours: float, device: str | None, geo: GeoInfo, *,
          os: str = "android", local_ip: str = "192.168.0.10", relay: bool = False,
          prefix: str = "198.51.100.0/24") -> Findings | None:
    global _n
    _n += 1
    client: dict[str, Any] = {"os": os, "local_ip": local_ip}
    if device is not None:
        client["device_id"] = device
    ev = parse_event({"kind": "login", "event_id": f"L{_n}", "src_ip": "198.51.100.7",
                      "ts": (T0 + timedelta(hours=hours)).isoformat(), "account": account,
                      "session_id": f"s{_n}", "server_id": "kr-sel-1", "app_rtt_ms": [5.0],
                      "client": client})
    e = Enriched(ev, geo, prefix)
    if relay:
        e.notes["relay"] = {"score": 0.9, "flagged": True, "exit_prefix": e.prefix, "gap_ms": 40.0}
    return det.process(e)


def history(det: TakeoverDetector, account: str, device: str = "phone-1", geo: GeoInfo = SEOUL,
            n: int = 5) -> None:
    for i in range(n):
        assert not login(det, account, i * 24.0, device, geo)


def breaks(out: Findings | None) -> list[str]:
    assert out is not None and out.flags and out.alerts
    (flag,), (alert,) = out.flags, out.alerts
    assert flag.kind == alert.kind == "account_takeover" and flag.alert_id == alert.alert_id
    return list(flag.evidence["breaks"])


# ------------------------------------------------------------------- positives


def test_new_device_from_a_new_country_is_flagged_with_the_history_it_broke() -> None:
    det = detector()
    history(det, "hero")
    out = login(det, "hero", 200.0, "pc-77", SAO_PAULO, os="windows", local_ip="10.1.2.3")
    assert breaks(out) == ["new_device_new_country", "impossible_travel"] or \
        breaks(out) == ["new_device_new_country"]
    assert out is not None
    ev = out.flags[0].evidence
    assert ev["history"]["devices"] == ["phone-1"] and ev["history"]["countries"] == ["KR"]
    assert ev["history"]["logins"] == 5
    assert ev["login"]["device"] == "pc-77" and ev["login"]["country"] == "BR"
    assert set(ev["supporting"]) == {"new_asn", "new_local_subnet", "new_os"}
    assert ev["travel"]["km"] > 17_000  # Seoul to Sao Paulo
    assert out.alerts[0].severity in ("high", "critical")


def test_new_device_through_a_relay_is_flagged() -> None:
    det = detector()
    history(det, "hero")
    assert breaks(login(det, "hero", 200.0, "pc-77", SEOUL, relay=True,
                        prefix="203.0.113.0/24")) == ["new_device_relay"]


def test_a_relay_verdict_on_the_accounts_own_line_is_not_a_takeover() -> None:
    det = detector()
    history(det, "hero")
    assert not login(det, "hero", 200.0, "phone-2", SEOUL, relay=True)  # the home prefix


def test_impossible_travel_on_another_device_within_one_country() -> None:
    det = detector()
    history(det, "yank", geo=NEW_YORK)
    assert not login(det, "yank", 200.0, "phone-1", NEW_YORK)
    out = login(det, "yank", 201.0, "laptop-2", LOS_ANGELES)  # 3,900 km in one hour
    assert breaks(out) == ["impossible_travel"]
    assert out is not None
    travel = out.flags[0].evidence["travel"]
    assert 3_800 < travel["km"] < 4_100 and travel["speed_kmh"] > travel["max_speed_kmh"]


def test_a_device_logging_into_many_accounts_is_flagged_past_the_learned_quantile() -> None:
    det = detector()
    # the traffic: 400 devices with one or two accounts each
    for d in range(400):
        for a in range(1 + d % 2):
            login(det, f"p{d}-{a}", 0.0, f"dev{d}", SEOUL)
    victims = [f"victim{i}" for i in range(12)]
    for v in victims:
        history(det, v, device=f"own-{v}")
    flagged = [v for i, v in enumerate(victims)
               if login(det, v, 300.0 + i, "stealer-pc", SEOUL)]
    # five accounts make the device shared (the floor; the learned q0.999 is 2)
    assert flagged == victims[5:]
    out = login(det, "victim11", 400.0, "stealer-pc", SEOUL)
    assert out is not None and breaks(out) == ["shared_device"]
    d = out.flags[0].evidence["device_accounts"]
    assert d["expected_quantile"] == 2 and d["threshold"] == 5


def test_the_shared_device_threshold_follows_the_traffic() -> None:
    det = detector(device_quantile=0.9)
    for d in range(100):  # a game played on shared PCs: eight accounts per machine
        for a in range(8):
            login(det, f"p{d}-{a}", 0.0, f"dev{d}", SEOUL)
    for i in range(7):
        history(det, f"v{i}", device=f"own{i}")
        assert not login(det, f"v{i}", 300.0, "other-pc", SEOUL)  # 7 accounts: ordinary here


def test_a_flagged_login_is_not_learned_and_the_alert_grows() -> None:
    det = detector()
    history(det, "hero")
    first = login(det, "hero", 200.0, "pc-77", SAO_PAULO)
    again = login(det, "hero", 230.0, "pc-77", SAO_PAULO)
    assert first is not None and again is not None
    assert again.alerts[0].alert_id == first.alerts[0].alert_id
    assert again.alerts[0].version == 2 and len(again.alerts[0].event_ids) == 2


# ------------------------------------------------------------------- hard negatives


def test_a_new_phone_in_the_usual_country_is_not_flagged() -> None:
    det = detector()
    history(det, "hero")
    assert not login(det, "hero", 200.0, "phone-2", BUSAN, os="ios", local_ip="172.16.0.4")


def test_travelling_abroad_with_the_usual_device_is_not_flagged() -> None:
    det = detector()
    history(det, "hero")
    assert not login(det, "hero", 130.0, "phone-1", TOKYO)  # a 2-hour flight, then a login
    assert not login(det, "hero", 131.0, "phone-1", SAO_PAULO)  # even a jump, on the same phone


def test_a_family_sharing_a_pc_is_not_flagged() -> None:
    det = detector()
    for member in ("dad", "mom", "kid1", "kid2"):
        history(det, member, device="family-pc")
    for member in ("dad", "mom", "kid1", "kid2"):
        assert not login(det, member, 300.0, "family-pc", SEOUL)
    history(det, "grandpa", device="his-phone")
    assert not login(det, "grandpa", 300.0, "family-pc", SEOUL)  # a fifth account, same house


def test_an_account_without_history_or_device_is_not_judged() -> None:
    det = detector()
    assert not login(det, "fresh", 0.0, "pc-1", SAO_PAULO)
    history(det, "nodev", device=None)  # type: ignore[arg-type]
    assert not login(det, "nodev", 200.0, "pc-77", SAO_PAULO)


def test_histories_are_bounded() -> None:
    det = detector(max_accounts=10, max_values=3)
    for i in range(50):
        login(det, f"a{i}", 0.0, f"d{i}", SEOUL)
    assert len(det._accounts) == 10
    for d in range(6):
        login(det, "a49", 1.0 + d, f"x{d}", SEOUL)
    assert det._accounts["a49"].summary()["devices"] == ["x3", "x4", "x5"]


# ------------------------------------------------------------------- through the engine


def test_the_engine_runs_the_takeover_detector_after_the_relay_detector() -> None:
    geo = GeoResolver([CsvPrefixTable([("211.234.10.0/24", SEOUL), ("200.160.0.0/20", SAO_PAULO)])])
    engine = Engine(load_config(text='home_countries = ["KR"]\n', env={}), geo=geo)
    names = [d.name for d in engine.session_detectors]
    assert names.index("takeover") > names.index("latency")
    for i in range(4):
        out = engine.process(parse_event({
            "kind": "login", "event_id": f"e{i}", "ts": (T0 + timedelta(days=i)).isoformat(),
            "src_ip": "211.234.10.7", "session_id": f"s{i}", "account": "hero",
            "server_id": "kr-sel-1", "app_rtt_ms": [4.0], "client": {"device_id": "phone-1"}}))
        assert not [f for f in out.flags if f.kind == "account_takeover"]
    out = engine.process(parse_event({
        "kind": "login", "event_id": "e9", "ts": (T0 + timedelta(days=9)).isoformat(),
        "src_ip": "200.160.2.3", "session_id": "s9", "account": "hero", "server_id": "kr-sel-1",
        "app_rtt_ms": [300.0], "client": {"device_id": "pc-x"}}))
    (flag,) = [f for f in out.flags if f.kind == "account_takeover"]
    assert "new_device_new_country" in flag.evidence["breaks"]


def test_histories_survive_a_restart_and_reach_a_cold_worker() -> None:
    det = detector()
    history(det, "hero")
    for member in ("dad", "mom", "kid"):
        history(det, member, device="family-pc")
    snap = json.loads(json.dumps(det.state()))  # what the snapshot file holds
    restarted, cold = detector(), detector()
    restarted.load_state(snap)
    cold.load_learned(json.loads(json.dumps(det.learned_state())))
    for d in (restarted, cold):
        assert d._devices.count("family-pc") == 3
        assert not login(d, "hero", 200.0, "phone-2", BUSAN)  # still a known history
        assert breaks(login(d, "hero", 201.0, "pc-77", SAO_PAULO))[0] == "new_device_new_country"
