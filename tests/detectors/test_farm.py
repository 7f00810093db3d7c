"""Farm groups on hand-built scenarios: farms, hard negatives, late joiners, scale-out."""

from __future__ import annotations

import dataclasses
import json
import random
import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pathsentry.config import load_config
from pathsentry.detectors.base import DetectorContext, Enriched
from pathsentry.detectors.farm import FarmDetector
from pathsentry.enrich.geo import GeoInfo, GeoResolver, prefix_of
from pathsentry.schemas import Alert, FlaggedEvent, parse_event

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
KR = GeoInfo(country="KR", asn=4766, precision="city")


def detector(**settings: Any) -> FarmDetector:
    toml = "[detectors.farm]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
    return FarmDetector(DetectorContext(load_config(text=toml, env={}), GeoResolver([])))


def route_note(sig: str | None) -> dict[str, Any]:
    if sig is None:
        return {"signature": "dom", "country_path": ["KR"], "asn_path": [4766],
                "foreign_origin": False}
    return {"signature": sig, "country_path": ["CN", "KR"], "asn_path": [4134, 4766],
            "foreign_origin": True}


def login(account: str, t: float, ip: str, *, relay: bool = False, route: str | None = "",
          sid: str | None = None) -> Enriched:
    """A login ``t`` seconds after T0; ``route=""``: traceroute not seen yet."""
    sid = sid or f"s-{account}-{t:.0f}"
    ev = parse_event({
        "kind": "login", "event_id": f"L-{sid}", "ts": (T0 + timedelta(seconds=t)).isoformat(),
        "src_ip": ip, "session_id": sid, "account": account,
        "server_id": "kr-sel-1", "app_rtt_ms": [40.0 if relay else 4.0],
        "tcp_rtt_ms": 2.0 if relay else 3.9})
    e = Enriched(ev, KR, prefix_of(ip))
    e.notes["relay"] = {"score": 0.9 if relay else 0.1, "flagged": relay, "exit_prefix": e.prefix,
                        "gap_ms": 38.0 if relay else 0.1, "excess_ms": None}
    if route != "":
        e.notes["route"] = route_note(route)
    return e


def trace(lg: Enriched, dt: float, sig: str | None) -> Enriched:
    """The traceroute of ``lg``'s session ``dt`` seconds later, joined upstream."""
    ev = parse_event({
        "kind": "traceroute", "event_id": f"T-{lg.event.session_id}",
        "ts": (lg.event.ts + timedelta(seconds=dt)).isoformat(), "src_ip": str(lg.event.src_ip),
        "session_id": lg.event.session_id, "vantage_id": "kr-sel-1",
        "direction": "server_to_client", "hops": [{"ttl": 1, "ip": "10.0.0.1", "rtt_ms": [1.0]}]})
    e = Enriched(ev, KR, lg.prefix)
    e.notes["account"] = lg.account
    e.notes["route"] = route_note(sig)
    return e


Outputs = tuple[dict[tuple[str, str], FlaggedEvent], dict[str, Alert]]


def run(events: Iterable[Enriched], dets: Sequence[FarmDetector] | None = None) -> Outputs:
    """Feed events the way the stream does: once per group key, to the worker owning it."""
    dets = dets or [detector()]
    flags: dict[tuple[str, str], FlaggedEvent] = {}
    alerts: dict[str, Alert] = {}
    last = 0.0
    for ev in sorted(events, key=lambda e: e.ts):
        last = ev.ts
        for key in dets[0].group_keys(ev):
            det = dets[zlib.crc32(key.encode()) % len(dets)]
            out = det.process(ev, key)
            if out:
                flags.update({f.dedup_key: f for f in out.flags})
                for a in out.alerts:
                    assert a.version > alerts[a.alert_id].version if a.alert_id in alerts else True
                    alerts[a.alert_id] = a
    for det in dets:
        out = det.flush(last + 3600)
        if out:
            flags.update({f.dedup_key: f for f in out.flags})
            alerts.update({a.alert_id: a for a in out.alerts})
    return flags, alerts


def serial_farm(stem: str, n: int, t0: float, exit_ip: str, sig: str | None, *,
                relay: bool = True, spacing: float = 20.0, first: int = 1) -> list[Enriched]:
    """``n`` serial accounts logging in ``spacing`` s apart, traceroute 5 s after each login."""
    out: list[Enriched] = []
    for i in range(n):
        lg = login(f"{stem}{first + i:03d}", t0 + i * spacing, exit_ip, relay=relay)
        out += [lg, trace(lg, 5.0, sig)]
    return out


PLAYERS = ["shadow_wolf", "lazytiger", "coco88", "minsu_kim", "happyotter", "nova_luna",
           "bluecomet", "tofu_panda", "raven2001", "sleepyyeti", "kimchi_king", "pixelfrost",
           "jiwoolee1999", "mapleember", "sonic_dubu", "quietmoon", "haru_gom", "wildrabbit",
           "otter_cider", "noble_raven", "luckyneon", "tiny_blade", "sweetmint", "aurora77",
           "cool_storm", "madknight", "dragon4821", "dragon77", "ghost_hunter", "redpepper"]


def random_names(rng: random.Random, n: int) -> list[str]:
    cons, vow = "bcdfghjklmnpqrstvwxz", "aeiou"
    return ["".join(rng.choice(cons) + rng.choice(vow) for _ in range(rng.randint(2, 4)))
            + (str(rng.randint(1, 9999)) if rng.random() < 0.4 else "") for _ in range(n)]


def farm_alerts(alerts: dict[str, Alert]) -> list[Alert]:
    return [a for a in alerts.values() if a.kind == "farm_group"]


# ---------------------------------------------------------------------- farms


def test_serial_farm_through_a_shared_relay_is_one_alert() -> None:
    events = serial_farm("xiaopai", 20, 0, "203.0.113.9", "sigCN1")
    flags, alerts = run(events)
    (alert,) = farm_alerts(alerts)
    assert alert.accounts == [f"xiaopai{i:03d}" for i in range(1, 21)]
    # formed at the 5th login, +1 per join growing it by a tenth (6-11, 13, 15, 17, 19), +1
    # on the tick after the last join and traceroute
    assert alert.version == 12
    assert alert.subject["template"] == "xiaopai#"
    assert alert.evidence["templates"][0] == ["xiaopai#", 20]
    assert alert.evidence["serial_runs"] == [[1, 20]]
    assert alert.evidence["relay"]["flagged_accounts"] == 20
    assert alert.evidence["prefixes"][0] == ["203.0.113.0/24", 20]
    assert alert.evidence["country_paths"][0] == ["CN>KR", 20]
    assert alert.severity in ("high", "critical")
    logins = {e.event.event_id for e in events if e.kind == "login"}
    assert {f.event_id for f in flags.values()} == logins
    assert all(f.kind == "farm_member" and f.alert_id == alert.alert_id for f in flags.values())


def test_alert_fires_by_the_fifth_login() -> None:
    events = serial_farm("jinbi", 5, 0, "203.0.113.9", "sigCN1")
    det = detector()
    fired_at = None
    for ev in events:
        for key in det.group_keys(ev):
            out = det.process(ev, key)
            if out and out.alerts and fired_at is None:
                fired_at = ev
    assert fired_at is not None and fired_at.account == "jinbi005"


def test_farm_without_serial_names_sharing_a_route_across_exits() -> None:
    rng = random.Random(4)
    names = random_names(rng, 12)
    exits = ["198.51.100.7", "198.51.101.8", "198.51.102.9"]
    events: list[Enriched] = []
    for i, name in enumerate(names):
        lg = login(name, 3600 + i * 15, exits[i % 3])  # no relay flag: an L3 tunnel
        events += [lg, trace(lg, 4.0, "sigCN7")]
    flags, alerts = run(events)
    (alert,) = farm_alerts(alerts)
    assert sorted(alert.accounts) == sorted(names)
    assert alert.subject["template"] is None
    assert alert.evidence["route_signatures"] == [["sigCN7", 12]]
    # the login itself never reached the route partition: the traceroute carries the flag
    assert len(flags) == 12 and all(f.event_id.startswith("T") for f in flags.values())


def test_a_flag_on_a_login_known_from_its_traceroute_carries_the_logins_time() -> None:
    """Flags are stored per event and hour: wherever a login is flagged, it has one time."""
    rng = random.Random(4)
    names = random_names(rng, 12)
    exits = ["198.51.100.7", "198.51.101.8", "198.51.102.9"]
    events: list[Enriched] = []
    logins: dict[str, datetime] = {}
    for i, name in enumerate(names):
        lg = login(name, 3600 + i * 15 - 20, exits[i % 3])  # traceroutes cross the hour
        tr = trace(lg, 40.0, "sigCN7")
        tr.notes["login_event_id"], tr.notes["login_ts"] = lg.event.event_id, lg.ts
        logins[lg.event.event_id] = lg.event.ts
        events += [lg, tr]
    flags, _ = run(events)
    assert len(flags) == 12
    assert {f.event_id: f.ts for f in flags.values()} == logins


def test_farm_without_serial_names_behind_one_relay_exit() -> None:
    rng = random.Random(5)
    events: list[Enriched] = []
    for i, name in enumerate(random_names(rng, 8)):
        lg = login(name, 7200 + i * 25, f"203.0.113.{10 + i}", relay=True)
        lg.geo = dataclasses.replace(lg.geo, asn=64600, kind="hosting")  # a VPS range
        events += [lg, trace(lg, 3.0, None)]  # the relay hides the origin: domestic route
    flags, alerts = run(events)
    (alert,) = farm_alerts(alerts)
    assert len(alert.accounts) == 8 and alert.subject["key"] == "net:AS64600"
    assert {f.event_id[0] for f in flags.values()} == {"L"}


def test_relay_only_group_without_traceroutes_waits_for_the_grace_period() -> None:
    events = [login(f"ghost{c}x", 100 + i * 10, "203.0.113.50", relay=True)
              for i, c in enumerate("abcdefg")]
    _, alerts = run(events)
    (alert,) = farm_alerts(alerts)
    assert len(alert.accounts) == 7


def test_late_joiners_update_the_same_alert() -> None:
    early = serial_farm("mofa", 6, 0, "203.0.113.9", "sigCN2")
    late = serial_farm("mofa", 6, 1500, "203.0.113.9", "sigCN2")
    for i, ev in enumerate(late):  # numbered 007..012
        if ev.kind == "login":
            ev.event = ev.event.model_copy(update={"account": f"mofa{7 + i // 2:03d}"})
        else:
            ev.notes["account"] = f"mofa{7 + i // 2:03d}"
    flags, alerts = run(early + late)
    (alert,) = farm_alerts(alerts)
    # formed at the 5th login, +1 per join growing it by a tenth (6-11), +1 on the tick
    assert len(alert.accounts) == 12 and alert.version == 8
    assert alert.first_seen == T0 and alert.last_seen == T0 + timedelta(seconds=1600)
    assert len({f.alert_id for f in flags.values()}) == 1 and len(flags) == 12


def test_two_farms_of_one_template_on_different_relays_are_two_groups() -> None:
    a = serial_farm("baofa", 8, 0, "203.0.113.9", "sigCN3")
    b = serial_farm("baofa", 8, 30000, "192.0.2.9", "sigVN1", first=101)
    _, alerts = run(a + b)
    groups = farm_alerts(alerts)
    assert len(groups) == 2
    assert {len(g.accounts) for g in groups} == {8}
    assert len({g.alert_id for g in groups}) == 2


def test_the_farms_next_session_updates_its_alert_and_flags_every_login() -> None:
    day = serial_farm("zhanshi", 10, 0, "203.0.113.9", "sigCN4")
    evening = serial_farm("zhanshi", 10, 8 * 3600, "203.0.113.77", "sigCN4")
    flags, alerts = run(day + evening)
    (alert,) = farm_alerts(alerts)
    assert len(alert.accounts) == 10
    assert alert.last_seen == T0 + timedelta(seconds=8 * 3600 + 180)
    logins = {e.event.event_id for e in day + evening if e.kind == "login"}
    assert {f.event_id for f in flags.values()} == logins
    assert {f.alert_id for f in flags.values()} == {alert.alert_id}


def test_a_relay_user_from_elsewhere_does_not_join_a_burst_on_a_shared_exit() -> None:
    rng = random.Random(11)
    names = random_names(rng, 12)
    events = []
    for i, name in enumerate(names):
        lg = login(name, i * 20, f"43.200.1.{4 + i % 3}", relay=True)
        lg.event = lg.event.model_copy(update={"app_rtt_ms": [18.0 + rng.uniform(0, 0.8)]})
        events.append(lg)
    stranger = login("knight_frost", 105, "43.200.1.9", relay=True)
    stranger.event = stranger.event.model_copy(update={"app_rtt_ms": [49.7]})
    flags, alerts = run([*events, stranger])
    (alert,) = farm_alerts(alerts)
    assert sorted(alert.accounts) == sorted(names)
    assert alert.evidence["origin"]["app_rtt_range_ms"][1] < 19.0
    assert "knight_frost" not in {f.account for f in flags.values()}


# ------------------------------------------------------------- hard negatives


def test_pc_bang_is_never_a_group() -> None:
    rng = random.Random(1)
    events = []
    for name in PLAYERS + [f"dragon{rng.randint(1, 99999)}" for _ in range(6)]:
        lg = login(name, rng.uniform(0, 1800), "211.234.50.20")
        events += [lg, trace(lg, 3.0, None)]
    flags, alerts = run(events)
    assert not alerts and not flags


def test_campus_nat_with_a_few_noisy_relay_scores_is_never_a_group() -> None:
    rng = random.Random(2)
    names = PLAYERS + random_names(rng, 40)
    events = []
    for i, name in enumerate(names):
        lg = login(name, rng.uniform(0, 7200), "143.248.1.1", relay=(i % 17 == 0))
        events += [lg, trace(lg, 3.0, None)]
    flags, alerts = run(events)
    assert not alerts and not flags


def test_family_names_over_days_and_prefixes() -> None:
    events = [login(f"minsu_{s}", d * 86400 + 3600 * d, f"61.{40 + d}.1.{d}")
              for d, s in enumerate(["kim", "lee", "park", "choi", "jung", "kang", "cho"])]
    assert run(events) == ({}, {})


def test_popular_stem_spread_over_time_and_prefixes() -> None:
    rng = random.Random(3)
    events = [login(f"dragon{rng.randint(1, 99999)}", rng.uniform(0, 86400),
                    f"{rng.randint(1, 220)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.5")
              for _ in range(60)]
    # and a cluster of them on one mobile CGNAT prefix within minutes
    events += [login(f"dragon{n}", 40000 + i * 30, f"223.38.7.{i}")
               for i, n in enumerate([1987, 77, 4321, 2002, 555, 31337])]
    assert run(events) == ({}, {})


def test_steady_vpn_exit_is_not_a_burst_once_its_background_is_known() -> None:
    """24 relay-flagged users an hour behind one exit: Poisson clumps are not farms.

    In the partition's first minutes there is no background yet and only density
    counts (a documented warm-up weakness); after that no clump may form a group.
    """
    rng = random.Random(6)
    events = []
    t = 0.0
    for name in random_names(rng, 150):
        t += rng.expovariate(1 / 150)
        lg = login(name, t, f"45.76.1.{rng.randint(1, 250)}", relay=True)
        events += [lg, trace(lg, 3.0, None)]
    _, alerts = run(events)
    assert len(alerts) <= 1
    assert all(a.first_seen < T0 + timedelta(minutes=30) for a in alerts.values())


def test_unrelated_foreign_routes_do_not_group() -> None:
    rng = random.Random(8)
    events = []
    for i, name in enumerate(random_names(rng, 40)):
        lg = login(name, i * 200, f"175.{i}.1.1", relay=True)
        events += [lg, trace(lg, 4.0, f"sigX{i % 20}")]
    assert run(events) == ({}, {})


# ----------------------------------------------------- scale-out and restarts


def world() -> list[Enriched]:
    rng = random.Random(9)
    events = serial_farm("xiaopai", 15, 0, "203.0.113.9", "sigCN1")
    events += serial_farm("tianlong", 9, 600, "198.51.100.4", None)
    for i, name in enumerate(random_names(rng, 10)):
        lg = login(name, 5000 + i * 20, f"192.0.{2 + i % 3}.{i}")
        events += [lg, trace(lg, 4.0, "sigCN9")]
    for name in PLAYERS:
        lg = login(name, rng.uniform(0, 6000), "211.234.50.20")
        events += [lg, trace(lg, 2.0, None)]
    return events


def summary(out: Outputs) -> tuple[list[tuple[str, int, tuple[str, ...]]], list[tuple[str, str]]]:
    flags, alerts = out
    return (sorted((a.alert_id, a.version, tuple(a.accounts)) for a in alerts.values()),
            sorted((f.event_id, f.alert_id or "") for f in flags.values()))


def test_world_finds_each_farm_once() -> None:
    alerts, flags = summary(run(world()))
    assert sorted(len(a[2]) for a in alerts) == [9, 10, 15]
    assert len(flags) == 34 and len({e for e, _ in flags}) == 34


def test_same_result_when_keys_are_split_across_workers() -> None:
    single = summary(run(world()))
    assert summary(run(world(), [detector(), detector()])) == single
    assert summary(run(world(), [detector() for _ in range(5)])) == single


def test_state_snapshot_round_trip_mid_stream() -> None:
    events = sorted(world(), key=lambda e: e.ts)
    half = len(events) // 2
    det = detector()
    first = run(events[:half], [det])
    snap = json.loads(json.dumps(det.state()))
    restored = detector()
    restored.load_state(snap)
    second = run(events[half:], [restored])
    merged = ({**first[0], **second[0]}, {**first[1], **second[1]})
    assert summary(merged) == summary(run(events))


def test_bounded_state_evicts_cold_keys_and_members() -> None:
    det = detector(max_keys=50, max_members=20)
    rng = random.Random(10)
    for i in range(3000):
        ev = login(f"player{rng.randint(1, 10**6)}x{i % 97}", i * 1.0, f"10.{i % 200}.0.1",
                   relay=True)
        for key in det.group_keys(ev):
            det.process(ev, key)
    assert len(det.parts) <= 50
    assert all(len(p.members) <= 20 for p in det.parts.values())


@pytest.mark.parametrize("key", ["tpl:xiaopai", "route:sigCN1", "net:203.0.113.0/24"])
def test_group_keys_cover_the_three_families(key: str) -> None:
    lg = login("xiaopai001", 0, "203.0.113.9", relay=True, route="sigCN1")
    assert key in FarmDetector.group_keys(detector(), lg)


def test_a_large_farms_alert_is_re_emitted_as_it_grows_by_a_tenth_not_per_member() -> None:
    """200 serial accounts joining one group: the alert is re-published when a join grows
    it by ``alert_regrow_share`` (and on the tick), tens of versions rather than 200, while
    every member's flag goes out with its login, naming the group's alert."""
    events = serial_farm("gorae", 200, 0, "203.0.113.9", "sigCN1", spacing=5.0)
    det = detector()
    versions: list[int] = []
    flagged: dict[str, str | None] = {}
    for ev in sorted(events, key=lambda e: e.ts):
        for key in det.group_keys(ev):
            out = det.process(ev, key)
            if out:
                versions += [a.version for a in out.alerts if a.kind == "farm_group"]
                flagged.update({f.account: f.alert_id for f in out.flags})
    tick = det.flush(events[-1].ts + 1.0)
    final = [a for a in (tick.alerts if tick else []) if a.kind == "farm_group"]
    assert len(final) == 1 and len(final[0].accounts) == 200 and final[0].version == len(versions) + 1
    assert 10 <= len(versions) <= 40 and versions == list(range(1, len(versions) + 1))
    assert len(flagged) == 200 and set(flagged.values()) == {final[0].alert_id}
