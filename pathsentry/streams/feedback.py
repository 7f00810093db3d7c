"""The feedback loop: every worker reads the game's ``labels`` and ``interactions`` whole.

Owns :func:`run_feedback`. The cross-check of an alert needs the labels of all its
members and their recent interactions, whichever worker raised it, and a late label
must reach the worker that holds the alert it confirms; so every worker consumes both
topics entirely, without a consumer group and from their beginning (what is retained
rebuilds the bounded label store and interaction graph after a restart; set the
``interactions`` retention to the cross-check window). Each worker stores the labels it
reads (``account_labels`` collapses the copies by event id) and re-versions only the
alerts it raised itself. May not validate or decide anything (the pipeline and the
engine do).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.errors import KafkaError

from pathsentry.streams.kafka import METADATA_MAX_AGE_MS, bootstrap_servers, client_kwargs
from pathsentry.streams.pipeline import Pipeline

__all__ = ["run_feedback"]

log = logging.getLogger(__name__)

#: how often the loop looks for partitions added to the feedback topics
REFRESH_S = 30.0


async def run_feedback(pipe: Pipeline, *, max_records: int, poll_ms: int,
                       stopping: asyncio.Event) -> None:
    """Consume ``labels`` and ``interactions`` (all partitions, from the beginning) into
    :meth:`Pipeline.feedback_batch` until ``stopping``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    cfg = pipe.config
    while pipe.producer is None and not stopping.is_set():  # the ingest task starts it
        await asyncio.sleep(0.05)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(cfg),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_records,
        fetch_max_wait_ms=cfg.kafka.fetch_max_wait_ms,
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
        **client_kwargs(cfg),
    )
    await consumer.start()
    topics = (pipe.topics.labels, pipe.topics.interactions)
    assigned: set[TopicPartition] = set()
    refreshed = -REFRESH_S
    loop = asyncio.get_running_loop()
    try:
        while not stopping.is_set():
            try:
                if loop.time() - refreshed >= REFRESH_S:
                    refreshed = loop.time()
                    await consumer.topics()  # refreshes the metadata of every topic
                    tps = {TopicPartition(t, p) for t in topics
                           for p in consumer.partitions_for_topic(t) or ()}
                    if tps - assigned:
                        consumer.assign(sorted(tps | assigned))
                        await consumer.seek_to_beginning(*(tps - assigned))
                        assigned |= tps
                        log.info("feedback: reading %d partitions of %s", len(assigned),
                                 " and ".join(topics))
                if not assigned:
                    await asyncio.sleep(poll_ms / 1000)
                    continue
                batch = await consumer.getmany(timeout_ms=poll_ms, max_records=max_records)
                records = [m for msgs in batch.values() for m in msgs]
                if records:
                    records.sort(key=lambda m: m.timestamp)
                    await pipe.feedback_batch(records)
            except KafkaError as e:
                log.warning("feedback: %s: %s; retrying", type(e).__name__, e)
                await asyncio.sleep(1.0)
    finally:
        await consumer.stop()
