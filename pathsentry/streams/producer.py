"""Producer helper for game backends: validate, pick topic and key, send.

.. code-block:: python

    from pathsentry.config import load_config
    from pathsentry.streams.producer import EventProducer

    async with EventProducer(load_config()) as p:
        await p.send({"kind": "login", "event_id": "l-1", "ts": "2026-11-22T21:00:00+09:00",
                      "src_ip": "211.234.10.7", "session_id": "s-1", "account": "hero01",
                      "server_id": "kr-sel-1", "app_rtt_ms": [4.2, 3.9], "tcp_rtt_ms": 3.8})

Invalid events raise :class:`pathsentry.schemas.EventError` at the producer, so a
bad producer learns at once instead of filling the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from datetime import datetime
from types import TracebackType
from typing import Any

import orjson

from pathsentry.config import Config
from pathsentry.schemas import (
    AccountLabel,
    AnyEvent,
    AnyFeedback,
    Interaction,
    feedback_topic_for,
    parse_event,
    parse_feedback,
    topic_for,
)
from pathsentry.schemas.feedback import FEEDBACK_KINDS
from pathsentry.streams.kafka import bootstrap_servers, client_kwargs
from pathsentry.streams.topics import Topics

__all__ = ["EventProducer", "produce_stream"]


class EventProducer:
    def __init__(self, config: Config, *, validate: bool = True, linger_ms: int = 5) -> None:
        from aiokafka import AIOKafkaProducer

        self.topics = Topics(config.kafka)
        self.validate = validate
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers(config),
            linger_ms=linger_ms,
            acks="all",
            enable_idempotence=False,
            **client_kwargs(config),
        )
        self.sent = 0

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.flush()
        await self._producer.stop()

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _route(self, event: dict[str, Any] | AnyEvent | AnyFeedback) -> tuple[str, bytes, bytes]:
        if isinstance(event, dict) and event.get("kind") in FEEDBACK_KINDS:
            event = parse_feedback(event)
        if isinstance(event, AccountLabel | Interaction):
            logical, key = feedback_topic_for(event)
            topic = self.topics.labels if logical == "labels" else self.topics.interactions
            return topic, key.encode(), event.model_dump_json(exclude_none=True).encode()
        parsed = parse_event(event) if isinstance(event, dict) else event
        logical, key = topic_for(parsed)
        topic = self.topics.logins if logical == "logins" else self.topics.telemetry
        if isinstance(event, dict):
            value = orjson.dumps(event)
        else:
            value = event.model_dump_json(exclude_none=True).encode()
        return topic, key.encode(), value

    async def send(self, event: dict[str, Any] | AnyEvent | AnyFeedback) -> None:
        """Validate and send one event (buffered; awaited delivery on flush/stop)."""
        topic, key, value = self._route(event)
        await self._producer.send(topic, value=value, key=key)
        self.sent += 1

    async def flush(self) -> None:
        await self._producer.flush()


async def _produce(config: Config, events: Iterable[dict[str, Any]], rate: float | None,
                   not_before_ts: bool) -> int:
    async with EventProducer(config) as producer:
        start = time.monotonic()
        for i, ev in enumerate(events):
            if not_before_ts:
                early = datetime.fromisoformat(ev["ts"]).timestamp() - time.time()
                if early > 0:
                    await producer.flush()
                    await asyncio.sleep(early)
            await producer.send(ev)
            if rate:
                ahead = (i + 1) / rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        return producer.sent


def produce_stream(config: Config, events: Iterable[dict[str, Any]], rate: float | None = None, *,
                   not_before_ts: bool = False) -> int:
    """Send ``events`` (contract-v1 dicts) at ``rate`` events/s (None: as fast as possible).

    ``not_before_ts``: never send an event before the wall clock reaches its ``ts``
    (a live game backend: a backlog goes out at ``rate``, then events in real time).
    """
    return asyncio.run(_produce(config, events, rate, not_before_ts))
