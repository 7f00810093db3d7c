"""Compatibility patch for Faust's aiokafka driver.

Owns the one change this worker makes to Faust's internals: the fetch wait of the Faust
consumer (Faust fixes it at 1.5 s). May not change anything else of Faust, and is
applied only by the app factory (:func:`pathsentry.streams.app.create_app`) before the
app is built.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["set_fetch_wait"]


def set_fetch_wait(max_wait_ms: int) -> None:
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
