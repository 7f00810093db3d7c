"""The stream worker's Faust app: an ingest loop and two agents joined by repartition topics.

::

    logins ─┐   ingest (aiokafka, batched)     ┌─► dead-letter (reason + topic/partition/offset)
            ├─► decode + validate (pydantic) ──┤
 telemetry ─┘                                  └─► pathsentry-sessions (partition: session id)
                                                     │ agent "sessions": enrich + session-stage detectors
                                                     ├─► ClickHouse + alerts topic
                                                     └─► pathsentry-groups (partition: group key)
                                                           │ agent "groups": group-stage detectors
                                                           ├─► ClickHouse + alerts topic
                                                           └─► pathsentry-rooms (one partition:
                                                                 farm_group alerts)
                                                                 │ agent "rooms": one alert per room
                                                                 └─► ClickHouse + alerts topic

The producers' topics carry one event per message, which is what makes Faust's
per-message stream machinery the first wall (a few thousand messages/s). The
ingest loop therefore consumes them with aiokafka in large batches, and forwards
*envelopes* (one message per destination partition holding every event of the
batch bound for it) to the internal topics, whose Faust agents then handle a
few large messages instead of many small ones.

Delivery is at-least-once everywhere: the ingest loop commits its offsets (every
``commit_interval_s``, and for revoked partitions before they move) only after the
batches' envelopes and dead letters are acknowledged by the broker;
the agents consume with ``take_events`` (concurrency 1) and their outputs
(ClickHouse rows, alerts, forwarded envelopes) are flushed before the batch is
acknowledged. Retries can repeat outputs; the sinks are idempotent
(deterministic alert ids, ReplacingMergeTree, dedup tokens).

This module owns only :func:`create_app`, the factory that wires the pieces into a Faust
app: the agents and their batches, the timers (detector flush, garbage collection,
snapshots), the rebalance, revoke and shutdown handlers and when they save state. It
may not hold pipeline logic of its own. Each concern lives in one module, and each
module imports only modules listed before it (nothing under ``detectors/`` imports
``streams/``):

* :mod:`~pathsentry.streams.metrics`: the counters and their Prometheus text;
* :mod:`~pathsentry.streams.envelopes`: keys, partitions and envelopes of the internal topics;
* :mod:`~pathsentry.streams.persistence`: the snapshot file and the state topic's saves;
* :mod:`~pathsentry.streams.pipeline`: the producer, outputs, dead letters and both stages;
* :mod:`~pathsentry.streams.ingest`: the ingest loop, its claims and commits;
* :mod:`~pathsentry.streams.feedback`: every worker's reading of the game's labels and interactions;
* :mod:`~pathsentry.streams.web`: the ``/stats``, ``/metrics`` and ``/query`` pages;
* :mod:`~pathsentry.streams.faust_compat`: the patch to Faust's consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from pathsentry.config import Config
from pathsentry.engine import Engine
from pathsentry.infra.clickhouse import ClickHouse
from pathsentry.streams.envelopes import Incoming
from pathsentry.streams.faust_compat import set_fetch_wait
from pathsentry.streams.feedback import run_feedback
from pathsentry.streams.gcwatch import GcSchedule
from pathsentry.streams.ingest import run_ingest
from pathsentry.streams.kafka import METADATA_MAX_AGE_MS, bootstrap_servers, faust_credentials
from pathsentry.streams.pipeline import Pipeline
from pathsentry.streams.savepolicy import LearnedSavePolicy
from pathsentry.streams.web import WebAccess, add_pages

__all__ = ["create_app"]

#: The group partitions' state is saved this often (and at a revoke and at shutdown).
SNAPSHOT_INTERVAL_S = 120.0
#: How often the app asks whether the session stage's learned state is due to be saved
#: (:class:`~pathsentry.streams.savepolicy.LearnedSavePolicy` decides; asking is cheap).
LEARNED_CHECK_S = 1.0

log = logging.getLogger(__name__)


def create_app(
    config: Config,
    *,
    worker_id: str = "worker-1",
    web_port: int = 6066,
    web_host: str | None = None,
    web_access: WebAccess | None = None,
    ch: ClickHouse | None = None,
    engine: Engine | None = None,
    batch_size: int | None = None,
    batch_within_s: float | None = None,
) -> tuple[Any, Pipeline]:
    """Build the Faust app and its pipeline (nothing connects until the worker starts).

    ``web_access`` (default: from the environment, see :mod:`~pathsentry.streams.web`)
    decides the bind address (``web_host`` overrides it), the accepted ``Host`` names and
    the query token."""
    import faust

    from pathsentry.infra.clickhouse import connect
    from pathsentry.infra.querypolicy import QueryLimits

    Path(config.data_dir, "faust").mkdir(parents=True, exist_ok=True)
    set_fetch_wait(config.kafka.fetch_max_wait_ms)
    ch = ch or connect(config.clickhouse.url, QueryLimits.from_config(config.clickhouse))
    web_access = web_access or WebAccess.from_env()
    web_host = web_host or web_access.host
    ch.apply_ddl(config.clickhouse.ttl_days)
    engine = engine or Engine(config)
    pipe = Pipeline(config, engine, ch, worker_id)
    pipe.load_snapshot()
    topics = pipe.topics
    take_max = batch_size or max(1, config.clickhouse.batch_size // 100)
    # the agents wait this long for a fuller batch after each one, unless it fills: at a
    # moderate rate it adds to every hop through an internal topic
    take_within = batch_within_s or min(config.kafka.stage_take_wait_ms / 1000,
                                        config.clickhouse.flush_interval_s)
    session_timeout = config.kafka.session_timeout_s

    loop_ref: list[asyncio.AbstractEventLoop] = []

    class App(faust.App):
        """Faust waits for every unacknowledged event before a rebalance or a stop
        completes: what the watermark gates hold is dropped first (it is re-read)."""

        stopping_ = False

        def on_rebalance_start(self) -> None:
            # called on Faust's consumer thread
            super().on_rebalance_start()
            if loop_ref:
                loop_ref[0].call_soon_threadsafe(pipe.on_rebalance)

        async def on_stop(self) -> None:
            self.stopping_ = True
            pipe.on_rebalance()
            # before the consumer leaves the group: the partitions' next owners read this
            await _save_groups(_owned_stages(), "stop")
            await _save("rooms", "stop", pipe.save_rooms)
            await _save_sessions(sorted(pipe.session_parts), "stop")
            await _save_learned("stop")
            await super().on_stop()

    app = App(
        f"{config.kafka.topic_prefix}pathsentry",
        broker=f"kafka://{bootstrap_servers(config)}",
        broker_credentials=faust_credentials(config),
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
        broker_commit_interval=config.kafka.commit_interval_s,
        # the outbox decides when an event is durable; what is not acknowledged at a rebalance
        # or a stop is re-read by the partition's next owner, so Faust need not wait for it
        stream_wait_empty=False,
        consumer_max_fetch_size=16 << 20,
        consumer_metadata_max_age_ms=METADATA_MAX_AGE_MS,
        producer_metadata_max_age_ms=METADATA_MAX_AGE_MS,
        producer_max_request_size=8 << 20,
        web_enabled=True,
        web_port=web_port,
        web_bind=web_host,
        web_host=web_host,
        # Faust's own pages (partition routing, tables) are not served: only ours, which
        # check the Host header
        web_router_enabled=False,
        web_tables_enabled=False,
        datadir=str(Path(config.data_dir) / "faust"),
    )
    pipe.accepting = lambda: not (app.rebalancing or app.stopping_)
    pipe.local = lambda topic, partition: partition in owned(topic)
    pipe.gc_pauses.install()
    pipe.stage_partitions = lambda: [(t, p) for t in (topics.sessions, topics.groups, topics.rooms)
                                     for p in owned(t)]

    async def _save(what: str, why: str, save: Callable[[], Awaitable[None]]) -> None:
        """Run one of the pipeline's saves to the state topic, bounded; a failure is logged
        (the next owner starts from an older save, or without one) and never raised."""
        if pipe.producer is None:
            return
        try:
            await asyncio.wait_for(save(), timeout=session_timeout)
        except Exception:
            log.exception("%s not saved at %s", what, why)

    async def _save_groups(partitions: list[int], why: str) -> None:
        await _save("group state", why, lambda: pipe.save_groups(partitions))

    async def _save_sessions(partitions: list[int], why: str) -> None:
        await _save("sessions", why, lambda: pipe.save_sessions(partitions))

    async def _save_learned(why: str) -> None:
        await _save("learned state", why, pipe.save_learned)

    def _owned_stages() -> list[int]:
        return [p for p in owned(topics.groups) if p in pipe.group_stages]

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _revoked(app_: Any, revoked: Any, **kwargs: Any) -> None:
        # awaited before this worker rejoins the group, so before anyone is given these
        gone = [tp.partition for tp in revoked if tp.topic == topics.groups and
                tp.partition in pipe.group_stages]
        await _save_groups(gone, "revoke")
        for p in gone:  # whoever is given it next (this worker too) reads the newest save
            del pipe.group_stages[p]
        sessions_gone = [tp.partition for tp in revoked if tp.topic == topics.sessions]
        await _save_sessions(sorted(pipe.session_parts.intersection(sessions_gone)), "revoke")
        pipe.sessions_revoked(sessions_gone)
        if pipe.rooms_owned and any(tp.topic == topics.rooms for tp in revoked):
            await _save("rooms", "revoke", pipe.save_rooms)
            pipe.rooms_revoked()
    sessions = app.topic(topics.sessions, value_type=bytes, key_type=bytes)
    groups = app.topic(topics.groups, value_type=bytes, key_type=bytes)
    rooms = app.topic(topics.rooms, value_type=bytes, key_type=bytes, partitions=1)
    stopping = asyncio.Event()
    ingest_done = asyncio.Event()

    @app.task
    async def ingest() -> None:
        loop_ref.append(asyncio.get_running_loop())
        try:
            await pipe.start_producer()
            await run_ingest(pipe, max_records=config.clickhouse.batch_size, poll_ms=50, stopping=stopping)
        finally:
            ingest_done.set()

    @app.task
    async def feedback() -> None:
        await run_feedback(pipe, max_records=config.clickhouse.batch_size, poll_ms=200,
                           stopping=stopping)

    @app.task
    async def writer() -> None:
        await pipe.outbox.run()

    def owned(topic: str) -> list[int]:
        """Partitions of ``topic`` this worker's Faust consumer owns."""
        try:
            return sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == topic)
        except Exception:  # consumer not started yet
            return []

    session_lock, group_lock, rooms_lock = asyncio.Lock(), asyncio.Lock(), asyncio.Lock()

    @app.agent(sessions, concurrency=1, name="sessions")
    async def session_agent(stream: Any) -> None:
        async for batch in stream.noack_take(take_max, within=take_within):
            await _ready(pipe)
            async with session_lock, _fail_fast("session"):
                await pipe.session_batch(_incoming(stream, batch), owned(topics.sessions))

    @app.agent(groups, concurrency=1, name="groups")
    async def group_agent(stream: Any) -> None:
        async for batch in stream.noack_take(take_max, within=take_within):
            await _ready(pipe)
            async with group_lock, _fail_fast("group"):
                await pipe.group_batch(_incoming(stream, batch), owned(topics.groups))

    @app.agent(rooms, concurrency=1, name="rooms")
    async def room_agent(stream: Any) -> None:
        async for batch in stream.noack_take(take_max, within=take_within):
            await _ready(pipe)
            async with rooms_lock, _fail_fast("rooms"):
                await pipe.rooms_batch(_incoming(stream, batch))

    @app.timer(interval=2.0)
    async def tick() -> None:
        if pipe.producer is None:
            return
        try:
            # items held past the watermark's patience are released even with no new input
            async with session_lock:
                await pipe.session_batch((), owned(topics.sessions))
            async with group_lock:
                await pipe.group_batch((), owned(topics.groups))
            await pipe.emit(pipe.flush_detectors(), {})
        except Exception:  # a failing tick must not take the worker down
            log.exception("detector flush failed")

    if config.worker.gc_freeze_interval_s > 0:
        gc_schedule = GcSchedule(freeze_interval_s=config.worker.gc_freeze_interval_s,
                                 full_interval_s=config.worker.gc_full_interval_s,
                                 full_growth_mib=config.worker.gc_full_growth_mib,
                                 full_growth_ratio=config.worker.gc_full_growth_ratio,
                                 idle_growth_share=config.worker.gc_idle_growth_share,
                                 now=time.monotonic())
        events_seen = [-1]

        @app.timer(interval=config.worker.gc_freeze_interval_s)
        async def collect_garbage() -> None:
            idle = pipe.stats.events_in == events_seen[0]
            events_seen[0] = pipe.stats.events_in
            if gc_schedule.tick(time.monotonic(), idle=idle) == "full":
                log.info("gc: full collection (%s) freed %d objects in %.0f ms",
                         gc_schedule.last_full_reason, gc_schedule.last_full_freed,
                         gc_schedule.last_full_ms)

    @app.timer(interval=SNAPSHOT_INTERVAL_S)
    async def save_group_state() -> None:
        if pipe.accepting():
            await _save_groups(_owned_stages(), "interval")
            await _save("rooms", "interval", pipe.save_rooms)

    learned_policy = LearnedSavePolicy.from_config(config.worker)

    @app.timer(interval=LEARNED_CHECK_S)
    async def save_learned_state() -> None:
        events = pipe.stats.events_detected
        why = learned_policy.due(time.monotonic(), events)
        if why is None or pipe.producer is None:
            return
        learned_policy.saved(time.monotonic(), events, why)
        try:  # the snapshot file and l:0 of one instant, built off the loop when it can be
            built = await pipe.save_session_stage()
        except Exception:
            log.exception("detector state snapshot failed")
            return
        if built is not None and pipe.accepting():
            await _save("learned state", why, lambda: pipe.save_learned(built))

    add_pages(app, pipe, web_access)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _shutdown(app_: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        stopping.set()
        try:
            await asyncio.wait_for(ingest_done.wait(), timeout=15)
        except TimeoutError:
            log.warning("ingest loop did not stop within 15 s")
        try:
            await asyncio.wait_for(pipe.outbox.drain(), timeout=15)
        except TimeoutError:
            log.warning("outbox: %d rows not stored at shutdown; their input is re-read on restart",
                        pipe.outbox.rows)
        await pipe.stop_producer()

    return app, pipe


def _incoming(stream: Any, events: list[Any]) -> Iterator[Incoming]:
    """The envelopes of a batch of Faust events. The payload is released once the stage
    has read it: an event is held until its outputs are stored, and only its offset is
    needed for that."""
    for ev in events:
        msg = ev.message

        def ack(ev: Any = ev) -> Awaitable[Any]:
            return stream.ack(ev)  # type: ignore[no-any-return]

        yield Incoming(msg.key, msg.value, msg.headers, msg.topic, msg.partition, msg.offset, ack)
        msg.value = ev.value = None


@contextlib.asynccontextmanager
async def _fail_fast(stage: str) -> AsyncIterator[None]:
    """A stage that fails on a batch stops the worker process (exit status 70) instead of
    leaving a live process whose agent is dead: nothing of the batch was acknowledged,
    so a restarted worker (or the group's other members) re-reads it."""
    try:
        yield
    except asyncio.CancelledError:
        raise
    except Exception:
        log.critical("%s stage failed; exiting so that its input is re-read", stage, exc_info=True)
        logging.shutdown()
        os._exit(70)


async def _ready(pipe: Pipeline) -> None:
    while pipe.producer is None:
        await asyncio.sleep(0.05)

