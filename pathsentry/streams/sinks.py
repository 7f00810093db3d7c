"""Sinks: ClickHouse (idempotent batches) and the alerts topic.

A batch is written before the offsets it covers are acknowledged: the agents
await :meth:`ClickHouseSink.write` inside their batch loop, and Faust commits
only acknowledged offsets. If ClickHouse is down the write is retried with
capped exponential back-off, which holds the batch (and therefore the
consumer) back: nothing is acknowledged that is not stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pathsentry.infra.clickhouse import (
    ALERT_COLUMNS,
    FLAG_COLUMNS,
    LABEL_COLUMNS,
    ClickHouse,
    alert_row,
    batch_token,
    flag_row,
    label_row,
)
from pathsentry.infra.redact import redact_text
from pathsentry.schemas import AccountLabel, Alert, FlaggedEvent

__all__ = ["ClickHouseSink"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class ClickHouseSink:
    def __init__(self, ch: ClickHouse, *, max_backoff_s: float = 10.0) -> None:
        self.ch = ch
        self.max_backoff_s = max_backoff_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self.rows_written = 0
        #: inserts that succeeded (each is one part for ClickHouse to store and merge)
        self.inserts = 0
        self.failures = 0
        self.healthy = True

    async def _run(
        self, table: str, columns: tuple[str, ...], rows: list[dict[str, object]], token: str
    ) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.2
        while True:
            try:
                await loop.run_in_executor(self._pool, self.ch.insert, table, columns, rows, token)
                if not self.healthy:
                    log.warning("clickhouse: writes succeed again (%s, %d rows)", table, len(rows))
                self.healthy = True
                self.rows_written += len(rows)
                self.inserts += 1
                return
            except Exception as e:
                self.failures += 1
                self.healthy = False
                log.warning(
                    "clickhouse: insert into %s failed (%s: %s); "
                    "holding %d rows and their offsets, retry in %.1fs",
                    table, type(e).__name__, redact_text(str(e))[:200], len(rows), delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking ClickHouse call on the sink's thread (chDB sessions stay on one thread)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def write(self, flags: list[FlaggedEvent], alerts: list[Alert]) -> None:
        if flags:
            keys = [f"{f.event_id}|{f.kind}|{f.alert_id or ''}" for f in flags]
            await self._run("flagged_events", FLAG_COLUMNS, [flag_row(f) for f in flags],
                            batch_token("flagged_events", keys))
        if alerts:
            keys = [f"{a.alert_id}|{a.version}" for a in alerts]
            await self._run("alerts", ALERT_COLUMNS, [alert_row(a) for a in alerts],
                            batch_token("alerts", keys))

    async def write_labels(self, labels: list[AccountLabel]) -> None:
        """Store the game's labels (for the ``detector_feedback`` view)."""
        if labels:
            await self._run("account_labels", LABEL_COLUMNS, [label_row(lb) for lb in labels],
                            batch_token("account_labels", [lb.event_id for lb in labels]))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
