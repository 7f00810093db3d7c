"""What a server's learned cost is read from, and the votes it withdraws.

Every gap below is ``cost + min(k uniform phases of the tick) + line noise`` (a relay's
adds its client leg), as :class:`tests.detectors.test_latency_calibration.GameLoop`
draws them. The cost is what every gap bound, every standardised residual and every
access kind's noise is measured from, so a cost a few ms high takes that much off
every relay's leg.
"""

from __future__ import annotations

from tests.detectors.test_latency import make_world
from tests.detectors.test_latency_calibration import GameLoop, l4_relay, warm


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
