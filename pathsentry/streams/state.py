"""Stage state that follows its partition: snapshots in a compacted Kafka topic.

Each partition of the groups topic has its own detectors (a farm window, an injection
cell lives on exactly one). When a partition moves to another worker (a rebalance, a
worker stopping or crashing), its next owner must continue from the same windows, or a
farm group whose logins straddle the move never reaches its size. The worker therefore
saves each group partition's state to the same partition of the state topic
(``pathsentry-state``, ``cleanup.policy=compact``):

* ``g:<p>:<epoch>:<i>``: chunk ``i`` of the zlib-compressed JSON state (chunks keep
  every message under the broker's size limit), written first;
* ``g:<p>``: the manifest (epoch, chunk count, size, worker, event time), written once
  every chunk is acknowledged, so a reader never sees a manifest without its chunks;
* then tombstones for the chunks of the epoch it replaces, which compaction removes.

The sessions in progress of each partition of the sessions topic are saved the same
way under ``s:<p>`` (a :class:`StateStore` of kind ``"s"``), to the same partition
number of the state topic (the internal topics have as many partitions), and what the
session stage learned from all its traffic under ``l:0`` (kind ``"l"``).

A worker saves a partition when it is revoked (before the group rejoins, so the next
owner reads the newest state), when the worker stops, and every snapshot interval
(what a crash can lose). A new owner reads the partitions it was given from the start
of the state topic to its end and keeps the newest manifest per partition.

>>> recs = encode_state(3, {"ts": 5.0, "detectors": {"farm": {"n": 1}}}, "w1-1", chunk_bytes=16)
>>> [k for k, _ in recs][-1], len(recs) > 2
(b'g:3', True)
>>> decode_state(dict(recs), 3)
{'ts': 5.0, 'detectors': {'farm': {'n': 1}}}
>>> decode_state({b"g:3": recs[-1][1]}, 3) is None  # chunks missing: no state
True

Everything read back is refused unless it has the shape a save writes
(:class:`StateRefused`, the reason in its message): the manifest and the state document
are typed models (:class:`Manifest`, :class:`SavedState`) with no unknown field and every
number in range (a save time or event clock more than a day past the reader's wall clock
is refused), the chunks' total and the
inflated size are bounded (:data:`MAX_STATE_BYTES`; a small chunk that would inflate past
it is refused without inflating it all). What detectors make of their own part is theirs.

>>> try:
...     decode_state({b"g:0": b"not zlib"}, 0)
... except StateRefused as e:
...     print(e)
manifest of g:0 is not JSON
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pathsentry.detectors.saved import Ts
from pathsentry.streams.signing import Signer

__all__ = [
    "CHUNK_BYTES",
    "MAX_STATE_BYTES",
    "MAX_TS",
    "Manifest",
    "SavedState",
    "StateRefused",
    "StateStore",
    "compress_state",
    "decode_state",
    "encode_compressed",
    "encode_state",
    "manifest_key",
]

#: Largest chunk of a partition's state in one message (Kafka's default limit is 1 MiB).
CHUNK_BYTES = 900 * 1024

#: Largest state of one partition, inflated (and compressed): a save past it is refused.
MAX_STATE_BYTES = 512 << 20
#: Latest event or wall time a saved state may carry (2100-01-01 UTC, in seconds).
MAX_TS = 4_102_444_800.0

#: A load that reads nothing for this long before reaching the topic's end fails.
LOAD_TIMEOUT_S = 20.0

log = logging.getLogger(__name__)

#: send(partition, key, value, headers) -> delivery future; ``value=None`` is a tombstone.
Send = Callable[[int, bytes, bytes | None, Any], Awaitable[Awaitable[Any]]]


def manifest_key(partition: int, kind: str = "g") -> bytes:
    return b"%s:%d" % (kind.encode(), partition)


def _chunk_key(partition: int, epoch: str, i: int, kind: str) -> bytes:
    return b"%s:%d:%s:%d" % (kind.encode(), partition, epoch.encode(), i)


def compress_state(state: dict[str, Any]) -> bytes:
    """The compressed JSON of one state document, as its chunks carry it (built where the
    state is read: on the loop, or in a save's child process)."""
    return zlib.compress(orjson.dumps(state, default=str), 1)


def encode_state(partition: int, state: dict[str, Any], epoch: str, *,
                 chunk_bytes: int = CHUNK_BYTES, worker: str = "",
                 kind: str = "g") -> list[tuple[bytes, bytes]]:
    """The records of one save, in the order they must be written (manifest last)."""
    return encode_compressed(partition, compress_state(state), state.get("ts"), epoch,
                             chunk_bytes=chunk_bytes, worker=worker, kind=kind)


def encode_compressed(partition: int, data: bytes, ts: float | None, epoch: str, *,
                      chunk_bytes: int = CHUNK_BYTES, worker: str = "",
                      kind: str = "g") -> list[tuple[bytes, bytes]]:
    """The records of one save of an already compressed state (:func:`compress_state`)
    whose event clock is ``ts``."""
    chunks = [data[i:i + chunk_bytes] for i in range(0, len(data), chunk_bytes)] or [b""]
    manifest = {"epoch": epoch, "chunks": len(chunks), "bytes": len(data), "worker": worker,
                "saved_at": time.time(), "ts": ts}
    recs = [(_chunk_key(partition, epoch, i, kind), c) for i, c in enumerate(chunks)]
    recs.append((manifest_key(partition, kind), orjson.dumps(manifest)))
    return recs


class StateRefused(ValueError):
    """A saved state that does not have the shape a save writes; the message says why."""


class Manifest(BaseModel):
    """The manifest record of one save (``g:<p>``, ``s:<p>``, ``l:0``)."""

    model_config = ConfigDict(extra="forbid")

    epoch: str = Field(pattern=r"^[A-Za-z0-9_.:\-]{1,200}$")
    chunks: int = Field(ge=1, le=MAX_STATE_BYTES // (64 << 10))
    bytes: int = Field(ge=0, le=MAX_STATE_BYTES)
    worker: str = Field(max_length=200)
    saved_at: Ts
    ts: float | None = Field(default=None, ge=0, le=MAX_TS, allow_inf_nan=False)


class SavedState(BaseModel):
    """The state document of one save: the stage's event clock and each detector's part
    (group partitions: ``ts``/``detectors``; sessions and learned state add when and by
    whom it was saved)."""

    model_config = ConfigDict(extra="forbid")

    ts: Ts | None = None
    saved_at: Ts | None = None
    worker: str | None = Field(default=None, max_length=200)
    detectors: dict[str, Any] = Field(default_factory=dict)


def _manifest(records: dict[bytes, bytes | None], partition: int, kind: str) -> Manifest | None:
    raw = records.get(manifest_key(partition, kind))
    if not raw:
        return None
    where = f"{kind}:{partition}"
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise StateRefused(f"manifest of {where} is not JSON") from None
    try:
        return Manifest.model_validate(doc)
    except ValidationError as e:
        raise StateRefused(f"manifest of {where} refused: {_first_error(e)}") from None


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    return f"{'.'.join(str(x) for x in err['loc']) or 'document'}: {err['msg']}"


def inflate(data: bytes, limit: int = MAX_STATE_BYTES) -> bytes:
    """zlib-inflate ``data``, refusing (without inflating it all) more than ``limit`` bytes.

    >>> len(inflate(zlib.compress(b"x" * 1000), 1000))
    1000
    >>> try:
    ...     inflate(zlib.compress(b"x" * 1001), 1000)
    ... except StateRefused as e:
    ...     print(e)
    state inflates past 1000 bytes
    """
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise StateRefused(f"state is not zlib data ({e})") from None
    if len(out) > limit or d.unconsumed_tail:
        raise StateRefused(f"state inflates past {limit} bytes")
    if not d.eof:
        raise StateRefused("state is truncated")
    return out


def decode_state(records: dict[bytes, bytes | None], partition: int,
                 kind: str = "g") -> dict[str, Any] | None:
    """The newest complete state of ``partition`` among ``records`` (newest value per key,
    ``None`` for a tombstone), ``None`` when there is none; :class:`StateRefused` when what
    is there does not have the shape a save writes."""
    manifest = _manifest(records, partition, kind)
    if manifest is None:
        return None
    chunks = [records.get(_chunk_key(partition, manifest.epoch, i, kind))
              for i in range(manifest.chunks)]
    if any(c is None for c in chunks):
        log.warning("state %s:%d (epoch %s) is incomplete; starting it empty",
                    kind, partition, manifest.epoch)
        return None
    data = b"".join(c for c in chunks if c)
    if len(data) != manifest.bytes:
        raise StateRefused(f"state {kind}:{partition}: {len(data)} bytes where the manifest says "
                           f"{manifest.bytes}")
    try:
        doc = orjson.loads(inflate(data))
    except orjson.JSONDecodeError:
        raise StateRefused(f"state {kind}:{partition} is not JSON") from None
    try:
        SavedState.model_validate(doc)
    except ValidationError as e:
        raise StateRefused(f"state {kind}:{partition} refused: {_first_error(e)}") from None
    state: dict[str, Any] = doc
    return state


class StateStore:
    """Saves and loads partitions' state in the state topic: the group partitions'
    (``kind="g"``), the session partitions' (``kind="s"``) or the learned state
    (``kind="l"``, partition 0).

    ``send`` writes one record to a partition of the topic; ``consumer`` builds an
    unstarted aiokafka consumer without a group (the store assigns it partitions).
    With a ``signer`` that holds a key, every record it writes is signed and a save whose
    manifest or chunks are unsigned or wrongly signed is refused.
    """

    def __init__(self, topic: str, send: Send, consumer: Callable[[], Any], worker: str,
                 kind: str = "g", signer: Signer | None = None) -> None:
        self.topic = topic
        self.signer = signer or Signer(None)
        self.kind = kind
        self._send = send
        self._consumer = consumer
        self.worker = worker
        self._seq = 0
        #: the epoch (and chunk count) each partition's state was last saved or loaded as
        self._epochs: dict[int, tuple[str, int]] = {}
        self.saves = 0
        self.loads = 0
        #: loads that failed (the topic unreadable: the partitions started empty)
        self.load_failures = 0
        #: partitions whose saved state this store has loaded
        self.restored: set[int] = set()
        #: saves read back and refused (not the shape a save writes)
        self.refused = 0

    async def save(self, partition: int, state: dict[str, Any]) -> int:
        """Write ``state`` as the newest state of ``partition``; return its size in bytes
        once every record is acknowledged."""
        data = await asyncio.get_running_loop().run_in_executor(None, compress_state, state)
        return await self.save_compressed(partition, data, state.get("ts"))

    async def save_compressed(self, partition: int, data: bytes, ts: float | None) -> int:
        """Write a state already compressed (:func:`compress_state`; its event clock
        ``ts``) as the newest state of ``partition``; its size once acknowledged."""
        self._seq += 1
        epoch = f"{self.worker}-{time.time_ns()}-{self._seq}"
        *chunks, manifest = encode_compressed(partition, data, ts, epoch, worker=self.worker,
                                              kind=self.kind)
        sign = self.signer.sign
        for fut in [await self._send(partition, k, v, sign(b"state", k, v)) for k, v in chunks]:
            await fut
        await (await self._send(partition, *manifest, sign(b"state", *manifest)))
        old = self._epochs.get(partition)
        self._epochs[partition] = (epoch, len(chunks))
        if old is not None and old[0] != epoch:
            for fut in [await self._send(partition, _chunk_key(partition, old[0], i, self.kind), None,
                                         None) for i in range(old[1])]:
                await fut
        self.saves += 1
        return sum(len(v) for _, v in chunks)

    async def load(self, partitions: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The newest saved state of each of ``partitions`` that has one."""
        from aiokafka import TopicPartition

        wanted = sorted(set(partitions))
        if not wanted:
            return {}
        consumer = self._consumer()
        await consumer.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in wanted]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            records: dict[int, dict[bytes, bytes | None]] = {tp.partition: {} for tp in tps}
            headers: dict[int, dict[bytes, Any]] = {tp.partition: {} for tp in tps}
            remaining = {tp for tp in tps if end[tp] > 0}
            deadline = time.monotonic() + LOAD_TIMEOUT_S
            while remaining:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"state topic {self.topic}: nothing read for "
                                       f"{LOAD_TIMEOUT_S:.0f} s before its end")
                batch = await consumer.getmany(*remaining, timeout_ms=1000)
                if batch:
                    deadline = time.monotonic() + LOAD_TIMEOUT_S
                for tp, msgs in batch.items():
                    for m in msgs:
                        if m.key is not None:
                            records[tp.partition][m.key] = m.value
                            headers[tp.partition][m.key] = m.headers
                for tp in list(remaining):
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
        out: dict[int, dict[str, Any]] = {}
        for p, recs in records.items():
            try:
                self._check_signatures(p, recs, headers[p])
                state = decode_state(recs, p, self.kind)
            except StateRefused as e:
                self.refused += 1
                log.error("saved state %s:%d refused (%s); the partition starts empty", self.kind, p, e)
                continue
            if state is not None:
                out[p] = state
                self.restored.add(p)
                manifest = _manifest(recs, p, self.kind)
                if manifest is not None:  # its chunks are the ones the next save replaces
                    self._epochs[p] = (manifest.epoch, manifest.chunks)
        self.loads += 1
        return out

    def _check_signatures(self, partition: int, records: dict[bytes, bytes | None],
                          headers: dict[bytes, Any]) -> None:
        """Refuse (:class:`StateRefused`) the newest save of ``partition`` when its manifest
        or one of its chunks is not signed with the key (nothing to check without one)."""
        if not self.signer.enabled:
            return
        where = f"{self.kind}:{partition}"
        mkey = manifest_key(partition, self.kind)
        if not records.get(mkey):
            return
        why = self.signer.verify(b"state", mkey, records[mkey], headers.get(mkey))
        if why:
            raise StateRefused(f"manifest of {where}: {why}")
        manifest = _manifest(records, partition, self.kind)
        for i in range(manifest.chunks if manifest else 0):
            assert manifest is not None
            ck = _chunk_key(partition, manifest.epoch, i, self.kind)
            if records.get(ck) is not None:
                why = self.signer.verify(b"state", ck, records[ck], headers.get(ck))
                if why:
                    raise StateRefused(f"chunk {i} of {where}: {why}")
