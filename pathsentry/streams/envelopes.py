"""What travels on the internal topics: repartition keys, stable partitions, envelopes.

Owns how an event is keyed and which partition a key goes to (the same on every worker
and every run), the envelope format (one JSON array message holding the items bound
for one partition), how a batch is cut into envelopes of bounded size, and
:class:`Incoming`, an envelope as the stages receive it. May not send, consume or
acknowledge anything itself, nor hold state: pure functions and one record type.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pathsentry.schemas import AnyEvent

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "GroupItemModel",
    "GroupNotes",
    "Incoming",
    "chunked",
    "envelope",
    "partition_for",
    "session_key",
]

#: Largest envelope sent to an internal topic (the producer accepts up to 8 MiB).
MAX_ENVELOPE_BYTES = 1 << 20
#: Latest produce time (ms) or event time (s) an item may carry: 2100-01-01 UTC.
_MAX_S = 4_102_444_800.0


class GroupNotes(BaseModel):
    """What the session stage's detectors leave on an event for the group stage: the only
    keys an item read from the groups topic may carry (each detector's note is its own).
    A detector that leaves a new note adds it here; ``tests/hostile/test_poisoned_state.py``
    checks every item a simulated world's session stage writes against this model."""

    model_config = ConfigDict(extra="forbid")

    route: dict[str, Any] | None = None
    relay: dict[str, Any] | None = None
    injection: dict[str, Any] | None = None
    device: dict[str, Any] | None = None  # the takeover detector's accounts-per-device count
    account: str | None = Field(default=None, max_length=512)
    login_event_id: str | None = Field(default=None, max_length=512)
    login_ts: float | None = Field(default=None, ge=0, le=_MAX_S, allow_inf_nan=False)


class GroupItemModel(BaseModel):
    """One item of a groups-topic envelope, as the session stage writes it: produce time
    (``t``, ms), routes (``r``: detector, key), notes (``n``) and the event (``e``, checked
    by the event schemas). Unknown fields and out-of-range values are refused.

    >>> GroupItemModel.model_validate({"t": 1, "r": [["farm", "k"]], "n": {}, "e": {}}).r
    [('farm', 'k')]
    """

    model_config = ConfigDict(extra="forbid")

    t: int = Field(ge=0, le=int(_MAX_S * 1000))
    r: list[tuple[str, str]] = Field(max_length=64)
    n: GroupNotes | None = None
    e: dict[str, Any]


def session_key(ev: AnyEvent) -> str:
    """Repartition key of an event: its session, else its account, else its address."""
    return ev.session_id or getattr(ev, "account", None) or str(ev.src_ip)


def partition_for(key: str, partitions: int) -> int:
    """Stable partition of a key (same on every worker and every run).

    >>> partition_for("sess-1", 8) == partition_for("sess-1", 8), 0 <= partition_for("x", 3) < 3
    (True, True)
    """
    return zlib.crc32(key.encode()) % partitions


def envelope(items: Sequence[bytes]) -> bytes:
    """Join already-serialised JSON items into one JSON array message. The brackets go on
    the first and last items, so that the message (up to ``MAX_ENVELOPE_BYTES``) is
    copied once, by the join, not once more for each bracket.

    >>> import orjson
    >>> orjson.loads(envelope([b'{"a":1}', b'{"b":2}', b'{"c":3}']))
    [{'a': 1}, {'b': 2}, {'c': 3}]
    >>> envelope([b'{"a":1}']), envelope([])
    (b'[{"a":1}]', b'[]')
    """
    if len(items) < 2:
        return b"[" + (items[0] if items else b"") + b"]"
    parts = list(items)  # (references only)
    parts[0] = b"[" + parts[0]
    parts[-1] += b"]"
    return b",".join(parts)


def chunked(items: list[Any], wire: list[bytes], max_bytes: int) -> Iterator[tuple[list[Any], list[bytes]]]:
    """Split parallel ``items``/``wire`` lists so each chunk's wire stays under ``max_bytes``
    (a single larger item gets a chunk of its own); at least one chunk, maybe empty.

    >>> [len(w) for _, w in chunked([1, 2, 3], [b"aaaa", b"bbbb", b"cc"], 10)]
    [2, 1]
    >>> list(chunked([], [], 10))
    [([], [])]
    """
    start = size = 0
    for i, w in enumerate(wire):
        if i > start and size + len(w) > max_bytes:
            yield items[start:i], wire[start:i]
            start, size = i, 0
        size += len(w) + 1
    yield items[start:], wire[start:]


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

