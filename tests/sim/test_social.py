"""The simulator's social layer: labels, interactions, takeovers and their hard negatives."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from pathlib import Path

import orjson

from pathsentry.schemas import AccountLabel, Interaction, parse_feedback
from pathsentry.sim.evaluate import evaluate_world
from pathsentry.sim.params import draw_params
from pathsentry.sim.social import with_social
from pathsentry.sim.world import World, WorldSpec, write_world
from pathsentry.sim.worlds import world_spec


def _spec(seed: int = 3, social: bool = True) -> WorldSpec:
    params = draw_params(seed, 3.0)
    return world_spec(seed, 600, 3.0, with_social(params) if social else params)


def test_the_social_layer_is_deterministic_ordered_and_valid() -> None:
    spec = _spec()
    first = [orjson.dumps(s.event) for s in World(spec).stream()]
    assert first == [orjson.dumps(s.event) for s in World(spec).stream()]
    sims = list(World(spec).stream())
    assert all(a.event["ts"] <= b.event["ts"] for a, b in pairwise(sims))
    assert len({s.event["event_id"] for s in sims}) == len(sims)
    feedback = [parse_feedback(s.event) for s in sims
                if s.event["kind"] in ("account_label", "interaction")]
    labels = [f for f in feedback if isinstance(f, AccountLabel)]
    kinds = Counter(f.interaction for f in feedback if isinstance(f, Interaction))
    assert {lb.label for lb in labels} >= {"fraud", "farm", "takeover"}
    assert kinds["trade"] > 0 and kinds["party"] > 0
    world = World(spec)
    members = {m for g in world.plan.groups for m in g.members}
    farm_labels = [lb for lb in labels if lb.label == "farm"]
    assert farm_labels and {lb.account for lb in farm_labels} < members  # partial
    assert min(lb.ts.timestamp() * 1000 for lb in farm_labels) > spec.end_ms  # late
    plain = {s.event["kind"] for s in World(_spec(social=False)).stream()}
    assert not plain & {"account_label", "interaction"}


def test_takeover_logins_come_from_abroad_on_a_new_device() -> None:
    sims = list(World(_spec()).stream())
    devices: dict[str, set[str]] = {}
    for s in sims:
        ev = s.event
        if ev["kind"] != "login":
            continue
        if "account_takeover" in s.truth["expect"]:
            assert ev["client"]["device_id"] not in devices[ev["account"]]
        else:
            devices.setdefault(ev["account"], set()).add(ev["client"]["device_id"])
    planted = [s for s in sims if "account_takeover" in s.truth.get("expect", ())]
    assert len(planted) >= 4
    klasses = Counter(s.truth["klass"] for s in sims if s.event["kind"] == "login")
    assert all(klasses[k] for k in ("new_phone", "traveller", "family_pc", "takeover_victim"))


def test_the_takeover_detector_on_a_social_world(tmp_path: Path) -> None:
    write_world(_spec(seed=5), tmp_path)
    report = evaluate_world(tmp_path)
    d = report["detectors"]["account_takeover"]
    assert d["positives"] >= 4 and d["recall"] >= 0.9
    for klass in ("new_phone", "traveller", "family_pc", "takeover_victim"):
        assert d["fp_rate"][klass]["negatives"] > 0 and d["fp_rate"][klass]["flagged"] == 0
    cc = report["crosscheck"]["farm_group"]
    assert cc["alerts"] == cc["with_crosscheck"]



def test_a_traveller_plays_from_a_home_line_abroad_never_a_datacenter() -> None:
    """A traveller's line in Japan is a residential one (a draw that lands on a hosting
    range takes the next home line, without another draw): a datacenter address is no
    honest player's, and the relay detector rightly holds it to a datacenter's RTT."""
    abroad = 0
    for seed in range(1, 13):
        world = World(_spec(seed=seed))
        prefixes = {p.cidr: p for p in world.plan.net.prefixes}
        for s in world.stream():
            ev = s.event
            if ev["kind"] != "login" or s.truth.get("klass") != "traveller":
                continue
            p = prefixes[ev["src_ip"].rsplit(".", 1)[0] + ".0/24"]
            if p.country == "JP":
                abroad += 1
                assert p.kind == "residential", (seed, p.cidr, p.kind)
    assert abroad >= 12
