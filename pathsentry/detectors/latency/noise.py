"""The residual noise of one access kind: its logins' gaps, judged against each
server's cost as it is now.

A login's gap (app minimum less the kernel TCP RTT) is ``cost + phase + noise`` with a
phase that is never negative, so what lands below the server's cost is measurement
noise, the side relays never reach (:meth:`~.baselines.OverheadBook.noise_scale`).
The cost it is measured against is itself learned, and on a long tick it moves by
several ms as the server's exit prefixes vote (a median over 8-40 votes whose phases
spread over the tick). A residual taken once, against the cost of the moment, keeps
that moment's error for as long as its prefix stays in the window: a few logins
counted while the cost stood 10 ms high would read as 10 ms of noise for hours, and
three noise scales of it widen every bound of the kind by 30 ms. So each vote keeps
its gap and its server (one vote per exit prefix, the least recently heard from
dropped past ``cap``), and the residuals are taken against the servers' costs when
they are asked for (:meth:`NoiseVotes.lower`).

>>> votes = NoiseVotes(4)
>>> for source, gap in [("p1", 7.0), ("p2", 9.5), ("p3", 30.0), ("p4", 8.0)]:
...     votes.add(source, "srv", gap)
>>> votes.lower({"srv": 9.0}.get)  # against a cost of 9 ms
[-2.0, -1.0]
>>> votes.lower({"srv": 7.5}.get)  # the cost learned lower since
[-0.5]
>>> _ = votes.add("p5", "srv", 6.0)  # past the cap: p1's vote goes
>>> len(votes), votes.lower({"srv": 7.5}.get)
(4, [-1.5])
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from typing import Any

__all__ = ["NoiseVotes"]


class NoiseVotes:
    """One gap per exit prefix, with the server (overhead key) it was measured on; at
    most ``cap`` prefixes, the least recently heard from dropped. Each server's gaps are
    kept sorted, so the residuals at or below a cost are one binary search away."""

    __slots__ = ("_by_key", "cap", "votes")

    def __init__(self, cap: int, votes: list[list[Any]] | None = None) -> None:
        self.cap = max(2, cap)
        #: source -> (overhead key, gap ms), least recently heard from first
        self.votes: dict[str, tuple[str, float]] = {}
        #: overhead key -> its votes' gaps, ascending
        self._by_key: dict[str, list[float]] = {}
        for source, key, gap in votes or ():
            self.add(str(source), str(key), float(gap))

    def __len__(self) -> int:
        return len(self.votes)

    def add(self, source: str, key: str, gap: float) -> None:
        """Put ``source``'s gap, measured on server ``key``."""
        old = self.votes.pop(source, None)
        if old is not None:
            self._drop(*old)
        self.votes[source] = (key, gap)
        gaps = self._by_key.get(key)
        if gaps is None:
            gaps = self._by_key[key] = []
        insort(gaps, gap)
        if len(self.votes) > self.cap:
            gone = next(iter(self.votes))
            self._drop(*self.votes.pop(gone))

    def discard(self, source: str) -> bool:
        """Drop ``source``'s gap; returns whether it had one."""
        old = self.votes.pop(source, None)
        if old is None:
            return False
        self._drop(*old)
        return True

    def _drop(self, key: str, gap: float) -> None:
        gaps = self._by_key[key]
        del gaps[bisect_left(gaps, gap)]
        if not gaps:
            del self._by_key[key]

    def lower(self, cost_of: Callable[[str], float | None]) -> list[float]:
        """The residuals ``gap - cost`` at or below zero, ascending, against each server's
        cost as ``cost_of`` gives it now (a server without one is left out)."""
        out: list[float] = []
        for key, gaps in self._by_key.items():
            cost = cost_of(key)
            if cost is None:
                continue
            out += [g - cost for g in gaps[:bisect_right(gaps, cost)]]
        out.sort()
        return out

    def snapshot(self) -> list[list[Any]]:
        return [[source, key, gap] for source, (key, gap) in self.votes.items()]
