"""Votes and the phase arithmetic of the learned overheads (:mod:`.baselines`).

Owns :class:`_Votes` (one vote per source, kept sorted, its quantiles), the phase
quantiles of the minimum of ``k`` uniform phases (:func:`phase_quantile`,
:func:`phase_share` at the quantile the cost is read at, ``COST_Q``, and the median's
:func:`median_share`) and the median of their spread (:func:`spread_median`), and the
sample count a tick vote's key keeps (:func:`tick_samples`). Why the
cost is read at ``COST_Q`` is told in :mod:`.baselines`.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from typing import Any

from pathsentry.detectors.physics import interpolated

__all__ = ["COST_Q", "MIN_WIRED_COST", "median_share", "phase_quantile", "phase_share",
           "quantile_share", "spread_median", "tick_samples"]

#: the quantile of the phase-corrected wired gaps the cost is read at (each gap less its
#: phase's own quantile): the minimum of a few phases is densest near zero, so a low
#: quantile is tighter than the median, and relays, whose gaps only ever add a leg, do not
#: reach it while they hold fewer than three quarters of the votes (the median gave way
#: at a half, and a quarter of relayed votes already lifted it by a third of their leg)
COST_Q = 0.25
#: wired votes the cost needs before it is read at ``COST_Q`` (as many as the default
#: ``overhead_warmup``); with fewer, the middle of every vote (:meth:`.baselines.Overhead.middle`)
MIN_WIRED_COST = 8
#: ``log(0.5) / log(1 - COST_Q)``: a phase share at ``COST_Q`` to the median's and back
_TO_MEDIAN = math.log(0.5) / math.log(1.0 - COST_Q)


def phase_share(k: int) -> float:
    """The ``COST_Q`` quantile of the minimum of ``k`` uniform(0, 1) phases: what a cost
    vote of ``k`` app samples is corrected by (times the tick)."""
    return 1.0 - float((1.0 - COST_Q) ** (1.0 / max(1, k)))


def median_share(share: float) -> float:
    """The median of the minimum of the phases whose ``COST_Q`` quantile is ``share``
    (``1 - 0.5 ** (1 / k)``; 0 for 0: a vote saved corrected already)."""
    return 1.0 - float((1.0 - share) ** _TO_MEDIAN) if share > 0.0 else 0.0


def quantile_share(half: float) -> float:
    """:func:`median_share` undone (a saved vote's median share to its ``COST_Q`` one)."""
    return 1.0 - float((1.0 - half) ** (1.0 / _TO_MEDIAN)) if half > 0.0 else 0.0


_SPREAD_MEDIANS: dict[int, float] = {}


def spread_median(k: int) -> float:
    """The median of the spread (max - min) of ``k >= 2`` uniform(0, 1) phases, i.e.
    of ``Beta(k - 1, 2)``: the root of ``m ** (k - 1) * (k - (k - 1) * m) = 1 / 2``.

    >>> round(spread_median(2), 4), round(spread_median(3), 4)
    (0.2929, 0.5)
    """
    m = _SPREAD_MEDIANS.get(k)
    if m is None:
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = (lo + hi) / 2.0
            if mid ** (k - 1) * (k - (k - 1) * mid) < 0.5:
                lo = mid
            else:
                hi = mid
        m = _SPREAD_MEDIANS[k] = (lo + hi) / 2.0
    return m


def phase_quantile(k: int, alpha: float) -> float:
    """The ``1 - alpha`` quantile of the minimum of ``k`` uniform(0, 1) phases.

    >>> round(phase_quantile(1, 0.001), 3), round(phase_quantile(10, 0.001), 3)
    (0.999, 0.499)
    """
    memo = _PHASE_QUANTILES.get(alpha)
    if memo is None:
        memo = {}
        if len(_PHASE_QUANTILES) < _PHASE_ALPHAS_MAX:
            _PHASE_QUANTILES[alpha] = memo
    q = memo.get(k)
    if q is None:
        q = 1.0 - float(alpha ** (1.0 / max(1, k)))
        if len(memo) < _PHASE_MEMO_MAX:
            memo[k] = q
    return q


#: alpha -> samples -> :func:`phase_quantile`: the detector's two alphas and a few sample
#: counts, bounded (a session's probes can add samples without end)
_PHASE_QUANTILES: dict[float, dict[int, float]] = {}
_PHASE_ALPHAS_MAX = 16
_PHASE_MEMO_MAX = 4096


class _Votes:
    """One vote per source (the latest value of each exit prefix), at most ``cap``
    sources (the least recently heard from is dropped), and their quantiles. A farm
    behind one or a few /24s casts one or a few votes however many of its accounts log
    in, so it cannot drag a median the honest population sets. The votes are kept
    sorted as they change (a binary search and one insertion per vote), so a quantile
    is two list reads: the tick's 160 votes are asked for their median at every login."""

    __slots__ = ("_sorted", "cap", "votes")

    def __init__(self, cap: int, votes: list[list[Any]] | None = None) -> None:
        self.cap = max(2, cap)
        #: source -> vote, least recently heard from first (a plain dict keeps insertion
        #: order, and a vote again is popped and put back: cheaper than an ``OrderedDict``)
        self.votes: dict[str, float] = {}
        self._sorted: list[float] = []
        for source, x in votes or ():
            self.add(str(source), float(x))

    def add(self, source: str, x: float) -> str | None:
        """Put ``source``'s vote; returns the source dropped to keep to ``cap``, if one was."""
        votes = self.votes
        s = self._sorted
        old = votes.pop(source, None)
        if old is not None:
            del s[bisect_left(s, old)]
        votes[source] = x
        insort(s, x)
        if len(votes) > self.cap:
            gone = next(iter(votes))
            del s[bisect_left(s, votes.pop(gone))]
            return gone
        return None

    def discard(self, source: str) -> bool:
        """Drop ``source``'s vote; returns whether it had one."""
        old = self.votes.pop(source, None)
        if old is None:
            return False
        del self._sorted[bisect_left(self._sorted, old)]
        return True

    def __len__(self) -> int:
        return len(self.votes)

    def ordered(self) -> list[float]:
        """The votes in ascending order (the list itself: do not change it)."""
        return self._sorted

    def quantile(self, q: float) -> float:
        """Linear-interpolated quantile of the votes (0.0 when there are none)."""
        return interpolated(self._sorted, q)

    def snapshot(self) -> list[list[Any]]:
        return [[k, v] for k, v in self.votes.items()]


def tick_samples(key: str) -> int:
    """The sample count a tick vote's key ``#seq:k`` (``#seq:k:w`` from a wired line)
    keeps (0 for any other key)."""
    parts = key.split(":")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
