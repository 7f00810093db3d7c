"""The worker's garbage-collector pause counters."""

from __future__ import annotations

import gc
import time

from pathsentry.streams.gcwatch import GcPauses


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
