"""Event-time alignment of the producers' partitions.

A game backend publishes logins (keyed by account) and telemetry (keyed by
session) to different topics, so one session's login and its probes arrive on
different partitions. Consumed naively, a backlog (a worker catching up after a
restart or a rebalance) interleaves them in fetch order: minutes or hours of
logins before the traceroutes of the same minutes. Detectors that join a
session's events or count logins in a time window then see a world that never
happened.

:class:`PartitionAligner` buffers fetched records per partition and releases them
merged in timestamp order, never past the *watermark*: the oldest "newest
buffered timestamp" of the partitions that may still deliver older records. A
partition with an empty buffer holds the others back only while it is neither
caught up with its log end nor silent for longer than ``max_wait_s`` (so live
traffic pays at most one poll of latency, and an idle partition never stalls
the rest). A partition the caller names *lagging* (a backlog the fetcher has not
delivered yet: the ingest loop names those not fetched yet and those at least a
batch behind their log end) holds them back for up to ``lag_wait_s`` instead:
when a worker catches up, the partition whose fetch came back first would
otherwise run minutes of event time ahead of the others, and every stage
downstream would hold it until the others caught up.

>>> from collections import namedtuple
>>> R = namedtuple("R", "timestamp offset")
>>> a = PartitionAligner(max_wait_s=1.0)
>>> a.track({"logins-0", "telemetry-0"}, now=0.0)
>>> a.add("logins-0", [R(10, 0), R(30, 1)], now=0.0)
>>> a.add("telemetry-0", [R(20, 0)], now=0.0)
>>> [r.timestamp for r in a.release({"logins-0", "telemetry-0"}, caught_up=set(), now=0.0)]
[10, 20]
>>> [r.timestamp for r in a.release({"logins-0", "telemetry-0"}, caught_up={"telemetry-0"}, now=0.0)]
[30]
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Set
from typing import Any, Protocol

__all__ = ["PartitionAligner"]


class _Record(Protocol):
    timestamp: int
    offset: int


class PartitionAligner:
    """Per-partition buffers merged by record timestamp up to a watermark."""

    def __init__(self, max_wait_s: float = 1.0, lag_wait_s: float | None = None) -> None:
        self.max_wait_s = max_wait_s
        self.lag_wait_s = max_wait_s if lag_wait_s is None else lag_wait_s
        self._buffers: dict[Hashable, deque[Any]] = {}
        self._last_data: dict[Hashable, float] = {}

    def add(self, tp: Hashable, records: Iterable[_Record], now: float) -> None:
        buf = self._buffers.setdefault(tp, deque())
        before = len(buf)
        buf.extend(records)
        if len(buf) > before:
            self._last_data[tp] = now

    def track(self, assigned: Iterable[Hashable], now: float) -> None:
        """Start the wait clock of newly assigned partitions (they may hold a backlog)."""
        for tp in assigned:
            self._last_data.setdefault(tp, now)

    def restart_clocks(self, now: float) -> None:
        """Start the wait clock of the empty partitions again (after the loop stopped
        fetching for a while: their silence was not theirs)."""
        for tp in self._last_data.keys() | self._buffers.keys():
            if not self._buffers.get(tp):
                self._last_data[tp] = now

    def buffered(self, tp: Hashable) -> int:
        return len(self._buffers.get(tp, ()))

    def progress(self, behind: Mapping[Hashable, int | None],
                 batch: int) -> tuple[set[Hashable], set[Hashable]]:
        """(caught up, lagging) partitions, from how many records each is ``behind`` its
        log end as the last fetch saw it (``None``: not fetched yet).

        A partition is caught up once everything up to its log end has been fetched,
        whether or not it is still buffered here: what it delivers next was produced
        later, so it holds nothing back (were only empty partitions asked, the one whose
        newest record is the oldest would hold the others back until the next poll). An
        empty partition not fetched yet, or at least ``batch`` records behind, is
        lagging: a backlog the fetcher has not delivered.

        >>> a = PartitionAligner()
        >>> a.add("logins-0", [object()], now=0.0)
        >>> a.progress({"logins-0": 0, "telemetry-0": None, "telemetry-1": 3}, batch=100)
        ({'logins-0'}, {'telemetry-0'})
        """
        caught_up: set[Hashable] = set()
        lagging: set[Hashable] = set()
        for tp, n in behind.items():
            if n is not None and n <= 0:
                caught_up.add(tp)
            elif (n is None or n >= batch) and not self._buffers.get(tp):
                lagging.add(tp)
        return caught_up, lagging

    def drop(self, tps: Iterable[Hashable]) -> None:
        """Forget revoked partitions: their uncommitted records go to the new owner."""
        for tp in tps:
            self._buffers.pop(tp, None)
            self._last_data.pop(tp, None)

    def release(self, assigned: Set[Hashable], caught_up: Set[Hashable], now: float,
                lagging: Set[Hashable] = frozenset()) -> list[Any]:
        """Records safe to process now, in timestamp order (stable per partition)."""
        marks: list[int] = []
        for tp in assigned:
            buf = self._buffers.get(tp)
            if buf:
                if tp not in caught_up:
                    marks.append(buf[-1].timestamp)
            elif tp not in caught_up:
                wait = self.lag_wait_s if tp in lagging else self.max_wait_s
                if now - self._last_data.get(tp, float("-inf")) < wait:
                    return []  # this partition may still hold older records
        watermark = min(marks) if marks else None
        heap: list[tuple[int, int, Hashable]] = []
        order = {tp: i for i, tp in enumerate(self._buffers)}
        for tp, buf in self._buffers.items():
            if buf and tp in assigned:
                heapq.heappush(heap, (buf[0].timestamp, order[tp], tp))
        out: list[Any] = []
        while heap:
            ts, i, tp = heapq.heappop(heap)
            if watermark is not None and ts > watermark:
                break
            buf = self._buffers[tp]
            out.append(buf.popleft())
            if buf:
                heapq.heappush(heap, (buf[0].timestamp, i, tp))
        return out
