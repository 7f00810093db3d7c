"""ClickHouse unavailable for a while.

chDB runs inside the worker, so an outage cannot be caused by stopping a server.
From outside, the honest fault is the disk refusing writes: ``chattr +i`` on every directory of the
worker's chDB directory makes every new part fail to be created (it needs
CAP_LINUX_IMMUTABLE and an ext2/3/4-like filesystem; ``chmod`` does not bite
as root). Where that is not possible the worker-level test is skipped with the
reason, and the sink-level tests below still run: the real
:class:`~pathsentry.streams.sinks.ClickHouseSink` and ``Pipeline.emit`` against a
ClickHouse double that fails for a while (the only double: the failing server).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest

from pathsentry.detectors import Findings
from pathsentry.infra.broker import EmbeddedBroker
from pathsentry.schemas import Alert, FlaggedEvent
from pathsentry.streams.outbox import Outbox
from pathsentry.streams.sinks import ClickHouseSink
from tests.faults.support import (
    STABLE_KINDS,
    check_outputs,
    consume_all,
    expected_flags,
    produce,
    recent_world,
    route_events,
    sim_events,
    wait_for,
    worker_process,
    write_world,
)


class FailingClickHouse:
    """A ClickHouse that refuses inserts until ``healthy_at`` (monotonic), then stores them
    deduplicated by token, as ``insert_deduplication_token`` does."""

    db = "pathsentry"

    def __init__(self, outage_s: float) -> None:
        self.healthy_at = time.monotonic() + outage_s
        self.attempts: list[tuple[float, str]] = []
        self.stored: dict[str, list[dict[str, Any]]] = {}
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.on_insert: Any = None

    def apply_ddl(self, ttl_days: int) -> None:
        pass

    def insert(self, table: str, columns: Sequence[str], rows: list[dict[str, Any]], token: str) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.attempts.append((time.monotonic(), table))
            if self.on_insert is not None:
                self.on_insert(table, rows)
            if time.monotonic() < self.healthy_at:
                raise ConnectionRefusedError("Connection refused (127.0.0.1:9000)")
            if token not in self.stored:
                self.stored[token] = rows
                self.tables.setdefault(table, []).extend(rows)
        finally:
            self.in_flight -= 1

    def query(self, sql: str, params: dict[str, Any] | None = None, read_only: bool = True) -> Any:
        return [], []

    def close(self) -> None:
        pass


def _finding(i: int) -> tuple[FlaggedEvent, Alert]:
    ts = datetime(2026, 11, 22, 12, 0, i % 60, tzinfo=UTC)
    flag = FlaggedEvent(event_id=f"e{i}", ts=ts, kind="vpn_relay", src_ip="198.51.100.23", score=0.9,
                        reasons=["gap"], evidence={"gap_ms": 90.0}, alert_id=f"a{i}", detector="latency",
                        account=f"acct{i}")
    alert = Alert(alert_id=f"a{i}", ts=ts, kind="vpn_relay", severity="critical", score=0.9,
                  subject={"account": f"acct{i}"}, evidence={"gap_ms": 90.0}, detector="latency",
                  first_seen=ts, last_seen=ts, accounts=[f"acct{i}"], event_ids=[f"e{i}"])
    return flag, alert


def test_sink_retries_with_backoff_and_loses_nothing(caplog: pytest.LogCaptureFixture) -> None:
    ch = FailingClickHouse(outage_s=2.0)
    sink = ClickHouseSink(ch, max_backoff_s=0.8)
    batches = [[_finding(i) for i in range(b * 50, (b + 1) * 50)] for b in range(4)]
    health: list[bool] = []

    async def run() -> None:
        async def watch() -> None:
            while True:
                health.append(sink.healthy)
                await asyncio.sleep(0.05)

        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(watch())
            first = tg.create_task(sink.write([f for f, _ in batches[0]], [a for _, a in batches[0]]))
            await asyncio.sleep(1.0)
            # back-pressure: the batch is held, the caller (the agent) is blocked
            assert not first.done()
            await first
            for batch in batches[1:]:
                await sink.write([f for f, _ in batch], [a for _, a in batch])
            # a retried batch (same rows, same token) is stored once
            await sink.write([f for f, _ in batches[0]], [a for _, a in batches[0]])
            watcher.cancel()

    caplog.set_level(logging.WARNING, logger="pathsentry.streams.sinks")
    t0 = time.monotonic()
    try:
        asyncio.run(asyncio.wait_for(run(), timeout=30))
    finally:
        sink.close()
    assert time.monotonic() - t0 >= 2.0

    # no loss, no duplicate
    flags = ch.tables["flagged_events"]
    assert sorted(r["event_id"] for r in flags) == sorted(f"e{i}" for i in range(200))
    assert sorted(r["alert_id"] for r in ch.tables["alerts"]) == sorted(f"a{i}" for i in range(200))
    # retries with growing, capped delays
    failed = [t for t, table in ch.attempts if table == "flagged_events" and t < ch.healthy_at]
    gaps = [b - a for a, b in pairwise(failed)]
    assert len(gaps) >= 3
    assert all(later >= earlier * 0.9 for earlier, later in pairwise(gaps)), gaps
    assert max(gaps) <= 0.8 + 0.3
    # bounded memory: one batch held at a time, never a growing queue
    assert ch.max_in_flight == 1
    # health is visible (the /stats and /metrics gauge) and recovers
    assert False in health and sink.healthy is True
    msgs = [r.getMessage() for r in caplog.records]
    assert any("clickhouse: insert into flagged_events failed" in m and "retry in" in m
               and "holding 50 rows" in m for m in msgs), msgs[:3]
    assert any("writes succeed again" in m for m in msgs)


def test_alerts_reach_kafka_before_clickhouse() -> None:
    """``Pipeline.emit`` must not store an alert in ClickHouse before Kafka acknowledged it:
    a worker killed in between leaves an alert in ClickHouse that was never published (alerts
    raised on detector ticks have no input offset to replay them from)."""
    from pathsentry.streams.pipeline import Pipeline

    class Producer:
        """aiokafka-like: ``send`` queues and returns a delivery future that the broker
        acknowledges a little later (after the linger)."""

        def __init__(self) -> None:
            self.pending: list[asyncio.Future[None]] = []

        async def send(self, topic: str, value: bytes, key: bytes | None = None,
                       partition: int | None = None, headers: Any = None) -> asyncio.Future[None]:
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            loop.call_later(0.05, lambda: fut.done() or fut.set_result(None))
            self.pending.append(fut)
            return fut

    ch = FailingClickHouse(outage_s=0.0)
    producer = Producer()
    unacked_at_insert: list[int] = []
    ch.on_insert = lambda table, rows: unacked_at_insert.append(
        sum(not f.done() for f in producer.pending)
    ) if table == "alerts" else None

    pipe = Pipeline.__new__(Pipeline)  # only what emit() and the outbox touch
    pipe.sink = ClickHouseSink(ch)
    pipe.outbox = Outbox(pipe.sink, on_stored=pipe._stored)
    pipe.producer = producer
    from pathsentry.config import KafkaConfig
    from pathsentry.streams.metrics import Stats
    from pathsentry.streams.topics import Topics

    pipe.topics = Topics(KafkaConfig())
    pipe.stats = Stats()
    flag, alert = _finding(1)
    acked: list[int] = []

    async def run() -> None:
        writer = asyncio.create_task(pipe.outbox.run())

        async def ack() -> None:
            acked.append(len(ch.tables.get("alerts", [])))

        await pipe.emit(Findings(flags=[flag], alerts=[alert]), {}, on_durable=ack)
        await asyncio.wait_for(pipe.outbox.drain(), timeout=10)
        writer.cancel()

    try:
        asyncio.run(run())
    finally:
        pipe.sink.close()
    assert unacked_at_insert == [0], "alert written to ClickHouse before Kafka acknowledged it"
    assert acked == [1], "input acknowledged before its alert was stored"
    assert pipe.stats.alerts == 1 and pipe.stats.flagged == 1


def _chattr(flag: str, path: Path) -> bool:
    """``chattr FLAG`` on every directory under ``path`` (no new file or part can be created)."""
    if shutil.which("chattr") is None:
        return False
    dirs = [str(p) for p in [path, *path.rglob("*")] if p.is_dir() and not p.is_symlink()]
    return subprocess.run(["chattr", flag, *dirs], capture_output=True).returncode == 0


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_worker_survives_chdb_refusing_writes(tmp_path: Path, embedded_broker: EmbeddedBroker) -> None:
    spec = recent_world(seed=9, accounts=600)
    config = write_world(tmp_path, spec)
    events = sim_events(spec)
    half = len(events) // 2
    chdb = tmp_path / "chdb"
    with worker_process(config, embedded_broker.url, chdb) as worker:
        worker.start()
        produce(worker.bootstrap, route_events(events[:half], worker.topics))
        worker.wait_drained(timeout=120)
        flagged_before = worker.stats()["flagged"]
        assert flagged_before > 0
        alerts_before = len(consume_all(worker.bootstrap, worker.topics.alerts, idle_s=1.0))
        if not _chattr("+i", chdb):
            pytest.skip("cannot make the chDB directory immutable here (chattr +i needs "
                        "CAP_LINUX_IMMUTABLE on ext2/3/4): the sink-level tests cover the outage")
        try:
            produce(worker.bootstrap, route_events(events[half:], worker.topics))
            wait_for(lambda: not worker.stats()["clickhouse_healthy"], 60,
                     "the worker to notice that ClickHouse refuses writes",
                     on_timeout=worker.log_tail)
            time.sleep(5.0)  # an outage of a few seconds, while events keep arriving
            assert worker.alive, worker.log_tail()
            st = worker.stats()
            # detection goes on: alerts keep reaching Kafka while their rows wait in the outbox
            alerts_during = len(consume_all(worker.bootstrap, worker.topics.alerts, idle_s=1.0))
            assert alerts_during > alerts_before, (alerts_before, alerts_during)
            assert st["outbox_rows"] > 0 and not st["clickhouse_healthy"], st
            assert "clickhouse: insert into" in worker.log_tail(20_000)
            status = Path(f"/proc/{worker.proc.pid}/status").read_text()  # type: ignore[union-attr]
            rss_mib = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS"))) / 1024
            assert rss_mib < 1024, f"worker RSS {rss_mib:.0f} MiB during the outage"
        finally:
            assert _chattr("-i", chdb)
        wait_for(lambda: worker.stats()["clickhouse_healthy"], 60, "ClickHouse writes to recover",
                 on_timeout=worker.log_tail)
        worker.wait_drained(timeout=180)
        final = worker.stats()
        assert final["events_detected"] >= len(events), final
        figures = check_outputs(worker, expected_flags(events, config, STABLE_KINDS))
        assert worker.stop() == 0, worker.log_tail()
        print("clickhouse-outage run:", orjson.dumps({
            "events": len(events), "flagged_before_outage": flagged_before,
            "flagged_at_outage_end": st["flagged"], "rss_mib_during_outage": round(rss_mib),
            "alerts_published_before_outage": alerts_before, "alerts_published_during_outage":
            alerts_during - alerts_before, "rows_held_during_outage": st["outbox_rows"],
            **figures}).decode())
