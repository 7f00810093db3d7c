"""The cross-network window: its running sums are the window's buckets summed."""

from __future__ import annotations

import random

import pytest

from pathsentry.detectors.injection_window import ANY, NetworkWindow, WindowSettings, _Net


def summed(w: NetworkWindow, origin: str, ts: float) -> dict[str, tuple[int, int, dict[str, int]]]:
    """The window ending at ``ts`` summed from the buckets themselves."""
    end = int(ts // w.s.bucket_s)
    out: dict[str, _Net] = {}
    for b in range(end - max(1, int(w.s.window_s // w.s.bucket_s)), end + 1):
        for net, c in w.buckets.get(b, {}).get(origin, {}).items():
            out.setdefault(net, _Net()).merge(c)
    return {net: (c.n, c.flagged, c.anomalies) for net, c in out.items()}


def read(w: NetworkWindow, origin: str, ts: float) -> dict[str, tuple[int, int, dict[str, int]]]:
    return {net: (c.n, c.flagged, dict(c.anomalies)) for net, c in w._nets(origin, ts).items()}


def test_the_running_sums_are_the_buckets_summed_as_buckets_come_and_go() -> None:
    rng = random.Random(5)
    w = NetworkWindow(WindowSettings(window_s=300.0, bucket_s=60.0, min_networks=3, max_entries=64))
    ts = 10_000.0
    checked_late = checked_newest = 0
    for _ in range(4000):
        ts += rng.expovariate(1 / 20.0)
        # now and then an answer from minutes back (late, or older than the window)
        t = ts - rng.uniform(0.0, 600.0) if rng.random() < 0.15 else ts
        origin = rng.choice(["www", "ws"])
        w.add(origin, f"AS{rng.randint(1, 12)}", t, rng.choice([None, None, "status:503", "marks 200"]),
              flagged=rng.random() < 0.2)
        for o in ("www", "ws"):
            assert read(w, o, ts) == summed(w, o, ts)
            assert read(w, o, t) == summed(w, o, t)
        checked_newest += int(ts // 60.0) == w.newest
        checked_late += int(t // 60.0) != w.newest
    # both ways of reading the window were taken
    assert checked_newest > 1000 and checked_late > 100
    # and every network listed has answers in it, every anomaly a count
    for per_net in w.totals.values():
        assert all(c.n > 0 and all(k > 0 for k in c.anomalies.values()) for c in per_net.values())


def test_a_network_whose_answers_all_left_the_window_is_not_among_the_others() -> None:
    w = NetworkWindow(WindowSettings(window_s=120.0, bucket_s=60.0, min_networks=1))
    w.add("www", "AS1", 0.0, "status:503", flagged=True)
    w.add("www", "AS2", 100.0, None, flagged=False)
    assert w.spread("www", "status:503", 100.0) == (1, 2)
    w.add("www", "AS2", 200.0, None, flagged=False)  # bucket 0 leaves the window
    assert w.spread("www", "status:503", 200.0) == (0, 1)
    assert w.others("www", "AS9", 200.0) == 0.0
    assert "www" in w.totals and set(w.totals["www"]) == {"AS2"}


def test_the_baseline_is_the_typical_other_network_over_every_origin() -> None:
    """Ten networks answer two origins in plaintext, one of them flagged half the time
    (an injecting ISP): the others' baseline is the median network's rate (0), over
    all their answers to both origins, without the asking network's own."""
    w = NetworkWindow(WindowSettings(min_networks=4))
    for i in range(200):
        net = f"AS{i % 10}"
        w.add("www" if i % 2 else "ws", net, 100.0 + i, None, flagged=net == "AS0" and i % 20 == 0)
    assert w.baseline("AS9", 300.0) == (0.0, pytest.approx(180.0, rel=0.01))
    assert w.baseline("AS0", 300.0) == (0.0, pytest.approx(180.0, rel=0.01))
    few = NetworkWindow(WindowSettings(min_networks=4))
    for net in ("AS1", "AS2", "AS3", "AS4"):
        few.add("www", net, 100.0, None, flagged=False)
    assert few.baseline("AS1", 100.0) is None and few.baseline("AS9", 100.0) == (0.0, 4.0)


def test_the_baseline_decays_with_its_half_life() -> None:
    w = NetworkWindow(WindowSettings(min_networks=1, plain_half_life_s=3600.0))
    w.add("www", "AS1", 0.0, None, flagged=True)
    w.add("www", "AS1", 0.0, None, flagged=False)
    assert w.baseline("AS9", 3600.0) == (0.5, 1.0)
    w.add("www", "AS2", 0.0, None, flagged=False, tls=True, tls_anomaly=True)
    assert w.tls_baseline("AS9", 7200.0) == (1.0, 0.25)


def test_the_baseline_is_taken_over_the_networks_heard_from_most_recently() -> None:
    """Ten networks forged every answer long ago, then ten clean ones answered; with a
    baseline over the 10 most recent networks the old ones are not read, and a clean
    network answering again moves back among the recent ones."""
    w = NetworkWindow(WindowSettings(min_networks=3, baseline_networks=10))
    for i in range(10):
        w.add("www", f"OLD{i}", 100.0 + i, None, flagged=True)
    for i in range(10):
        w.add("www", f"NEW{i}", 200.0 + i, None, flagged=False)
    assert w.baseline("X", 300.0) == (0.0, pytest.approx(10.0, rel=0.01))
    wide = NetworkWindow(WindowSettings(min_networks=3, baseline_networks=20))
    for i in range(10):
        wide.add("www", f"OLD{i}", 100.0 + i, None, flagged=True)
    for i in range(10):
        wide.add("www", f"NEW{i}", 200.0 + i, None, flagged=False)
    rate, _ = wide.baseline("X", 300.0) or (None, None)
    assert rate == 0.5
    w.add("www", "OLD0", 400.0, None, flagged=True)  # OLD0 is recent again, NEW0 is not
    rate, answers = w.baseline("X", 400.0) or (None, None)
    assert rate == 0.0 and answers == pytest.approx(9 + 2, rel=0.01)  # OLD0's two, NEW1-9
    assert [net for net, _ in w._recent(w.plain[ANY])][:2] == ["OLD0", "NEW9"]
