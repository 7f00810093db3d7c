"""What the relay detector works out once and keeps must give what working it out
again gives: the learned votes' order, the noise scales per access kind and the exit
prefixes' standardised gap residuals, as the servers' overheads and the prefixes'
histories change under them (a patch day, new logins, a kind short of its own noise
residuals)."""

from __future__ import annotations

import random

import pytest

from pathsentry.detectors.latency import OverheadBook
from pathsentry.detectors.latency.baselines import (
    COST_Q,
    MIN_WIRED_COST,
    Overhead,
    _Votes,
    quantile_share,
)
from pathsentry.detectors.latency.state import BoundedLRU
from pathsentry.detectors.physics import interpolated
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


def _cost_per_vote(o: Overhead) -> float:
    """:meth:`Overhead.cost` worked out vote by vote from the snapshot: each wired gap
    less the tick's median times its own phase share at ``COST_Q`` (none for a vote saved
    without one), at that quantile; with fewer than ``MIN_WIRED_COST`` wired votes, every
    gap less its median share, at the median."""
    snap = o.snapshot()
    tick = o.tick() if len(snap["tick"]) >= Overhead.MIN_TICK_LOGINS else 0.0
    half = dict(snap["phase"])
    if not tick or not half:
        return interpolated(sorted(gap for _, gap in snap["cost"]), 0.5)
    radio = set(snap.get("radio", []))
    if len(snap["cost"]) - len(radio) < MIN_WIRED_COST:
        gaps = [gap - tick * half.get(source, 0.0) for source, gap in snap["cost"]]
        return interpolated(sorted(gaps), 0.5)
    gaps = [gap - tick * quantile_share(half.get(source, 0.0)) for source, gap in snap["cost"]
            if source not in radio]
    return interpolated(sorted(gaps), COST_Q)


def test_cost_by_phase_share_is_the_per_vote_quantile() -> None:
    """The cost corrects its gaps by phase share (one product per share): the same
    quantile as correcting each vote, as prefixes vote again with other sample counts, the
    window drops its oldest, and after a restore that lacks some votes' shares."""
    rng = random.Random(11)
    o = Overhead("srv", window=15)
    for i in range(900):
        k = rng.randint(1, 7)
        o.update(f"p{rng.randrange(40)}", round(rng.uniform(-2.0, 40.0), 2), k, rng.uniform(0.0, 33.0),
                 wired=rng.random() < 0.8)
        if i % 7 == 0:
            assert o.cost() == pytest.approx(_cost_per_vote(o), abs=1e-9), i
        if i % 150 == 149:
            snap = o.snapshot()
            snap["phase"] = snap["phase"][: len(snap["phase"]) // 2]  # half saved corrected
            o = Overhead.restore(snap, "srv", 15)
            assert o.cost() == pytest.approx(_cost_per_vote(o), abs=1e-9), i


def test_cost_kept_in_step_while_the_tick_stays_is_the_per_vote_quantile() -> None:
    """Between moves of the tick (single-sample logins cast no tick vote) the cost's
    sorted corrected gaps are kept in step vote by vote: asked after every login, as
    prefixes vote again, the window drops its oldest and equal gaps repeat, the cost is
    the one worked out vote by vote; and it is worked out afresh once the tick moves."""
    rng = random.Random(5)
    o = Overhead("srv", window=12)
    kept = 0
    for i in range(1500):
        k = rng.choice([1, 1, 1, 1, 2, 3, 6])
        o.update(f"p{rng.randrange(30)}", float(rng.randrange(-4, 30)), k, rng.uniform(0.0, 33.0),
                 wired=rng.random() < 0.8)
        before = o._corrected
        assert o.cost() == pytest.approx(_cost_per_vote(o), abs=1e-9), i
        kept += before is not None and o._corrected is before
    assert kept > 500  # most logins left the tick where it was: no pass over the gaps


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


def test_prefix_view_of_a_loaded_history_with_repeated_sessions_and_groups() -> None:
    """A loaded history can hold a session more than once and logins of several
    (server, access kind) groups, interleaved, some without a gap: the view counts each
    session's logins and proven accounts, and the relay figures it gives each session
    are the other sessions' (asked twice: the kept answer is the same)."""
    from pathsentry.detectors.latency.prefixes import PREFIX_ROW, PrefixView
    from pathsentry.detectors.latency.state import Session
    from pathsentry.enrich.geo import GeoInfo

    rows = [  # session, overhead key, gap, samples, kind, account, proven
        ("s1", "a", 12.5, 3, "residential", "x", 1),
        ("s2", "b", 30.0, 1, "mobile", "y", 0),
        ("s1", "a", None, 0, "residential", "x", 1),
        ("s3", "a", 8.0, 5, "residential", "z", 1),
        ("s4", "b", 9.0, 2, "mobile", "x", 1),
        ("s2", "a", 14.0, 4, "residential", "y", 1),
    ]
    hist = tuple(v for row in rows for v in row)
    view = PrefixView(hist)
    assert view.logins == len(rows) == len(hist) // PREFIX_ROW
    assert view.rows == {"s1": 2, "s2": 2, "s3": 1, "s4": 1}
    assert view.own == {"s1": ["x", "x"], "s3": ["z"], "s4": ["x"], "s2": ["y"]}
    assert view.proven == {"x": 3, "z": 1, "y": 1} and view.hits == 5
    assert view.keys == [("a", "residential"), ("b", "mobile")]
    assert [(sid, view.keys[g], gap, k) for sid, g, gap, k, _ in view.gapped] == [
        (r[0], (r[1], r[4]), r[2], r[3]) for r in rows if r[2] is not None]
    assert all(den == (k + 1) ** 2 * (k + 2) for _, _, _, k, den in view.gapped)

    w = make_world(seed=4)
    det = w.det
    det.prefix_gaps.put("198.51.100.0/24", hist)
    for sid in ("s1", "s2", "s3", "s4", "s1"):
        sess = Session()
        sess.prefix, sess.session_id, sess.event_id = "198.51.100.0/24", sid, f"e-{sid}"
        sess.geo = GeoInfo(kind="hosting")  # a hosting /24 is one exit
        sess.exit = det.exit_of(sess)  # (as the login sets it)
        assert sess.exit == "198.51.100.0/24"
        others = [r for r in rows if r[0] != sid]
        accounts = {r[5] for r in others if r[6]}
        hits = sum(r[6] for r in others)
        lo, hi = det.prefix_share
        x = hits / len(others)
        strength = (0.0 if len(accounts) < det.prefix_proven_accounts else
                    0.0 if x <= lo else 1.0 if x >= hi else (x - lo) / (hi - lo))
        expected = (strength, len(accounts), len(others))
        assert det.prefix_relays(sess) == expected, sid
        assert det.prefix_relays(sess) == expected, sid


def test_prefix_view_advanced_by_a_login_is_the_view_built_afresh() -> None:
    """A view moved on by a login (the oldest rows dropped, one added) holds what a view
    built from the new history holds, through sessions logging in again, proven logins,
    logins without a gap, a second (server, access kind) group and shorter keeps; and
    it is asked again from nothing (no residuals or relay figures kept)."""
    from pathsentry.detectors.latency.prefixes import PREFIX_ROW, PrefixView

    rng = random.Random(8)
    hist: tuple[object, ...] = ()
    view = PrefixView(hist)
    advanced = 0
    for i in range(3000):
        sid = f"s{rng.randrange(40)}"
        group = ("a", "residential") if rng.random() < 0.93 else ("b", "mobile")
        gap = None if rng.random() < 0.15 else round(rng.uniform(-3.0, 40.0), 2)
        row = (sid, group[0], gap, rng.randint(0, 6), group[1], f"acct{rng.randrange(25)}",
               1 if rng.random() < 0.2 else 0)
        if rng.random() < 0.1:  # the session's earlier row goes (as ``learn_prefix`` does)
            hist = tuple(v for j in range(0, len(hist), PREFIX_ROW) if hist[j] != sid
                         for v in hist[j:j + PREFIX_ROW])
        keep = 16 if rng.random() < 0.95 else rng.randint(1, 16)
        hist = (hist + row)[-PREFIX_ROW * keep:]
        view.terms, view.relays_sid = [], "asked"
        if view.advance(hist):
            advanced += 1
        else:
            view = PrefixView(hist)
        fresh = PrefixView(hist)
        for field in ("hist", "rows", "own", "proven", "hits", "keys", "gapped", "logins", "figs",
                      "terms", "sum_sid", "sum_total", "sum_n", "relays_sid", "relays"):
            assert getattr(view, field) == getattr(fresh, field), (i, field)
    assert advanced > 1000
