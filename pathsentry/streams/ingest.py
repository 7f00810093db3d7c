"""The ingest loop: the producers' topics consumed with aiokafka in large batches.

Owns :func:`run_ingest` (the consumer, its rebalance listener, the event-time alignment
of its partitions, back-pressure on what the stages have not taken yet), what it
claims downstream per producer partition (:class:`IngestClaims`) and its commits
(:class:`Uncommitted`): offsets are committed, every ``commit_interval_s`` and for
revoked partitions before they move, only after the batches' envelopes and dead
letters are acknowledged by the broker. May not validate, route or send events
itself (:meth:`Pipeline.ingest_batch <pathsentry.streams.pipeline.Pipeline.ingest_batch>`
does), nor touch the stages' state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Set
from typing import Any

from aiokafka.errors import KafkaError

from pathsentry.infra.redact import redact_text
from pathsentry.streams.align import PartitionAligner
from pathsentry.streams.kafka import METADATA_MAX_AGE_MS, bootstrap_servers, client_kwargs
from pathsentry.streams.pipeline import Pipeline

__all__ = ["IngestClaims", "Uncommitted", "run_ingest"]

#: How long a partition with nothing buffered (and not known to be caught up) may hold
#: the others back in the ingest loop's event-time alignment.
ALIGN_MAX_WAIT_S = 0.1

#: How long a partition with a backlog not fetched yet may hold the others back (catch-up).
ALIGN_LAG_WAIT_S = 2.0

#: Longest the ingest loop waits for its last commit when it stops.
FINAL_COMMIT_TIMEOUT_S = 5.0

#: How often the ingest loop looks again when the stages hold ``max_in_flight`` events.
IN_FLIGHT_POLL_MS = 5

#: A back-pressure wait longer than this pauses the ingest's partitions and polls them
#: (a consumer that does not poll for ``max.poll.interval.ms`` leaves its group).
IN_FLIGHT_PAUSE_AFTER_S = 30.0

log = logging.getLogger(__name__)


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
                log.warning("ingest: %s: %s; re-reading from the last commit", type(e).__name__,
                            redact_text(str(e)))
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

