"""Randomized worlds: the drawn ranges, reproducibility, ``--params`` and what each parameter does."""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from pathsentry.cli import main
from pathsentry.sim.names import farm_family_names
from pathsentry.sim.params import (
    FARM_FAMILIES,
    Failover,
    InjectorParams,
    OriginWindow,
    ServerPing,
    WorldParams,
    draw_params,
    fixed_params,
    with_overrun,
)
from pathsentry.sim.world import World, WorldSpec
from pathsentry.sim.worlds import pace_band, render_worlds_markdown, world_spec

DRAWN = [draw_params(seed, 6.0) for seed in range(200)]


def _events(params: WorldParams, seed: int = 4, accounts: int = 300, hours: float = 6.0) -> list[
        tuple[dict, dict]]:
    if params.start_hour is None:
        params = replace(params, start_hour=18)  # the evening peak: many logins
    world = World(world_spec(seed, accounts, hours, params))
    return [(s.event, s.truth) for s in world.stream()]


def test_drawn_parameters_stay_in_their_documented_ranges() -> None:
    for p in DRAWN:
        p.validate()
        assert p.name == "random" and 0 <= (p.start_hour or 0) <= 23
        for s in p.servers:
            assert 0.0 <= s.cost_ms <= 10.0
            assert s.tick_ms == 0.0 or 8.0 <= s.tick_ms <= 100.0
        assert 1 <= p.app_samples[0] <= p.app_samples[1] <= 10
        assert 0.0 <= p.tcp_missing <= 0.3
        assert 0.8 <= p.access_scale <= 1.3 and 0.6 <= p.jitter_scale <= 2.0
        assert {k for k, _, _ in p.access_kinds} >= {"ftth", "cable", "lte", "dsl"}
        assert all(0.7 <= a <= 1.4 and 0.6 <= j <= 1.8 for _, a, j in p.access_kinds)
        assert 1.2 <= p.inflation[0] <= 1.8 and 0.5 <= p.inflation[1] - p.inflation[0] <= 1.5
        assert all(0.5 <= v <= 2.0 for _, v in p.class_scale)
        assert 0.0 <= p.origin_error_rate <= 0.03 and 0.0 <= p.origin_redirect <= 0.5
        assert all(5.0 <= w.minutes <= 40.0 for w in p.outages) and len(p.outages) <= 2
        assert p.injectors is not None and 1 <= len(p.injectors) <= 3
        assert len({i.isp for i in p.injectors}) == len(p.injectors)
        for inj in p.injectors:
            assert 0 <= inj.ttl_delta <= 3 and 3 <= len(inj.hours) <= 10 and 0.3 <= inj.rate <= 1.0
        assert p.farms is not None and 2 <= len(p.farms) <= 5
        for f in p.farms:
            assert 5 <= f.size <= 60 and 2.0 <= f.pace_s[0] <= f.pace_s[1] <= 750.0
            assert 1 <= f.exit_nets <= 4 and 1 <= f.machines <= 4
            assert (f.label == "farm_route") == (f.family == "none")


def test_drawn_worlds_span_the_ranges_not_one_corner() -> None:
    ticks = [s.tick_ms for p in DRAWN for s in p.servers]
    assert 0.1 < sum(t == 0 for t in ticks) / len(ticks) < 0.5
    assert max(ticks) > 80 and min(t for t in ticks if t) < 20
    farms = [f for p in DRAWN for f in p.farms or ()]
    assert {f.family for f in farms} == set(FARM_FAMILIES)
    assert {pace_band(f.pace_s) for f in farms} == {"<15 s", "15-60 s", ">=60 s"}
    assert {f.relay for f in farms} == {"l4", "l3", "resi"}
    injectors = [i for p in DRAWN for i in p.injectors or ()]
    assert {i.ttl_delta for i in injectors} == {0, 1, 2, 3}
    assert {i.answer for i in injectors} == {"page", "redirect", "block"}
    assert {i.isp for i in injectors} == {"KT", "SKB", "LGU", "SKT"}
    assert len({p.start_hour for p in DRAWN}) == 24


def test_same_seed_same_world_other_seed_other_world() -> None:
    assert draw_params(11, 6.0) == draw_params(11, 6.0)
    assert len({p.to_json() for p in DRAWN}) == len(DRAWN)
    p = draw_params(11, 3.0)
    assert _events(p, 11, 300, 3.0) == _events(p, 11, 300, 3.0)


def test_params_json_round_trip_and_refusals() -> None:
    for p in DRAWN[:20]:
        assert WorldParams.from_json(p.to_json()) == p
    assert WorldParams.from_dict({}) == fixed_params()
    with pytest.raises(ValueError, match="unknown world parameter"):
        WorldParams.from_dict({"tick": 5})
    with pytest.raises(ValueError, match="share"):
        WorldParams.from_dict({"tcp_missing": 2})
    with pytest.raises(ValueError, match="injector"):
        WorldParams.from_dict({"injectors": [{"isp": "KT", "lines": 1, "ports": [443], "hours": [9],
                                              "rate": 1.0, "answer": "page", "ttl_delta": 1,
                                              "ttl_visible": 1.0}]})


def test_fixed_world_is_the_original_world_byte_for_byte() -> None:
    digest = hashlib.sha256()
    for sim in World(WorldSpec(seed=3, accounts=300, hours=6)).stream():
        digest.update(orjson.dumps(sim.event))
    # the events of this spec as the simulator produced them before worlds were randomized
    assert digest.hexdigest() == "d118c29993cf0d611d6a6b43c52523feee7cd0882299f7faf5917664d8e760eb"


def test_simulate_params_round_trip_through_the_cli(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    base = ["simulate", "--seed", "9", "--accounts", "300", "--hours", "2"]
    assert main([*base, "--params", "random", "--out", str(tmp_path / "a")]) == 0
    params = draw_params(9, 2.0).to_json()
    (tmp_path / "p.json").write_text(params)
    assert main([*base, "--params", params, "--out", str(tmp_path / "b")]) == 0
    assert main([*base, "--params", f"@{tmp_path / 'p.json'}", "--out", str(tmp_path / "c")]) == 0
    assert main([*base, "--params", "fixed", "--out", str(tmp_path / "d")]) == 0
    a, b, c, d = ((tmp_path / x / "events.jsonl").read_bytes() for x in "abcd")
    assert a == b == c and a != d
    capsys.readouterr()
    with pytest.raises(SystemExit, match="--params"):
        main([*base, "--params", "{not json", "--out", str(tmp_path / "e")])


def _gap(events: list[tuple[dict, dict]]) -> list[float]:
    return [min(e["app_rtt_ms"]) - e["tcp_rtt_ms"] for e, t in events
            if e["kind"] == "login" and t["label"] == "benign" and "tcp_rtt_ms" in e
            and t["klass"] in ("normal", "pc_bang", "campus")]


def test_game_loop_ping_adds_cost_and_a_phase_of_the_tick() -> None:
    loop = replace(fixed_params(), servers=tuple(ServerPing(5.0, 50.0) for _ in range(4)),
                   app_samples=(1, 1))
    gaps = _gap(_events(loop))
    assert statistics.median(_gap(_events(fixed_params()))) < 2.0
    assert len(gaps) > 50 and min(gaps) > 5.0 - 1.0
    assert 5.0 + 15.0 < statistics.median(gaps) < 5.0 + 35.0  # a uniform phase of 50 ms: median ~25
    many = replace(loop, app_samples=(10, 10))
    assert statistics.median(_gap(_events(many))) < statistics.median(gaps) - 10  # min of 10 samples


def test_a_loop_overrun_answers_a_share_of_the_pings_one_tick_late() -> None:
    """``--loop-overrun``: a share of the samples waits a second tick, so their phase is
    past one tick; without it every sample stays within its tick, and the world is the
    same as before byte for byte."""
    loop = replace(fixed_params(), servers=tuple(ServerPing(5.0, 50.0) for _ in range(4)),
                   app_samples=(1, 1))
    assert with_overrun(loop, 0.0) is loop
    within = _gap(_events(loop))
    late = _gap(_events(with_overrun(loop, 0.3)))
    assert max(within) < 5.0 + 50.0 + 10.0  # (the access line's jitter on top)
    share = sum(g > 5.0 + 50.0 + 10.0 for g in late) / len(late)
    assert 0.1 < share < 0.4 and max(late) < 5.0 + 100.0 + 10.0
    with pytest.raises(ValueError, match="between 0 and 1"):
        with_overrun(loop, 1.0)


def test_tcp_rtt_missing_for_a_share_of_clients() -> None:
    logins = [e for e, _ in _events(replace(fixed_params(), tcp_missing=1.0)) if e["kind"] == "login"]
    assert logins and not any("tcp_rtt_ms" in e for e in logins)
    some = [e for e, _ in _events(replace(fixed_params(), tcp_missing=0.3)) if e["kind"] == "login"]
    share = sum("tcp_rtt_ms" not in e for e in some) / len(some)
    assert 0.1 < share < 0.5


def test_origin_outage_answers_from_the_cdn_itself() -> None:
    down = replace(fixed_params(), outages=(OriginWindow(0.0, 600.0, 503),))
    probes = [(e, t) for e, t in _events(down) if e["kind"] == "http_probe"
              and t["label"] == "benign" and e["status"] is not None]
    assert probes and all(t["klass"] == "origin_outage" for _, t in probes)
    for e, _ in probes:
        assert e["status"] == 503 and e["server_header"] == "cloudflare" and "cf-ray" in e["header_names"]
        if e["ttl"]:
            assert e["ttl"]["response"] == e["ttl"]["syn_ack"]


def test_unmarked_outage_answers_from_the_origins_own_box() -> None:
    """A failed-over host answers without the CDN's marks, from the box's place and TTL;
    every other event of the world, the other host in the same minutes included, is
    byte for byte the marked outage's."""
    down = replace(fixed_params(), outages=(OriginWindow(0.3, 120.0, 502),))
    box = Failover(0, ("www",), "openresty", "jp-tyo-1", 4, -1, 2.0)
    marked, unmarked = _events(down), _events(replace(down, unmarked_share=1.0, failovers=(box,)))
    assert len(marked) == len(unmarked)
    changed = [(a, b, tb) for (a, _), (b, tb) in zip(marked, unmarked, strict=True) if a != b]
    assert changed
    for a, b, tb in changed:
        assert b["kind"] == "http_probe" and b["target"]["host"].startswith("www.")
        assert a["connect_ms"] < b["connect_ms"]  # Tokyo, not the Seoul edge
        if tb["label"] == "injection":
            continue  # the box on the path forges the answer; its SYN-ACK is the fallback's
        assert tb["klass"] == "origin_failover" and a["status"] == b["status"]
        if b["status"] is not None:
            assert a["server_header"] == "cloudflare" and "cf-ray" in a["header_names"]
            assert b["server_header"] == "openresty" and "cf-ray" not in b["header_names"]
            assert b["ttfb_ms"] > b["connect_ms"]
        if b["ttl"]:
            assert b["ttl"]["syn_ack"] == a["ttl"]["syn_ack"] - 4
            assert b["ttl"]["response"] - b["ttl"]["syn_ack"] == -1
    ws = [t for _, t in unmarked if t["klass"] == "origin_outage"]
    assert ws  # the host that did not fail over keeps the CDN's error


def test_unmarked_outages_drawn_from_a_stream_of_their_own() -> None:
    drawn = [p for p in DRAWN if p.failovers]
    assert len(drawn) > 30 and any(not p.failovers and p.outages for p in DRAWN)
    for p in drawn:
        assert all(0 <= f.outage < len(p.outages) for f in p.failovers) and 0 < p.unmarked_share <= 1
        assert WorldParams.from_json(p.to_json()) == p
    with pytest.raises(ValueError, match="failover"):
        replace(fixed_params(), failovers=(Failover(0, ("www",), "nginx", "kr-sel-1", 0, 0, 1.0),)).validate()


def test_injectors_forge_their_own_answer_and_ttl() -> None:
    inj = InjectorParams("SKB", 2, (80,), tuple(range(24)), 1.0, "redirect", 3, 1.0)
    forged = [(e, t) for e, t in _events(replace(fixed_params(), injectors=(inj,)))
              if t["label"] == "injection"]
    assert forged
    for e, _ in forged:
        assert e["target"]["port"] == 80 and e["status"] in (302, None)
        assert "cf-ray" not in (e["header_names"] or [])
        if e["ttl"]:
            assert e["ttl"]["response"] - e["ttl"]["syn_ack"] == 3
    world = World(world_spec(4, 300, 6.0, replace(fixed_params(), injectors=(inj,))))
    cells = [r for r in world.header_truth() if r["type"] == "cell"]
    assert [(c["asn"], c["ports"], c["answer"], c["ttl_delta"]) for c in cells] == [
        (9318, [80], "redirect", 3)]


@pytest.mark.parametrize("family", FARM_FAMILIES)
def test_farm_name_families(family: str) -> None:
    import random

    names, template = farm_family_names(random.Random(family), family, "goldbot", 12)
    assert len(set(names)) == 12
    assert (template is None) == (family == "none")
    if family == "hangul":
        assert all(any("\uac00" <= c <= "\ud7a3" for c in n) for n in names)
    if family in ("serial_end", "serial_start", "separator", "serial_middle", "unpadded"):
        assert all("goldbot" in n for n in names)


def test_evaluate_worlds_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--worlds", "2", "--seed", "5", "--accounts", "300", "--hours", "3",
                 "--jobs", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    worlds = result["worlds"]
    assert [w["seed"] for w in worlds] == [5, 6] and worlds[0]["params"] != worlds[1]["params"]
    for name, d in result["pooled"]["detectors"].items():
        assert d["tp"] == sum(w["metrics"]["detectors"][name]["tp"] for w in worlds)
        assert set(d) >= {"precision", "recall"}
    vals = [w["metrics"]["detectors"]["vpn_relay"]["recall"] for w in worlds]
    worst = result["worst"]["detectors"]["vpn_relay"]["recall"]
    assert worst["value"] == min(v for v in vals if v is not None)
    assert "fpr" in result["pooled"]["fpr"]["normal"]["vpn_relay"]
    # time to detect, pooled and broken down by name family and by pacing band
    fg = result["pooled"]["farm_groups"]
    ttds = sorted(x for w in worlds for x in w["metrics"]["farm_groups"]["ttd_from_fifth_login_s"])
    assert fg["ttd_from_fifth_login_s"] == ttds
    for by in ("family", "pacing", "exit"):
        table = fg["ttd_by"][by]
        assert sorted(x for v in table.values() for x in v) == ttds
        assert by != "exit" or set(table) <= {"residential", "hosting"}
        for key, v in table.items():
            row = fg["ttd_table"][f"{by} {key}"]
            assert (row["groups"], row["max_s"], row["late"]) == (len(v), max(v),
                                                                 sum(x > 0 for x in v))
    text = render_worlds_markdown(result)
    assert all(f"| {k} |" in text for k in fg["ttd_table"])
    assert WorldParams.from_dict(worlds[0]["params"]) == world_spec(
        5, 300, 3.0, draw_params(5, 3.0)).params
