"""The Faust app: three agents joined by two repartition topics.

::

    logins ─┐                         ┌─► dead-letter (reason + topic/partition/offset)
            ├─► ingest (validate) ────┤
 telemetry ─┘                         └─► pathsentry-sessions (key: session id)
                                            │ sessions: enrich + session-stage detectors
                                            ├─► ClickHouse + alerts
                                            └─► pathsentry-groups (key: group key)
                                                  │ groups: group-stage detectors
                                                  └─► ClickHouse + alerts

Every agent consumes in batches (``take_events``) with concurrency 1; a batch's
outputs (forwarded records, ClickHouse rows, alerts) are flushed before its
offsets are acknowledged, so delivery is at-least-once and the sinks are
idempotent (deterministic ids and dedup tokens).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pathsentry.config import Config
from pathsentry.detectors import Findings
from pathsentry.engine import Engine
from pathsentry.infra.clickhouse import ClickHouse, is_read_only
from pathsentry.schemas import Alert, EventError, event_adapter, parse_event
from pathsentry.streams.deadletter import dead_letter_record
from pathsentry.streams.kafka import bootstrap_servers
from pathsentry.streams.sinks import ClickHouseSink
from pathsentry.streams.topics import Topics

__all__ = ["Pipeline", "Stats", "create_app"]

log = logging.getLogger(__name__)


@dataclass
class Stats:
    events_in: int = 0
    dead_letter: int = 0
    flagged: int = 0
    alerts: int = 0
    group_messages: int = 0
    batches: int = 0
    last_batch_ms: float = 0.0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["uptime_s"] = round(time.time() - self.started_at, 1)
        return d


class Pipeline:
    """Runtime state of one worker: the engine, the sinks and the counters."""

    def __init__(self, config: Config, engine: Engine, ch: ClickHouse, worker_id: str) -> None:
        self.config = config
        self.engine = engine
        self.ch = ch
        self.sink = ClickHouseSink(ch)
        self.stats = Stats()
        self.topics = Topics(config.kafka)
        self.worker_id = worker_id
        self.state_path = Path(config.data_dir) / "state" / f"{worker_id}.json"

    def load_snapshot(self) -> None:
        if self.state_path.exists():
            try:
                self.engine.load_state(orjson.loads(self.state_path.read_bytes()))
                log.info("restored detector state from %s", self.state_path)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                log.warning("ignoring unreadable detector state %s: %s", self.state_path, e)

    def save_snapshot(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.engine.state(), default=str))
        os.replace(tmp, self.state_path)


def _alert_value(a: Alert) -> bytes:
    return a.model_dump_json().encode()


def create_app(
    config: Config,
    *,
    worker_id: str = "worker-1",
    web_port: int = 6066,
    web_host: str = "127.0.0.1",
    ch: ClickHouse | None = None,
    engine: Engine | None = None,
    batch_size: int | None = None,
    batch_within_s: float | None = None,
) -> tuple[Any, Pipeline]:
    """Build the Faust app and its pipeline (nothing connects until the worker starts)."""
    import faust

    from pathsentry.infra.clickhouse import connect

    Path(config.data_dir, "faust").mkdir(parents=True, exist_ok=True)
    ch = ch or connect(config.clickhouse.url)
    ch.apply_ddl(config.clickhouse.ttl_days)
    engine = engine or Engine(config)
    pipe = Pipeline(config, engine, ch, worker_id)
    pipe.load_snapshot()
    topics = pipe.topics
    take_max = batch_size or config.clickhouse.batch_size
    take_within = batch_within_s or config.clickhouse.flush_interval_s
    session_timeout = config.kafka.session_timeout_s

    app = faust.App(
        f"{config.kafka.topic_prefix}pathsentry",
        broker=f"kafka://{bootstrap_servers(config)}",
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=config.kafka.partitions,
        topic_replication_factor=config.kafka.replication_factor,
        topic_disable_leader=True,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=max(0.5, session_timeout / 6),
        broker_request_timeout=max(40.0, session_timeout * 3),
        broker_rebalance_timeout=max(10.0, session_timeout * 2),
        broker_commit_interval=1.0,
        producer_linger=0.005,
        web_enabled=True,
        web_port=web_port,
        web_bind=web_host,
        web_host=web_host,
        datadir=str(Path(config.data_dir) / "faust"),
    )
    raw_in = app.topic(topics.logins, topics.telemetry, value_type=bytes, key_type=bytes)
    sessions = app.topic(topics.sessions, value_type=bytes, key_type=bytes)
    groups = app.topic(topics.groups, value_type=bytes, key_type=bytes)
    alerts_topic = app.topic(topics.alerts, value_type=bytes, key_type=bytes)
    dlq = app.topic(topics.dead_letter, value_type=bytes, key_type=bytes)

    async def emit(findings: Findings) -> None:
        if not findings:
            return
        # Kafka first: alerts keep flowing downstream even while ClickHouse retries.
        for a in findings.alerts:
            await alerts_topic.send(key=a.alert_id.encode(), value=_alert_value(a))
        await pipe.sink.write(findings.flags, findings.alerts)
        pipe.stats.flagged += len(findings.flags)
        pipe.stats.alerts += len(findings.alerts)

    async def dead_letter(payload: bytes | None, err: EventError, msg: Any) -> None:
        rec = dead_letter_record(
            payload, err.reason, err.detail,
            topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key,
        )
        await dlq.send(key=msg.key, value=orjson.dumps(rec))
        pipe.stats.dead_letter += 1
        reasons = pipe.stats.dead_letter_reasons
        reasons[err.reason] = reasons.get(err.reason, 0) + 1
        log.warning(
            "dead-letter: %s (%s) from %s[%d]@%d",
            err.reason, err.detail[:120], msg.topic, msg.partition, msg.offset,
        )

    @app.agent(raw_in, concurrency=1, name="ingest")
    async def ingest(stream: Any) -> None:
        async for batch in stream.take_events(take_max, within=take_within):
            for ev in batch:
                payload = ev.message.value
                try:
                    parsed = parse_event(payload if payload is not None else b"")
                except EventError as err:
                    await dead_letter(payload, err, ev.message)
                    continue
                key = parsed.session_id or getattr(parsed, "account", None) or str(parsed.src_ip)
                await sessions.send(key=key.encode(), value=payload)
                pipe.stats.events_in += 1
            await app.producer.flush()

    @app.agent(sessions, concurrency=1, name="sessions")
    async def session_agent(stream: Any) -> None:
        async for batch in stream.take_events(take_max, within=take_within):
            t0 = time.perf_counter()
            out = Findings()
            for ev in batch:
                try:
                    parsed = parse_event(ev.message.value)
                except EventError as err:  # only if the internal topic was written by others
                    await dead_letter(ev.message.value, err, ev.message)
                    continue
                enriched, found = engine.session_stage(parsed)
                out.extend(found)
                routes = engine.group_routes(enriched)
                if routes:
                    event_json = parsed.model_dump(mode="json", exclude_none=True)
                    for det, key in routes:
                        body = {"e": event_json, "n": enriched.notes, "d": det, "k": key}
                        await groups.send(key=key.encode(), value=orjson.dumps(body, default=str))
                        pipe.stats.group_messages += 1
            await emit(out)
            await app.producer.flush()
            pipe.stats.batches += 1
            pipe.stats.last_batch_ms = round((time.perf_counter() - t0) * 1000, 2)

    @app.agent(groups, concurrency=1, name="groups")
    async def group_agent(stream: Any) -> None:
        async for batch in stream.take_events(take_max, within=take_within):
            out = Findings()
            for ev in batch:
                body = orjson.loads(ev.message.value)
                parsed = event_adapter.validate_python(body["e"])
                enriched = engine.enricher.enrich(parsed)
                enriched.notes = body.get("n") or {}
                out.extend(engine.group_stage(enriched, body["d"], body["k"]))
            await emit(out)
            await app.producer.flush()

    @app.timer(interval=2.0)
    async def tick() -> None:
        if engine.last_ts:
            await emit(engine.flush())

    @app.timer(interval=30.0)
    async def snapshot() -> None:
        await asyncio.get_running_loop().run_in_executor(None, pipe.save_snapshot)

    @app.page("/stats")
    async def stats_page(web: Any, request: Any) -> Any:
        return web.json({"worker": worker_id, **pipe.stats.as_dict(),
                         "clickhouse_healthy": pipe.sink.healthy})

    @app.page("/query")
    async def query_page(web: Any, request: Any) -> Any:
        sql = request.query.get("sql", "")
        if not is_read_only(sql):
            return web.json({"error": "only one read-only statement is allowed"}, status=400)
        loop = asyncio.get_running_loop()
        try:
            cols, rows = await loop.run_in_executor(pipe.sink._pool, ch.query, sql, None, True)
        except Exception as e:
            return web.json({"error": str(e)[:500]}, status=400)
        return web.json({"columns": cols, "rows": [list(r) for r in rows]})

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        s = pipe.stats
        lines = [
            f'pathsentry_events_in_total{{worker="{worker_id}"}} {s.events_in}',
            f'pathsentry_dead_letter_total{{worker="{worker_id}"}} {s.dead_letter}',
            f'pathsentry_flagged_total{{worker="{worker_id}"}} {s.flagged}',
            f'pathsentry_alerts_total{{worker="{worker_id}"}} {s.alerts}',
            f'pathsentry_batch_latency_ms{{worker="{worker_id}"}} {s.last_batch_ms}',
            f'pathsentry_clickhouse_healthy{{worker="{worker_id}"}} {int(pipe.sink.healthy)}',
        ]
        return web.text("\n".join(lines) + "\n", content_type="text/plain")

    return app, pipe
