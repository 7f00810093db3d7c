"""Local hand-off: decoded batches a worker forwards to partitions it also consumes.

Every event crosses two repartition topics (sessions, then groups), and each
crossing used to mean decoding and validating it again. The message on the topic
stays the source of truth, but when the worker that sent an envelope is also the
one that receives it (always with one worker, 1/N of the time with N), the
receiving stage takes the already-validated objects from here instead, by the
envelope's key: a per-process nonce and a sequence number, so a key never matches
another worker's or an earlier run's envelope. On a miss (another worker's
envelope, a redelivery after a restart, an evicted entry) the stage decodes the
message as before. The table is bounded by the number of items it holds (the
oldest envelopes go first) and by their age: an envelope nobody took within
``max_age_s`` (its partition went to another worker) is forgotten, so that what
the table holds is what this worker's stages still have to receive.

>>> h = Handoff(max_items=3)
>>> k1, k2 = h.put(["a", "b"]), h.put(["c", "d"])
>>> h.take(k1), h.take(k2), len(h)
(None, ['c', 'd'], 0)
"""

from __future__ import annotations

import itertools
import os
import time
from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["Handoff"]

T = TypeVar("T")


class Handoff(Generic[T]):
    def __init__(self, max_items: int = 200_000, max_age_s: float = 30.0) -> None:
        self.max_items = max(1, max_items)
        self.max_age_s = max_age_s
        self._nonce = os.urandom(6).hex().encode()
        self._seq = itertools.count()
        #: key -> (monotonic time of the put, items), oldest first
        self._d: OrderedDict[bytes, tuple[float, list[T]]] = OrderedDict()
        self._items = 0
        self.hits = 0
        self.misses = 0

    def put(self, items: list[T]) -> bytes:
        """Keep ``items`` and return the key to send with their envelope."""
        key = b"%s:%d" % (self._nonce, next(self._seq))
        self._d[key] = (time.monotonic(), items)
        self._items += len(items)
        while self._items > self.max_items and self._d:
            self._drop_oldest()
        return key

    def take(self, key: bytes | None) -> list[T] | None:
        """The items sent under ``key`` by this process, once; ``None`` if not here."""
        got = self._d.pop(key, None) if key else None
        if got is None:
            self.misses += 1
            return None
        items = got[1]
        self._items -= len(items)
        self.hits += 1
        return items

    def pending(self, now: float | None = None) -> int:
        """Items still to be taken, after forgetting envelopes older than ``max_age_s``."""
        cutoff = (time.monotonic() if now is None else now) - self.max_age_s
        while self._d and next(iter(self._d.values()))[0] < cutoff:
            self._drop_oldest()
        return self._items

    def clear(self) -> None:
        self._d.clear()
        self._items = 0

    def _drop_oldest(self) -> None:
        _, (_, old) = self._d.popitem(last=False)
        self._items -= len(old)

    def __len__(self) -> int:
        return self._items
