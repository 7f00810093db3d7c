"""What the relay detector works out once and keeps must give what working it out
again gives: the learned votes' order, the noise scales per access kind and the exit
prefixes' standardised gap residuals, as the servers' overheads and the prefixes'
histories change under them (a patch day, new logins, a kind short of its own noise
residuals)."""

from __future__ import annotations

import random

from pathsentry.detectors.latency import OverheadBook
from pathsentry.detectors.latency.baselines import _Votes
from pathsentry.detectors.latency.state import BoundedLRU
from tests.detectors.test_latency import World, make_world
from tests.detectors.test_latency_calibration import GameLoop, honest, l4_relay, warm


def test_votes_stay_ordered_through_replacements_and_evictions() -> None:
    rng = random.Random(3)
    votes = _Votes(25)
    for i in range(2000):
        votes.add(f"p{rng.randrange(60)}", rng.choice([0.0, -0.0, round(rng.gauss(0.0, 5.0), 1)]))
        if i % 37 == 0:
            assert votes.ordered() == sorted(votes.votes.values())
            assert len(votes.ordered()) == len(votes) <= 25
    ref = sorted(votes.votes.values())
    for q in (0.1, 0.25, 0.5, 0.9):
        pos = q * (len(ref) - 1)
        i = int(pos)
        j = min(i + 1, len(ref) - 1)
        assert votes.quantile(q) == ref[i] + (ref[j] - ref[i]) * (pos - i)


def test_noise_scales_are_forgotten_when_their_residuals_change() -> None:
    """A kept noise scale equals a fresh book's after every login, for a kind with its
    own residuals and for kinds that pool every kind's (too few of their own)."""
    rng = random.Random(5)
    book = OverheadBook(window=12, warm=3)
    kinds = ("residential", "mobile", "hosting", "?")
    for i in range(600):
        kind = kinds[0] if rng.random() < 0.7 else rng.choice(kinds[1:])
        server = rng.choice(("a", "b"))
        gap = rng.uniform(2.0, 9.0) + (30.0 if rng.random() < 0.1 else 0.0)
        book.learn(server, f"p{rng.randrange(40)}", kind, gap, rng.randint(1, 6), rng.uniform(0, 30))
        for kind_asked in kinds:
            for floor in (1.0, 4.0):
                kept = book.noise_scale(kind_asked, floor)
                fresh = OverheadBook(window=12, warm=3)
                fresh.load(book.snapshot())
                assert kept == fresh.noise_scale(kind_asked, floor), (i, kind_asked, floor)


def _fresh(w: World, sid: str) -> tuple[tuple[float, int, float], tuple[float, int, int]]:
    """The session's prefix evidence and relays, from nothing kept."""
    det = w.det
    sess = det.sessions.peek(sid)
    assert sess is not None
    kept = det.prefix_views
    det.prefix_views = BoundedLRU(kept.cap)
    try:
        gv = det.gap_verdict(sess)
        return det.prefix_evidence(sess, gv), det.prefix_relays(sess)
    finally:
        det.prefix_views = kept


def _kept(w: World, sid: str) -> tuple[tuple[float, int, float], tuple[float, int, int]]:
    det = w.det
    sess = det.sessions.peek(sid)
    assert sess is not None
    return det.prefix_evidence(sess, det.gap_verdict(sess)), det.prefix_relays(sess)


def test_prefix_residuals_follow_a_patch_day_and_new_logins() -> None:
    """Relayed and honest logins share exit /24s; then a patch moves the server's cost
    and tick. Each prefix's evidence, asked again as the overheads move and as more of
    its logins arrive, is what a pass over its history against the overheads of the
    moment gives."""
    w = make_world(seed=21)
    before, after = GameLoop(cost=3.0, tick=20.0), GameLoop(cost=12.0, tick=45.0)
    assert warm(w, before, n=120) == 0
    sids: list[str] = []
    for i in range(6):
        ev, _ = l4_relay(w, before, f"45.65.7.{10 + i}", k=2, account=f"r{i}", client_leg=12.0)
        assert ev.event.session_id is not None
        sids.append(ev.event.session_id)
    checked = 0
    for i in range(160):
        honest(w, after, 500 + i)
        if i % 20 == 0:
            ev, _ = l4_relay(w, after, f"45.65.7.{30 + i // 20}", k=3, account=f"s{i}",
                             client_leg=12.0)
            assert ev.event.session_id is not None
            sids.append(ev.event.session_id)
        for sid in sids[-4:]:
            assert _kept(w, sid) == _fresh(w, sid)
            checked += 1
    assert checked > 400
    # the prefix did collect evidence, so the comparison is not between zeros
    assert max(_kept(w, sid)[0][2] for sid in sids) > 2.0
