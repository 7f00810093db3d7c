"""Pauses of this process's garbage collector, per generation.

A collection stops the worker's event loop: every event waiting in it waits that much
longer. A full (generation 2) collection walks every tracked object the detectors keep,
so it is the pause that grows with the state; ``/stats`` shows them next to the latency.

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

__all__ = ["GcPauses"]


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
