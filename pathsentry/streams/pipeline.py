"""One worker's pipeline: the producer, the outputs and the stages around the engine.

Owns :class:`Pipeline`: the Kafka producer and its sends, ``emit`` (alerts published at
once, a group partition's ``farm_group`` alerts also to the rooms topic, rows and the
input's acknowledgement handed to the outbox), dead letters, the ingest's forwarding of
validated events, the session and group stages (their watermark gates, the in-process
hand-off, the claims they forward, and running the engine on what the gates release)
and the rooms stage (the room merger on the group stage's alerts). Restoring and saving
state is inherited from :class:`~pathsentry.streams.persistence.StatePersistence`.
(About 600 lines: every stage's batch runs through the same emit and acknowledgement,
which is why they stay in one class.)

May not consume Kafka itself (the ingest loop in :mod:`pathsentry.streams.ingest` and
the Faust agents in :mod:`pathsentry.streams.app` hand it its input), register web
pages, or decide anything about detection (the :class:`~pathsentry.engine.Engine` does).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from pathsentry.config import Config
from pathsentry.detectors import Enriched, Findings
from pathsentry.detectors.farm.rooms import ROOM
from pathsentry.engine import Engine
from pathsentry.infra.clickhouse import ClickHouse
from pathsentry.schemas import (
    AccountLabel,
    Alert,
    AnyEvent,
    EventError,
    event_adapter,
    parse_feedback,
)
from pathsentry.schemas.fast import decode_events
from pathsentry.streams.deadletter import dead_letter_record
from pathsentry.streams.envelopes import (
    MAX_ENVELOPE_BYTES,
    GroupItemModel,
    Incoming,
    chunked,
    envelope,
    partition_for,
    session_key,
)
from pathsentry.streams.gcwatch import GcPauses
from pathsentry.streams.handoff import Handoff
from pathsentry.streams.kafka import METADATA_MAX_AGE_MS, bootstrap_servers, client_kwargs
from pathsentry.streams.metrics import STAGE_SAMPLE, Stats
from pathsentry.streams.outbox import Delivery, Outbox, Pending
from pathsentry.streams.persistence import StatePersistence
from pathsentry.streams.sinks import ClickHouseSink
from pathsentry.streams.topics import Topics
from pathsentry.streams.watermarks import Gate, decode_claims, encode_claims

__all__ = ["GroupItem", "Pipeline", "SessionItem", "is_room_part"]

log = logging.getLogger(__name__)


#: A session-stage item: produce time (ms), the event's JSON (bytes, or the decoded
#: object on the decode path), the validated event.
SessionItem = tuple[int, bytes | dict[str, Any], AnyEvent]
#: A group-stage item: produce time (ms), (detector, key) routes, the enriched event.
GroupItem = tuple[int, list[tuple[str, str]], Enriched]


class Pipeline(StatePersistence):
    """Runtime state of one worker: the engine, the sinks, the producer and the counters."""

    def __init__(self, config: Config, engine: Engine, ch: ClickHouse, worker_id: str) -> None:
        self.config = config
        self.engine = engine
        self._group_names = {d.name for d in engine.group_detectors}
        self.ch = ch
        self.sink = ClickHouseSink(ch)
        self.stats = Stats(worker=worker_id)
        self.stats.detector_feedback = engine.crosscheck.tally.counts  # live
        self.outbox = Outbox(
            self.sink,
            max_rows=config.clickhouse.buffer_rows,
            max_insert_rows=config.clickhouse.batch_size,
            min_insert_interval_s=config.clickhouse.min_insert_interval_s,
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
        self.producer: Any = None
        self._partitions: dict[str, int] = {}
        self._init_persistence()
        self.stats.watch(self.gauges)

    def flush_detectors(self) -> Findings:
        """Let the session stage and every group partition close what their event time
        has passed."""
        c0 = time.thread_time()
        out = self.engine.flush_sessions()
        for stage in self.group_stages.values():
            out.extend(stage.flush())
        self.stats.detect_cpu_s += time.thread_time() - c0
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
        deliveries = []
        to_rooms: list[Delivery] = []
        for a in findings.alerts:
            value, key = _alert_value(a), a.alert_id.encode()
            deliveries.append(await self.send(self.topics.alerts, value, key=key))
            if is_room_part(a):  # the room merger's input, durable before the batch's ack
                to_rooms.append(await self.send(self.topics.rooms, value, key=key, partition=0,
                                                headers=self.signer.sign(b"room", key, value)))
        # triggers, when given: one per alert, in order: the event that raised or updated it
        for i, (a, d) in enumerate(zip(findings.alerts, deliveries, strict=True)):
            if isinstance(d.future, asyncio.Future):
                d.future.add_done_callback(functools.partial(
                    self._published, a.kind, triggers[i][1] if triggers else None))
        await self.outbox.put(Pending(
            flags=findings.flags, alerts=findings.alerts,
            deliveries=deliveries + to_rooms + (forwards or []),
            on_durable=on_durable, produced_ms=produced_ms, stage=stage, events=events,
            triggers=triggers or [],
        ))

    def gauges(self) -> dict[str, Any]:
        """Live state next to the counters: ClickHouse health, what waits in the outbox,
        how often a stage found its input in the local hand-off."""
        return {
            "clickhouse_healthy": self.sink.healthy,
            "clickhouse_inserts": self.sink.inserts,
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
            "group_state_load_failures": self.state_store.load_failures,
            "group_state_restored": sorted(self.state_store.restored),
            "session_partitions": sorted(self.session_parts),
            "session_state_saves": self.session_store.saves,
            "session_state_loads": self.session_store.loads,
            "session_state_load_failures": self.session_store.load_failures,
            "session_state_restored": sorted(self.session_store.restored),
            "learned_state_saves": self.learned_store.saves,
            "learned_state_loaded": bool(self.learned_store.restored),
            "learned_state_load_failures": self.learned_store.load_failures,
            **self.state_refusals(),
            **self.learned_save_stats(),
        }

    def assigned(self) -> dict[str, list[int]]:
        """The partitions this worker consumes now, per topic."""
        out: dict[str, list[int]] = {}
        for topic, partition in sorted(self.ingest_partitions | set(self.stage_partitions())):
            out.setdefault(topic, []).append(partition)
        return out

    def _published(self, kind: str, produced_ms: int | None, fut: Awaitable[Any]) -> None:
        if isinstance(fut, asyncio.Future) and not fut.cancelled() and fut.exception() is None:
            self.stats.published(kind, produced_ms)

    def _stored(self, p: Pending, stored_ms: float) -> None:
        self.stats.stored(p.flags, p.alerts, p.produced_ms, p.triggers, stored_ms, p.stage, p.events)

    async def dead_letter(self, payload: bytes | None, err: EventError, msg: Any) -> Awaitable[Any]:
        """Send a refused message to the dead-letter topic; returns its delivery future."""
        rec = dead_letter_record(
            payload, err.reason, err.detail,
            topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key,
        )
        fut: Awaitable[Any] = await self.producer.send(self.topics.dead_letter, orjson.dumps(rec),
                                                        key=msg.key)
        self.stats.dead_lettered(err.reason)
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
        records = list(records)
        raws = [m.value if m.value is not None else b"" for m in records]
        # one compiled pass over the batch; anything it would not take as is goes to parse_event
        c0 = time.thread_time()
        decoded = decode_events(raws)
        self.stats.decode_cpu_s += time.thread_time() - c0
        for m, raw, ev in zip(records, raws, decoded, strict=True):
            if isinstance(ev, EventError):
                dead.append(await self.dead_letter(m.value, ev, m))
                continue
            parts.setdefault(partition_for(session_key(ev), n_parts), []).append((m.timestamp, raw, ev))
            valid += 1
        self.stats.mark_stage("ingest", [t for items in parts.values() for t, _, _ in items[::STAGE_SAMPLE]])
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
        self.stats.ingested(valid)

    async def feedback_batch(self, records: Iterable[Any]) -> None:
        """The game's labels and interactions: dead-letter the invalid ones, store the
        labels, hand both to the engine's cross-check and publish the alerts a late label
        re-versions. Nothing is acknowledged: every worker reads these topics whole from
        their beginning (see :mod:`pathsentry.streams.feedback`)."""
        labels: list[AccountLabel] = []
        out = Findings()
        dead: list[Awaitable[Any]] = []
        for m in records:
            try:
                ev = parse_feedback(m.value if m.value is not None else b"")
            except EventError as err:
                dead.append(await self.dead_letter(m.value, err, m))
                continue
            if isinstance(ev, AccountLabel):
                labels.append(ev)
            out.extend(self.engine.feedback(ev))
            self.stats.feedback_in += 1
        await self.sink.write_labels(labels)
        await self.emit(out, {}, stage="feedback")
        for fut in dead:
            await fut

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
            if got is None and (why := self.signer.verify(b"envelope", msg.key, msg.value, msg.headers)):
                await self.dead_letter(msg.value, EventError("bad_signature", why), msg)
                await msg.ack()
                continue
            if got is None:
                try:
                    got = [decode(i) for i in orjson.loads(msg.value)] if msg.value else []
                except (orjson.JSONDecodeError, ValidationError, KeyError, TypeError, ValueError) as e:
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
        self.stats.mark_stage("session", [t for (t, _, _), _ in released[::STAGE_SAMPLE]])
        routed: list[tuple[int, bytes | dict[str, Any], Enriched, list[tuple[str, str]]]] = []
        alerts = out.alerts
        session_into, group_routes = engine.session_into, engine.group_routes
        c0 = time.thread_time()
        for (t, raw, event), _ in released:
            produced[event.event_id] = t
            first = len(alerts)
            enriched = session_into(event, out)
            if len(alerts) > first:
                triggers.extend((a.kind, t) for a in alerts[first:])
            routes = group_routes(enriched)
            if routes:
                routed.append((t, raw, enriched, routes))
        self.stats.detect_cpu_s += time.thread_time() - c0
        for t, raw, enriched, routes in routed:
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
        self.stats.forwarded(forwarded)
        await self.emit(out, produced, forwards=sends, on_durable=_ack_all(h for _, h in released),
                        stage="session", events=len(released), triggers=triggers)
        if released:
            self.stats.batch_ran((time.perf_counter() - t0) * 1000)

    async def _forward(self, topic: str, partition: int, items: list[Any], wire: list[bytes],
                       handoff: Handoff[Any], headers: Any) -> list[Delivery]:
        """Send items to one partition as envelopes of at most ``MAX_ENVELOPE_BYTES``; the
        claims ride on the last one (they cover what precedes them on the partition)."""
        chunks = list(chunked(items, wire, MAX_ENVELOPE_BYTES))
        local = self.local(topic, partition)
        sent = []
        for i, (its, w) in enumerate(chunks):
            key = handoff.put(its) if its and local else None
            value = envelope(w)
            sent.append(await self.send(topic, value, key=key, partition=partition, headers=self.signer.sign(
                b"envelope", key, value, headers if i == len(chunks) - 1 else None)))
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
        self.stats.mark_stage("group", [t for (t, _, _), _ in released[::STAGE_SAMPLE]])
        alerts = out.alerts
        c0 = time.thread_time()
        for (t, routes, enriched), held in released:
            produced[enriched.event.event_id] = t
            stage = stages[held.partition]
            first = len(alerts)
            for det, key in routes:
                stage.process_into(enriched, det, key, out)
            if len(alerts) > first:
                triggers.extend((a.kind, t) for a in alerts[first:])
        self.stats.detect_cpu_s += time.thread_time() - c0
        await self.emit(out, produced, on_durable=_ack_all(h for _, h in released), stage="group",
                        events=len(released), triggers=triggers)

    async def rooms_batch(self, messages: Iterable[Incoming]) -> None:
        """The room merger (this worker owns the rooms topic's one partition): the group
        stage's ``farm_group`` alerts in, one alert per room out. A record that is not
        one of the workers' signed alerts is dead-lettered and acknowledged."""
        if not self.accepting():
            return  # rebalancing or stopping: re-read from the committed offset
        await self.own_rooms()
        parts: list[Alert] = []
        acks: list[Callable[[], Awaitable[Any]]] = []
        for msg in messages:
            acks.append(msg.ack)
            if why := self.signer.verify(b"room", msg.key, msg.value, msg.headers):
                await self.dead_letter(msg.value, EventError("bad_signature", why), msg)
                continue
            try:
                parts.append(Alert.model_validate_json(msg.value or b""))
            except ValidationError as e:
                await self.dead_letter(msg.value, EventError("bad_envelope", str(e)[:200]), msg)
        c0 = time.thread_time()
        rooms = self.engine.rooms_of(parts)
        self.stats.detect_cpu_s += time.thread_time() - c0

        async def ack() -> None:
            for a in acks:
                await a()
        await self.emit(Findings(alerts=rooms), {}, on_durable=ack if acks else None, stage="rooms")

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
        """An item read from the groups topic, checked against :class:`GroupItemModel` and
        routed to this engine's group detectors only (else ValueError: dead-lettered)."""
        checked = GroupItemModel.model_validate(item)
        unknown = {d for d, _ in checked.r} - self._group_names
        if unknown:
            raise ValueError(f"routes to unknown group detector(s) {sorted(unknown)[:5]}")
        enriched = self.engine.enricher.enrich(event_adapter.validate_python(checked.e))
        enriched.notes = checked.n.model_dump(exclude_none=True) if checked.n is not None else {}
        return checked.t, checked.r, enriched



class _Held:
    """Acknowledges an envelope once all of its items have been processed and stored;
    knows the input partition it came from (every route of a group-stage item is keyed
    to that partition)."""

    __slots__ = ("ack", "partition", "remaining")

    def __init__(self, ack: Callable[[], Awaitable[Any]], remaining: int, partition: int) -> None:
        self.ack = ack
        self.remaining = remaining
        self.partition = partition

    async def done(self, n: int = 1) -> None:
        """``n`` more of its items are processed and stored."""
        self.remaining -= n
        if self.remaining == 0:
            await self.ack()


def _ack_all(held: Iterable[_Held]) -> Callable[[], Awaitable[None]] | None:
    """The acknowledgement of a run's items: one call per envelope (not per item), in the
    order of each envelope's last item, as acknowledging item by item would."""
    counts: dict[_Held, int] = {}
    for h in held:  # re-inserted at each item: ordered by each envelope's last item
        counts[h] = counts.pop(h, 0) + 1
    if not counts:
        return None

    async def ack() -> None:
        for h, n in counts.items():
            await h.done(n)
    return ack


def _session_item(item: dict[str, Any]) -> SessionItem:
    return item["t"], item["e"], event_adapter.validate_python(item["e"])


def is_room_part(a: Alert) -> bool:
    """Whether the room merger takes ``a``: a group partition's ``farm_group`` alert."""
    return a.kind == "farm_group" and a.subject.get("key") != ROOM


def _alert_value(a: Alert) -> bytes:
    return a.model_dump_json().encode()

