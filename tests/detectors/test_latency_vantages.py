"""Physics on the application round trips other vantages measure in a session.

The login server here answers its ping on a 100 ms game loop, which hides a 20-25 ms
client-relay leg in one login's phase; a second server answers off its loop (a 3 ms
cost, no tick). Its app probes of the same session go all the way to the client, so
they show the leg once its learned overhead is taken off. Honest players of every
access kind, game loops on the probing vantage, a vantage not warmed up yet and a
patch day on the vantage must not turn into relays.
"""

from __future__ import annotations

import pytest

from pathsentry.detectors.latency.baselines import phase_quantile
from tests.detectors.test_latency import BUSAN, SEOUL, SHANGHAI, World, leg_ms, make_world
from tests.detectors.test_latency_calibration import GameLoop

#: Seoul to the Busan vantage (what an honest Seoul player's probe from there travels)
TO_BUSAN_MS = leg_ms(SEOUL, BUSAN)
#: a Shanghai client's leg to a Seoul exit
CLIENT_LEG_MS = leg_ms(SEOUL, SHANGHAI) + 3.0


class Servers:
    """The login server's and the Busan vantage's game loops."""

    def __init__(self, login: GameLoop, vantage: GameLoop) -> None:
        self.login, self.vantage = login, vantage


def honest(w: World, s: Servers, i: int, *, kind: str = "residential", k_probe: int = 3,
           vantage: str = "kr-pus-1", jitter: float = 0.3, spike_p: float = 0.0,
           probe_loop: GameLoop | None = None) -> bool:
    """One honest Seoul session (login to kr-sel-1 and an app probe from ``vantage``);
    returns whether anything in it was flagged."""
    mobile = kind == "mobile"
    rtt = w.rng.uniform(15.0, 40.0) if mobile else w.rng.uniform(1.0, 5.0)
    ip = f"223.39.{i % 250}.{10 + i % 200}" if mobile else f"58.120.{i % 250}.{10 + i % 200}"
    sid = f"h{w.n + 1}"
    app = s.login.samples(w, rtt, w.rng.randint(1, 6), jitter, spike_p)
    _, out = w.login(f"player{i}", ip, app, round(rtt + w.rng.expovariate(1.0 / jitter), 3),
                     session=sid)
    loop = probe_loop or s.vantage
    late = w.probe(ip, sid, vantage, loop.samples(w, rtt + TO_BUSAN_MS, k_probe, jitter, spike_p))
    return bool(out.flags or late.flags)


def warm_vantage(w: World, s: Servers, n: int = 60) -> None:
    """Honest logins at the Busan vantage teach its overhead."""
    for i in range(n):
        rtt = w.rng.uniform(1.0, 5.0) + TO_BUSAN_MS
        app = s.vantage.samples(w, rtt, w.rng.randint(2, 6))
        _, out = w.login(f"busan{i}", f"58.120.{100 + i % 150}.{10 + i % 200}", app,
                         round(rtt + w.rng.expovariate(1.0 / 0.3), 3), server="kr-pus-1")
        assert not out.flags


def warmed(seed: int, vantage: GameLoop | None = None) -> tuple[World, Servers]:
    w = make_world(seed=seed)
    s = Servers(GameLoop(cost=5.0, tick=100.0), vantage or GameLoop(cost=3.0, tick=0.0))
    warm_vantage(w, s)
    assert sum(honest(w, s, i) for i in range(150)) == 0
    return w, s


def relay(w: World, s: Servers, ip: str, account: str, *, tcp: bool = True,
          leg: float = CLIENT_LEG_MS, probe: bool = True) -> tuple[str, bool, list]:
    """A Shanghai client behind a Seoul L4 exit: its login (TCP ends at the exit, one app
    sample in the middle of the login server's tick) and an app probe from the Busan
    vantage; returns (login event id, flagged at the login, the probe's flags)."""
    sid = f"r{w.n + 1}"
    app = [round(0.5 + leg + s.login.cost + 0.4 * s.login.tick, 3)]
    ev, out = w.login(account, ip, app, 0.5 if tcp else None, session=sid)
    flags = []
    if probe:
        flags = w.probe(ip, sid, "kr-pus-1", s.vantage.samples(w, 0.5 + leg + TO_BUSAN_MS, 3)).flags
    return ev.event.event_id, bool(out.flags), flags


@pytest.mark.parametrize("tcp", [True, False])
def test_a_leg_the_login_servers_tick_hides_shows_in_another_vantages_app_probe(tcp: bool) -> None:
    w, s = warmed(seed=31)
    eid, at_login, flags = relay(w, s, "45.65.20.20", "xiaopai001", tcp=tcp)
    assert not at_login  # the 100 ms tick hides the leg in the login's own figures
    assert [f.event_id for f in flags] == [eid]
    phys = flags[0].evidence["physics"]
    assert phys["verdict"] == "detour"
    assert phys["measured_source"] == "app probe from kr-pus-1 less learned overhead"
    probe = phys["app_probe"]
    assert probe["vantage"] == "kr-pus-1" and probe["samples"] == 3
    assert probe["learned_cost_ms"] == pytest.approx(3.0, abs=1.5) and probe["learned_tick_ms"] < 3.0
    # the measured figure is the probe's minimum less the learned overhead, and the excess
    # over a Seoul hosting client's expectation to Busan is most of the client's leg
    assert phys["measured_ms"] < probe["app_rtt_min_ms"] - 1.5
    assert phys["excess_ms"] > CLIENT_LEG_MS - 6.0 and phys["excess_km"] == round(phys["excess_ms"] * 100)
    assert any("kr-pus-1" in r and "km of detour" in r for r in flags[0].reasons)


@pytest.mark.parametrize("kind", ["residential", "mobile"])
def test_honest_players_probed_from_other_vantages_are_not_relays(kind: str) -> None:
    w, s = warmed(seed=42)
    # the fast vantage, with mobile jitter and radio spikes on the mobile lines
    jitter, spike_p = (4.0, 0.12) if kind == "mobile" else (0.3, 0.0)
    assert sum(honest(w, s, 100 + i, kind=kind, jitter=jitter, spike_p=spike_p)
               for i in range(300)) == 0
    # one- and two-sample probes, before and after the kind's spikes were learned
    assert sum(honest(w, s, 500 + i, kind=kind, k_probe=1 + i % 2, jitter=jitter, spike_p=spike_p)
               for i in range(200)) == 0


def test_a_game_loop_on_the_probing_vantage_is_not_a_relay() -> None:
    """The vantage answers on a 60 ms tick: its app probes are taken against its own
    learned cost and tick, never the login server's or none."""
    w, s = warmed(seed=33, vantage=GameLoop(cost=8.0, tick=60.0))
    assert sum(honest(w, s, 100 + i) for i in range(300)) == 0
    # the hosting clients physics is strictest with (a 4 ms tolerance)
    for i in range(100):
        rtt = w.rng.uniform(0.3, 1.0)
        sid = f"c{w.n + 1}"
        ip = f"45.65.{40 + i % 100}.{10 + i}"
        _, out = w.login(f"cloud{i}", ip, s.login.samples(w, rtt, 4), rtt, session=sid)
        late = w.probe(ip, sid, "kr-pus-1", s.vantage.samples(w, rtt + TO_BUSAN_MS, 3))
        assert not out.flags and not late.flags, late.flags[0].reasons if late.flags else None


def test_a_cold_vantage_is_judged_against_the_largest_overhead_it_allows() -> None:
    """A vantage without learned logins: its raw app figure carries a game loop nobody
    has measured yet, so it is taken less the largest cost the prior allows (30 ms) and
    the largest tick the spreads of the app probes it answered allow, which an 80 ms
    loop keeps wide: a relay leg hidden in its tick gives no physics."""
    w = make_world(seed=34)
    s = Servers(GameLoop(cost=5.0, tick=100.0), GameLoop(cost=9.0, tick=80.0))
    assert sum(honest(w, s, i) for i in range(60)) == 0  # no login learned at kr-pus-1
    eid, at_login, flags = relay(w, s, "45.65.21.20", "quiet")
    sess = w.det.sessions.peek("r" + eid.removeprefix("login-"))
    assert sess is not None and sess.phys_at is None and not at_login and not flags
    net = w.det.probe_net(sess, "kr-pus-1", 50.0, 3)
    assert net is not None and net < 50.0 - 30.0 - 80.0 * phase_quantile(3, 0.01)


def test_a_vantage_heard_only_through_app_probes_shows_a_leg() -> None:
    """The Busan vantage hosts no login at all, answers off its loop, and app-probes
    every session: the spreads of its probes' samples (jitter only) rule out any tick
    beyond a few ms, so a 45 ms client leg that the login server's 100 ms tick hides
    clears the cold prior's 30 ms cost there; honest sessions probed from it do not."""
    w = make_world(seed=37)
    s = Servers(GameLoop(cost=5.0, tick=100.0), GameLoop(cost=3.0, tick=0.0))
    assert sum(honest(w, s, i) for i in range(150)) == 0
    assert w.det.overhead.warm_figures("kr-pus-1", 1) is None  # no login learned there
    eid, at_login, flags = relay(w, s, "45.65.23.20", "probed", leg=45.0)
    assert not at_login
    assert [f.event_id for f in flags] == [eid]
    phys = flags[0].evidence["physics"]
    assert phys["measured_source"] == \
        "app probe from kr-pus-1 less the largest overhead the cold prior allows"
    assert sum(honest(w, s, 200 + i) for i in range(150)) == 0


def test_a_patch_day_on_the_vantage_is_absorbed() -> None:
    """The vantage's cost goes from 3 to 18 ms: honest players probed from it are not
    relays while its median follows, and a relay is still caught after it."""
    w, s = warmed(seed=35)
    patched = Servers(s.login, GameLoop(cost=18.0, tick=0.0))
    flagged = 0
    for i in range(60):
        flagged += honest(w, patched, 200 + i)
        rtt = w.rng.uniform(1.0, 5.0) + TO_BUSAN_MS
        app = patched.vantage.samples(w, rtt, 4)
        _, out = w.login(f"busan-after{i}", f"58.120.{200 + i % 50}.{10 + i}", app,
                         round(rtt + 0.2, 3), server="kr-pus-1")
        flagged += bool(out.flags)
    assert flagged == 0
    assert w.det.overhead.get("kr-pus-1").cost() == pytest.approx(18.0, abs=2.0)  # type: ignore[union-attr]
    eid, _, flags = relay(w, patched, "45.65.22.20", "after-patch")
    assert [f.event_id for f in flags] == [eid]


def test_a_login_proven_by_a_late_probe_re_assesses_its_exits_earlier_sessions() -> None:
    """The first relay through an exit has no probe and a leg the tick hides; two more
    accounts' probes prove the exit later, and the first login is flagged then, by name."""
    w, s = warmed(seed=36)
    first, at_login, _ = relay(w, s, "45.65.23.20", "first", probe=False)
    assert not at_login
    _, _, flags = relay(w, s, "45.65.23.21", "second")
    assert first not in {f.event_id for f in flags}  # one proven account is not an exit
    _, _, flags = relay(w, s, "45.65.23.22", "third")
    late = next(f for f in flags if f.event_id == first)
    assert "prefix_relays" in late.evidence["components"]
    assert late.evidence["exit_prefix"]["proven_relay_accounts"] == 2
    # an honest /24 with one odd session is not an exit for its neighbours
    w2, s2 = warmed(seed=37)
    relay(w2, s2, "45.65.24.20", "odd")
    assert sum(honest(w2, s2, 900 + i) for i in range(20)) == 0
