"""Relay detection on game servers that answer the application ping on their game loop.

Every app sample below is ``network RTT + cost + uniform(0, tick)`` (plus the access
line's jitter): the server's fixed processing cost and a random phase of its tick,
as real game servers answer pings. The detector has to learn each server's
overhead from the traffic; honest players must not look like relays whatever the
tick, and relays must still be caught.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from pathsentry.detectors.latency import LatencyDetector
from pathsentry.detectors.latency.baselines import Overhead
from tests.detectors.test_latency import SEOUL, SHANGHAI, TOKYO, World, leg_ms, make_world

#: where the network RTT of a Shanghai client behind a Seoul exit comes from
CLIENT_LEG_MS = leg_ms(SEOUL, SHANGHAI) + 3.0


@dataclass
class GameLoop:
    """A game server's ping path: a fixed cost and a tick (0: answered off the loop);
    ``overrun``: the share of pings answered one tick late (a loop overrunning its tick)."""

    cost: float
    tick: float
    overrun: float = 0.0

    def samples(self, w: World, rtt: float, k: int, jitter: float = 0.3,
                spike_p: float = 0.0) -> list[float]:
        out = []
        for _ in range(k):
            extra = w.rng.expovariate(1.0 / jitter) if jitter > 0 else 0.0
            if spike_p and w.rng.random() < spike_p:
                extra += w.rng.uniform(10.0, 60.0)
            late = self.tick if self.overrun and w.rng.random() < self.overrun else 0.0
            out.append(round(rtt + extra + self.cost + w.rng.uniform(0.0, self.tick) + late, 3))
        return out


def honest(w: World, loop: GameLoop, i: int, *, k: int | None = None, tcp: bool = True,
           mobile: bool = False, jitter: float = 0.3, spike_p: float = 0.0,
           server: str = "kr-sel-1", platform: str | None = None) -> tuple[bool, dict]:
    """One honest Seoul login from its own /24 (``i`` picks the line); returns
    (flagged, the relay note)."""
    rtt = (w.rng.uniform(15.0, 40.0) if mobile else w.rng.uniform(1.0, 5.0)) + leg_ms(SEOUL, SEOUL)
    ip = f"223.39.{i % 250}.{10 + i % 200}" if mobile else f"58.120.{i % 250}.{10 + i % 200}"
    app = loop.samples(w, rtt, k if k is not None else w.rng.randint(1, 10), jitter, spike_p)
    tcp_rtt = round(rtt + w.rng.expovariate(1.0 / max(jitter, 0.1)), 3) if tcp else None
    raw = w._base("login", ip, f"h{w.n + 1}", account=f"player{i}", server_id=server,
                  app_rtt_ms=app, tcp_rtt_ms=tcp_rtt)
    if platform is not None:
        raw["client"] = {"platform": platform}
    ev = w.enrich(raw)
    out = w.det.process(ev)
    return bool(out and out.flags), ev.notes["relay"]


def l4_relay(w: World, loop: GameLoop, exit_ip: str, k: int = 5, account: str = "xiaopai001",
             client_leg: float = CLIENT_LEG_MS):
    """A Shanghai client behind a Seoul L4 relay: TCP ends at the exit (0.5 ms away)."""
    tcp = 0.5
    return w.login(account, exit_ip, loop.samples(w, tcp + client_leg, k), tcp)


def early_pairs(w: World, cost: float, pairs: list[tuple[float, float]], net: str,
                server: str = "kr-pus-1") -> None:
    """Honest logins from their own lines of ``net`` (``a.b`` of ``a.b.i.x``), two app
    samples each: ``(first phase, spread)`` per login, a 3 ms line, none flagged."""
    rtt = 3.0 + leg_ms(SEOUL, SEOUL)
    for i, (first, spread) in enumerate(pairs):
        _, out = w.login(f"early{i}", f"{net}.{i}.77",
                         [round(rtt + cost + first + spread, 3), round(rtt + cost + first, 3)],
                         round(rtt + 0.2, 3), server=server)
        assert not out.flags


def phased_login(w: World, account: str, ip: str, cost: float, phases: tuple[float, ...],
                 server: str = "kr-pus-1") -> tuple[bool, dict]:
    """An honest login on a 3 ms line whose app samples came at ``phases`` of the loop:
    (flagged, its evidence)."""
    rtt = 3.0 + leg_ms(SEOUL, SEOUL)
    _, out = w.login(account, ip, [round(rtt + cost + p, 3) for p in phases],
                     round(rtt + 0.2, 3), server=server)
    sess = w.det.sessions.peek(f"s{w.n}")
    assert sess is not None
    return bool(out.flags), w.det._assess(sess).evidence


def warm(w: World, loop: GameLoop, n: int = 60, **kw: object) -> int:
    """``n`` honest logins; returns how many were flagged."""
    return sum(honest(w, loop, i, **kw)[0] for i in range(n))  # type: ignore[arg-type]


@pytest.mark.parametrize("tick", [0.0, 16.0, 33.0, 50.0, 100.0])
def test_game_loop_pings_are_not_relays_whatever_the_tick(tick: float) -> None:
    """The fixed 15 ms rule flagged honest players on any server with a tick >= 16 ms."""
    w = make_world(seed=int(tick) + 1)
    loop = GameLoop(cost=w.rng.uniform(0.0, 10.0), tick=tick)
    assert warm(w, loop, n=400) == 0
    _, note = honest(w, loop, 999, k=1)
    sess = w.det.sessions.peek(f"h{w.n}")
    assert sess is not None
    gap = w.det._assess(sess).evidence["gap"]
    learned = gap["overhead"]
    # the learned tick and cost are near the truth (jitter and few samples blur them)
    assert learned["tick_ms"] == pytest.approx(tick, abs=max(3.0, 0.25 * tick))
    assert learned["cost_ms"] == pytest.approx(loop.cost, abs=max(3.0, 0.15 * tick))
    assert gap["verdict"] == "consistent" and note["flagged"] is False


@pytest.mark.parametrize(("tick", "client_leg"), [(0.0, CLIENT_LEG_MS), (16.0, CLIENT_LEG_MS),
                                                  (50.0, 60.0)])
def test_l4_relay_is_caught_on_a_game_loop_server(tick: float, client_leg: float) -> None:
    """A relay leg must outgrow the phase the samples leave open: 20 ms shows on a
    16 ms tick, a 50 ms tick needs a longer leg (a client farther away)."""
    w = make_world(seed=11)
    loop = GameLoop(cost=6.0, tick=tick)
    assert warm(w, loop, n=80) == 0
    ev, out = l4_relay(w, loop, "45.65.1.20", k=8, client_leg=client_leg)
    assert [f.kind for f in out.flags] == ["vpn_relay"], ev.notes["relay"]
    gap = out.flags[0].evidence["gap"]
    assert gap["verdict"] == "relay"
    overhead = gap["overhead"]
    assert overhead["cost_ms"] == pytest.approx(6.0, abs=3.0)
    assert overhead["prefixes"] == 40 and overhead["honest_bound_ms"] < gap["gap_ms"]
    assert gap["excess_ms"] > 0 and gap["excess_km"] == round(gap["excess_ms"] * 100)
    assert gap["app_rtt_samples"] == 8
    assert "above the" in out.flags[0].reasons[0] and "learned cost" in out.flags[0].reasons[0]


def test_the_tick_ceiling_is_the_widest_tick_the_spreads_allow_and_comes_down_to_the_tick(
) -> None:
    """Eight two-sample spreads, most of them short: their median puts a 90 ms tick
    below the widest spread; the ceiling is above it, the more so the smaller
    ``tick_alpha``. Two hundred logins of three to eight samples later the median is
    within a tenth of the tick and the ceiling is no longer worked out."""
    import random

    o = Overhead("srv", window=40)
    for i, s in enumerate([4.0, 7.0, 10.0, 14.0, 19.0, 28.0, 40.0, 58.0]):
        o.update(f"p{i}", 20.0, 2, s, wired=True)
    assert o.tick() < 58.0 < o.ceiling(0.5, 200.0) < o.ceiling(0.2, 200.0)
    rng = random.Random(5)
    for i in range(200):
        phases = [rng.uniform(0.0, 90.0) for _ in range(rng.randint(3, 8))]
        o.update(f"q{i % 60}", 2.0 + min(phases), len(phases), max(phases) - min(phases),
                 wired=True)
    # sixteen wired spreads and more: the median holds, and the ceiling steps aside
    assert o.ceiling(0.5, 200.0) == 0.0 and abs(o.tick() - 90.0) < 9.0



def test_a_server_answering_off_its_loop_takes_no_tick_ceiling() -> None:
    """Spreads of line jitter (a server that answers off its loop): their median is no
    tick, and the widest of them would widen every bound of the server's logins and app
    probes by the line's worst jitter; the phase span stays the learned tick."""
    o = Overhead("off-loop", window=40)
    for i, s in enumerate([0.4, 0.9, 1.3, 2.0, 2.6, 3.1, 5.8, 0.7]):
        o.update(f"p{i}", 3.0, 4, s, wired=True)
    det = make_world(seed=2).det
    tick = o.tick()
    assert det.loop_span(o, tick, 1.0) == tick < 5.8 <= o.ceiling(det.tick_alpha, 200.0)


def test_a_loop_that_overruns_its_tick_is_no_relay_and_relays_still_show() -> None:
    """A server answering one ping in ten a tick late (its loop overrunning under load),
    beside one whose loop keeps its tick: a login whose slowest sample came a loop late
    is honest, though it stands more than one tick above the network RTT. The wired
    logins' spreads reach past the tick, and that server's bounds take the reach (the
    expected gap keeps the tick); a relay's leg still shows."""
    w = make_world(seed=17)
    assert warm(w, GameLoop(cost=2.0, tick=30.0), n=300) == 0  # the access kind's spikes
    loop = GameLoop(cost=3.0, tick=80.0, overrun=0.1)
    assert sum(honest(w, loop, 400 + i, server="kr-pus-1")[0] for i in range(400)) == 0
    sess = w.det.sessions.peek(f"h{w.n}")
    assert sess is not None
    gap = w.det._assess(sess).evidence["gap"]
    assert 60.0 < gap["overhead"]["tick_ms"] < 100.0  # (the late answers lift its median)
    assert gap["overhead"]["loop_reach_ms"] > gap["overhead"]["tick_ms"] + 20.0
    late = GameLoop(cost=3.0, tick=80.0, overrun=0.5)  # a loop under heavier load
    assert sum(honest(w, late, 900 + i, k=2, server="kr-pus-1")[0] for i in range(100)) == 0
    rtt = 0.5 + CLIENT_LEG_MS  # an L3 tunnel from Shanghai: physics
    _, out = w.login("wanderer", "45.65.2.31", loop.samples(w, rtt, 4), round(rtt + 0.2, 3),
                     server="kr-pus-1")
    assert out.flags and out.flags[0].evidence["physics"]["verdict"] == "detour"


def test_a_just_warm_server_whose_first_spreads_ran_short_holds_logins_to_its_tick_ceiling(
) -> None:
    """A server on a 90 ms tick whose first eight lines logged in with two app samples
    each: the median of their spreads (and of the next login's) puts the tick near half
    of what it is, and none of them stands past it by the noise. An honest login whose
    three samples all came late in the tick then stands past ``cost + median tick``
    (flagged as a relay when the bounds took the median); the bound takes the largest
    tick those spreads do not rule out (the ceiling) and the login is no relay. As the
    server's logins grow, the median comes to the tick, the ceiling steps aside and a
    relay's leg shows."""
    w = make_world(seed=23)
    assert warm(w, GameLoop(cost=2.0, tick=30.0), n=300) == 0  # the access kind's spikes
    cost, tick = 2.0, 90.0
    early_pairs(w, cost, [(25.0, 4.0), (35.0, 7.0), (18.0, 10.0), (40.0, 14.0),
                          (22.0, 19.0), (30.0, 28.0), (15.0, 40.0), (28.0, 58.0)], "61.72")
    flagged, ev = phased_login(w, "nightowl", "61.72.40.77", cost, (76.0, 83.0, 89.0))
    gap = ev["gap"]
    assert gap["overhead"]["tick_ms"] < 60.0  # the median of the short spreads
    # the span the bounds take: the ceiling, or the reach once the widest spreads stand
    # past the short median (both about the widest spread here)
    overhead = gap["overhead"]
    assert max(overhead.get("tick_ceiling_ms", 0.0), overhead.get("loop_reach_ms", 0.0)) > 56.0
    assert not flagged
    loop = GameLoop(cost=cost, tick=tick)
    assert sum(honest(w, loop, 500 + i, k=w.rng.randint(3, 8), server="kr-pus-1")[0]
               for i in range(200)) == 0
    o = w.det.overhead.get("kr-pus-1")
    assert o is not None and o.ceiling(w.det.tick_alpha, 200.0) == 0.0
    assert abs(o.tick() - tick) < 0.1 * tick
    _, out = l4_relay(w, loop, "45.65.9.20", k=8, client_leg=60.0)
    assert out.flags


def test_l3_vpn_is_caught_by_physics_on_a_long_tick_server() -> None:
    """Every layer goes through the tunnel: the TCP RTT itself breaks physics."""
    w = make_world(seed=12)
    loop = GameLoop(cost=4.0, tick=50.0)
    assert warm(w, loop, n=60) == 0
    rtt = 0.5 + CLIENT_LEG_MS
    ev, out = w.login("wanderer", "45.65.2.30", loop.samples(w, rtt, 3), round(rtt + 0.2, 3))
    assert out.flags, ev.notes["relay"]
    phys = out.flags[0].evidence["physics"]
    assert phys["verdict"] == "detour" and phys["measured_source"].startswith("tcp_rtt")
    assert phys["excess_km"] > 1000


def test_missing_tcp_rtt_compares_the_app_figure_less_the_learned_overhead() -> None:
    w = make_world(seed=13)
    loop = GameLoop(cost=5.0, tick=20.0)
    assert warm(w, loop, n=60) == 0
    assert warm(w, loop, n=200, tcp=False) == 0  # honest players without a TCP RTT
    rtt = 0.5 + CLIENT_LEG_MS
    ev, out = w.login("tunnel", "45.65.3.30", loop.samples(w, rtt, 6), None)
    assert out.flags, ev.notes["relay"]
    ev_ = out.flags[0].evidence
    assert ev_["gap"]["verdict"].startswith("no tcp_rtt")
    # an app figure less the learned overhead: the fastest sample less the cost and the
    # phase, or the slowest less the cost and one whole tick, whichever proves more
    assert ev_["physics"]["measured_source"] in ("app_rtt less learned overhead",
                                                 "slowest app sample less cost and one tick")
    assert ev_["physics"]["measured_ms"] < min(ev.event.app_rtt_ms) - 5.0  # cost + phase off


def test_cold_server_judges_the_gap_against_the_prior_and_says_so() -> None:
    """Five logins do not teach a 60 ms tick: the gap is judged against the largest
    overhead still possible, which a 20 ms leg on two samples does not exceed."""
    w = make_world(seed=14)
    loop = GameLoop(cost=8.0, tick=60.0)
    # a game loop answering 0.5-68 ms late looks like an L4 relay to a fixed rule
    assert warm(w, loop, n=5) == 0
    ev, out = l4_relay(w, loop, "45.65.4.20", k=2, client_leg=20.0)
    assert not out.flags
    sess = w.det.sessions.peek(ev.event.session_id or "")
    assert sess is not None
    evidence = w.det._assess(sess).evidence
    gap = evidence["gap"]
    assert gap["overhead"]["basis"] == "prior" and "cold server" in gap["overhead"]["cold"]
    # the bound holds for the true overhead: at least the real cost and tick
    assert gap["overhead"]["cost_ms"] >= 8.0 and gap["overhead"]["tick_ms"] >= 60.0
    assert gap["verdict"] != "relay" and ev.notes["relay"]["gap_excess_ms"] < 0
    # other evidence still counts on a cold server: an L3 tunnel from Shanghai breaks physics
    rtt = 0.5 + CLIENT_LEG_MS
    _, out = w.login("wanderer", "45.65.4.30", loop.samples(w, rtt, 2), round(rtt + 0.2, 3))
    assert out.flags and out.flags[0].evidence["physics"]["verdict"] == "detour"


def test_patch_day_overhead_drift_is_absorbed() -> None:
    """A patch moves the server's cost from 2 to 14 ms: honest logins are flagged only
    while the window's median moves (about half the window: 20 logins from distinct
    prefixes), then go on unflagged, and relays are still caught after it."""
    w = make_world(seed=15)
    before, after = GameLoop(cost=2.0, tick=0.0), GameLoop(cost=14.0, tick=0.0)
    assert warm(w, before, n=200) == 0
    flagged = sum(honest(w, after, 300 + i)[0] for i in range(300))
    assert flagged <= 25
    assert sum(honest(w, after, 700 + i)[0] for i in range(200)) == 0
    _, out = l4_relay(w, after, "45.65.5.20", k=4)
    assert out.flags and out.flags[0].evidence["gap"]["overhead"]["cost_ms"] == pytest.approx(14.0, abs=2.0)


def test_mobile_jitter_on_a_game_loop_is_not_a_relay() -> None:
    w = make_world(seed=16)
    loop = GameLoop(cost=3.0, tick=33.0)
    assert warm(w, loop, n=80) == 0
    assert warm(w, loop, n=400, mobile=True, jitter=4.0, spike_p=0.12) == 0


def test_farm_behind_one_prefix_cannot_teach_the_overhead_and_piles_up_evidence() -> None:
    """On a 100 ms tick one login's 25 ms relay leg hides in the phase; 30 logins
    through the same exit /24 do not, and they are one vote in the server's overhead."""
    w = make_world(seed=17)
    loop = GameLoop(cost=5.0, tick=100.0)
    assert warm(w, loop, n=120) == 0
    cost = w.det.overhead.get("kr-sel-1").cost()  # type: ignore[union-attr]
    flags = []
    events: list[str] = []
    late: set[str] = set()
    for i in range(30):
        ev, out = l4_relay(w, loop, f"45.65.6.{10 + i}", k=w.rng.randint(3, 8),
                           account=f"farm{i:03d}", client_leg=25.0)
        events.append(ev.event.event_id)
        flags.append(any(f.event_id == ev.event.event_id for f in out.flags))
        late |= {f.event_id for f in out.flags if f.event_id != ev.event.event_id}
    assert sum(flags[:3]) == 0 and sum(flags[-10:]) >= 9, flags
    # the first logins through the exit came before the evidence: flagged late, by name
    assert set(events[:3]) <= late
    last = next(f for f in out.flags if f.event_id == events[-1])
    assert "prefix_gap" in last.evidence["components"]
    exit_ = last.evidence["exit_prefix"]
    assert exit_["verdict"] == "relay exit" and exit_["gap_z"] >= exit_["gap_z_ramp"][0]
    assert any("standard errors slower" in r for r in last.reasons)
    assert w.det.overhead.get("kr-sel-1").cost() == pytest.approx(cost, abs=2.0)  # type: ignore[union-attr]
    # a PC bang: 40 honest players behind one /24 on the same server stay clean
    rtt = leg_ms(SEOUL, SEOUL) + 1.0
    for i in range(40):
        app = loop.samples(w, rtt, w.rng.randint(1, 10))
        _, out = w.login(f"bang{i}", "58.121.9.7", app, round(rtt + 0.2, 3))
        assert not out.flags, out.flags[0].reasons


def test_an_exit_proven_by_its_tunnels_lends_evidence_to_its_other_logins() -> None:
    """Three accounts tunnel from Shanghai through one VPS /24 (their TCP RTT breaks
    physics); a fourth relays through the same /24 with a leg the 100 ms tick hides."""
    w = make_world(seed=21)
    loop = GameLoop(cost=5.0, tick=100.0)
    assert warm(w, loop, n=60) == 0
    rtt = 0.5 + CLIENT_LEG_MS
    for i in range(3):
        _, out = w.login(f"tunnel{i}", f"45.65.8.{20 + i}", loop.samples(w, rtt, 2),
                         round(rtt + 0.2, 3))
        assert out.flags and out.flags[0].evidence["physics"]["verdict"] == "detour"
    ev, out = l4_relay(w, loop, "45.65.8.40", k=2, account="quiet", client_leg=15.0)
    flag = next(f for f in out.flags if f.event_id == ev.event.event_id)
    assert "prefix_relays" in flag.evidence["components"]
    assert flag.evidence["exit_prefix"]["proven_relay_accounts"] == 3
    assert any("proven relayed" in r for r in flag.reasons)
    # one proven account does not make an exit of a shared prefix
    _, out = w.login("tunnel9", "45.65.9.20", loop.samples(w, rtt, 2), round(rtt + 0.2, 3))
    assert out.flags
    ev, out = l4_relay(w, loop, "45.65.9.40", k=2, account="quiet2", client_leg=15.0)
    sess = w.det.sessions.peek(ev.event.session_id or "")
    assert sess is not None and w.det.prefix_relays(sess) == (0.0, 1, 1)


def test_overhead_is_learned_per_platform_when_logins_name_one() -> None:
    w = make_world(seed=18)
    pc, console = GameLoop(cost=2.0, tick=0.0), GameLoop(cost=9.0, tick=50.0)
    for i in range(60):
        assert not honest(w, pc, i, platform="pc")[0]
        assert not honest(w, console, 100 + i, platform="console")[0]
    assert w.det.overhead.get("kr-sel-1|pc").tick() < 3.0  # type: ignore[union-attr]
    assert w.det.overhead.get("kr-sel-1|console").tick() == pytest.approx(50.0, abs=12.0)  # type: ignore[union-attr]
    # the optional contract fields are in the exported JSON Schema
    from pathsentry.commands.core import json_schemas

    client = json_schemas()["login.schema.json"]["$defs"]["ClientInfo"]["properties"]
    assert {"platform", "build"} <= set(client)


def test_learned_overhead_survives_a_snapshot_and_a_new_worker() -> None:
    w = make_world(seed=19)
    loop = GameLoop(cost=7.0, tick=40.0)
    warm(w, loop, n=60)
    snap = json.loads(json.dumps(w.det.state()))
    learned = json.loads(json.dumps(w.det.learned_state()))
    for load in ("load_state", "load_learned"):
        other = make_world(seed=19)
        getattr(other.det, load)(snap if load == "load_state" else learned)
        o, p = other.det.overhead.get("kr-sel-1"), w.det.overhead.get("kr-sel-1")
        assert o is not None and p is not None
        assert (o.cost(), o.tick(), o.sources()) == (p.cost(), p.tick(), p.sources())


def test_app_probes_from_the_login_server_tighten_the_phase_bound() -> None:
    """One login sample on a 60 ms tick hides a 35 ms leg (neither the fastest nor the
    slowest sample bounds it); ten more app probes from the login server in the same
    session do not."""
    w = make_world(seed=20)
    loop = GameLoop(cost=4.0, tick=60.0)
    assert warm(w, loop, n=100) == 0
    ev, out = l4_relay(w, loop, "45.65.7.20", k=1, client_leg=35.0)
    sid = ev.event.session_id or ""
    late = w.probe("45.65.7.20", sid, "kr-sel-1", loop.samples(w, 35.5, 10))
    assert not out.flags and late.flags
    gap = late.flags[0].evidence["gap"]
    assert gap["app_rtt_samples"] == 11 and gap["verdict"] == "relay"


def test_registration_and_public_imports_still_work() -> None:
    from pathsentry.detectors import registered
    from pathsentry.detectors.latency import AlertBook, Baseline, BoundedLRU, feasible_region

    assert registered()["latency"] is LatencyDetector
    assert callable(feasible_region) and AlertBook and Baseline and BoundedLRU
    assert TOKYO  # the shared geometry of the relay tests


def test_a_loop_answering_a_loop_late_allows_its_slowest_answer_two_ticks() -> None:
    """A server just warm whose loop overruns its tick: one of its first twelve logins
    had an answer a loop late, so its spreads reach past the median tick (the bounds
    take the reach). A spread runs from the fastest answer, whose own phase may take up
    to a tick: an honest login whose slowest answer came almost two ticks out is no
    detour by "slowest app sample less cost and one loop" (the reach alone took it for
    one of about 5,000 km)."""
    w = make_world(seed=29)
    assert warm(w, GameLoop(cost=2.0, tick=30.0), n=300) == 0  # the access kind's spikes
    firsts = [20.0, 35.0, 10.0, 45.0, 25.0, 30.0, 15.0, 40.0, 5.0, 12.0, 50.0, 22.0]
    spreads = [10.0, 15.0, 20.0, 22.0, 24.0, 25.0, 28.0, 35.0, 40.0, 100.0, 18.0, 30.0]
    early_pairs(w, 3.0, list(zip(firsts, spreads, strict=True)), "58.120")
    flagged, ev = phased_login(w, "overrun", "58.120.40.77", 3.0, (10.0, 30.0, 165.0))
    assert ev["gap"]["overhead"]["loop_reach_ms"] > ev["gap"]["overhead"]["tick_ms"]
    assert not flagged, ev["physics"]


def test_a_home_line_that_also_carries_a_proxy_keeps_its_own_logins_clean() -> None:
    """Three accounts tunnel from southern China through one Seoul home line (a
    household's address lent to a proxy service: their TCP RTT, 60 ms, breaks physics
    past a home line's tolerance), which makes it a
    relay exit; the household's own logins on that line, a few ms from the server, no
    TCP RTT, leave no room for a leg behind the exit and stay unflagged, with the exit's
    verdict and the figures beside it; a quiet relay through the same address is still
    flagged by the exit's evidence."""
    w = make_world(seed=23)
    loop = GameLoop(cost=5.0, tick=0.0)
    assert warm(w, loop, n=60) == 0
    home = "58.120.77.30"
    rtt = 60.5
    for i in range(3):
        _, out = w.login(f"tunnel{i}", home, loop.samples(w, rtt, 2), round(rtt + 0.2, 3))
        assert out.flags and out.flags[0].evidence["physics"]["verdict"] == "detour"
    near = leg_ms(SEOUL, SEOUL) + 1.0
    for _ in range(3):
        ev, out = w.login("household", home, loop.samples(w, near, 3), None)
        assert not any(f.event_id == ev.event.event_id for f in out.flags)
    sess = w.det.sessions.peek(ev.event.session_id or "")
    assert sess is not None and w.det.prefix_relays(sess)[1] == 3
    exit_ = w.det._assess(sess).evidence["exit_prefix"]
    assert exit_["verdict"].startswith("a relay exit's other logins, not this one")
    figures = exit_["login_at_claim"]
    assert figures["network_rtt_at_most_ms"] <= figures["expected_at_claim_ms"]
    assert figures["learned_cost_ms"] == pytest.approx(loop.cost, abs=1.5)
    ev, out = l4_relay(w, loop, home, k=2, account="quiet", client_leg=15.0)
    flag = next(f for f in out.flags if f.event_id == ev.event.event_id)
    assert "prefix_relays" in flag.evidence["components"]
    assert flag.evidence["exit_prefix"]["verdict"] == "relay exit"
