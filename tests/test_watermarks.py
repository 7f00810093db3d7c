"""Watermark gates: order across writers that run at different paces, bounded holds."""

from __future__ import annotations

import logging
import random

import pytest

from pathsentry.streams.watermarks import Gate, decode_claims, encode_claims


def test_two_writers_at_different_paces_are_merged_in_order() -> None:
    """Writer "a" runs far ahead of writer "b" (a backlog after a rebalance): nothing of
    "a" past what "b" has claimed is released, and the merged output is in order."""
    rng = random.Random(3)
    a = sorted(rng.sample(range(10_000), 300))
    b = sorted(rng.sample(range(10_000), 300))
    g: Gate[int] = Gate(max_hold_s=1e9)
    g.expect({"a", "b"})
    out: list[int] = []
    # "a" delivers everything first, in chunks, then "b" catches up
    for i in range(0, 300, 50):
        chunk = a[i:i + 50]
        g.add(0, [(t, t) for t in chunk], {"a": chunk[-1]}, now=0.0)
        out += g.release([0], now=0.0)
    assert out == [], "nothing can be released before the slower writer claims"
    for i in range(0, 300, 30):
        chunk = b[i:i + 30]
        g.add(1, [(t, t) for t in chunk], {"b": chunk[-1]}, now=0.0)
        g.add(0, [], {"b": chunk[-1]}, now=0.0)  # claims reach every partition
        g.add(1, [], {"a": a[-1]}, now=0.0)
        out += g.release([0, 1], now=0.0)
        assert out == sorted(out)
    for p in (0, 1):  # "b" has nothing more: it goes idle
        g.add(p, [], {"b": b[-1]}, now=0.0, idle={"b"})
    out += g.release([0, 1], now=0.0)
    assert out == sorted(a + b)
    assert len(g) == 0 and g.released_to == a[-1]


def test_a_silent_source_holds_items_at_most_max_hold(caplog: pytest.LogCaptureFixture) -> None:
    g: Gate[str] = Gate(max_hold_s=5.0)
    g.expect({"a", "b"})
    g.add(0, [(10, "x")], {"a": 10}, now=100.0)
    assert g.release([0], now=104.0) == []
    caplog.set_level(logging.WARNING, logger="pathsentry.streams.watermarks")
    assert g.release([0], now=105.5) == ["x"]
    assert g.forced == 1 and g.released_to == 10
    assert any("watermark stalled" in r.getMessage() and "b" in r.getMessage() for r in caplog.records)


def test_held_items_are_bounded() -> None:
    g: Gate[int] = Gate(max_hold_s=1e9, max_items=100)
    g.expect({"a", "b"})
    g.add(0, [(t, t) for t in range(150)], {"a": 150}, now=0.0)
    out = g.release([0], now=0.0)
    assert out == list(range(50)) and len(g) == 100


def test_idle_sources_hold_nothing_back_until_they_claim_again() -> None:
    g: Gate[str] = Gate(max_hold_s=1e9)
    g.expect({"a", "b"})
    g.add(0, [], {"b": 5}, now=0.0, idle={"b"})
    g.add(0, [(20, "x")], {"a": 20}, now=0.0)
    assert g.release([0], now=0.0) == ["x"]
    g.add(0, [(25, "late-b")], {"b": 25}, now=0.0)  # "b" is active again
    g.add(0, [(30, "y")], {"a": 30}, now=0.0)
    assert g.release([0], now=0.0) == ["late-b"]  # "y" waits for "b" again
    assert not g.idle([0])


def test_unowned_partitions_do_not_hold_owned_ones() -> None:
    g: Gate[str] = Gate(max_hold_s=1e9)
    g.expect({"a"})
    g.add(0, [(10, "p0")], {"a": 10}, now=0.0)
    g.add(1, [(5, "p1")], {}, now=0.0)  # partition 1 has no claims yet
    assert g.release([0], now=0.0) == ["p0"]
    assert g.release([0, 1], now=0.0) == []  # owned again: p1 waits for its claim


def test_drop_forgets_everything() -> None:
    g: Gate[str] = Gate()
    g.add(0, [(1, "x")], {"a": 0}, now=0.0)
    assert g.drop() == 1 and len(g) == 0 and g.released_to == -1 and g.watermark(0) == -1


def test_claims_round_trip_and_bad_headers() -> None:
    headers = encode_claims({"s:0": 5, "s:1": 7}, idle=["s:1"])
    assert decode_claims(headers) == ({"s:0": 5, "s:1": 7}, {"s:1"})
    assert decode_claims({"pathsentry-wm": headers[0][1]}) == ({"s:0": 5, "s:1": 7}, {"s:1"})
    assert decode_claims([("pathsentry-wm", b"[1,2]")]) == ({}, set())
    assert decode_claims([("other", b"{}")]) == ({}, set())


def test_release_in_chunks_claims_only_what_is_complete() -> None:
    g: Gate[int] = Gate(max_hold_s=1e9)
    g.expect({"a"})
    g.add(0, [(t, t) for t in (1, 2, 2, 3, 4)], {"a": 4}, now=0.0)
    assert g.release([0], now=0.0, limit=2) == [1, 2]
    assert g.released_to == 1  # the other item at 2 is still held
    assert g.release([0], now=0.0, limit=2) == [2, 3]
    assert g.release([0], now=0.0, limit=2) == [4]
    assert g.released_to == 4


@pytest.mark.parametrize("seed", range(20))
def test_out_of_order_batches_are_released_in_produce_time_then_arrival_order(seed: int) -> None:
    rnd = random.Random(seed)
    g: Gate[tuple[int, int]] = Gate(max_hold_s=1e9)
    g.expect({"a"})
    added: list[tuple[int, int]] = []
    released: list[tuple[int, int]] = []
    for step in range(30):
        p = rnd.randrange(3)
        batch = [(rnd.randint(step, step + 20), len(added) + i) for i in range(rnd.randint(0, 8))]
        added += batch
        g.add(p, [(t, (t, n)) for t, n in batch], {"a": step}, now=float(step))
        released += g.release([0, 1, 2], now=float(step), limit=rnd.choice([None, 1, 4]))
        done = set(released)  # what the stage may claim has all been released
        assert all((t, n) in done for t, n in added if t <= g.released_to)
    for p in range(3):
        g.add(p, [], {"a": 10**9}, now=31.0)
    while len(g):
        released += g.release([0, 1, 2], now=31.0, limit=5)
    assert released == sorted(added)  # by produce time, ties in arrival order
