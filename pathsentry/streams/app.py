"""The stream worker: an ingest loop and two Faust agents joined by repartition topics.

::

    logins ─┐   ingest (aiokafka, batched)     ┌─► dead-letter (reason + topic/partition/offset)
            ├─► decode + validate (pydantic) ──┤
 telemetry ─┘                                  └─► pathsentry-sessions (partition: session id)
                                                     │ agent "sessions": enrich + session-stage detectors
                                                     ├─► ClickHouse + alerts topic
                                                     └─► pathsentry-groups (partition: group key)
                                                           │ agent "groups": group-stage detectors
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
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import itertools
import logging
import os
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from pathsentry.config import Config
from pathsentry.detectors import Enriched, Findings
from pathsentry.engine import Engine, GroupStage
from pathsentry.infra.clickhouse import ClickHouse, is_read_only
from pathsentry.schemas import Alert, AnyEvent, EventError, event_adapter, parse_event
from pathsentry.streams.align import PartitionAligner
from pathsentry.streams.deadletter import dead_letter_record
from pathsentry.streams.gcwatch import GcPauses, GcSchedule
from pathsentry.streams.handoff import Handoff
from pathsentry.streams.kafka import bootstrap_servers, client_kwargs, faust_credentials
from pathsentry.streams.outbox import Delivery, Outbox, Pending
from pathsentry.streams.sinks import ClickHouseSink
from pathsentry.streams.state import StateStore
from pathsentry.streams.topics import Topics
from pathsentry.streams.watermarks import Gate, decode_claims, encode_claims

__all__ = ["Pipeline", "Stats", "create_app", "envelope", "partition_for", "session_key"]

#: Topic metadata is refreshed at least this often, so topics that reappear (a broker
#: restarted with an empty log, topics recreated) are picked up within seconds.
METADATA_MAX_AGE_MS = 10_000

#: How long a partition with nothing buffered (and not known to be caught up) may hold
#: the others back in the ingest loop's event-time alignment.
ALIGN_MAX_WAIT_S = 0.1

#: How long a partition with a backlog not fetched yet may hold the others back (catch-up).
ALIGN_LAG_WAIT_S = 2.0

#: Longest the ingest loop waits for its last commit when it stops.
FINAL_COMMIT_TIMEOUT_S = 5.0

#: Largest envelope sent to an internal topic (the producer accepts up to 8 MiB).
MAX_ENVELOPE_BYTES = 1 << 20

#: Stage latencies are recorded for one event in this many (a systematic sample).
STAGE_SAMPLE = 4

#: How often the ingest loop looks again when the stages hold ``max_in_flight`` events.
IN_FLIGHT_POLL_MS = 5

#: A back-pressure wait longer than this pauses the ingest's partitions and polls them
#: (a consumer that does not poll for ``max.poll.interval.ms`` leaves its group).
IN_FLIGHT_PAUSE_AFTER_S = 30.0

#: Detector state is written to disk this often (and at shutdown).
SNAPSHOT_INTERVAL_S = 120.0

log = logging.getLogger(__name__)


def session_key(ev: AnyEvent) -> str:
    """Repartition key of an event: its session, else its account, else its address."""
    return ev.session_id or getattr(ev, "account", None) or str(ev.src_ip)


def partition_for(key: str, partitions: int) -> int:
    """Stable partition of a key (same on every worker and every run).

    >>> partition_for("sess-1", 8) == partition_for("sess-1", 8), 0 <= partition_for("x", 3) < 3
    (True, True)
    """
    return zlib.crc32(key.encode()) % partitions


def envelope(items: Iterable[bytes]) -> bytes:
    """Join already-serialised JSON items into one JSON array message.

    >>> orjson.loads(envelope([b'{"a":1}', b'{"b":2}']))
    [{'a': 1}, {'b': 2}]
    """
    return b"[" + b",".join(items) + b"]"


@dataclass
class Stats:
    """Counters of one worker, served on ``/stats`` and ``/metrics``."""

    events_in: int = 0
    events_detected: int = 0
    dead_letter: int = 0
    flagged: int = 0
    alerts: int = 0
    group_messages: int = 0
    batches: int = 0
    last_batch_ms: float = 0.0
    group_events: int = 0
    first_ingest_at: float | None = None
    first_event_at: float | None = None
    last_event_at: float | None = None
    last_group_at: float | None = None
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    #: (produce time ms, produce-to-flag-stored ms, flag kind) of recent flags
    latencies_ms: deque[tuple[int, float, str]] = field(default_factory=lambda: deque(maxlen=500_000))
    #: (produce time ms, produce-to-alert-stored ms, alert kind) of new and updated alerts,
    #: timed from the event that raised them (for a farm group: the login that formed or
    #: grew it; a refresh on an idle tick has no such event and is not counted)
    alert_latencies_ms: deque[tuple[int, float, str]] = field(default_factory=lambda: deque(maxlen=100_000))
    #: (produce time ms, produce-to-acknowledged-by-Kafka ms, alert kind) of the same alerts
    published_latencies_ms: deque[tuple[int, float, str]] = field(
        default_factory=lambda: deque(maxlen=100_000))
    #: (produce time ms, produce-to-stage-run ms, stage) of every ``STAGE_SAMPLE``-th recent
    #: event of a batch: where time goes
    stage_latencies_ms: deque[tuple[int, float, str]] = field(default_factory=lambda: deque(maxlen=200_000))

    def mark_stage(self, stage: str, produced_ms: Iterable[int]) -> None:
        """Record, for one event in ``STAGE_SAMPLE``, the time from its produce to now,
        when ``stage`` runs it."""
        ran_ms = time.time() * 1000
        self.stage_latencies_ms.extend(
            (t, ran_ms - t, stage) for t in itertools.islice(produced_ms, 0, None, STAGE_SAMPLE))

    def mark_detected(self, n: int) -> None:
        now = time.time()
        if self.first_event_at is None:
            self.first_event_at = now
        self.last_event_at = now
        self.events_detected += n

    def latency_quantiles(self, since_ms: int = 0, kind: str | None = None,
                          samples: Iterable[tuple[int, float, str]] | None = None,
                          ) -> dict[str, float | None]:
        """p50/p99 of ``samples`` (default: produce-to-flag) over events produced after
        ``since_ms``, of one ``kind`` or all."""
        if samples is None:
            samples = self.latencies_ms
        s = sorted(lat for t, lat, k in samples if t >= since_ms and kind in (None, k))
        if not s:
            return {"p50": None, "p99": None, "n": 0}
        return {
            "p50": round(s[len(s) // 2], 1),
            "p99": round(s[min(len(s) - 1, int(len(s) * 0.99))], 1),
            "n": len(s),
        }

    def as_dict(self, since_ms: int = 0, latency: bool = True) -> dict[str, Any]:
        """The counters, and with ``latency`` the latency quantiles (which sort up to a few
        hundred thousand samples: a poller that needs only the counters leaves them out)."""
        d = {k: v for k, v in self.__dict__.items() if not k.endswith("latencies_ms")}
        d["uptime_s"] = round(time.time() - self.started_at, 1)
        if not latency:
            return d
        d["produce_to_flag_ms"] = self.latency_quantiles(since_ms)
        for name, samples in (("produce_to_flag_ms_by_kind", self.latencies_ms),
                              ("produce_to_alert_ms_by_kind", self.alert_latencies_ms),
                              ("produce_to_alert_published_ms_by_kind", self.published_latencies_ms),
                              ("produce_to_stage_ms", self.stage_latencies_ms)):
            kinds = sorted({k for _, _, k in samples})
            d[name] = {k: self.latency_quantiles(since_ms, k, samples=samples) for k in kinds}
        return d


#: A session-stage item: produce time (ms), the event's JSON (bytes, or the decoded
#: object on the decode path), the validated event.
SessionItem = tuple[int, bytes | dict[str, Any], AnyEvent]
#: A group-stage item: produce time (ms), (detector, key) routes, the enriched event.
GroupItem = tuple[int, list[tuple[str, str]], Enriched]


class Pipeline:
    """Runtime state of one worker: the engine, the sinks, the producer and the counters."""

    def __init__(self, config: Config, engine: Engine, ch: ClickHouse, worker_id: str) -> None:
        self.config = config
        self.engine = engine
        self.ch = ch
        self.sink = ClickHouseSink(ch)
        self.stats = Stats()
        self.outbox = Outbox(
            self.sink,
            max_rows=config.clickhouse.buffer_rows,
            max_insert_rows=config.clickhouse.batch_size,
            on_stored=self._stored,
        )
        self.session_handoff: Handoff[SessionItem] = Handoff()
        self.group_handoff: Handoff[GroupItem] = Handoff()
        hold = config.kafka.watermark_max_hold_s
        self.session_gate: Gate[tuple[SessionItem, _Held]] = Gate(max_hold_s=hold)
        self.group_gate: Gate[tuple[GroupItem, _Held]] = Gate(max_hold_s=hold)
        self._session_claimed = -1
        self._session_idle_at: float | None = None
        #: events a stage runs between two outputs (a released backlog is cut into chunks)
        self.chunk = config.clickhouse.batch_size
        #: whether the stages may hold new input (not while a rebalance or a stop is under way)
        self.accepting: Callable[[], bool] = lambda: True
        #: whether this worker's stages consume a partition of an internal topic (only what
        #: they consume goes to the local hand-off)
        self.local: Callable[[str, int], bool] = lambda topic, partition: True
        #: partitions this worker is assigned, per topic: the producers' topics (ingest
        #: consumer) and the internal topics (Faust consumer)
        self.ingest_partitions: set[tuple[str, int]] = set()
        self.stage_partitions: Callable[[], list[tuple[str, int]]] = list
        #: the garbage collector's pauses (installed by the worker's app)
        self.gc_pauses = GcPauses()
        self.topics = Topics(config.kafka)
        self.worker_id = worker_id
        self.state_path = Path(config.data_dir) / "state" / f"{worker_id}.json"
        self.producer: Any = None
        self._partitions: dict[str, int] = {}
        #: the group-stage detectors of each owned partition of the groups topic
        self.group_stages: dict[int, GroupStage] = {}
        self.state_store = StateStore(self.topics.state, self._send_state, self._state_consumer,
                                      worker_id)
        #: partitions of the sessions topic whose sessions in progress this worker holds, and
        #: those it gave up at the last revoke (kept if it is given them straight back)
        self.session_parts: set[int] = set()
        self._sessions_revoked: set[int] = set()
        self.session_store = StateStore(self.topics.state, self._send_state, self._state_consumer,
                                        worker_id, kind="s")
        #: what the session stage learned from all its traffic (baselines, model), saved for
        #: workers new to the group (``l:0``); loaded once by a worker without a snapshot file
        self.learned_store = StateStore(self.topics.state, self._send_state, self._state_consumer,
                                        worker_id, kind="l")
        self._learned_checked = False
        #: wall time of the snapshot file the session stage started from (0: none)
        self._snapshot_at = 0.0

    def load_snapshot(self) -> None:
        """Restore the session stage's detectors from this worker's last snapshot (the
        group stage's state comes from the state topic, partition by partition, and so
        do the sessions of a session partition when its save there is newer)."""
        if self.state_path.exists():
            try:
                state = orjson.loads(self.state_path.read_bytes())
                self.engine.load_state({d.name: state[d.name] for d in self.engine.session_detectors
                                        if d.name in state})
                self._snapshot_at = self.state_path.stat().st_mtime
                log.info("restored detector state from %s", self.state_path)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                log.warning("ignoring unreadable detector state %s: %s", self.state_path, e)

    def snapshot_bytes(self) -> bytes:
        """Serialise the session stage's state (call on the event-loop thread: state is not
        locked)."""
        return orjson.dumps(self.engine.state(groups=False), default=str)

    def write_snapshot(self, data: bytes) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.state_path)

    def save_snapshot(self) -> None:
        self.write_snapshot(self.snapshot_bytes())

    # -- group partitions' state ----------------------------------------------------

    async def own_groups(self, owned: list[int]) -> None:
        """Give every owned partition of the groups topic its group stage, started from its
        saved state (a revoked partition was saved and dropped in the revoke handler).
        Nothing changes while a rebalance is under way."""
        if not self.accepting():
            return
        new = [p for p in owned if p not in self.group_stages]
        if not new:
            return
        t0 = time.perf_counter()
        saved = await _load_saved(self.state_store, new, "group partitions", "they start empty")
        for p in new:
            stage = self.group_stages[p] = self.engine.new_group_stage()
            if p in saved:
                stage.load_state(saved[p])
        log.info("group partitions %s: state restored for %s in %.0f ms", new, sorted(saved),
                 (time.perf_counter() - t0) * 1000)

    async def save_groups(self, partitions: Iterable[int]) -> None:
        """Save the state of these group partitions to the state topic (a consistent cut:
        the stages' state only changes between awaits)."""
        await _save_states(self.state_store, {p: self.group_stages[p].state() for p in partitions
                                              if p in self.group_stages}, "group partitions")

    # -- session partitions' sessions in progress -------------------------------------

    async def _session_part(self) -> Callable[[str], int]:
        n = await self.partitions(self.topics.sessions)
        return lambda session_id: partition_for(session_id, n)

    async def own_sessions(self, owned: list[int]) -> None:
        """Give every newly owned partition of the sessions topic its sessions in progress:
        kept when this worker gave it up at the last revoke and was given it straight
        back, else read from the state topic (unless the snapshot file the worker started
        from is newer). The sessions of partitions given to others are dropped. A worker
        without a snapshot file first warm-starts what it learns from all traffic. Nothing
        changes while a rebalance is under way."""
        if not self.accepting():
            return
        part_of = await self._session_part()
        kept, dropped, new = session_handover(owned, self.session_parts, self._sessions_revoked)
        self._sessions_revoked = set()
        self.session_parts |= kept
        if dropped:
            self.engine.drop_sessions(part_of, dropped)
        if not new:
            return
        if not self._learned_checked:
            self._learned_checked = True
            if not self._snapshot_at:
                await self._warm_start()
        t0 = time.perf_counter()
        saved = await _load_saved(self.session_store, new, "session partitions",
                                  "their sessions go on without their logins")
        newer = sorted(p for p, st in saved.items() if float(st.get("saved_at", 0.0)) >= self._snapshot_at)
        self.engine.drop_sessions(part_of, newer)
        for p in newer:
            self.engine.load_sessions(saved[p].get("detectors", {}))
        self.session_parts.update(new)
        log.info("session partitions %s: sessions restored for %s in %.0f ms", new, newer,
                 (time.perf_counter() - t0) * 1000)

    async def _warm_start(self) -> None:
        """A worker with no snapshot of its own starts from what the last worker to save
        one learned (baselines, model, account histories) instead of cold."""
        t0 = time.perf_counter()
        saved = (await _load_saved(self.learned_store, [0], "learned state, partition",
                                   "the session stage starts cold")).get(0)
        if saved is None:
            log.info("no learned state to start from: the session stage starts cold")
            return
        self.engine.load_learned(saved.get("detectors", {}))
        log.info("session stage warm-started from the state %s saved (%.0f ms)",
                 saved.get("worker", "?"), (time.perf_counter() - t0) * 1000)

    async def save_learned(self) -> None:
        """Save what the session stage learned (``l:0`` of the state topic) for the next
        worker that starts without a snapshot."""
        state = self.engine.learned_state()
        if state:
            await _save_states(self.learned_store, {0: {
                "saved_at": time.time(), "ts": self.engine.session_ts, "worker": self.worker_id,
                "detectors": state}}, "learned state, partition")

    async def save_sessions(self, partitions: Iterable[int]) -> None:
        """Save the sessions in progress of these owned session partitions to the state topic."""
        parts = sorted(self.session_parts.intersection(partitions))
        if not parts:
            return
        shares = self.engine.sessions_state(await self._session_part(), parts)
        now, ts = time.time(), self.engine.session_ts
        await _save_states(self.session_store, {
            p: {"saved_at": now, "ts": ts, "detectors": shares[p]} for p in parts}, "session partitions")

    def sessions_revoked(self, partitions: Iterable[int]) -> None:
        """These session partitions were revoked (and saved): their sessions stay until the
        assignment shows whether this worker keeps them."""
        gone = self.session_parts.intersection(partitions)
        self.session_parts.difference_update(gone)
        self._sessions_revoked |= gone

    async def _send_state(self, partition: int, key: bytes, value: bytes | None) -> Any:
        return await self.producer.send(self.topics.state, value, key=key, partition=partition)

    def _state_consumer(self) -> Any:
        from aiokafka import AIOKafkaConsumer

        return AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers(self.config),
            enable_auto_commit=False,
            fetch_max_wait_ms=self.config.kafka.fetch_max_wait_ms,
            fetch_max_bytes=64 << 20,
            max_partition_fetch_bytes=8 << 20,
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
            **client_kwargs(self.config),
        )

    def flush_detectors(self) -> Findings:
        """Let the session stage and every group partition close what their event time
        has passed."""
        out = self.engine.flush_sessions()
        for stage in self.group_stages.values():
            out.extend(stage.flush())
        return out

    # -- Kafka output -------------------------------------------------------------

    async def start_producer(self) -> None:
        from aiokafka import AIOKafkaProducer

        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers(self.config),
            linger_ms=5,
            max_batch_size=1 << 20,
            max_request_size=8 << 20,
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
            acks="all",
            **client_kwargs(self.config),
        )
        await self.producer.start()

    async def stop_producer(self) -> None:
        if self.producer is not None:
            await self.producer.flush()
            await self.producer.stop()
            self.producer = None

    async def partitions(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            parts = await self.producer.partitions_for(topic)
            n = self._partitions[topic] = max(1, len(parts))
        return n

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None,
                   partition: int | None = None, headers: Any = None) -> Delivery:
        """Send one message; the returned delivery can be awaited and re-sent."""

        async def resend() -> Any:
            return await self.producer.send(topic, value, key=key, partition=partition,
                                            headers=headers)

        try:
            first = await resend()
        except KafkaError as e:  # the outbox re-sends it with back-off
            first = asyncio.get_running_loop().create_future()
            first.set_exception(e)
        return Delivery(first, resend, f"kafka {topic}")

    async def emit(
        self,
        findings: Findings,
        produced_ms: dict[str, int],
        *,
        forwards: list[Delivery] | None = None,
        on_durable: Callable[[], Awaitable[None]] | None = None,
        stage: str = "",
        events: int = 0,
        triggers: list[tuple[str, int]] | None = None,
    ) -> None:
        """Publish the alerts now; hand them, the flags and the batch's acknowledgement to
        the outbox, which stores the rows once every delivery succeeded, then acknowledges."""
        if not (findings or on_durable or events):
            return  # nothing to store or acknowledge (claims only)
        deliveries = [
            await self.send(self.topics.alerts, _alert_value(a), key=a.alert_id.encode())
            for a in findings.alerts
        ]
        if triggers:  # one per alert, in order: the event that raised or updated it
            for (kind, t), d in zip(triggers, deliveries, strict=True):
                if isinstance(d.future, asyncio.Future):
                    d.future.add_done_callback(functools.partial(self._published, kind, t))
        await self.outbox.put(Pending(
            flags=findings.flags, alerts=findings.alerts, deliveries=deliveries + (forwards or []),
            on_durable=on_durable, produced_ms=produced_ms, stage=stage, events=events,
            triggers=triggers or [],
        ))

    def gauges(self) -> dict[str, Any]:
        """Live state next to the counters: ClickHouse health, what waits in the outbox,
        how often a stage found its input in the local hand-off."""
        return {
            "clickhouse_healthy": self.sink.healthy,
            "outbox_rows": self.outbox.rows,
            "outbox_batches": self.outbox.batches,
            "in_flight": self.in_flight(),
            "session_held": len(self.session_gate),
            "group_held": len(self.group_gate),
            "handoff_hits": self.session_handoff.hits + self.group_handoff.hits,
            "handoff_misses": self.session_handoff.misses + self.group_handoff.misses,
            "group_partitions": sorted(self.group_stages),
            "assigned": self.assigned(),
            "group_state_saves": self.state_store.saves,
            "group_state_loads": self.state_store.loads,
            "group_state_restored": sorted(self.state_store.restored),
            "session_partitions": sorted(self.session_parts),
            "session_state_saves": self.session_store.saves,
            "session_state_loads": self.session_store.loads,
            "session_state_restored": sorted(self.session_store.restored),
            "learned_state_saves": self.learned_store.saves,
            "learned_state_loaded": bool(self.learned_store.restored),
        }

    def assigned(self) -> dict[str, list[int]]:
        """The partitions this worker consumes now, per topic."""
        out: dict[str, list[int]] = {}
        for topic, partition in sorted(self.ingest_partitions | set(self.stage_partitions())):
            out.setdefault(topic, []).append(partition)
        return out

    def _published(self, kind: str, produced_ms: int, fut: Awaitable[Any]) -> None:
        if isinstance(fut, asyncio.Future) and not fut.cancelled() and fut.exception() is None:
            self.stats.published_latencies_ms.append(
                (produced_ms, time.time() * 1000 - produced_ms, kind))

    def _stored(self, p: Pending, stored_ms: float) -> None:
        s = self.stats
        s.flagged += len(p.flags)
        s.alerts += len(p.alerts)
        for f in p.flags:
            t = p.produced_ms.get(f.event_id)
            if t:
                s.latencies_ms.append((t, stored_ms - t, f.kind))
        for kind, t in p.triggers:
            s.alert_latencies_ms.append((t, stored_ms - t, kind))
        if p.stage == "session" and p.events:
            s.mark_detected(p.events)
            s.batches += 1
        elif p.stage == "group":
            s.group_events += p.events
            s.last_group_at = time.time()

    async def dead_letter(self, payload: bytes | None, err: EventError, msg: Any) -> Awaitable[Any]:
        """Send a refused message to the dead-letter topic; returns its delivery future."""
        rec = dead_letter_record(
            payload, err.reason, err.detail,
            topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key,
        )
        fut: Awaitable[Any] = await self.producer.send(self.topics.dead_letter, orjson.dumps(rec),
                                                        key=msg.key)
        self.stats.dead_letter += 1
        reasons = self.stats.dead_letter_reasons
        reasons[err.reason] = reasons.get(err.reason, 0) + 1
        log.warning(
            "dead-letter: %s (%s) from %s[%d]@%d",
            err.reason, err.detail[:120], msg.topic, msg.partition, msg.offset,
        )
        return fut

    # -- stages ---------------------------------------------------------------------

    async def ingest_batch(self, records: Iterable[Any], claims: dict[str, int] | None = None,
                           *, idle: bool = False) -> None:
        """Validate raw producer records; forward valid ones, dead-letter the rest. Every
        session partition gets the ingest's ``claims`` (an empty envelope where the batch
        has no items for it), marked idle with ``idle``."""
        n_parts = await self.partitions(self.topics.sessions)
        parts: dict[int, list[SessionItem]] = {}
        dead: list[Awaitable[Any]] = []
        valid = 0
        for m in records:
            raw = m.value if m.value is not None else b""
            try:
                ev = parse_event(raw)
            except EventError as err:
                dead.append(await self.dead_letter(m.value, err, m))
                continue
            parts.setdefault(partition_for(session_key(ev), n_parts), []).append((m.timestamp, raw, ev))
            valid += 1
        self.stats.mark_stage("ingest", (t for items in parts.values() for t, _, _ in items))
        headers = encode_claims(claims, claims if idle else ()) if claims else None
        sent: list[Delivery] = []
        for p in range(n_parts) if headers else parts:
            items = parts.get(p, [])
            wire = [b'{"t":%d,"e":%s}' % (t, raw) for t, raw, _ in items]
            sent += await self._forward(self.topics.sessions, p, items, wire, self.session_handoff,
                                        headers)
        await self.producer.flush()
        for fut in [d.future for d in sent] + dead:  # a failed delivery raises: the caller re-reads
            await fut
        if valid and self.stats.first_ingest_at is None:
            self.stats.first_ingest_at = time.time()
        self.stats.events_in += valid

    async def _gate_input(self, gate: Gate[Any], messages: Iterable[Incoming], handoff: Handoff[Any],
                          decode: Callable[[dict[str, Any]], Any], now: float) -> None:
        """Hold the items of a batch of envelopes in ``gate`` with their senders' claims:
        from the hand-off when this worker sent them, else decoded. An envelope that
        cannot be decoded is dead-lettered whole (the internal topics carry only the
        workers' own output) and acknowledged, as is an envelope with no items."""
        if not self.accepting():
            return  # rebalancing or stopping: left unacknowledged, re-read from the committed offset
        for msg in messages:
            got = handoff.take(msg.key) if msg.key else None
            if got is None:
                try:
                    got = [decode(i) for i in orjson.loads(msg.value)] if msg.value else []
                except (orjson.JSONDecodeError, ValidationError, KeyError, TypeError) as e:
                    await self.dead_letter(msg.value, EventError("bad_envelope", str(e)[:200]), msg)
                    got = []
            claims, idle = decode_claims(msg.headers)
            if not got:
                gate.add(msg.partition, (), claims, now, idle)
                await msg.ack()
                continue
            held = _Held(msg.ack, len(got), msg.partition)
            gate.add(msg.partition, ((item[0], (item, held)) for item in got), claims, now, idle)

    async def session_batch(self, messages: Iterable[Incoming], owned: Iterable[int]) -> None:
        """Session stage: hold the batch behind the watermark, run what it releases (in
        chunks of at most ``batch_size`` events), forward group-stage work with this
        stage's own claims."""
        now = time.monotonic()
        gate = self.session_gate
        if not gate.sources:
            gate.expect(await self._producer_sources())
        await self._gate_input(gate, messages, self.session_handoff, _session_item, now)
        owned = list(owned)
        await self.own_sessions(owned)
        if any(p not in self.session_parts for p in owned):
            return  # a rebalance is under way: nothing runs before its partition's sessions are in place
        while True:
            released: list[tuple[SessionItem, _Held]] = gate.release(owned, now, limit=self.chunk)
            await self._run_sessions(released, owned, now)
            if len(released) < self.chunk:
                break

    async def _run_sessions(self, released: list[tuple[SessionItem, _Held]], owned: list[int],
                            now: float) -> None:
        t0 = time.perf_counter()
        engine = self.engine
        out = Findings()
        produced: dict[str, int] = {}
        n_parts = await self.partitions(self.topics.groups)
        forward: dict[int, tuple[list[GroupItem], list[bytes]]] = {}
        triggers: list[tuple[str, int]] = []
        self.stats.mark_stage("session", (t for (t, _, _), _ in released))
        for (t, raw, event), _ in released:
            produced[event.event_id] = t
            enriched, found = engine.session_stage(event)
            if found.alerts:
                triggers.extend((a.kind, t) for a in found.alerts)
            out.extend(found)
            routes = engine.group_routes(enriched)
            if not routes:
                continue
            # one item per destination partition, carrying every (detector, key) bound there
            by_part: dict[int, list[tuple[str, str]]] = {}
            for det, key in routes:
                by_part.setdefault(partition_for(key, n_parts), []).append((det, key))
            e_json = raw if isinstance(raw, bytes) else orjson.dumps(raw)
            notes = orjson.dumps(enriched.notes, default=str)
            for p, rs in by_part.items():
                group_items, wire = forward.setdefault(p, ([], []))
                group_items.append((t, rs, enriched))
                wire.append(b'{"t":%d,"r":%s,"n":%s,"e":%s}' % (t, orjson.dumps(rs), notes, e_json))
        headers = self._session_claims(owned, now)
        sends: list[Delivery] = []
        forwarded = 0
        for p in range(n_parts) if headers else forward:
            group_items, wire = forward.get(p, ([], []))
            sends += await self._forward(self.topics.groups, p, group_items, wire, self.group_handoff,
                                         headers)
            forwarded += len(group_items)
        self.stats.group_messages += forwarded
        await self.emit(out, produced, forwards=sends, on_durable=_ack_all(h for _, h in released),
                        stage="session", events=len(released), triggers=triggers)
        if released:
            self.stats.last_batch_ms = round((time.perf_counter() - t0) * 1000, 2)

    async def _forward(self, topic: str, partition: int, items: list[Any], wire: list[bytes],
                       handoff: Handoff[Any], headers: Any) -> list[Delivery]:
        """Send items to one partition as envelopes of at most ``MAX_ENVELOPE_BYTES``; the
        claims ride on the last one (they cover what precedes them on the partition)."""
        chunks = list(_chunked(items, wire, MAX_ENVELOPE_BYTES))
        local = self.local(topic, partition)
        sent = []
        for i, (its, w) in enumerate(chunks):
            key = handoff.put(its) if its and local else None
            sent.append(await self.send(topic, envelope(w), key=key, partition=partition,
                                        headers=headers if i == len(chunks) - 1 else None))
        return sent

    async def group_batch(self, messages: Iterable[Incoming], owned: Iterable[int]) -> None:
        """Group stage: hold the batch behind the session partitions' watermark, run what
        it releases (in chunks of at most ``batch_size`` events)."""
        now = time.monotonic()
        gate = self.group_gate
        if not gate.sources:
            gate.expect(f"s:{p}" for p in range(await self.partitions(self.topics.sessions)))
        await self._gate_input(gate, messages, self.group_handoff, self._group_item, now)
        owned = list(owned)
        await self.own_groups(owned)
        if any(p not in self.group_stages for p in owned):
            return  # a rebalance is under way: nothing runs before its partition's state is in place
        while True:
            released: list[tuple[GroupItem, _Held]] = gate.release(owned, now, limit=self.chunk)
            await self._run_groups(released)
            if len(released) < self.chunk:
                break

    async def _run_groups(self, released: list[tuple[GroupItem, _Held]]) -> None:
        out = Findings()
        produced: dict[str, int] = {}
        triggers: list[tuple[str, int]] = []
        stages = self.group_stages
        self.stats.mark_stage("group", (t for (t, _, _), _ in released))
        for (t, routes, enriched), held in released:
            produced[enriched.event.event_id] = t
            stage = stages[held.partition]
            for det, key in routes:
                found = stage.process(enriched, det, key)
                if found.alerts:
                    triggers.extend((a.kind, t) for a in found.alerts)
                out.extend(found)
        await self.emit(out, produced, on_durable=_ack_all(h for _, h in released), stage="group",
                        events=len(released), triggers=triggers)

    def _session_claims(self, owned: list[int], now: float) -> Any:
        """Headers for the group stage: everything of the owned session partitions up to
        the gate's ``released_to`` is forwarded; idle marks when the session stage's
        own sources are all idle and nothing is held (repeated every few seconds)."""
        if not owned:
            return None
        gate, claim_to = self.session_gate, self.session_gate.released_to
        claims = {f"s:{p}": claim_to for p in owned}
        if gate.idle(owned):
            if self._session_idle_at is not None and now - self._session_idle_at < 5.0:
                return None
            self._session_idle_at = now
            self._session_claimed = claim_to
            return encode_claims(claims, claims)
        self._session_idle_at = None
        if claim_to <= self._session_claimed:
            return None
        self._session_claimed = claim_to
        return encode_claims(claims)

    async def _producer_sources(self) -> list[str]:
        """Watermark sources of the session stage: the producers' topic partitions."""
        return [f"{topic}:{p}" for topic in (self.topics.logins, self.topics.telemetry)
                for p in range(await self.partitions(topic))]

    def on_rebalance(self) -> None:
        """A rebalance started: drop what the gates hold. None of it is acknowledged, and
        Faust re-reads every kept or new partition from its committed offset."""
        dropped = self.session_gate.drop() + self.group_gate.drop()
        # partitions may move: what stays is decoded from the topic when it is re-read
        self.session_handoff.clear()
        self.group_handoff.clear()
        self._session_claimed = -1
        self._session_idle_at = None
        if dropped:
            log.info("rebalance: %d held items will be re-read from the committed offsets", dropped)

    def in_flight(self) -> int:
        """Events this worker sent to its own internal partitions that its stages have not
        received yet: the queue the ingest loop's back-pressure bounds. (What a stage holds
        behind its watermark waits for the ingest's progress and is not counted; the outbox
        bounds what waits for ClickHouse.)"""
        return self.session_handoff.pending() + self.group_handoff.pending()

    def _group_item(self, item: dict[str, Any]) -> GroupItem:
        enriched = self.engine.enricher.enrich(event_adapter.validate_python(item["e"]))
        enriched.notes = item.get("n") or {}
        return item["t"], [(d, k) for d, k in item["r"]], enriched


def session_handover(owned: Iterable[int], held: Set[int],
                     revoked: Set[int]) -> tuple[set[int], set[int], list[int]]:
    """What a worker does with its session partitions once it knows its assignment
    (``owned``), given those whose sessions it holds and those it gave up at the last
    revoke: (kept: given straight back, its own sessions are current; dropped: now
    another worker's; new: to load from the state topic).

    >>> session_handover([0, 1, 2], held={0}, revoked={1, 3})
    ({1}, {3}, [2])
    """
    owned = list(owned)
    kept = {p for p in revoked if p in owned}
    return kept, {p for p in revoked if p not in kept}, [p for p in owned if p not in held and p not in kept]


async def _load_saved(store: StateStore, partitions: list[int], what: str,
                      otherwise: str) -> dict[int, dict[str, Any]]:
    """The newest saves of ``partitions`` in ``store``; none when the state topic cannot be
    read (logged, with what follows): detection goes on without them rather than not at all."""
    try:
        return await store.load(partitions)
    except (TimeoutError, KafkaError) as e:
        log.error("%s %s: saved state not readable (%s: %s); %s", what, partitions,
                  type(e).__name__, e, otherwise)
        return {}


async def _save_states(store: StateStore, states: dict[int, dict[str, Any]], what: str) -> None:
    """Save each partition's state with ``store``, and log what was saved."""
    if not states:
        return
    t0 = time.perf_counter()
    size = 0
    for p in sorted(states):
        size += await store.save(p, states[p])
    log.info("%s %s: state saved (%d KiB) in %.0f ms", what, sorted(states), size >> 10,
             (time.perf_counter() - t0) * 1000)


@dataclass(slots=True)
class Incoming:
    """One envelope from an internal topic, and how to acknowledge it."""

    key: bytes | None
    value: bytes | None
    headers: Any
    topic: str
    partition: int
    offset: int
    ack: Callable[[], Awaitable[Any]]


class _Held:
    """Acknowledges an envelope once all of its items have been processed and stored;
    knows the input partition it came from (every route of a group-stage item is keyed
    to that partition)."""

    __slots__ = ("ack", "partition", "remaining")

    def __init__(self, ack: Callable[[], Awaitable[Any]], remaining: int, partition: int) -> None:
        self.ack = ack
        self.remaining = remaining
        self.partition = partition

    async def done(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            await self.ack()


def _ack_all(held: Iterable[_Held]) -> Callable[[], Awaitable[None]] | None:
    items = list(held)
    if not items:
        return None

    async def ack() -> None:
        for h in items:
            await h.done()
    return ack


def _chunked(items: list[Any], wire: list[bytes], max_bytes: int) -> Iterator[tuple[list[Any], list[bytes]]]:
    """Split parallel ``items``/``wire`` lists so each chunk's wire stays under ``max_bytes``
    (a single larger item gets a chunk of its own); at least one chunk, maybe empty.

    >>> [len(w) for _, w in _chunked([1, 2, 3], [b"aaaa", b"bbbb", b"cc"], 10)]
    [2, 1]
    >>> list(_chunked([], [], 10))
    [([], [])]
    """
    start = size = 0
    for i, w in enumerate(wire):
        if i > start and size + len(w) > max_bytes:
            yield items[start:i], wire[start:i]
            start, size = i, 0
        size += len(w) + 1
    yield items[start:], wire[start:]


def _session_item(item: dict[str, Any]) -> SessionItem:
    return item["t"], item["e"], event_adapter.validate_python(item["e"])


def _alert_value(a: Alert) -> bytes:
    return a.model_dump_json().encode()


class IngestClaims:
    """What the ingest loop claims per producer partition: every record up to this
    produce time has been forwarded.

    A partition's claim is the newest record released from it; a partition that is
    caught up with its log end, or whose buffered records are all newer, claims the
    newest record released from any partition (what arrives later was produced later).
    When nothing is released and every partition is caught up, the loop is idle: its
    partitions are marked idle (they hold nothing back downstream), once and then every
    ``IDLE_REPEAT_MS`` while the idleness lasts.

    >>> from collections import namedtuple
    >>> R, TP = namedtuple("R", "topic partition timestamp"), namedtuple("TP", "topic partition")
    >>> c, l0, t0 = IngestClaims(), TP("logins", 0), TP("telemetry", 0)
    >>> c.update([R("logins", 0, 100), R("telemetry", 0, 150)], {l0, t0}, set(), lambda tp: 0, 1e4)
    >>> c.claims({l0, t0}) == {"logins:0": 100, "telemetry:0": 150}
    True
    >>> c.update([], {l0, t0}, {l0}, lambda tp: 0, 1e4)  # logins:0 caught up: newest released
    >>> c.claims({l0, t0}) == {"logins:0": 150, "telemetry:0": 150}
    True
    >>> c.update([], {l0, t0}, {l0, t0}, lambda tp: 0, 2e4) == {"logins:0": 150, "telemetry:0": 150}
    True
    >>> c.update([], {l0, t0}, {l0, t0}, lambda tp: 0, 2.1e4) is None  # said already
    True
    """

    #: idle marks are repeated this often while the loop stays idle
    IDLE_REPEAT_MS = 5_000

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.top = -1
        self._idle_sent_at: float | None = None

    @staticmethod
    def _name(tp: Any) -> str:
        return f"{tp.topic}:{tp.partition}"

    def update(self, records: list[Any], assigned: Any, caught_up: Any,
               buffered: Callable[[Any], int], now_ms: float) -> dict[str, int] | None:
        """Account for released ``records``; return the claims to send as idle marks when
        the loop is idle and has not said so lately, else ``None``."""
        for m in records:
            name = f"{m.topic}:{m.partition}"
            if m.timestamp > self.last.get(name, -1):
                self.last[name] = m.timestamp
            if m.timestamp > self.top:
                self.top = m.timestamp
        for tp in assigned:
            name = self._name(tp)
            if (tp in caught_up or buffered(tp)) and self.top > self.last.get(name, -1):
                self.last[name] = self.top
        idle = not records and bool(assigned) and all(tp in caught_up for tp in assigned)
        if not idle:
            self._idle_sent_at = None
            return None
        if self._idle_sent_at is not None and now_ms - self._idle_sent_at < self.IDLE_REPEAT_MS:
            return None
        self._idle_sent_at = now_ms
        return self.claims(assigned) or {self._name(tp): -1 for tp in assigned}

    def claims(self, assigned: Any) -> dict[str, int]:
        return {n: t for tp in assigned if (t := self.last.get(n := self._name(tp), -1)) >= 0}

    def drop(self, tps: Any) -> None:
        for tp in tps:
            self.last.pop(self._name(tp), None)
        self._idle_sent_at = None


class Uncommitted:
    """Offsets the ingest loop has forwarded and not committed yet, per (topic,
    partition): committed together every ``interval_s``, and those of revoked
    partitions before they move.

    >>> from collections import namedtuple
    >>> R = namedtuple("R", "topic partition offset")
    >>> u = Uncommitted(0.5, now=0.0)
    >>> u.forwarded([R("logins", 0, 7), R("logins", 0, 8), R("telemetry", 1, 3)])
    >>> u.due(0.2), u.take(0.2, {("telemetry", 1)}), u.due(0.2)  # a revoke commits its own
    (False, {('telemetry', 1): 4}, False)
    >>> u.due(0.6), u.take(0.6), u.take(0.7)
    (True, {('logins', 0): 9}, {})
    """

    def __init__(self, interval_s: float, now: float) -> None:
        self.interval_s = interval_s
        self._next: dict[tuple[str, int], int] = {}
        self._taken_at = now

    def forwarded(self, records: Iterable[Any]) -> None:
        """``records`` (in offset order per partition) are forwarded: commit past them."""
        for m in records:
            self._next[m.topic, m.partition] = m.offset + 1

    def due(self, now: float) -> bool:
        return now - self._taken_at >= self.interval_s

    def take(self, now: float, partitions: Set[tuple[str, int]] | None = None,
             ) -> dict[tuple[str, int], int]:
        """The offsets to commit (of ``partitions`` only, if given), forgotten here: a
        failed commit is followed by reading again from the last one that succeeded."""
        if partitions is None:
            taken, self._next = self._next, {}
            self._taken_at = now
            return taken
        return {tp: self._next.pop(tp) for tp in list(self._next) if tp in partitions}

    def forget(self) -> None:
        self._next.clear()


async def run_ingest(pipe: Pipeline, *, max_records: int, poll_ms: int, stopping: asyncio.Event) -> None:
    """Consume the producers' topics in batches; commit, every ``commit_interval_s``, what
    was forwarded."""
    from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

    cfg = pipe.config
    timeout_ms = int(cfg.kafka.session_timeout_s * 1000)
    aligner = PartitionAligner(max_wait_s=ALIGN_MAX_WAIT_S, lag_wait_s=ALIGN_LAG_WAIT_S)
    claimer = IngestClaims()
    max_buffered = max_records * 4

    uncommitted = Uncommitted(cfg.kafka.commit_interval_s, time.monotonic())

    async def commit(tps: Any = None) -> None:
        assigned = consumer.assignment()
        # a batch that was being forwarded when its partition moved is left to the new owner
        offsets = {tp: o for (t, p), o in uncommitted.take(time.monotonic(), tps).items()
                   if (tp := TopicPartition(t, p)) in assigned}
        if offsets:
            await consumer.commit(offsets)

    class _Revoked(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            try:  # what this worker forwarded is not read again by the partition's next owner
                await commit({(tp.topic, tp.partition) for tp in revoked})
            except KafkaError as e:
                log.warning("ingest: commit at revoke failed (%s); the next owner re-reads it", e)
            aligner.drop(revoked)
            claimer.drop(revoked)
            pipe.ingest_partitions.difference_update((tp.topic, tp.partition) for tp in revoked)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            aligner.track(assigned, time.monotonic())
            pipe.ingest_partitions.update((tp.topic, tp.partition) for tp in assigned)

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(cfg),
        group_id=f"{cfg.kafka.topic_prefix}pathsentry-ingest",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_records,
        fetch_max_wait_ms=cfg.kafka.fetch_max_wait_ms,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=8 << 20,
        session_timeout_ms=timeout_ms,
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
        heartbeat_interval_ms=max(500, timeout_ms // 6),
        rebalance_timeout_ms=max(10_000, timeout_ms * 2),
        **client_kwargs(cfg),
    )
    consumer.subscribe([pipe.topics.logins, pipe.topics.telemetry], listener=_Revoked())
    await consumer.start()
    log.info("ingest: consuming %s and %s", pipe.topics.logins, pipe.topics.telemetry)
    max_in_flight = cfg.kafka.max_in_flight
    held_back_since: float | None = None
    try:
        while not stopping.is_set():
            try:
                if uncommitted.due(time.monotonic()):
                    await commit()
                if pipe.in_flight() >= max_in_flight:
                    # back-pressure: the stages are behind; take nothing until they catch up.
                    # A long wait pauses the partitions and polls them, which keeps this
                    # consumer in its group (what was prefetched is fetched again later).
                    now = time.monotonic()
                    if held_back_since is None:
                        held_back_since = now
                    if now - held_back_since > IN_FLIGHT_PAUSE_AFTER_S:
                        consumer.pause(*consumer.assignment())
                        await consumer.getmany(timeout_ms=IN_FLIGHT_POLL_MS)
                    else:
                        await asyncio.sleep(IN_FLIGHT_POLL_MS / 1000)
                    continue
                if held_back_since is not None:
                    held_back_since = None
                    aligner.restart_clocks(time.monotonic())
                    consumer.resume(*(tp for tp in consumer.paused()
                                      if aligner.buffered(tp) <= max_buffered))
                batch = await consumer.getmany(timeout_ms=poll_ms, max_records=max_records)
                now = time.monotonic()
                for tp, msgs in batch.items():
                    aligner.add(tp, msgs, now)
                assigned = consumer.assignment()
                behind: dict[Any, int | None] = {}
                for tp in assigned:
                    hw = consumer.highwater(tp)
                    behind[tp] = None if hw is None else hw - await consumer.position(tp)
                caught_up, lagging = aligner.progress(behind, max_records)
                records = aligner.release(assigned, caught_up, now, lagging)
                idle = claimer.update(records, assigned, caught_up, aligner.buffered,
                                        time.time() * 1000)
                for tp in assigned:  # bound the buffers: a partition far ahead waits
                    if aligner.buffered(tp) > max_buffered:
                        consumer.pause(tp)
                    elif tp in consumer.paused():
                        consumer.resume(tp)
                if not records:
                    if idle is not None:  # caught up: nothing of ours holds the stages back
                        await pipe.ingest_batch((), idle, idle=True)
                    continue
                await pipe.ingest_batch(records, claimer.claims(assigned))
                uncommitted.forwarded(records)
            except KafkaError as e:
                # go back to the last commit: what was fetched but not forwarded is read again
                log.warning("ingest: %s: %s; re-reading from the last commit", type(e).__name__, e)
                await asyncio.sleep(1.0)
                uncommitted.forget()  # read again from the last commit
                try:
                    aligner.drop(list(consumer.assignment()))
                    aligner.track(consumer.assignment(), time.monotonic())
                    await consumer.seek_to_committed()
                except KafkaError as again:
                    log.warning("ingest: cannot seek back yet (%s); retrying", again)
    finally:
        try:  # bounded: with the broker gone, a commit would wait for it indefinitely
            await asyncio.wait_for(commit(), timeout=FINAL_COMMIT_TIMEOUT_S)
        except (KafkaError, TimeoutError) as e:
            log.warning("ingest: final commit failed (%r); the next owner re-reads it", e)
        await consumer.stop()


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
    _faust_fetch_wait(config.kafka.fetch_max_wait_ms)
    ch = ch or connect(config.clickhouse.url)
    ch.apply_ddl(config.clickhouse.ttl_days)
    engine = engine or Engine(config)
    pipe = Pipeline(config, engine, ch, worker_id)
    pipe.load_snapshot()
    topics = pipe.topics
    take_max = batch_size or max(1, config.clickhouse.batch_size // 100)
    # the agents wait at most this long for a fuller batch: it bounds the added latency per stage
    take_within = batch_within_s or min(0.05, config.clickhouse.flush_interval_s)
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
        datadir=str(Path(config.data_dir) / "faust"),
    )
    pipe.accepting = lambda: not (app.rebalancing or app.stopping_)
    pipe.local = lambda topic, partition: partition in owned(topic)
    pipe.gc_pauses.install()
    pipe.stage_partitions = lambda: [(t, p) for t in (topics.sessions, topics.groups) for p in owned(t)]

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
    sessions = app.topic(topics.sessions, value_type=bytes, key_type=bytes)
    groups = app.topic(topics.groups, value_type=bytes, key_type=bytes)
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
    async def writer() -> None:
        await pipe.outbox.run()

    def owned(topic: str) -> list[int]:
        """Partitions of ``topic`` this worker's Faust consumer owns."""
        try:
            return sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == topic)
        except Exception:  # consumer not started yet
            return []

    session_lock, group_lock = asyncio.Lock(), asyncio.Lock()

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
                                 now=time.monotonic())

        @app.timer(interval=config.worker.gc_freeze_interval_s)
        async def collect_garbage() -> None:
            if gc_schedule.tick(time.monotonic()) == "full":
                log.info("gc: full collection (%s) freed %d objects in %.0f ms",
                         gc_schedule.last_full_reason, gc_schedule.last_full_freed,
                         gc_schedule.last_full_ms)

    @app.timer(interval=SNAPSHOT_INTERVAL_S)
    async def snapshot() -> None:
        try:
            data = pipe.snapshot_bytes()
            await asyncio.get_running_loop().run_in_executor(None, pipe.write_snapshot, data)
        except Exception:
            log.exception("detector state snapshot failed")
        if pipe.accepting():
            await _save_groups(_owned_stages(), "interval")
            await _save_learned("interval")

    @app.page("/stats")
    async def stats_page(web: Any, request: Any) -> Any:
        since = int(request.query.get("since_ms", "0") or 0)
        latency = request.query.get("latency", "1") != "0"
        return web.json({"worker": worker_id, **pipe.stats.as_dict(since, latency), **pipe.gauges(),
                         "gc_pauses": pipe.gc_pauses.summary(since / 1000)})

    @app.page("/query")
    async def query_page(web: Any, request: Any) -> Any:
        sql = request.query.get("sql", "")
        if not is_read_only(sql):
            return web.json({"error": "only one read-only statement is allowed"}, status=400)
        try:
            cols, rows = await pipe.sink.run_blocking(ch.query, sql, None, True)
        except Exception as e:
            return web.json({"error": str(e)[:500]}, status=400)
        body = _dumps({"columns": cols, "rows": [list(r) for r in rows]})
        return web.text(body, content_type="application/json")

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.text(prometheus_text(worker_id, pipe), content_type="text/plain")

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


def _faust_fetch_wait(max_wait_ms: int) -> None:
    """Give Faust's consumer ``max_wait_ms`` as its fetch wait (Faust fixes it at 1.5 s,
    which on a broker that answers only at the end of the wait adds up to that much to
    every hop through an internal topic)."""
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    create = thread.__dict__["_create_worker_consumer"]
    original = getattr(create, "__wrapped__", create)

    @functools.wraps(original)
    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms  # read by AIOKafkaConsumer.start()
        return consumer

    setattr(thread, "_create_worker_consumer", create_worker_consumer)  # noqa: B010


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


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


def prometheus_text(worker_id: str, pipe: Pipeline) -> str:
    """Prometheus exposition of the worker's counters."""
    s = pipe.stats
    w = f'worker="{worker_id}"'
    lines = [
        "# TYPE pathsentry_events_in_total counter",
        f"pathsentry_events_in_total{{{w}}} {s.events_in}",
        "# TYPE pathsentry_events_detected_total counter",
        f"pathsentry_events_detected_total{{{w}}} {s.events_detected}",
        "# TYPE pathsentry_dead_letter_total counter",
        f"pathsentry_dead_letter_total{{{w}}} {s.dead_letter}",
        "# TYPE pathsentry_flagged_total counter",
        f"pathsentry_flagged_total{{{w}}} {s.flagged}",
        "# TYPE pathsentry_alerts_total counter",
        f"pathsentry_alerts_total{{{w}}} {s.alerts}",
        "# TYPE pathsentry_batch_latency_ms gauge",
        f"pathsentry_batch_latency_ms{{{w}}} {s.last_batch_ms}",
        "# TYPE pathsentry_clickhouse_healthy gauge",
        f"pathsentry_clickhouse_healthy{{{w}}} {int(pipe.sink.healthy)}",
        "# TYPE pathsentry_outbox_rows gauge",
        f"pathsentry_outbox_rows{{{w}}} {pipe.outbox.rows}",
        "# TYPE pathsentry_produce_to_flag_ms histogram",
    ]
    lat = sorted(v for _, v, _ in s.latencies_ms)
    for b in _BUCKETS_MS:
        lines.append(f'pathsentry_produce_to_flag_ms_bucket{{{w},le="{b}"}} {bisect.bisect_right(lat, b)}')
    lines.append(f'pathsentry_produce_to_flag_ms_bucket{{{w},le="+Inf"}} {len(lat)}')
    lines.append(f"pathsentry_produce_to_flag_ms_count{{{w}}} {len(lat)}")
    lines.append(f"pathsentry_produce_to_flag_ms_sum{{{w}}} {round(sum(lat), 1)}")
    return "\n".join(lines) + "\n"
