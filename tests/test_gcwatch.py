"""The worker's garbage-collector pause counters."""

from __future__ import annotations

import gc
import time
import weakref

from pathsentry.streams.gcwatch import GcPauses, GcSchedule


def test_pauses_are_counted_per_generation_and_windowed_by_time() -> None:
    watch = GcPauses()
    watch.install()
    watch.install()  # once only
    try:
        gc.collect(0)
        gc.collect(2)
        mid = time.time()
        time.sleep(0.01)
        gc.collect(2)
    finally:
        watch.remove()
    gc.collect(2)  # after remove: not counted
    s = watch.summary()
    assert s["gen0"]["n"] >= 1
    assert s["gen2"]["n"] == 2
    assert s["gen2"]["total_ms"] >= s["gen2"]["max_ms"] >= 0.0
    assert s["gen2"]["total_cpu_ms"] >= 0.0
    later = watch.summary(since_s=mid)
    assert later["gen2"]["n_since"] == 1 and later["gen2"]["n"] == 2
    assert watch.summary(since_s=time.time() + 1)["gen2"] == {
        "n": 2, "total_ms": s["gen2"]["total_ms"], "total_cpu_ms": s["gen2"]["total_cpu_ms"],
        "n_since": 0, "max_ms": 0.0}


class _Node:
    me: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    node = _Node()
    node.me = node
    return weakref.ref(node)


def test_a_frozen_cycle_is_freed_by_the_next_full_collection_only() -> None:
    sched = GcSchedule(freeze_interval_s=1.0, full_interval_s=10.0, full_growth_mib=1e9,
                       now=0.0, rss_mib=lambda: 100.0)
    try:
        assert sched.tick(0.5) is None
        assert not gc.isenabled(), "automatic collections are off from the first tick"
        ref = _cycle()  # garbage already, but never collected automatically
        assert sched.tick(1.0) == "freeze"
        gc.collect()
        assert ref() is not None, "a frozen cycle is not walked by a collection"
        assert sched.tick(5.0) == "freeze"
        assert sched.tick(10.0) == "full" and sched.last_full_reason == "interval"
        assert ref() is None
        assert sched.last_full_freed >= 1 and sched.last_full_ms >= 0.0
        assert sched.tick(10.5) is None  # both clocks restart at a full collection
    finally:
        sched.stop()
    assert gc.isenabled()


def test_memory_growth_brings_the_full_collection_forward() -> None:
    rss = [100.0]
    sched = GcSchedule(freeze_interval_s=1.0, full_interval_s=3600.0, full_growth_mib=256.0,
                       now=0.0, rss_mib=lambda: rss[0])
    try:
        assert sched.tick(0.5) is None  # takes over at 100 MiB
        ref = _cycle()
        rss[0] = 300.0
        assert sched.tick(1.0) == "freeze"  # grown 200 MiB: below the valve
        rss[0] = 356.0
        assert sched.tick(2.0) == "full" and sched.last_full_reason == "256 MiB grown"
        assert ref() is None
        rss[0] = 400.0  # measured from the new level after a full collection
        assert sched.tick(3.0) == "freeze"
    finally:
        sched.stop()


def test_the_growth_valve_scales_with_the_memory_at_the_last_full_collection() -> None:
    rss = [600.0]
    sched = GcSchedule(freeze_interval_s=1.0, full_interval_s=3600.0, full_growth_mib=256.0,
                       full_growth_ratio=1.0, now=0.0, rss_mib=lambda: rss[0])
    try:
        assert sched.tick(0.5) is None  # takes over at 600 MiB: the valve is at 1200 MiB
        rss[0] = 1000.0
        assert sched.tick(1.0) == "freeze", "400 MiB grown: past the fixed amount, below the share"
        rss[0] = 1200.0
        assert sched.tick(2.0) == "full" and sched.last_full_reason == "600 MiB grown"
        rss[0] = 1300.0  # from 1200 MiB on, the valve is at 2400 MiB
        assert sched.tick(3.0) == "freeze"
    finally:
        sched.stop()
    small = GcSchedule(freeze_interval_s=1.0, full_interval_s=3600.0, full_growth_mib=256.0,
                       full_growth_ratio=1.0, now=0.0, rss_mib=lambda: 100.0)
    small.stop()
    assert small.growth_mib(100.0) == 256.0, "a small heap keeps the fixed amount"


def test_an_idle_second_brings_a_due_collection_forward_and_a_busy_one_does_not() -> None:
    """Past a share of the valve's growth, the full collection runs at the first idle
    tick, where its pause delays no event; busy ticks wait for the valve itself; below
    the share an idle tick only freezes."""
    rss = [600.0]
    sched = GcSchedule(freeze_interval_s=1.0, full_interval_s=3600.0, full_growth_mib=256.0,
                       full_growth_ratio=1.0, idle_growth_share=0.25, now=0.0,
                       rss_mib=lambda: rss[0])
    try:
        assert sched.tick(0.5) is None  # takes over at 600 MiB: the valve is at 1200 MiB
        rss[0] = 700.0
        assert sched.tick(1.0, idle=True) == "freeze", "100 MiB: below a quarter of 600"
        rss[0] = 800.0
        assert sched.tick(2.0) == "freeze", "200 MiB grown, but events are arriving"
        ref = _cycle()
        assert sched.tick(3.0, idle=True) == "full"
        assert sched.last_full_reason == "idle, 200 MiB grown" and ref() is None
        rss[0] = 900.0  # from 800 MiB on: a quarter of the 800 MiB valve is 200
        assert sched.tick(4.0, idle=True) == "freeze"
    finally:
        sched.stop()
    off = GcSchedule(freeze_interval_s=1.0, full_interval_s=3600.0, full_growth_mib=256.0,
                     now=0.0, rss_mib=lambda: rss[0])
    try:
        assert off.tick(0.5) is None
        rss[0] = 1100.0
        assert off.tick(1.0, idle=True) == "freeze", "idle_growth_share 0: the valve only"
    finally:
        off.stop()
