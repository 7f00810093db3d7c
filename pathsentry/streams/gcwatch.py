"""The worker's garbage collector: its pauses per generation, and a schedule that keeps
it out of the way.

A collection stops the worker's event loop: every event waiting in it waits that much
longer. Python's collector walks every container object that survives until the next
collection, and promotes survivors to older generations that it walks again: with the
detectors' state and the events a stage holds, a generation-1 collection takes hundreds
of ms, and collections cost about a tenth of the worker's time. Almost nothing a worker
allocates is cyclic garbage (a full collection every few seconds frees a few hundred
objects), so :class:`GcSchedule` leaves freeing to reference counting: it moves
everything out of the collector's way every second and runs one full collection at a
long interval, or when the memory has grown -- sooner, at a quiet moment, once it has
grown by a share of that, so that the pause falls where no event waits for it (after a
backlog is drained, between bursts). A full collection walks everything alive,
so the growth that brings it forward is a share of the memory at the last one (as Go's
``GOGC`` does), not only a fixed amount: a worker whose state fills up from 500 MiB to
1 GiB walks it once, not once per 256 MiB, and the collector's cost per byte allocated
stays bounded however large the state. ``/stats`` shows the pauses.

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
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["GcPauses", "GcSchedule", "resident_mib"]


class GcPauses:
    """Counts, total and longest pause of each generation, and recent pauses by time."""

    def __init__(self, recent: int = 20_000) -> None:
        self.count = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        #: CPU time of the collecting thread, ms (below the pause on a loaded machine)
        self.total_cpu_ms = [0.0, 0.0, 0.0]
        #: (wall time s at the end, pause ms, generation) of the latest collections
        self.recent: deque[tuple[float, float, int]] = deque(maxlen=recent)
        self._started: float | None = None
        self._started_cpu = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self._started_cpu = time.thread_time()
            return
        if self._started is None:
            return
        ms = (time.perf_counter() - self._started) * 1000
        self._started = None
        gen = min(2, max(0, int(info.get("generation", 0))))
        self.count[gen] += 1
        self.total_ms[gen] += ms
        self.total_cpu_ms[gen] += (time.thread_time() - self._started_cpu) * 1000
        self.recent.append((time.time(), ms, gen))

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def summary(self, since_s: float = 0.0) -> dict[str, dict[str, float]]:
        """Per generation: collections and their total ms (and CPU ms) since start, and the count and
        longest pause of those that ended after ``since_s`` (wall time) among the recent."""
        out: dict[str, dict[str, float]] = {}
        for gen in range(3):
            window = [ms for t, ms, g in self.recent if g == gen and t >= since_s]
            out[f"gen{gen}"] = {
                "n": self.count[gen],
                "total_ms": round(self.total_ms[gen], 1),
                "total_cpu_ms": round(self.total_cpu_ms[gen], 1),
                "n_since": len(window),
                "max_ms": round(max(window, default=0.0), 1),
            }
        return out


class GcSchedule:
    """Python's automatic collector off; every ``freeze_interval_s`` everything alive is
    moved out of the collector's way (``gc.freeze``, O(1)); one full collection every
    ``full_interval_s``, or sooner once the resident memory has grown by
    ``full_growth_mib`` since the last one (a safety valve against cyclic garbage piling
    up); or at a tick the caller says is *idle* (no event arrived since the last) once it
    has grown by ``idle_growth_share`` of that valve: the collection is due soon anyway,
    and a quiet second is when its pause delays nothing. Call :meth:`tick` periodically,
    from one thread.

    Objects that die after being frozen are still freed by reference counting; only
    cyclic garbage waits for the next full collection.

    >>> import gc
    >>> sched = GcSchedule(freeze_interval_s=1.0, full_interval_s=60.0,
    ...                    full_growth_mib=10**6, now=0.0)
    >>> sched.tick(0.5) is None, sched.tick(1.0), sched.tick(61.0)
    (True, 'freeze', 'full')
    >>> sched.stop()
    >>> grown = iter([100.0, 100.0, 100.0, 170.0, 170.0])
    >>> idle = GcSchedule(freeze_interval_s=1.0, full_interval_s=3600.0, full_growth_mib=256.0,
    ...                   idle_growth_share=0.25, now=0.0, rss_mib=lambda: next(grown))
    >>> idle.tick(1.0, idle=True), idle.tick(2.0), idle.tick(3.0, idle=True)
    ('freeze', 'freeze', 'full')
    >>> idle.last_full_reason
    'idle, 70 MiB grown'
    >>> idle.stop()
    >>> GcSchedule(freeze_interval_s=1.0, full_interval_s=60.0, full_growth_mib=256.0,
    ...            full_growth_ratio=1.0, now=0.0).growth_mib(600.0)
    600.0
    """

    def __init__(self, *, freeze_interval_s: float, full_interval_s: float,
                 full_growth_mib: float, now: float, full_growth_ratio: float = 0.0,
                 idle_growth_share: float = 0.0,
                 rss_mib: Callable[[], float] | None = None) -> None:
        self.freeze_interval_s = freeze_interval_s
        self.full_interval_s = full_interval_s
        self.full_growth_mib = full_growth_mib
        self.full_growth_ratio = full_growth_ratio
        self.idle_growth_share = idle_growth_share
        self._rss_mib = rss_mib or resident_mib
        self._frozen_at = self._full_at = now
        self._rss_at_full = 0.0
        #: objects the last full collection found unreachable, its pause, and why it ran
        self.last_full_freed = 0
        self.last_full_ms = 0.0
        self.last_full_reason = ""

    def growth_mib(self, rss_at_full: float) -> float:
        """Growth (MiB) past ``rss_at_full`` that brings the next full collection forward."""
        return max(self.full_growth_mib, self.full_growth_ratio * rss_at_full)

    def stop(self) -> None:
        """Give the process back to Python's own collector."""
        gc.unfreeze()
        gc.enable()

    def tick(self, now: float, *, idle: bool = False) -> str | None:
        """Run what is due at ``now`` (monotonic seconds; ``idle``: no event arrived since
        the last tick): ``"full"``, ``"freeze"`` or None."""
        if gc.isenabled():  # from the first tick on, collections are this schedule's
            gc.disable()
            self._rss_at_full = self._rss_mib()
        if now - self._frozen_at < self.freeze_interval_s:
            return None
        rss = self._rss_mib()
        grown = rss - self._rss_at_full
        valve = self.growth_mib(self._rss_at_full)
        quiet = idle and self.idle_growth_share > 0.0 and grown >= self.idle_growth_share * valve
        if now - self._full_at >= self.full_interval_s or grown >= valve or quiet:
            self.last_full_reason = (f"{grown:.0f} MiB grown" if grown >= valve
                                     else f"idle, {grown:.0f} MiB grown" if quiet else "interval")
            t0 = time.perf_counter()
            gc.unfreeze()
            self.last_full_freed = gc.collect()
            gc.freeze()
            self.last_full_ms = (time.perf_counter() - t0) * 1000
            self._full_at = self._frozen_at = now
            self._rss_at_full = self._rss_mib()
            return "full"
        gc.freeze()
        self._frozen_at = now
        return "freeze"


def resident_mib() -> float:
    """This process's resident memory, MiB (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return 0.0
