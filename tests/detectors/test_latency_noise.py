"""The residual noise scale of an access kind (what three noise scales add to every gap
bound of that kind): measured against the servers' costs as they are now, and borrowed
only from kinds on the same medium.

Every gap below is ``cost + min(k uniform phases of the tick) + line noise``, less a
radio spike of the kernel TCP RTT on mobile lines, as
:class:`tests.detectors.test_latency_calibration.GameLoop` draws them.
"""

from __future__ import annotations

import random

from pathsentry.detectors.latency import LatencyDetector
from pathsentry.detectors.latency.baselines import OverheadBook
from tests.detectors.test_latency import make_world
from tests.detectors.test_latency_calibration import GameLoop, honest, l4_relay

#: the game loop of the unit tests, and the relay's client leg (ms)
COST, TICK, K = 5.0, 30.0, 4
LEG = 15.0


def _gap(rng: random.Random, noise: float = 0.3) -> float:
    return COST + min(rng.uniform(0.0, TICK) for _ in range(K)) + rng.expovariate(1.0 / noise)


def _learn(book: OverheadBook, source: str, kind: str, gap: float) -> None:
    book.learn("srv", source, kind, gap, K, TICK * 0.6)


def test_a_wired_kind_does_not_borrow_the_radio_kinds_noise() -> None:
    """A wired kind whose gaps never land below the cost has next to no lower-side
    residuals: that says its noise is small, not that it should take the mobile
    lines', whose one TCP sample spikes by tens of ms (it did: every wired bound of
    the world widened by three times the radio noise)."""
    rng = random.Random(3)
    book = OverheadBook(window=40, warm=8)
    for i in range(40):
        _learn(book, f"wired{i}", "residential", _gap(rng))
    for i in range(12):
        _learn(book, f"radio{i}", "mobile", _gap(rng) - rng.uniform(20.0, 45.0))
    wired, wired_n = book.noise_scale("residential", 1.0)
    radio = book.noise_scale("mobile", 4.0)[0]
    assert radio > 20.0  # the radio lines' own spikes
    assert wired < 3.0, (wired, wired_n)
    assert book.noise_scale("hosting", 1.0)[0] < 3.0  # a kind not heard from yet: the wired ones'


def test_noise_is_measured_against_the_cost_as_it_is_now() -> None:
    """A server whose first exit prefixes were relays learned a cost 35 ms high; the
    honest lines that came next were measured against it, 35 ms below. Once honest
    prefixes outnumber the relays the cost is right, and so must the noise be: a
    residual kept from the moment it was taken kept that moment's error for hours."""
    rng = random.Random(5)
    book = OverheadBook(window=40, warm=8)
    for i in range(8):  # relays' exits first: each gap carries a 35 ms leg
        _learn(book, f"relay{i}", "hosting", _gap(rng) + 35.0)
    for i in range(60):
        _learn(book, f"line{i}", "residential", _gap(rng))
    o = book.get("srv")
    assert o is not None and abs(o.cost() - COST) < 3.0
    scale, n = book.noise_scale("residential", 1.0)
    assert scale < 3.0, (scale, n)


def _relay_world(seed: int) -> tuple[int, int, LatencyDetector]:
    """A 30 ms tick server, honest wired and mobile lines (LTE spikes its one TCP RTT),
    then 12 accounts behind one Seoul L4 exit whose client leg is ``LEG``; returns (honest
    logins flagged, relayed logins flagged, the detector)."""
    w = make_world(seed=seed)
    loop = GameLoop(cost=5.0, tick=TICK)
    flagged = 0
    for i in range(300):
        mobile = i % 4 == 0
        flagged += honest(w, loop, i, k=w.rng.randint(3, 6), mobile=mobile,
                          jitter=12.0 if mobile else 0.3, spike_p=0.1 if mobile else 0.0)[0]
    caught: set[str] = set()  # a login flagged at once, or later as its exit's evidence grows
    for a in range(12):
        _, out = l4_relay(w, loop, "103.20.30.7", k=4, account=f"farmer{a:02d}", client_leg=LEG)
        caught.update(f.event_id for f in out.flags if f.kind == "vpn_relay")
    return flagged, len(caught), w.det


def test_a_short_leg_behind_a_tick_is_caught_beside_noisy_radio_lines() -> None:
    """What the two rules above give a relay: a 15 ms leg behind a 30 ms tick, too short
    for one login's gap, shows in its exit's logins together once the wired kinds'
    noise is not the mobile lines' (LTE spikes its one TCP RTT by tens of ms): with it,
    three noise scales of 10-18 ms each hid every login of the exit."""
    for seed in (1, 2, 3):
        flagged, caught, det = _relay_world(seed)
        assert flagged == 0
        assert det.overhead.noise_scale("hosting", 1.0)[0] < 3.0
        assert caught >= 9, (seed, caught)


def test_a_radio_line_has_no_gap_verdict_of_its_own_before_its_medium_noise_is_learned() -> None:
    """The first mobile logins of a world: the radio medium's noise rests on no residual
    yet, and the floor it would take is no radio link's. A login whose one kernel TCP
    RTT came 60 ms under the path its app samples took is held back (its verdict says
    why), not flagged as a relay; wired lines keep their verdicts."""
    w = make_world(seed=31)
    loop = GameLoop(cost=COST, tick=TICK)
    assert sum(honest(w, loop, i, k=K)[0] for i in range(300)) == 0
    assert w.det.overhead.noise_scale("mobile", 4.0)[1] < OverheadBook.MIN_NOISE_VOTES
    rtt = 20.0
    app = [round(rtt + 60.0 + COST + w.rng.uniform(0.0, TICK), 3) for _ in range(K)]
    _, out = w.login("commuter", "223.39.7.10", app, rtt, server="kr-sel-1")
    assert not out.flags
    sess = w.det.sessions.peek(f"s{w.n}")
    assert sess is not None and sess.geo.kind == "mobile"
    gap = w.det._assess(sess).evidence["gap"]
    assert gap["excess_ms"] > 20.0
    assert gap["verdict"].startswith("noise of mobile access learned from")
    _, out = l4_relay(w, loop, "45.65.5.20", k=K, client_leg=60.0)  # a wired exit still shows
    assert out.flags
