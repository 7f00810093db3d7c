"""When the session stage's learned state is saved: early (once warmed up) and then as often
as it changed.

Owns :class:`LearnedSavePolicy`, a pure decision (no clock, no Kafka: the app's timer
passes the time and the count of events the session stage has run) of whether the
snapshot file and the ``l:0`` save of the state topic are due. A worker killed with
SIGKILL restarts from these; the policy bounds what it loses to about
``learned_save_interval_s`` of learning:

- **warm-up**: the first save as soon as ``learned_warmup_events`` events were run (a
  kill a few seconds later no longer restarts the stage cold);
- **interval**: then every ``learned_save_interval_s``, skipped while fewer than
  ``learned_save_min_events`` events were run since the last save (little changed);
- **burst**: sooner, once ``learned_save_burst_events`` events were run since the last
  save, but never within ``learned_save_min_gap_s`` of it (bounds the cost on the event
  loop under heavy traffic).

The saves themselves (their duration and size are measured and served on /stats) are in
:mod:`pathsentry.streams.persistence`; the timer that asks in :mod:`pathsentry.streams.app`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pathsentry.config import WorkerConfig

__all__ = ["LearnedSavePolicy"]


@dataclass
class LearnedSavePolicy:
    interval_s: float
    warmup_events: int
    min_events: int
    burst_events: int
    min_gap_s: float
    #: events run and time at the last save (None: not saved yet by this process)
    saved_events: int = 0
    saved_at: float | None = None
    #: why the last save was due
    last_reason: str = ""

    @classmethod
    def from_config(cls, worker: WorkerConfig) -> LearnedSavePolicy:
        return cls(interval_s=worker.learned_save_interval_s,
                   warmup_events=worker.learned_warmup_events,
                   min_events=worker.learned_save_min_events,
                   burst_events=worker.learned_save_burst_events,
                   min_gap_s=worker.learned_save_min_gap_s)

    def due(self, now: float, events: int) -> str | None:
        """Why a save is due at ``now`` after ``events`` events run in all (None: not due).

        >>> p = LearnedSavePolicy(30.0, warmup_events=100, min_events=10, burst_events=1000,
        ...                       min_gap_s=5.0)
        >>> p.due(0.0, 99), p.due(1.0, 100)
        (None, 'warm-up')
        >>> p.saved(1.0, 100); p.due(20.0, 500), p.due(31.0, 105), p.due(31.0, 110)
        (None, None, 'interval')
        >>> p.due(3.0, 5000), p.due(6.0, 1100)
        (None, 'burst')
        """
        changed = events - self.saved_events
        if self.saved_at is None:
            return "warm-up" if events >= self.warmup_events else None
        elapsed = now - self.saved_at
        if elapsed < self.min_gap_s:
            return None
        if changed >= self.burst_events:
            return "burst"
        if elapsed >= self.interval_s and changed >= self.min_events:
            return "interval"
        return None

    def saved(self, now: float, events: int, reason: str = "") -> None:
        """Record a save made at ``now`` after ``events`` events (whatever asked for it)."""
        self.saved_at, self.saved_events, self.last_reason = now, events, reason
