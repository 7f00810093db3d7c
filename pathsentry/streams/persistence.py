"""Detector state that outlives the process or follows its partition: the snapshot file,
and the saves of the state topic.

Owns :class:`StatePersistence`, the part of the worker's pipeline that restores and
saves state: the session stage's snapshot file (``<data_dir>/state/<worker>.json``),
each owned group partition's stage (``g:<p>`` of the state topic), each owned session
partition's sessions in progress (``s:<p>``), what the session stage learned from
all its traffic (``l:0``) and the room merger's parts and rooms (``r:0``, with the one
partition of the rooms topic), and :func:`session_handover`, what a worker does with its
session partitions once it knows its assignment. May not decide *when* to save (the
app's revoke and stop handlers and its timers do, the learned state's with
:mod:`pathsentry.streams.savepolicy`), run detectors on events,
or send anything but state: the stages and the outputs are in
:mod:`pathsentry.streams.pipeline`, the state topic's format in
:mod:`pathsentry.streams.state`.

The periodic save of the session stage (:meth:`StatePersistence.save_session_stage`:
the snapshot file, then ``l:0``) is the large one: building the two documents is
Python code over every baseline and session (hundreds of ms at 10,000 accounts),
and serialising them is ``orjson``, which holds the GIL. Done on the event loop it
stalled every event behind it for about a second, which set the p99. It is
therefore built in a forked child (:mod:`pathsentry.streams.forksave`): the fork
is the save's instant, so both documents are of one state, exactly as the loop would
have built them there (the tests compare the bytes), and the loop only forks, renames
the child's file and publishes the child's compressed ``l:0`` bytes. Measured
alternatives: moving ``orjson`` and ``zlib`` to a thread does not help (``zlib``
releases the GIL, ``orjson`` does not, and the build is Python), and a build in
slices with yields between them would mix states of different instants under one
event clock. A failed child leaves the previous snapshot file and publishes nothing
(the next save forks again); with ``[worker] save_in_child = false``, without
``os.fork``, or when memory is short, the save runs on the loop as before. The
saves at a revoke and at shutdown stay on the loop: the partitions' next owners
wait for them anyway.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pathsentry.config import Config
from pathsentry.engine import Engine, GroupStage
from pathsentry.streams.envelopes import partition_for
from pathsentry.streams.forksave import ForkSaver
from pathsentry.streams.kafka import METADATA_MAX_AGE_MS, bootstrap_servers, client_kwargs
from pathsentry.streams.signing import Signer
from pathsentry.streams.state import MAX_STATE_BYTES, StateRefused, StateStore, compress_state
from pathsentry.streams.topics import Topics

__all__ = ["LearnedSave", "StatePersistence", "session_handover"]

#: the room merger's part of its save (``r:0``)
ROOMS = "rooms"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnedSave:
    """An ``l:0`` save built at one instant, not yet published."""

    #: the compressed document (:func:`~pathsentry.streams.state.compress_state`); None:
    #: nothing learned yet, nothing to publish
    data: bytes | None
    #: the session stage's event clock and the wall time at that instant
    ts: float
    saved_at: float
    #: time its build, serialisation and compression took (ms)
    build_ms: float


class StatePersistence:
    """Restores and saves the detectors' state of one worker (mixed into its pipeline,
    which provides the attributes declared here)."""

    config: Config
    engine: Engine
    topics: Topics
    worker_id: str
    #: the worker's Kafka producer (None while it is not started)
    producer: Any
    #: whether the stages may take new input (not while a rebalance or a stop is under way)
    accepting: Callable[[], bool]
    #: the partition count of a topic
    partitions: Callable[[str], Awaitable[int]]

    def _init_persistence(self) -> None:
        """Set up the stores (once ``config``, ``topics`` and ``worker_id`` are set)."""
        worker_id = self.worker_id
        #: signs what this worker writes for the others, checks what it reads from them
        #: (``PATHSENTRY_STATE_KEY``; off without it)
        self.signer = Signer.from_env(os.environ)
        self.state_path = Path(self.config.data_dir) / "state" / f"{worker_id}.json"
        #: the group-stage detectors of each owned partition of the groups topic
        self.group_stages: dict[int, GroupStage] = {}
        self.state_store = StateStore(self.topics.state, self._send_state, self._state_consumer,
                                      worker_id, signer=self.signer)
        #: partitions of the sessions topic whose sessions in progress this worker holds, and
        #: those it gave up at the last revoke (kept if it is given them straight back)
        self.session_parts: set[int] = set()
        self._sessions_revoked: set[int] = set()
        self.session_store = StateStore(self.topics.state, self._send_state, self._state_consumer,
                                        worker_id, kind="s", signer=self.signer)
        #: what the session stage learned from all its traffic (baselines, model), saved for
        #: workers new to the group (``l:0``); loaded once by a worker without a snapshot file
        self.learned_store = StateStore(self.topics.state, self._send_state, self._state_consumer,
                                        worker_id, kind="l", signer=self.signer)
        self._learned_checked = False
        #: the room merger's parts and rooms (``r:0``), kept by the owner of the rooms topic
        self.rooms_store = StateStore(self.topics.state, self._send_state, self._state_consumer,
                                      worker_id, kind="r", signer=self.signer)
        #: whether this worker's engine holds the room merger's state (it owns the rooms topic)
        self.rooms_owned = False
        #: the merger's count of parts taken at its last save (-1: none saved)
        self._rooms_saved_at = -1
        #: wall time of the snapshot file the session stage started from (0: none)
        self._snapshot_at = 0.0
        #: saved states refused when applied, per kind (the stores count what they refuse)
        self.state_refused: dict[str, int] = {}
        #: the last saves of what the session stage learned: their cost (served on /stats)
        self.snapshot_save_ms = 0.0
        self.snapshot_save_bytes = 0
        self.learned_save_ms = 0.0
        self.learned_save_bytes = 0
        #: wall time of the last ``l:0`` save this worker made (0: none)
        self.learned_saved_at = 0.0
        #: the session stage's event clock in the snapshot file this process last wrote
        #: (0: none yet): a SIGKILLed worker restarts from the learning up to there
        self.snapshot_ts = 0.0
        #: builds the periodic saves in a forked child (``[worker] save_in_child``)
        self.fork_saver = ForkSaver(self.config.worker.save_child_timeout_s,
                                    enabled=self.config.worker.save_in_child)
        self._save_seq = 0
        #: the event loop's share of the last periodic save (the fork, or the whole build
        #: and serialisation when it ran on the loop), the fork's alone, and the child's memory
        self.save_loop_ms = 0.0
        self.save_fork_ms = 0.0
        self.save_child_memory: dict[str, float] = {}

    def load_snapshot(self) -> None:
        """Restore the session stage's detectors from this worker's last snapshot (the
        group stage's state comes from the state topic, partition by partition, and so
        do the sessions of a session partition when its save there is newer)."""
        if self.state_path.parent.is_dir():  # a killed worker's save child may have left these
            for stale in self.state_path.parent.glob(f"{self._save_prefix()}*.tmp"):
                stale.unlink(missing_ok=True)
        if not self.state_path.exists():
            return
        try:
            if self.state_path.stat().st_size > MAX_STATE_BYTES:
                raise StateRefused(f"larger than {MAX_STATE_BYTES >> 20} MiB")
            state = orjson.loads(self.state_path.read_bytes())
            if not isinstance(state, dict):
                raise StateRefused("not a JSON object")
            _known_detectors(state, self.engine.session_detectors)
        except (OSError, orjson.JSONDecodeError, StateRefused) as e:
            self._refuse("snapshot", f"{self.state_path}: {e}", "the session stage starts cold")
            return
        if self._apply("snapshot", str(self.state_path), state, _load_detector_states,
                       "the session stage starts cold"):
            self._snapshot_at = self.state_path.stat().st_mtime
            log.info("restored detector state from %s", self.state_path)

    def _refuse(self, kind: str, what: str, otherwise: str) -> None:
        """Count and log one saved state that could not be used."""
        self.state_refused[kind] = self.state_refused.get(kind, 0) + 1
        log.error("saved state refused: %s; %s", what, otherwise)

    def _apply(self, kind: str, what: str, state: Any, load: Callable[[list[Any], Any], None],
               otherwise: str) -> bool:
        """Load ``state`` into the session detectors with ``load``, first into fresh copies
        (a state they refuse, or that makes them raise or panic, changes nothing), then
        into the live ones; False (counted, logged) when refused."""
        try:  # on a copy: a detector may consume what it loads
            load([type(d)(self.engine.ctx) for d in self.engine.session_detectors],
                 orjson.loads(orjson.dumps(state, default=str)))
        except _FATAL:
            raise
        except BaseException as e:  # a Rust extension's panic is a BaseException
            self._refuse(kind, f"{what}: {type(e).__name__}: {str(e)[:200]}", otherwise)
            return False
        load(self.engine.session_detectors, state)
        return True

    def state_refusals(self) -> dict[str, int]:
        """Saved states read back and refused (not the shape of a save, or refused by a
        detector), per kind: served on /stats and /metrics (``pathsentry_<kind>_state_refused_total``)."""
        return {"group_state_refused": self.state_refused.get("group", 0) + self.state_store.refused,
                "session_state_refused": self.state_refused.get("sessions", 0) + self.session_store.refused,
                "learned_state_refused": self.state_refused.get("learned", 0) + self.learned_store.refused,
                "snapshot_state_refused": self.state_refused.get("snapshot", 0),
                "rooms_state_refused": self.state_refused.get("rooms", 0) + self.rooms_store.refused}

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

    def learned_document(self, saved_at: float) -> dict[str, Any] | None:
        """The ``l:0`` document of what the session stage learned (None: nothing yet)."""
        state = self.engine.learned_state()
        if not state:
            return None
        return {"saved_at": saved_at, "ts": self.engine.session_ts, "worker": self.worker_id,
                "detectors": state}

    async def save_session_stage(self) -> LearnedSave | None:
        """The periodic save of the session stage: write its snapshot file and build its
        ``l:0`` save (:meth:`save_learned` publishes it), both of the state at this
        instant. In a forked child (:mod:`pathsentry.streams.forksave`) unless
        ``[worker] save_in_child`` is off, fork is missing or memory is short: then on
        the loop. None when the save failed (logged and counted; nothing is published
        and the snapshot file stays the previous one)."""
        saved_at, ts = time.time(), self.engine.session_ts
        if not self.fork_saver.available:
            return await self._save_session_stage_here(saved_at, ts)
        if not self.fork_saver.fits():
            log.warning("too little free memory for a save child: the session stage is saved "
                        "on the event loop")
            return await self._save_session_stage_here(saved_at, ts)
        self._save_seq += 1
        base = self.state_path.parent / f"{self._save_prefix()}{os.getpid()}-{self._save_seq}"
        snap_tmp, learned_tmp = base.with_suffix(".json.tmp"), base.with_suffix(".l0.tmp")
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            res = await self.fork_saver.run(lambda: self._build_in_child(snap_tmp, learned_tmp, saved_at))
            self.save_fork_ms, self.save_loop_ms = res.fork_ms, res.fork_ms
            self.save_child_memory = dict(res.report.get("memory", {}),
                                          parent_rss_mib=round(res.parent_rss_mib, 1))
            if not res.ok:
                return None
            self.snapshot_save_ms = float(res.report["snapshot_ms"])
            self.snapshot_save_bytes = int(res.report["snapshot_bytes"])
            os.replace(snap_tmp, self.state_path)
            self.snapshot_ts = ts
            if not res.report["learned_bytes"]:
                return LearnedSave(None, ts, saved_at, 0.0)
            data = await asyncio.get_running_loop().run_in_executor(None, learned_tmp.read_bytes)
            return LearnedSave(data, ts, saved_at, float(res.report["learned_ms"]))
        finally:
            for tmp in (snap_tmp, learned_tmp):
                tmp.unlink(missing_ok=True)

    def _save_prefix(self) -> str:
        """The start of the names of a save child's files beside the snapshot file."""
        return f".{self.state_path.stem}.save-"

    def _build_in_child(self, snap_tmp: Path, learned_tmp: Path, saved_at: float) -> dict[str, Any]:
        """The save's work in the child (pure Python state and files only): the
        snapshot file's bytes, then the compressed ``l:0`` document, each to its file."""
        t0 = time.perf_counter()
        data = self.snapshot_bytes()
        snap_tmp.write_bytes(data)
        t1 = time.perf_counter()
        doc = self.learned_document(saved_at)
        blob = compress_state(doc) if doc is not None else b""
        learned_tmp.write_bytes(blob)
        return {"snapshot_ms": (t1 - t0) * 1000, "snapshot_bytes": len(data),
                "learned_ms": (time.perf_counter() - t1) * 1000, "learned_bytes": len(blob)}

    async def _save_session_stage_here(self, saved_at: float, ts: float) -> LearnedSave | None:
        """:meth:`save_session_stage` on the event loop (only the file write and the
        compression are in a thread)."""
        loop = asyncio.get_running_loop()
        self.save_fork_ms = 0.0
        t0 = time.perf_counter()
        data = self.snapshot_bytes()
        t1 = time.perf_counter()
        doc = self.learned_document(saved_at)  # before any await: of the same instant
        built_ms = (time.perf_counter() - t1) * 1000
        self.snapshot_save_ms = (t1 - t0) * 1000
        self.snapshot_save_bytes = len(data)
        self.save_loop_ms = self.snapshot_save_ms + built_ms
        try:
            await loop.run_in_executor(None, self.write_snapshot, data)
        except Exception:
            log.exception("detector state snapshot failed")
            return None
        self.snapshot_ts = ts
        if doc is None:
            return LearnedSave(None, ts, saved_at, 0.0)
        t2 = time.perf_counter()
        blob = await loop.run_in_executor(None, compress_state, doc)
        return LearnedSave(blob, ts, saved_at, built_ms + (time.perf_counter() - t2) * 1000)

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
            if p not in saved:
                continue
            try:
                _known_detectors(saved[p].get("detectors", {}), stage.detectors)
                stage.load_state(saved[p])
            except _FATAL:
                raise
            except BaseException as e:  # a Rust extension's panic is a BaseException
                self.group_stages[p] = self.engine.new_group_stage()
                saved.pop(p)
                self.state_store.restored.discard(p)
                self._refuse("group", f"g:{p}: {type(e).__name__}: {str(e)[:200]}", "it starts empty")
        log.info("group partitions %s: state restored for %s in %.0f ms", new, sorted(saved),
                 (time.perf_counter() - t0) * 1000)

    async def save_groups(self, partitions: Iterable[int]) -> None:
        """Save the state of these group partitions to the state topic (a consistent cut:
        the stages' state only changes between awaits)."""
        await _save_states(self.state_store, {p: self.group_stages[p].state() for p in partitions
                                              if p in self.group_stages}, "group partitions")

    # -- the room merger's state ----------------------------------------------------------

    async def own_rooms(self) -> None:
        """Load the room merger's saved state once this worker owns the rooms topic (a
        refused or unreadable save: it starts empty). Nothing changes while a rebalance is
        under way."""
        if self.rooms_owned or not self.accepting() or self.engine.rooms is None:
            return
        saved = await _load_saved(self.rooms_store, [0], "rooms", "they start empty")
        self.engine.rooms = merger = self.engine.new_rooms()
        self._rooms_saved_at = 0  # what was just loaded (or nothing) is what r:0 holds
        if 0 in saved and merger is not None:
            try:
                parts = saved[0].get("detectors", {})
                if set(parts) - {ROOMS}:
                    raise StateRefused(f"unknown part(s) {sorted(set(parts) - {ROOMS})[:5]}")
                merger.load_state(parts.get(ROOMS, {}))
            except _FATAL:
                raise
            except BaseException as e:
                self.engine.rooms = self.engine.new_rooms()
                self.rooms_store.restored.discard(0)
                self._refuse("rooms", f"r:0: {type(e).__name__}: {str(e)[:200]}", "they start empty")
        self.rooms_owned = True

    async def save_rooms(self) -> None:
        """Save the room merger's state (``r:0``) when this worker holds it and it took a
        part since its last save."""
        merger = self.engine.rooms
        if not self.rooms_owned or merger is None or merger.taken == self._rooms_saved_at:
            return
        taken = merger.taken
        saved = {"ts": merger.now, "detectors": {ROOMS: merger.state()}}
        await _save_states(self.rooms_store, {0: saved}, "rooms")
        self._rooms_saved_at = taken

    def rooms_revoked(self) -> None:
        """The rooms topic moved on (saved first by the revoke handler): forget its state."""
        self.rooms_owned = False
        self.engine.rooms = self.engine.new_rooms()
        self._rooms_saved_at = -1

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
        for p in list(newer):
            try:
                _known_detectors(saved[p].get("detectors", {}), self.engine.session_detectors)
                self.engine.load_sessions(saved[p].get("detectors", {}))
            except _FATAL:
                raise
            except BaseException as e:  # a Rust extension's panic is a BaseException
                self.engine.drop_sessions(part_of, [p])
                newer.remove(p)
                self.session_store.restored.discard(p)
                self._refuse("sessions", f"s:{p}: {type(e).__name__}: {str(e)[:200]}",
                             "its sessions go on without their logins")
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
        try:
            _known_detectors(saved.get("detectors", {}), self.engine.session_detectors)
        except StateRefused as e:
            self.learned_store.restored.discard(0)
            self._refuse("learned", f"l:0: {e}", "the session stage starts cold")
            return
        if not self._apply("learned", "l:0", saved.get("detectors", {}), _load_learned,
                           "the session stage starts cold"):
            self.learned_store.restored.discard(0)
        else:
            log.info("session stage warm-started from the state %s saved (%.0f ms)",
                     saved.get("worker", "?"), (time.perf_counter() - t0) * 1000)

    async def save_learned(self, built: LearnedSave | None = None) -> None:
        """Save what the session stage learned (``l:0`` of the state topic) for the next
        worker that starts without a snapshot: ``built`` by :meth:`save_session_stage`,
        else built now on the loop."""
        t0 = time.perf_counter()
        if built is None:
            now = time.time()
            doc = self.learned_document(now)
            if doc is not None:
                self.learned_save_bytes = await _save_states(self.learned_store, {0: doc},
                                                             "learned state, partition")
                self.learned_save_ms = (time.perf_counter() - t0) * 1000
                self.learned_saved_at = now
            return
        if built.data is None:
            return
        size = await self.learned_store.save_compressed(0, built.data, built.ts)
        log.info("learned state, partition [0]: state saved (%d KiB) in %.0f ms (built in %.0f ms)",
                 size >> 10, (time.perf_counter() - t0) * 1000, built.build_ms)
        self.learned_save_bytes = size
        self.learned_save_ms = built.build_ms + (time.perf_counter() - t0) * 1000
        self.learned_saved_at = built.saved_at

    def learned_save_stats(self) -> dict[str, float]:
        """The cost of the last saves of what the session stage learned, and the event
        clocks of the last snapshot file and of the session stage now (/stats)."""
        mem = self.save_child_memory
        return {"learned_state_save_ms": round(self.learned_save_ms, 1),
                "learned_state_save_bytes": self.learned_save_bytes,
                "learned_state_saved_at": round(self.learned_saved_at, 3),
                "snapshot_serialise_ms": round(self.snapshot_save_ms, 1),
                "snapshot_bytes": self.snapshot_save_bytes,
                "snapshot_ts": round(self.snapshot_ts, 3),
                "session_ts": round(self.engine.session_ts, 3),
                "save_loop_ms": round(self.save_loop_ms, 1),
                "save_fork_ms": round(self.save_fork_ms, 1),
                "save_child_private_mib": mem.get("private_mib", 0.0),
                "save_child_peak_rss_mib": mem.get("peak_rss_mib", 0.0),
                "save_child_saves": self.fork_saver.saves,
                "save_child_failures": self.fork_saver.failures}

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

    # -- the state topic's client ------------------------------------------------------

    async def _send_state(self, partition: int, key: bytes, value: bytes | None, headers: Any) -> Any:
        return await self.producer.send(self.topics.state, value, key=key, partition=partition,
                                        headers=headers)

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


#: what a failed load of saved state lets through: the process is being stopped
_FATAL = (KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit)


def _known_detectors(parts: Any, detectors: Iterable[Any]) -> None:
    """Refuse a state naming a detector this worker does not run."""
    if not isinstance(parts, dict):
        raise StateRefused("detector states are not a JSON object")
    unknown = set(parts) - {d.name for d in detectors}
    if unknown:
        raise StateRefused(f"unknown detector(s) {sorted(unknown)[:5]}")


def _load_detector_states(detectors: list[Any], state: dict[str, Any]) -> None:
    for d in detectors:
        if d.name in state:
            d.load_state(state[d.name])


def _load_learned(detectors: list[Any], state: dict[str, Any]) -> None:
    for d in detectors:
        if d.name in state:
            d.load_learned(state[d.name])


async def _load_saved(store: StateStore, partitions: list[int], what: str,
                      otherwise: str) -> dict[int, dict[str, Any]]:
    """The newest saves of ``partitions`` in ``store``; none when the state topic cannot be
    read (logged and counted, with what follows): detection goes on without them rather
    than not at all. A save that does not have the shape of one is refused by the store."""
    try:
        return await store.load(partitions)
    except _FATAL:
        raise
    except BaseException as e:  # Kafka, a timeout, or anything a hostile record provokes
        store.load_failures += 1
        log.error("%s %s: saved state not readable (%s: %s); %s", what, partitions,
                  type(e).__name__, str(e)[:200], otherwise)
        return {}


async def _save_states(store: StateStore, states: dict[int, dict[str, Any]], what: str) -> int:
    """Save each partition's state with ``store``, and log what was saved; the bytes sent."""
    if not states:
        return 0
    t0 = time.perf_counter()
    size = 0
    for p in sorted(states):
        size += await store.save(p, states[p])
    log.info("%s %s: state saved (%d KiB) in %.0f ms", what, sorted(states), size >> 10,
             (time.perf_counter() - t0) * 1000)
    return size
