"""A server's fixed cost read where relays do not reach, and withdrawn votes.

Every gap below is ``cost + min(k uniform phases of the tick) + line noise`` (a relay's
adds its client leg), as :class:`tests.detectors.test_latency_calibration.GameLoop`
draws them. The cost is what every gap bound, every standardised residual and every
access kind's noise is measured from, so a cost a few ms high takes that much off
every relay's leg.
"""

from __future__ import annotations

import random

from pathsentry.detectors.latency.baselines import Overhead
from tests.detectors.test_latency import make_world
from tests.detectors.test_latency_calibration import GameLoop, l4_relay, warm

COST, TICK, LEG = 2.66, 84.0, 20.0


def _server(seed: int, relays: int, honest: int = 40, k: tuple[int, int] = (3, 6)) -> float:
    """A server heard from by ``honest`` honest exit prefixes and ``relays`` relays'
    (their gaps carry a 20 ms leg), three logins each in a random order; returns the
    error (ms) of the cost it learned."""
    rng = random.Random(seed)
    o = Overhead("srv", window=40)
    sources = [f"relay{i}" for i in range(relays)] + [f"line{i}" for i in range(honest - relays)]
    order = [s for s in sources for _ in range(3)]
    rng.shuffle(order)
    for source in order:
        n = rng.randint(*k)
        phases = [rng.uniform(0.0, TICK) for _ in range(n)]
        gap = COST + min(phases) + rng.gauss(0.0, 1.0) + (LEG if source.startswith("relay") else 0.0)
        o.update(source, gap, n, max(phases) - min(phases), wired=True)
    return o.cost() - COST


def test_a_quarter_of_relayed_exits_does_not_lift_the_cost() -> None:
    """Ten of a server's 40 exit prefixes are relays' (a farm's /24s, a VPN's exits):
    their gaps all lie above the honest ones by the leg. Read at the median of the
    phase-corrected gaps the cost stood 5.4 ms high on average (the relays fill the
    upper quarter, so the median reads the honest lines' 67th percentile), a quarter of
    a 20 ms leg off every residual; read at the lower quartile, with each gap less its
    phase's own quartile, 2.5 ms."""
    errors = [_server(seed, relays=10) for seed in range(1, 31)]
    assert abs(sum(errors) / len(errors)) < 3.5, errors
    # and without relays the cost is no worse than the median read it
    errors = [_server(seed, relays=0) for seed in range(1, 31)]
    assert abs(sum(errors) / len(errors)) < 1.0, errors
    assert max(abs(e) for e in errors) < 5.0, errors


def test_two_samples_on_a_long_tick_still_bound_the_cost_to_a_few_ms() -> None:
    """Every login with two app samples, an 84 ms tick: one phase-corrected gap spreads
    over -25..+60 ms around the cost, so a median over 40 prefixes wandered by 7 ms
    (root mean square); the lower quartile, where the minimum of two phases is densest,
    by 4."""
    errors = [_server(seed, relays=0, k=(2, 2)) for seed in range(1, 31)]
    rmse = (sum(e * e for e in errors) / len(errors)) ** 0.5
    assert rmse < 5.0, errors


def test_an_exit_that_shows_relay_evidence_withdraws_the_gap_it_voted_with() -> None:
    """A farm's first logins through its exit /24 came before any evidence and voted for
    the server's cost like an honest line; once its logins carry the exit's evidence
    they teach nothing, and the gap the exit voted with before goes too (it stayed in
    the window for as long as the exit kept logging in)."""
    w = make_world(seed=17)
    loop = GameLoop(cost=5.0, tick=100.0)
    assert warm(w, loop, n=120) == 0
    exit_net = "45.65.6.0/24"
    o = w.det.overhead.get("kr-sel-1")
    assert o is not None
    l4_relay(w, loop, "45.65.6.10", k=4, account="farm000", client_leg=25.0)
    assert exit_net in o._cost.votes  # the first login: no evidence yet, it votes
    caught = False
    for i in range(1, 30):
        _, out = l4_relay(w, loop, f"45.65.6.{10 + i}", k=w.rng.randint(3, 8),
                          account=f"farm{i:03d}", client_leg=25.0)
        caught = caught or bool(out.flags)
    assert caught
    assert exit_net not in o._cost.votes and exit_net not in o._u.votes
    assert all(exit_net not in v.votes for v in w.det.overhead.noise.values())
