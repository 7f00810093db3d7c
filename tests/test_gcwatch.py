"""The worker's garbage-collector pause counters."""

from __future__ import annotations

import gc
import time
import weakref

from pathsentry.streams.gcwatch import GcPauses, YoungCollections


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
    later = watch.summary(since_s=mid)
    assert later["gen2"]["n_since"] == 1 and later["gen2"]["n"] == 2
    assert watch.summary(since_s=time.time() + 1)["gen2"] == {
        "n": 2, "total_ms": s["gen2"]["total_ms"], "n_since": 0, "max_ms": 0.0}


class _Node:
    me: _Node | None = None


def test_a_cycle_moved_aside_by_a_young_tick_is_freed_by_the_next_full_collection() -> None:
    sched = YoungCollections(freeze_interval_s=1.0, full_interval_s=10.0, now=0.0)
    try:
        node = _Node()
        node.me = node
        ref = weakref.ref(node)
        assert sched.tick(0.5) is None
        assert sched.tick(1.0) == "young"  # still alive: frozen, no longer walked
        del node
        gc.collect()
        assert ref() is not None, "a frozen cycle is not collected"
        assert sched.tick(5.0) == "young"
        assert sched.tick(10.0) == "full"
        assert ref() is None
        assert sched.last_full_freed >= 1 and sched.last_full_ms >= 0.0
        assert sched.tick(10.5) is None  # both clocks restart at a full collection
    finally:
        gc.unfreeze()
