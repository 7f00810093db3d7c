"""A cold server's logins, and the sessions it app-probed, are judged again as its bounds
narrow.

A server heard from fewer than ``overhead_warmup`` exit prefixes judges an app figure
against the largest overhead its prior and its logins so far allow (:mod:`~pathsentry.
detectors.latency.prior`): its cost at most the second-lowest gap of its wired exits.
While one of its two lowest gaps is a relay's, that bound is loose, and a farm's app
probes from it show nothing; once honest lines bound the cost, the same probes prove a
relay leg, and the sessions are flagged late, naming their own logins.
"""

from __future__ import annotations

import json

import pytest

from pathsentry.detectors.base import Findings
from tests.detectors.test_latency import BUSAN, SEOUL, World, leg_ms, make_world

#: the cold server's fixed cost (ms): it answers off any game loop
COST = 5.0
#: the farm's client-relay leg (ms)
LEG = 25.0


def app(w: World, rtt: float, k: int = 3, tick: float = 0.0) -> list[float]:
    """``k`` app samples of a server (the cold one answers off any loop: no tick) over a
    ``rtt`` ms network path."""
    return [round(rtt + COST + w.rng.uniform(0.0, tick) + w.rng.expovariate(1 / 0.3), 3)
            for _ in range(k)]


@pytest.mark.parametrize("restart", [False, True])
def test_a_farm_probed_from_a_cold_server_is_flagged_once_honest_lines_bound_its_cost(
        restart: bool) -> None:
    """(``restart``: the detector is restored from a save between the probes and the
    honest lines: which sessions the cold server probed is rebuilt from the sessions.)"""
    w = make_world(seed=5)
    rtt = leg_ms(SEOUL, SEOUL) + 1.0
    # the cold server's first wired gaps: one honest line, one L4 relay (its TCP ends at
    # the exit): the relay's gap is the second-lowest, so it bounds the cost at ~28 ms
    w.login("first", "58.120.1.10", app(w, rtt), round(rtt + 0.2, 3))
    w.login("relayed", "45.64.1.20", app(w, 0.5 + 23.0), 0.5)
    # a farm logs into another server, whose 100 ms game loop hides the leg (no TCP RTT:
    # no gap), and is app-probed from the cold one
    farm: list[str] = []
    late = Findings()
    for i in range(6):
        ev, out = w.login(f"farm{i}", f"45.65.{20 + i}.7", app(w, 0.5 + LEG + leg_ms(SEOUL, BUSAN), 4, 100.0),
                          None,
                          session=f"farm-s{i}", server="kr-pus-1")
        farm.append(ev.event.event_id)
        found = w.probe(f"45.65.{20 + i}.7", f"farm-s{i}", "kr-sel-1", app(w, 0.5 + LEG))
        late.extend(out)
        late.extend(found)
    assert not [f for f in late.flags if f.event_id in farm]
    if restart:
        fresh = make_world(seed=5)
        fresh.det.load_state(json.loads(json.dumps(w.det.state())))
        w.det = fresh.det
    # honest lines from two more prefixes: the cost is now bounded near 5 ms
    for i in range(2):
        _, out = w.login(f"local{i}", f"58.120.{30 + i}.10", app(w, rtt), round(rtt + 0.2, 3))
        late.extend(out)
    flagged = {f.event_id: f for f in late.flags if f.kind == "vpn_relay"}
    assert set(farm) <= set(flagged), sorted(flagged)
    physics = flagged[farm[0]].evidence["physics"]
    assert physics["verdict"] == "detour"
    assert physics["measured_source"].startswith("app probe from kr-sel-1")
    probe = physics["app_probe"]
    # judged against the bound the honest lines set: the cost at most their gap + noise
    assert probe["basis"] == "prior" and probe["learned_cost_ms"] < 12.0
    # the leg less what the bound still leaves to the cost and the tick: a lower bound
    assert LEG / 2 < physics["excess_ms"] <= LEG
    assert not {"local0", "local1", "first"} & {f.account for f in late.flags}


def test_honest_sessions_probed_from_a_cold_server_stay_clean_as_it_warms() -> None:
    """Honest players probed from the cold server, then the server warms: nothing flagged."""
    w = make_world(seed=6)
    late = Findings()
    for i in range(40):
        rtt = leg_ms(SEOUL, SEOUL) + w.rng.uniform(1.0, 4.0)
        ip = f"58.120.{40 + i}.10"
        _, out = w.login(f"player{i}", ip, app(w, rtt + leg_ms(SEOUL, BUSAN), 4, 100.0), None,
                         session=f"p{i}", server="kr-pus-1")
        late.extend(out)
        late.extend(w.probe(ip, f"p{i}", "kr-sel-1", app(w, rtt)))
        _, out = w.login(f"local{i}", f"58.120.{100 + i}.10", app(w, rtt), round(rtt + 0.2, 3))
        late.extend(out)
    assert not late.flags, [f.reasons for f in late.flags]


def test_a_relay_whose_own_gap_bounded_the_cold_cost_is_flagged_once_honest_lines_do() -> None:
    """The relay's gap was the cold server's second-lowest: it bounded the cost at ~28 ms,
    so its own login looked consistent. Two honest lines later bound the cost near 5 ms:
    its gap and its app figure are judged again and prove the leg, late, by name."""
    w = make_world(seed=7)
    rtt = leg_ms(SEOUL, SEOUL) + 1.0
    w.login("first", "58.120.1.10", app(w, rtt), round(rtt + 0.2, 3))
    ev, out = w.login("relayed", "45.64.1.20", app(w, 0.5 + 23.0), 0.5)
    assert not out.flags and ev.notes["relay"]["gap_excess_ms"] < 0
    late = Findings()
    for i in range(2):
        _, found = w.login(f"local{i}", f"58.120.{30 + i}.10", app(w, rtt), round(rtt + 0.2, 3))
        late.extend(found)
    assert [f.event_id for f in late.flags] == [ev.event.event_id]
    gap = late.flags[0].evidence["gap"]
    assert gap["verdict"] == "relay" and gap["overhead"]["basis"] == "prior"
    assert gap["overhead"]["cost_ms"] < 12.0 and gap["excess_ms"] > 5.0
