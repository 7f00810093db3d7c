"""The outbox: what the stages produced, made durable in order, then acknowledged.

A stage batch publishes its alerts (and forwards its group-stage envelopes) at
once and hands the outbox a :class:`Pending`: the Kafka delivery futures, the rows
for ClickHouse, and a callback that acknowledges the batch's input. One writer task
takes pendings in arrival order, coalesces the rows of everything waiting into
one insert per table, waits for the deliveries, writes, and only then runs the
callbacks. So:

- an alert in ClickHouse was always published first (deliveries are awaited before
  the insert);
- no input offset is committed before its outputs are stored: a worker killed at any
  point re-reads what was not yet durable (at-least-once; the sinks are idempotent);
- inserts are at least ``min_insert_interval_s`` apart (while the outbox is not full):
  at a moderate rate a stage batch is small, and each insert costs ClickHouse a fixed
  amount (a new part, its dedup entry, then background merges of the small parts) that
  no longer depends on how many rows it carries; waiting lets the next batches' rows
  join the same insert;
- the stages never wait on ClickHouse while it keeps up, and a slow or unavailable
  ClickHouse does not stop alerts: the stages go on detecting and publishing while
  the rows wait here, up to ``max_rows``; past that the stages wait (back-pressure),
  so memory stays bounded.

>>> import asyncio
>>> class Sink:  # what the writer needs from ClickHouseSink
...     def __init__(self): self.rows = []
...     async def write(self, flags, alerts): self.rows += flags + alerts
>>> async def demo():
...     acked = []
...     box = Outbox(Sink(), max_rows=100)
...     task = asyncio.create_task(box.run())
...     async def ack(): acked.append("batch-1")
...     await box.put(Pending(flags=["f1", "f2"], alerts=["a1"], on_durable=ack))
...     await box.drain()
...     task.cancel()
...     return box.sink.rows, acked
>>> asyncio.run(demo())
(['f1', 'f2', 'a1'], ['batch-1'])
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Delivery", "Outbox", "Pending"]

#: Back-off between attempts to re-send a failed delivery.
RESEND_BACKOFF_S = (0.5, 10.0)

log = logging.getLogger(__name__)


class _Sink(Protocol):
    async def write(self, flags: list[Any], alerts: list[Any]) -> None: ...


@dataclass
class Delivery:
    """A Kafka send in flight, and how to send it again if it fails."""

    future: Awaitable[Any]
    resend: Callable[[], Awaitable[Awaitable[Any]]]
    what: str = "kafka"


@dataclass
class Pending:
    """One stage batch's outputs and how to acknowledge its input."""

    flags: list[Any] = field(default_factory=list)
    alerts: list[Any] = field(default_factory=list)
    #: Kafka deliveries (alerts, forwarded envelopes) that must succeed first
    deliveries: list[Delivery] = field(default_factory=list)
    #: acknowledges the batch's input once everything above is durable
    on_durable: Callable[[], Awaitable[None]] | None = None
    #: event id -> produce time (ms), for the produce-to-flag latency
    produced_ms: dict[str, int] = field(default_factory=dict)
    #: the stage that produced it and how many input events it covers
    stage: str = ""
    events: int = 0
    #: (alert kind, produce time ms) of the events that raised new alerts
    triggers: list[tuple[str, int]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.flags) + len(self.alerts)


class Outbox:
    def __init__(
        self,
        sink: _Sink,
        *,
        max_rows: int = 50_000,
        max_batches: int = 10_000,
        max_insert_rows: int = 20_000,
        min_insert_interval_s: float = 0.0,
        on_stored: Callable[[Pending, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.max_rows = max(1, max_rows)
        self.max_batches = max(1, max_batches)
        self.max_insert_rows = max(1, max_insert_rows)
        self.min_insert_interval_s = max(0.0, min_insert_interval_s)
        self.on_stored = on_stored
        self._clock = clock
        self._inserted_at = -float("inf")
        self._queue: deque[Pending] = deque()
        self._rows = 0
        self._changed = asyncio.Event()
        self._full_since: float | None = None
        self.stored_rows = 0

    @property
    def rows(self) -> int:
        """Rows waiting for ClickHouse."""
        return self._rows

    @property
    def batches(self) -> int:
        """Batches whose input is not yet acknowledged."""
        return len(self._queue)

    def _full(self) -> bool:
        return bool(self._queue) and (
            self._rows >= self.max_rows or len(self._queue) >= self.max_batches
        )

    async def put(self, pending: Pending) -> None:
        """Queue a batch's outputs; waits while the outbox is full (back-pressure)."""
        while self._full():
            if self._full_since is None:
                self._full_since = time.monotonic()
                log.warning(
                    "outbox full: %d rows in %d batches wait for ClickHouse (cap %d rows); "
                    "consumption pauses until they are stored", self._rows, len(self._queue),
                    self.max_rows,
                )
            self._changed.clear()
            await self._changed.wait()
        if self._full_since is not None:
            log.warning("outbox: consumption resumes after %.1f s",
                        time.monotonic() - self._full_since)
            self._full_since = None
        self._queue.append(pending)
        self._rows += pending.rows
        self._changed.set()

    async def drain(self) -> None:
        """Wait until everything queued so far is stored and acknowledged."""
        while self._queue:
            self._changed.clear()
            await self._changed.wait()

    def _take(self) -> list[Pending]:
        """The oldest pendings whose rows fit one insert (at least one)."""
        taken: list[Pending] = []
        rows = 0
        for p in self._queue:
            if taken and rows + p.rows > self.max_insert_rows:
                break
            taken.append(p)
            rows += p.rows
        return taken

    async def run(self) -> None:
        """The writer loop (one task per worker)."""
        while True:
            if not self._queue:
                self._changed.clear()
                await self._changed.wait()
                continue
            await self._pace()
            taken = self._take()
            for p in taken:
                for d in p.deliveries:
                    await _delivered(d)
            flags = [f for p in taken for f in p.flags]
            alerts = [a for p in taken for a in p.alerts]
            if flags or alerts:
                self._inserted_at = self._clock()
                await self.sink.write(flags, alerts)
            stored_at = time.time() * 1000
            for p in taken:
                if p.on_durable is not None:
                    await p.on_durable()
                if self.on_stored is not None:
                    self.on_stored(p, stored_at)
            for _ in taken:
                self._queue.popleft()
            n = sum(p.rows for p in taken)
            self._rows -= n
            self.stored_rows += n
            self._changed.set()

    async def _pace(self) -> None:
        """Wait, when rows are queued, until ``min_insert_interval_s`` has passed since the
        last insert began (not while the outbox is full: then the stages wait on it).
        Batches without rows (acknowledgements only) are not held."""
        wait = self.min_insert_interval_s - (self._clock() - self._inserted_at)
        while self._rows and wait > 0 and not self._full():
            self._changed.clear()
            with contextlib.suppress(TimeoutError):  # woken early when the outbox fills
                await asyncio.wait_for(self._changed.wait(), wait)
            wait = self.min_insert_interval_s - (self._clock() - self._inserted_at)


async def _delivered(d: Delivery) -> None:
    """Wait for a delivery; re-send it with back-off until the broker acknowledges it."""
    delay, cap = RESEND_BACKOFF_S
    while True:
        try:
            await d.future
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("%s: delivery failed (%s: %s); re-sending in %.1f s",
                        d.what, type(e).__name__, str(e)[:200], delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, cap)
        try:
            d.future = await d.resend()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(e)
            d.future = failed
