"""Relay detection while a game server's overhead is still cold (fewer than
``overhead_warmup`` exit prefixes heard from): small worlds, new servers, first hours.

The gap is judged against the largest overhead the documented prior and the server's
logins so far allow (:mod:`pathsentry.detectors.latency.prior`): a relay leg beyond it
is flagged at once, and honest players on slow, jittery or mobile lines are not,
whatever cost and tick (inside the prior) the server really has.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pathsentry.detectors.latency.prior import COST_RANK, tick_upper
from pathsentry.sim.evaluate import evaluate_world
from pathsentry.sim.params import draw_params
from pathsentry.sim.world import write_world
from pathsentry.sim.worlds import world_spec
from tests.detectors.test_latency import GANGWON, SEOUL, SHANGHAI, World, leg_ms, make_world
from tests.detectors.test_latency_calibration import GameLoop
from tests.detectors.test_latency_vantages import Servers, relay, warm_vantage
from tests.detectors.test_latency_vantages import honest as honest_session

#: a Shanghai client's leg to a Seoul exit (the relay leg an L4 relay hides from TCP)
SHANGHAI_LEG_MS = leg_ms(SEOUL, SHANGHAI) + 3.0


def wired(w: World, loop: GameLoop, i: int, *, k: int = 4, server: str = "kr-sel-1") -> bool:
    """One honest Seoul fibre login from its own /24; returns whether it was flagged."""
    rtt = leg_ms(SEOUL, SEOUL) + w.rng.uniform(1.0, 4.0)
    app = loop.samples(w, rtt, k)
    _, out = w.login(f"home{i}", f"58.120.{i}.{10 + i}", app,
                     round(rtt + w.rng.expovariate(1.0 / 0.3), 3), server=server)
    return bool(out.flags)


def farm(w: World, loop: GameLoop, n: int, *, k: int = 5, server: str = "kr-sel-1") -> list[bool]:
    """``n`` logins of Shanghai farm accounts through one Seoul L4 relay (TCP ends at
    the exit, 0.5 ms from the server); whether each was flagged."""
    out = []
    for i in range(n):
        tcp = 0.5
        app = loop.samples(w, tcp + SHANGHAI_LEG_MS, k)
        ev, found = w.login(f"farm{i:03d}", f"45.65.9.{20 + i}", app, tcp, server=server)
        out.append(bool(found.flags))
        if found.flags:
            gap = found.flags[0].evidence["gap"]
            assert gap["verdict"] == "relay" and gap["overhead"]["basis"] == "prior"
            assert gap["overhead"]["prefixes"] < w.det.overhead_warmup
            assert "cold server" in found.flags[0].reasons[0], found.flags[0].reasons
            assert ev.notes["relay"]["flagged"] is True
    return out


@pytest.mark.parametrize("cost", [0.0, 4.0, 9.0])
def test_l4_farm_on_a_cold_loopless_server_is_flagged_at_once(cost: float) -> None:
    """Three honest logins, then a farm behind a Seoul L4 relay on a server without a
    game loop: a 20 ms leg is four times what any overhead its logins allow explains.
    (Before, a server with gaps from fewer than 8 prefixes gave no gap verdict.)"""
    w = make_world(seed=int(cost) + 70)
    loop = GameLoop(cost=cost, tick=0.0)
    assert sum(wired(w, loop, i) for i in range(3)) == 0
    flagged = farm(w, loop, 5)
    assert all(flagged), flagged
    o = w.det.overhead.get("kr-sel-1")
    assert o is not None and o.sources() < w.det.overhead_warmup  # still cold throughout


def test_a_cold_bound_holds_for_the_true_overhead() -> None:
    """The bound is never below the server's real cost and tick: on a 40 ms tick the
    few logins so far cannot rule a 40 ms tick out, so a leg inside it is not flagged."""
    w = make_world(seed=75)
    loop = GameLoop(cost=6.0, tick=40.0)
    assert sum(wired(w, loop, i, k=3) for i in range(4)) == 0
    o = w.det.overhead.get("kr-sel-1")
    assert o is not None
    cost, tick = o.prior_bounds(30.0, 200.0, 0.001, 0.0)
    assert cost >= 6.0 and tick >= 40.0
    _, out = w.login("near", "45.65.9.99", loop.samples(w, 0.5 + 8.0, 3), 0.5)
    assert not out.flags


def test_only_relays_so_far_bound_the_cost_by_their_own_gaps() -> None:
    """A server whose first logins are all one farm's: the second-lowest relayed gap
    bounds the cost (a relay only adds to a gap), so the farm members with the
    shortest legs are not flagged, and one from much farther away is."""
    w = make_world(seed=76)
    loop = GameLoop(cost=3.0, tick=0.0)
    flagged = farm(w, loop, 4)
    assert not any(flagged)
    far = 0.5 + SHANGHAI_LEG_MS + 40.0
    _, out = w.login("farfarm", "45.65.8.20", loop.samples(w, far, 5), 0.5)
    assert out.flags and out.flags[0].evidence["gap"]["overhead"]["basis"] == "prior"
    assert COST_RANK == 2


def honest_mix(w: World, loop: GameLoop, i: int, server: str) -> bool:
    """One honest login of a hard-negative kind: rural DSL (slow, jittery), LTE (radio
    spikes in app samples and in the TCP RTT), or a wired line whose one TCP RTT came
    out high (its gap lower than the cost: a vote that must not bound the cost alone)."""
    r = w.rng
    what = i % 4
    k = r.randint(1, 10)
    if what == 0:  # rural DSL in Gangwon
        rtt = leg_ms(SEOUL, GANGWON) + r.uniform(11.0, 18.0)
        app = loop.samples(w, rtt, k, jitter=3.0)
        tcp = rtt + r.expovariate(1.0 / 3.0)
        ip = f"121.180.5.{10 + i}"
    elif what == 1:  # LTE
        rtt = leg_ms(SEOUL, SEOUL) + r.uniform(15.0, 45.0)
        app = loop.samples(w, rtt, k, jitter=4.0, spike_p=0.12)
        tcp = rtt + r.expovariate(1.0 / 4.0) + (r.uniform(12.0, 60.0) if r.random() < 0.12 else 0.0)
        ip = f"223.39.{i % 250}.{10 + i % 200}"
    elif what == 2:  # a jittery cable line
        rtt = leg_ms(SEOUL, SEOUL) + r.uniform(3.0, 12.0)
        app = loop.samples(w, rtt, k, jitter=2.0)
        tcp = rtt + r.expovariate(1.0 / 2.0)
        ip = f"58.120.{i % 250}.{10 + i % 200}"
    else:  # fibre whose kernel TCP RTT spiked
        rtt = leg_ms(SEOUL, SEOUL) + r.uniform(1.0, 4.0)
        app = loop.samples(w, rtt, k, jitter=0.3)
        tcp = rtt + r.uniform(5.0, 25.0)
        ip = f"58.120.{(i + 100) % 250}.{10 + i % 200}"
    _, out = w.login(f"p{i}", ip, app, round(tcp, 3), server=server)
    return bool(out.flags)


@pytest.mark.parametrize("seed", range(12))
def test_honest_hard_negatives_are_not_flagged_while_cold(seed: int) -> None:
    """Fresh servers with any cost and tick inside the prior (0-25 ms, no loop or an
    8-150 ms tick), each heard from by seven honest LTE, rural DSL, jittery cable and
    TCP-spiking fibre logins of 1-10 samples: nothing is flagged while the servers are
    cold."""
    w = make_world(seed=900 + seed)
    rng = random.Random(seed)
    for server in ("kr-sel-1", "kr-pus-1", "jp-tyo-1"):
        tick = 0.0 if rng.random() < 0.3 else rng.uniform(8.0, 150.0)
        loop = GameLoop(cost=rng.uniform(0.0, 25.0), tick=tick)
        flagged = [honest_mix(w, loop, 10 * seed + i, server) for i in range(7)]
        assert not any(flagged), (server, loop, flagged)
        o = w.det.overhead.get(server)
        assert o is None or o.sources() < w.det.overhead_warmup


def test_tick_bound_narrows_with_spreads_and_widens_with_jitter() -> None:
    rng = random.Random(3)
    spreads = []
    for _ in range(20):
        phases = [rng.uniform(0.0, 30.0) for _ in range(5)]
        spreads.append((5, max(phases) - min(phases)))
    few = tick_upper(spreads[:3], 0.001, 200.0)
    many = tick_upper(spreads, 0.001, 200.0)
    assert 30.0 <= many < few <= 200.0
    jittery = tick_upper([(k, s + 5.0) for k, s in spreads], 0.001, 200.0)
    assert jittery > many  # jitter only widens spreads: the bound only loosens


def test_small_cold_world_farm_on_a_loopless_server(tmp_path: Path) -> None:
    """Simulated world 720 at 300 accounts and 4 h: an L4 farm logs into a server that
    answers pings off its loop and never hears from 8 exit prefixes. Its members were
    missed for want of a learned overhead; now the relay leg shows against the prior,
    and no honest login is flagged."""
    spec = world_spec(720, 300, 4.0, draw_params(720, 4.0))
    write_world(spec, tmp_path)
    report = evaluate_world(tmp_path, tmp_path)
    relay = report["detectors"]["vpn_relay"]
    assert relay["fp"] == 0
    assert relay["by_class"]["farm_serial"]["found"] >= 5, relay["by_class"]


def test_a_cold_vantage_shows_a_leg_against_its_prior() -> None:
    """The login server's 100 ms tick hides a Shanghai client's leg; the Busan vantage
    answers off its loop and has heard from three honest players only. Its app probe,
    less the largest cost and tick its prior and those logins allow, still shows the
    leg; honest players probed from it stay clean."""

    w = make_world(seed=77)
    s = Servers(GameLoop(cost=5.0, tick=100.0), GameLoop(cost=3.0, tick=0.0))
    warm_vantage(w, s, n=3)
    assert sum(honest_session(w, s, i) for i in range(3)) == 0
    o = w.det.overhead.get("kr-pus-1")
    assert o is not None and o.sources() < w.det.overhead_warmup
    eid, _, flags = relay(w, s, "45.65.20.20", "xiaopai001")
    assert [f.event_id for f in flags] == [eid]
    phys = flags[0].evidence["physics"]
    assert phys["measured_source"] == ("app probe from kr-pus-1 less the largest overhead "
                                       "the cold prior allows")
    assert phys["app_probe"]["basis"] == "prior" and phys["verdict"] == "detour"


def test_a_radio_tcp_rtt_spiking_past_every_app_sample_is_no_detour_while_cold() -> None:
    """A mobile login on a cold server whose one kernel TCP RTT (146 ms) came in a radio
    spike, twice its fastest app sample (71 ms): the network RTT physics may judge is at
    most the app minimum itself (the phase and the cost are never negative, whatever the
    server's cost turns out to be), not the spike's 11,000 km of detour."""
    w = make_world(seed=41)
    loop = GameLoop(cost=6.0, tick=40.0)
    assert sum(wired(w, loop, i) for i in range(3)) == 0  # cold: 3 prefixes
    rtt = 25.0
    app = [round(rtt + loop.cost + 40.0 + p, 3) for p in (0.0, 18.0, 35.0, 60.0)]
    _, out = w.login("commuter", "223.39.9.10", app, 146.0)
    assert not out.flags
    sess = w.det.sessions.peek(f"s{w.n}")
    assert sess is not None and sess.geo.kind == "mobile"
    physics = w.det._assess(sess).evidence["physics"]
    assert physics["measured_ms"] <= min(app) + 15.0
    assert physics["verdict"] != "detour"
