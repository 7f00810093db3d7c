"""The simulated world: physics invariants, determinism, labels and contract validity."""

from __future__ import annotations

import ipaddress
import itertools
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from pathsentry.config import load_config
from pathsentry.detectors.physics import great_circle_km
from pathsentry.enrich.geo import CsvPrefixTable, GeoResolver
from pathsentry.schemas import EventError, parse_event
from pathsentry.sim import KST, World, WorldSpec, iter_world, write_world
from pathsentry.sim.model import ATTACK_LABELS, Account
from pathsentry.sim.physics import Point
from pathsentry.sim.sessions import kst_hour

# 15:00-21:00 KST: inside and outside the injection hours, up to the evening peak.
SPEC = WorldSpec(seed=11, accounts=1000, hours=6, start=datetime(2026, 3, 2, 15, tzinfo=KST))
HARD_NEGATIVES = {"pc_bang", "campus", "cgnat", "lte", "cloud_gaming", "rural_dsl", "game_relay",
                  "icmp_spike", "squatted_hop", "family_names", "tls", "isp_off_hours", "normal"}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(SPEC, out)
    return out


@pytest.fixture(scope="module")
def events(world_dir: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (world_dir / "events.jsonl").read_bytes().splitlines()]


@pytest.fixture(scope="module")
def truth(world_dir: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (world_dir / "truth.jsonl").read_bytes().splitlines()]


@pytest.fixture(scope="module")
def geo(world_dir: Path) -> GeoResolver:
    return GeoResolver([CsvPrefixTable.from_file(str(world_dir / "geo.csv"))])


def _floor(a: Point, b: Point) -> float:
    return great_circle_km(a.lat, a.lon, b.lat, b.lon) / 100.0


def test_no_rtt_below_the_fibre_floor_of_the_true_path(events: list[dict[str, Any]]) -> None:
    plan = World(SPEC).plan
    accounts: dict[str, Account] = {a.name: a for a in plan.accounts}
    checked = Counter[str]()
    for ev in events:
        acct = accounts.get(ev.get("account", ""))
        if acct is None or ev["kind"] not in ("login", "rtt_probe"):
            continue
        vid = ev["server_id"] if ev["kind"] == "login" else ev["vantage_id"]
        dst = plan.servers[vid].point
        if acct.exit is None:
            full = exit_only = _floor(acct.home.point, dst)
        else:
            exit_only = _floor(acct.exit.prefix.point, dst)
            full = _floor(acct.home.point, acct.exit.prefix.point) + exit_only
        if ev["kind"] == "login":
            assert min(ev["app_rtt_ms"]) >= full
            tcp_at_relay = acct.exit is not None and acct.exit.mode in ("l4", "game_relay")
            assert ev["tcp_rtt_ms"] >= (exit_only if tcp_at_relay else full)
            if acct.label == "l4_relay":  # TCP ends at the relay: tcp << app
                assert ev["tcp_rtt_ms"] * 3 < min(ev["app_rtt_ms"])
            if acct.label == "l3_vpn":  # one tunnel: both legs in both measurements
                assert ev["tcp_rtt_ms"] >= full
        else:
            at_relay = acct.exit is not None and (ev["method"] == "icmp" or (
                ev["method"] == "tcp" and acct.exit.mode in ("l4", "game_relay")))
            assert min(ev["rtt_ms"]) >= (exit_only if at_relay else full)
        checked[ev["kind"]] += 1
    assert checked["login"] > 100 and checked["rtt_probe"] > 300


def test_traceroute_hops_obey_physics_except_squatted_claims(
    events: list[dict[str, Any]], geo: GeoResolver
) -> None:
    plan = World(SPEC).plan
    accounts = {a.name: a for a in plan.accounts}
    squatted_seen = 0
    for ev in (e for e in events if e["kind"] == "traceroute"):
        home = accounts[ev["account"]].home.point
        for hop in ev["hops"]:
            if hop["ip"] is None or ipaddress.ip_address(hop["ip"]).is_private:
                continue
            info = geo.lookup(hop["ip"])
            assert info.lat is not None and info.lon is not None
            floor = _floor(home, Point(info.lat, info.lon))
            med = sorted(hop["rtt_ms"])[1]
            if info.country == "KR" or info.asn in (64600, 2914, 2516):
                assert min(hop["rtt_ms"]) >= floor, (ev["event_id"], hop)
            elif accounts[ev["account"]].home.cidr in plan.squatted and info.asn in (4134, 749):
                squatted_seen += 1
                assert med < 1.0 < floor  # claimed abroad, answers from Seoul: impossible
            else:
                assert min(hop["rtt_ms"]) >= floor
    assert squatted_seen > 0


def test_same_seed_same_bytes_other_seed_other_world(tmp_path: Path) -> None:
    spec = WorldSpec(seed=5, accounts=150, hours=1)
    write_world(spec, tmp_path / "a")
    write_world(spec, tmp_path / "b")
    write_world(WorldSpec(seed=6, accounts=150, hours=1), tmp_path / "c")
    for name in ("events.jsonl", "truth.jsonl", "geo.csv", "pathsentry.toml"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "events.jsonl").read_bytes() != (tmp_path / "c" / "events.jsonl").read_bytes()


def test_truth_covers_every_event_in_order(events: list[dict[str, Any]],
                                           truth: list[dict[str, Any]]) -> None:
    ev_truth = [t for t in truth if t["type"] == "event"]
    assert [t["event_id"] for t in ev_truth] == [e["event_id"] for e in events]
    assert len({e["event_id"] for e in events}) == len(events)
    assert [t["kind"] for t in ev_truth] == [e["kind"] for e in events]
    assert all(a["ts"] <= b["ts"] for a, b in itertools.pairwise(events))
    assert Counter(e["kind"] for e in events).keys() == {"login", "rtt_probe", "traceroute",
                                                         "http_probe"}


def test_every_planted_attack_and_hard_negative_is_present(events: list[dict[str, Any]],
                                                           truth: list[dict[str, Any]]) -> None:
    ev_truth = [t for t in truth if t["type"] == "event"]
    assert {t["label"] for t in ev_truth} == {"benign", *ATTACK_LABELS}
    assert {t["klass"] for t in ev_truth if t["label"] == "benign"} >= HARD_NEGATIVES
    expected = {("login", "vpn_relay"), ("traceroute", "route_anomaly"),
                ("http_probe", "path_injection")}
    assert {(t["kind"], x) for t in ev_truth for x in t["expect"]} == expected
    accounts = {t["account"]: t for t in truth if t["type"] == "account"}
    groups = [t for t in truth if t["type"] == "group"]
    assert {g["label"] for g in groups} == {"farm_serial", "farm_route"}
    for g in groups:
        assert all(accounts[m]["group_id"] == g["group_id"] for m in g["members"])
        assert all(accounts[m]["label"] == g["label"] for m in g["members"])
        assert g["first_login_ts"] <= g["fifth_login_ts"]
        firsts: dict[str, str] = {}
        for e in events:  # the fifth member whose login succeeded (a failed one opens no session)
            if e["kind"] == "login" and e["account"] in g["members"] and e["outcome"] == "success":
                firsts.setdefault(e["account"], e["ts"])
        assert datetime.fromisoformat(g["fifth_login_ts"]) == \
            sorted(datetime.fromisoformat(x) for x in firsts.values())[4]
    serial = next(g for g in groups if g["label"] == "farm_serial")
    assert serial["template"] and serial["members"][0].startswith(serial["template"].split("{")[0])
    (cell,) = [t for t in truth if t["type"] == "cell"]
    assert cell["ports"] == [80, 8080] and cell["hours"] == list(range(9, 18))


def test_injection_only_on_the_cell_plaintext_ports_and_hours(
    events: list[dict[str, Any]], truth: list[dict[str, Any]]
) -> None:
    labels = {t["event_id"]: t for t in truth if t["type"] == "event"}
    (cell,) = [t for t in truth if t["type"] == "cell"]
    cell_nets = [ipaddress.ip_network(p) for p in cell["prefixes"]]
    injected = 0
    for ev in (e for e in events if e["kind"] == "http_probe"):
        forged = (ev["status"] == 200 and ev["request"] == "ws_upgrade") or (
            ev["ttl"] is not None and ev["ttl"]["response"] != ev["ttl"]["syn_ack"])
        if labels[ev["event_id"]]["label"] != "injection":
            assert not forged
            continue
        injected += 1
        ts_ms = int(datetime.fromisoformat(ev["ts"]).timestamp() * 1000)
        assert any(ipaddress.ip_address(ev["src_ip"]) in n for n in cell_nets)
        assert ev["target"]["scheme"] in ("http", "ws") and ev["target"]["port"] in cell["ports"]
        assert kst_hour(ts_ms) in cell["hours"]
        if ev["ttfb_ms"] is not None:
            assert ev["ttfb_ms"] < ev["connect_ms"]
    assert injected > 0


def test_geo_covers_every_address_and_config_loads(
    world_dir: Path, events: list[dict[str, Any]], geo: GeoResolver
) -> None:
    cfg = load_config(world_dir / "pathsentry.toml", env={})
    assert {s.id for s in cfg.servers} >= {"kr-sel-1", "kr-pus-1", "kr-dje-1", "jp-tyo-1"}
    assert cfg.geo == ["csv:geo.csv"] and cfg.origin("ws.game.example") is not None
    allow = [ipaddress.ip_network(a.cidr) for a in cfg.allow]
    addresses = set()
    for ev in events:
        addresses.add(ev["src_ip"])
        addresses.update(h["ip"] for h in ev.get("hops", []) if h["ip"])
    for ip in addresses:
        if not ipaddress.ip_address(ip).is_private:
            info = geo.lookup(ip)
            assert info.country and info.asn and info.kind and info.as_name, ip
    relay_src = {e["src_ip"] for e in events
                 if e["kind"] == "login" and geo.lookup(e["src_ip"]).kind == "relay"}
    assert relay_src and all(any(ipaddress.ip_address(ip) in n for n in allow) for ip in relay_src)


def test_one_hour_of_a_small_world_is_valid_contract_v1() -> None:
    n = 0
    evening = datetime(2026, 3, 2, 20, tzinfo=KST)
    for ev in iter_world(WorldSpec(seed=2, accounts=200, hours=1, start=evening)):
        try:
            parse_event(orjson.dumps(ev))
        except EventError as e:  # pragma: no cover - the failure message is the point
            pytest.fail(f"{ev['event_id']}: {e}")
        n += 1
    assert n > 200


def test_spec_rejects_impossible_worlds() -> None:
    with pytest.raises(ValueError):
        WorldSpec(accounts=10)
    with pytest.raises(ValueError):
        WorldSpec(start=datetime(2026, 1, 1))
