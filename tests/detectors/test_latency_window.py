"""The game loop's window: an honest client's app samples all land within one tick
(plus the fixed cost) of its network round trip, so the slowest sample less the
cost and one whole tick bounds the network RTT from below. A relay leg that hides
in the phase of the fastest sample still shows in the slowest. Hard negatives:
honest logins with many samples on long ticks, without a TCP RTT, on mobile lines
with spikes, a patch that doubles the tick, and a cold server.
"""

from __future__ import annotations

import pytest

from pathsentry.detectors.base import Findings
from pathsentry.detectors.latency.baselines import Overhead, spread_median
from tests.detectors.test_latency import World, make_world
from tests.detectors.test_latency_calibration import GameLoop, honest, l4_relay, warm

SLOWEST = "slowest app sample less cost and one tick"
SECOND_SLOWEST = "second-slowest app sample less cost and one tick"


def test_spread_votes_are_median_unbiased_whatever_the_sample_count() -> None:
    """Two-sample logins alone teach the tick: the mean-based factor put it 12 % low."""
    import random

    rng = random.Random(3)
    o = Overhead("srv", window=40)
    for i in range(160):
        phases = [rng.uniform(0.0, 90.0) for _ in range(2)]
        o.update(f"p{i}", 5.0 + min(phases), 2, max(phases) - min(phases))
    assert o.tick() == pytest.approx(90.0, rel=0.1)
    assert len(o._tick) == 160  # the tick keeps four times the cost's window
    assert spread_median(10) == pytest.approx(0.838, abs=0.005)


@pytest.mark.parametrize("tick", [16.0, 50.0, 100.0])
def test_many_samples_on_long_ticks_are_not_relays_with_or_without_tcp(tick: float) -> None:
    """Ten samples per login spread over the whole tick: the slowest lands near one tick
    above the network RTT, and must not be taken for a detour."""
    w = make_world(seed=40 + int(tick))
    loop = GameLoop(cost=4.0, tick=tick)
    assert warm(w, loop, n=120) == 0
    assert warm(w, loop, n=200, k=10) == 0
    assert warm(w, loop, n=200, k=10, tcp=False) == 0
    assert warm(w, loop, n=100, k=2, tcp=False) == 0


def test_mobile_spikes_on_a_long_tick_are_not_relays() -> None:
    """A radio spike lifts one sample by up to 60 ms: the learned spike allowance of
    the access kind covers the slowest sample."""
    w = make_world(seed=51)
    loop = GameLoop(cost=3.0, tick=90.0)
    assert warm(w, loop, n=100) == 0
    assert warm(w, loop, n=400, mobile=True, jitter=4.0, spike_p=0.12) == 0
    assert warm(w, loop, n=200, mobile=True, jitter=4.0, spike_p=0.12, tcp=False) == 0
    # one sample cannot filter a spike: the gap allows the largest spike learned
    assert warm(w, loop, n=600, mobile=True, jitter=4.0, spike_p=0.12, k=1) == 0


def test_relay_hidden_in_a_long_tick_shows_in_its_slowest_sample_without_tcp() -> None:
    """A 40 ms leg on a 90 ms tick: the fastest of eight samples allows a Seoul client,
    the slowest does not (and there is no TCP RTT to compare)."""
    w = make_world(seed=52)
    loop = GameLoop(cost=5.0, tick=90.0)
    assert warm(w, loop, n=120, k=6) == 0
    app = [round(0.5 + 40.0 + 5.0 + p, 3) for p in (20.0, 35.0, 50.0, 60.0, 70.0, 80.0, 85.0, 88.0)]
    ev, out = w.login("hidden", "45.65.10.20", app, None)
    assert [f.kind for f in out.flags] == ["vpn_relay"], ev.notes["relay"]
    phys = out.flags[0].evidence["physics"]
    assert phys["measured_source"] == SLOWEST and phys["verdict"] == "detour"
    # the bound: the slowest sample less the learned cost, tick and noise, in ms and km
    assert 15.0 < phys["measured_ms"] <= max(app) - 5.0 - 90.0 + 20.0
    assert phys["excess_ms"] == pytest.approx(phys["measured_ms"] - phys["expected_ms"], abs=0.02)
    assert phys["excess_km"] > 1000
    slowest = phys["slowest_sample"]
    assert slowest["app_rtt_max_ms"] == max(app) and slowest["samples"] == 8
    assert slowest["learned_tick_ms"] == pytest.approx(90.0, rel=0.15)
    assert phys["measured_ms"] == pytest.approx(
        max(app) - slowest["learned_cost_ms"] - slowest["learned_tick_ms"]
        - slowest["noise_scales"] * slowest["noise_ms"] - slowest["spike_allowance_ms"], abs=0.05)
    assert any(SLOWEST in r for r in out.flags[0].reasons)


def test_patch_that_doubles_the_tick_is_absorbed() -> None:
    """A patch moves the tick from 33 to 66 ms: the slowest samples of honest logins land
    up to 33 ms beyond the old tick until the votes follow; the flags stay few and stop."""
    w = make_world(seed=53)
    before, after = GameLoop(cost=4.0, tick=33.0), GameLoop(cost=4.0, tick=66.0)
    assert warm(w, before, n=200) == 0
    flagged = sum(honest(w, after, 300 + i)[0] for i in range(300))
    assert flagged <= 15
    assert sum(honest(w, after, 700 + i)[0] for i in range(300)) == 0
    assert w.det.overhead.get("kr-sel-1").tick() == pytest.approx(66.0, rel=0.15)  # type: ignore[union-attr]


def test_cold_server_never_uses_the_slowest_sample() -> None:
    """Before the overhead is learned the tick is not known: an app figure meets physics
    only less the largest cost and tick still possible, and the slowest sample (which
    may carry a spike) not before the access kind's spikes are learned."""
    w = make_world(seed=54)
    loop = GameLoop(cost=8.0, tick=90.0)
    assert warm(w, loop, n=4, k=8) == 0
    ev, out = w.login("early", "58.120.200.9", [10.0, 40.0, 95.0, 99.0], None)
    assert not out.flags
    sess = w.det.sessions.peek(ev.event.session_id or "")
    assert sess is not None and sess.phys_net is not None
    net, source = sess.phys_net
    assert source == "app_rtt less the largest overhead the cold prior allows"
    assert net < 10.0 - 8.0 - 90.0 * 0.5  # at least the true cost and half the true tick off


def test_one_spike_of_a_kind_not_learned_yet_is_not_a_detour() -> None:
    """A 90 ms-tick server warmed by wired players, then the first mobile logins: one of
    six samples carries a 130 ms radio spike. The mobile kind's spikes are not learned
    yet, and the slowest sample stands apart from the others by more than the loop's
    phases explain: it proves nothing (it was taken for a 12,000 km detour), the
    second-slowest, which one spike cannot lift, is judged instead and still shows a
    leg hidden in the fastest sample's phase; without the spike the slowest is judged."""
    w = make_world(seed=56)
    loop = GameLoop(cost=3.0, tick=90.0)
    assert warm(w, loop, n=120, k=6) == 0
    assert w.det.overhead.spike_votes("mobile") < w.det.spike_warmup
    rtt = 25.0 + 2.0
    phases = (20.0, 35.0, 50.0, 60.0, 80.0, 88.0)
    app = [round(rtt + 3.0 + p + (130.0 if p == 50.0 else 0.0), 3) for p in phases]
    ev, out = w.login("silentember", "223.39.3.2", app, round(rtt + 55.0, 3))
    assert not out.flags, ev.notes["relay"]
    sess = w.det.sessions.peek(ev.event.session_id or "")
    assert sess is not None and sess.app_second == sorted(app)[-2]
    # a 150 ms leg hidden in the fastest sample's phase, with and without the spike
    for i, spike in enumerate((130.0, 0.0)):
        far = [round(rtt + 150.0 + 3.0 + p + (spike if p == 50.0 else 0.0), 3) for p in phases]
        ev, out = w.login(f"detour{i}", f"223.39.{4 + i}.2", far, None)
        assert [f.kind for f in out.flags] == ["vpn_relay"], ev.notes["relay"]
        phys = out.flags[0].evidence["physics"]
        assert phys["measured_source"] == (SECOND_SLOWEST if spike else SLOWEST)
        assert phys["verdict"] == "detour"
        slowest = phys["slowest_sample"]
        assert slowest["app_rtt_judged_ms"] == pytest.approx(sorted(far)[-1 - bool(spike)], abs=0.01)
        assert slowest["spike_logins"] < w.det.spike_warmup


def test_a_proven_login_re_assesses_its_exits_earlier_sessions() -> None:
    """Two relays hide in a 100 ms tick with one sample each; then two more accounts
    through the same /24 are proven by their own physics. The second proof makes the /24
    an exit: the hidden ones are flagged late, each naming its own login."""
    w = make_world(seed=55)
    loop = GameLoop(cost=5.0, tick=100.0)
    assert warm(w, loop, n=120) == 0
    hidden = []
    for i in range(2):
        ev, out = l4_relay(w, loop, f"45.65.11.{10 + i}", k=1, account=f"quiet{i}",
                           client_leg=20.0)
        assert not out.flags, ev.notes["relay"]
        hidden.append(ev.event.event_id)
    late: set[str] = set()
    for i in range(2):
        # a tunnel: the TCP RTT itself carries the 60 ms client leg
        rtt = 0.5 + 60.0
        _, out = w.login(f"tunnel{i}", f"45.65.11.{40 + i}", loop.samples(w, rtt, 3),
                         round(rtt + 0.2, 3))
        assert any(f.evidence["physics"]["verdict"] == "detour" for f in out.flags)
        late |= {f.event_id for f in out.flags}
    assert set(hidden) <= late


def _trace(w: World, ip: str, session: str, foreign: bool) -> Findings:
    """A traceroute of ``session`` as the route detector (earlier in the pipeline) left
    it: its notes say whether the route starts abroad."""
    ev = w.enrich(w._base("traceroute", ip, session, vantage_id="client",
                          direction="client_to_server",
                          hops=[{"ttl": 1, "ip": "202.97.1.1", "rtt_ms": [1.0]}]))
    ev.notes["route"] = {"foreign_origin": foreign, "signature": "sig-cn-kr",
                         "country_path": ["CN", "KR"] if foreign else ["KR"]}
    return w.det.process(ev) or Findings()


def test_a_foreign_route_arriving_after_its_login_counts_as_if_it_came_first() -> None:
    """The route component used to need the traceroute before the login; clients send it
    seconds after. Either order gives the login the same components; a home route adds
    nothing."""
    w = make_world(seed=56)
    loop = GameLoop(cost=5.0, tick=100.0)
    assert warm(w, loop, n=120) == 0
    app = loop.samples(w, 0.5 + 20.0, 1)
    ev, out = w.login("quiet", "45.65.12.20", app, 0.5)
    sid = ev.event.session_id or ""
    assert not out.flags
    assert not _trace(w, "45.65.12.20", sid, foreign=False).flags
    sess = w.det.sessions.peek(sid)
    assert sess is not None and "route" not in w.det._assess(sess).components
    _trace(w, "45.65.12.20", sid, foreign=True)
    after = w.det._assess(sess)
    assert after.components["route"] == 0.5
    assert after.evidence["route"]["country_path"] == ["CN", "KR"]
    # the same login with the route already known when it arrives
    other = make_world(seed=56)
    assert warm(other, loop, n=120) == 0
    raw = other._base("login", "45.65.12.20", "s-first", account="quiet", server_id="kr-sel-1",
                      app_rtt_ms=app, tcp_rtt_ms=0.5)
    first = other.enrich(raw)
    first.notes["route"] = {"foreign_origin": True, "signature": "sig-cn-kr",
                            "country_path": ["CN", "KR"]}
    other.det.process(first)
    before = other.det._assess(other.det.sessions.peek("s-first"))  # type: ignore[arg-type]
    assert before.components == after.components


def test_a_foreign_route_tips_a_suspicious_account_into_a_flag() -> None:
    """An account proven relayed earlier logs in again through an L4 relay whose leg
    hides in a 100 ms tick; its traceroute, seconds later, starts abroad."""
    w = make_world(seed=57)
    loop = GameLoop(cost=5.0, tick=100.0)
    assert warm(w, loop, n=120) == 0
    rtt = 0.5 + 60.0
    _, out = w.login("roamer", "45.65.13.20", loop.samples(w, rtt, 3), round(rtt + 0.2, 3))
    assert out.flags
    ev, out = w.login("roamer", "45.65.14.20", [70.0], 0.5)
    assert not out.flags, ev.notes["relay"]
    late = _trace(w, "45.65.14.20", ev.event.session_id or "", foreign=True)
    assert [f.event_id for f in late.flags] == [ev.event.event_id]
    assert any("foreign origin" in r for r in late.flags[0].reasons)


def test_a_fallback_baseline_alone_is_not_sharpened_into_a_flag() -> None:
    """A rural line 16 ms slower than its ISP's city lines, on a /24 of its own: the ASN
    baseline's verdict alone stays below the flag, and the anomaly model (which only
    sharpens physical evidence) is not asked to tip it over."""
    w = make_world(seed=58, hst_window=40)
    loop = GameLoop(cost=4.0, tick=0.0)
    assert warm(w, loop, n=200) == 0  # city lines of one ASN: its baseline and the model
    assert not w.det.hst.model._first_window
    flagged = []
    judged = 0
    for i in range(20):
        rtt = 1.0 + 16.0 + w.rng.uniform(0.0, 2.0)
        ev, out = w.login(f"rural{i}", f"58.120.{220 + i}.9", loop.samples(w, rtt, 4, 1.0),
                          round(rtt + 0.4, 3))
        sess = w.det.sessions.peek(ev.event.session_id or "")
        assert sess is not None
        a = w.det._assess(sess)
        if "baseline" in a.components:
            judged += 1
            assert a.evidence["baseline"]["used"] == "asn"
            assert a.evidence["model"] == {"verdict": "not scored: a fallback baseline alone"}
        flagged += out.flags
    assert flagged == [] and judged >= 10


def test_the_tick_is_learned_from_every_login_not_one_per_prefix() -> None:
    """Players behind three /24s (a PC bang, a campus, a CGNAT pool) and relays whose
    other evidence keeps them from teaching the cost: every login's spread is a vote
    for the tick (a relay does not change the game loop)."""
    w = make_world(seed=59)
    loop = GameLoop(cost=5.0, tick=90.0)
    assert warm(w, loop, n=60) == 0
    for i in range(300):
        rtt = 2.0 + w.rng.uniform(0.0, 1.0)
        _, out = w.login(f"shared{i}", f"58.121.{i % 3}.{10 + i % 200}",
                         loop.samples(w, rtt, 2), round(rtt + 0.2, 3))
        assert not out.flags
    for i in range(40):  # tunnels: TCP itself breaks physics, they never teach the cost
        rtt = 0.5 + 60.0
        w.login(f"tunnel{i}", f"45.65.20.{10 + i}", loop.samples(w, rtt, 4), round(rtt + 0.2, 3))
    o = w.det.overhead.get("kr-sel-1")
    assert o is not None and len(o._tick) == 160
    assert o.tick() == pytest.approx(90.0, rel=0.08)


def test_cost_votes_cast_before_the_tick_was_learned_are_corrected_once_it_is() -> None:
    """A quiet server on a 90 ms tick: its first logins (one sample each) vote before a
    tick is known, and their prefixes stay in the window. Their votes are taken at the
    tick as it is now, not left a third of a tick high; a snapshot keeps that."""
    import json
    import random

    rng = random.Random(5)
    o = Overhead("srv", window=40)
    for i in range(15):  # one sample: no spread, no tick yet
        o.update(f"early{i}", 5.0 + rng.uniform(0.0, 90.0), 1, 0.0)
    for i in range(25):
        phases = [rng.uniform(0.0, 90.0) for _ in range(8)]
        o.update(f"late{i}", 5.0 + min(phases), 8, max(phases) - min(phases))
    assert o.sources() == 40 and o.tick() == pytest.approx(90.0, rel=0.15)
    assert o.cost() == pytest.approx(5.0, abs=6.0)
    restored = Overhead.restore(json.loads(json.dumps(o.snapshot())), "srv", 40)
    assert restored.cost() == o.cost()


def _prefix_with_a_late_phase(tick: float, leg: float) -> dict:
    """Thirty honest 10-sample logins from one /24 teach its baseline on a server whose
    game loop has ``tick``; then one login from that /24 whose three samples all land
    late in the tick (an honest draw about one in 300) after a detour of ``leg`` ms.
    Returns that login's assessment (components and evidence)."""
    w = make_world(seed=61)
    loop = GameLoop(cost=5.0, tick=tick)
    assert warm(w, loop, n=120) == 0  # the server's overhead, from distinct prefixes
    for i in range(30):
        rtt = 3.0 + w.rng.uniform(0.0, 1.0)
        _, out = w.login(f"home{i}", f"58.121.7.{10 + i}", loop.samples(w, rtt, 10),
                         round(rtt + 0.2, 3))
        assert out.flags == []
    rtt = 3.5 + leg
    app = [round(rtt + loop.cost + tick * phase, 3) for phase in (0.85, 0.9, 0.95)]
    ev, _ = w.login("late", "58.121.7.99", app, None if leg else round(rtt + 0.2, 3))
    sess = w.det.sessions.peek(ev.event.session_id or "")
    assert sess is not None
    a = w.det._assess(sess)
    return {"components": a.components, "baseline": a.evidence["baseline"]}


def test_a_late_phase_in_every_sample_is_not_a_detour_from_the_prefix_baseline() -> None:
    """The prefix baseline holds app minima, each with a phase of the loop in it: an
    honest login with three samples on a 50 ms tick may sit 40 ms above the /24's p90
    for the loop alone. The baseline's verdict allows the learned tick's phase spread."""
    honest_late = _prefix_with_a_late_phase(tick=50.0, leg=0.0)
    level = honest_late["baseline"]["levels"][0]
    assert level["level"] == "prefix" and level["samples"] >= 20
    # 50 ms x (0.9 - 0.536): the 0.999 and 0.9 quantiles of the minimum of 3 phases
    assert level["tick_allowance_ms"] == pytest.approx(50.0 * (0.9 - 0.5358), abs=3.0)
    assert "baseline" not in honest_late["components"]
    # no loop (the learned tick is the jitter's), no allowance: 40 ms over the /24's
    # p90 is a detour
    no_loop = _prefix_with_a_late_phase(tick=0.0, leg=40.0)
    assert no_loop["baseline"]["levels"][0]["tick_allowance_ms"] < 1.0
    assert no_loop["components"].get("baseline", 0.0) > 0.5
    # a 60 ms leg on the same loop still stands out of the allowance
    relayed = _prefix_with_a_late_phase(tick=50.0, leg=60.0)
    assert relayed["components"].get("baseline", 0.0) > 0.5
