"""The worker's garbage collector: its pauses per generation, and a schedule that keeps
collections young.

A collection stops the worker's event loop: every event waiting in it waits that much
longer. Python's collector promotes survivors to older generations and eventually walks
all of them: with the detectors' state and the events a stage holds, a generation-1
collection takes hundreds of ms. :class:`YoungCollections` instead moves survivors out
of the collector's way every second (after collecting the youngest generation) and runs
one full collection at a longer, fixed interval. ``/stats`` shows the pauses.

>>> import gc
>>> watch = GcPauses()
>>> watch.install()
>>> _ = gc.collect(2)
>>> watch.remove()
>>> s = watch.summary()
>>> s["gen2"]["n"] >= 1 and s["gen2"]["max_ms"] >= 0.0
True
"""

from __future__ import annotations

import gc
import time
from collections import deque
from typing import Any

__all__ = ["GcPauses", "YoungCollections"]


class GcPauses:
    """Counts, total and longest pause of each generation, and recent pauses by time."""

    def __init__(self, recent: int = 20_000) -> None:
        self.count = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        #: (wall time s at the end, pause ms, generation) of the latest collections
        self.recent: deque[tuple[float, float, int]] = deque(maxlen=recent)
        self._started: float | None = None

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        if self._started is None:
            return
        ms = (time.perf_counter() - self._started) * 1000
        self._started = None
        gen = min(2, max(0, int(info.get("generation", 0))))
        self.count[gen] += 1
        self.total_ms[gen] += ms
        self.recent.append((time.time(), ms, gen))

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def summary(self, since_s: float = 0.0) -> dict[str, dict[str, float]]:
        """Per generation: collections and their total ms since start, and the count and
        longest pause of those that ended after ``since_s`` (wall time) among the recent."""
        out: dict[str, dict[str, float]] = {}
        for gen in range(3):
            window = [ms for t, ms, g in self.recent if g == gen and t >= since_s]
            out[f"gen{gen}"] = {
                "n": self.count[gen],
                "total_ms": round(self.total_ms[gen], 1),
                "n_since": len(window),
                "max_ms": round(max(window, default=0.0), 1),
            }
        return out


class YoungCollections:
    """Every ``freeze_interval_s``: collect generation 0, then freeze what is left (it is
    no longer walked by automatic collections). Every ``full_interval_s``: unfreeze,
    collect everything once, freeze again. Call :meth:`tick` periodically.

    Objects that die after being frozen are still freed by reference counting; only
    cyclic garbage waits for the next full collection.

    >>> import gc
    >>> sched = YoungCollections(freeze_interval_s=1.0, full_interval_s=60.0, now=0.0)
    >>> sched.tick(0.5) is None, sched.tick(1.0), sched.tick(61.0)
    (True, 'young', 'full')
    >>> gc.unfreeze()
    """

    def __init__(self, *, freeze_interval_s: float, full_interval_s: float, now: float) -> None:
        self.freeze_interval_s = freeze_interval_s
        self.full_interval_s = full_interval_s
        self._young_at = self._full_at = now
        #: objects the last full collection found unreachable
        self.last_full_freed = 0
        self.last_full_ms = 0.0

    def tick(self, now: float) -> str | None:
        """Run what is due at ``now`` (monotonic seconds): ``"full"``, ``"young"`` or None."""
        if now - self._full_at >= self.full_interval_s:
            t0 = time.perf_counter()
            gc.unfreeze()
            self.last_full_freed = gc.collect()
            gc.freeze()
            self.last_full_ms = (time.perf_counter() - t0) * 1000
            self._full_at = self._young_at = now
            return "full"
        if now - self._young_at >= self.freeze_interval_s:
            gc.collect(0)
            gc.freeze()
            self._young_at = now
            return "young"
        return None
