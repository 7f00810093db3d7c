"""Saved state and internal envelopes that cannot be trusted: garbage, truncated,
oversized (a zip bomb), hostile (an event clock in the year 33658, a field no save
writes, bytes that make a Rust sketch panic) or naming unknown detectors; group-stage
envelopes with forged notes or routes.
Through the real decode path, and through a running worker: every such save is refused,
logged and counted on /stats and /metrics, the partition starts empty, every forged
envelope is dead-lettered, and the worker keeps running and detecting."""

from __future__ import annotations

import asyncio
import functools
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from pathsentry.config import load_config
from pathsentry.engine import Engine
from pathsentry.infra.broker import EmbeddedBroker
from pathsentry.schemas import parse_event
from pathsentry.streams.envelopes import GroupItemModel
from pathsentry.streams.state import (
    MAX_STATE_BYTES,
    StateRefused,
    decode_state,
    encode_state,
    manifest_key,
)
from tests.faults.support import (
    WorkerProcess,
    ensure_topics,
    produce,
    recent_world,
    route_events,
    sim_events,
    wait_for,
    worker_process,
    write_world,
)

#: a P² sketch state a Rust extension cannot read: it panics (a BaseException)
PANIC_LEARNED = {"latency": {"version": 1, "baselines": [["kr-sel-1|x", {"n": 3, "q": ["AQI="] * 3}]],
                             "accounts": [], "model": {}}}


def _bomb() -> bytes:
    """zlib data that inflates past the state limit (a few hundred KiB of it)."""
    c = zlib.compressobj(9)
    block = b" " * (1 << 20)
    return b"".join(c.compress(block) for _ in range((MAX_STATE_BYTES >> 20) + 8)) + c.flush()


def _records(partition: int, state: dict[str, Any], kind: str) -> dict[bytes, bytes | None]:
    return dict(encode_state(partition, state, f"e{time.time_ns()}", kind=kind))


def _with_manifest(recs: dict[bytes, bytes | None], key: bytes, **change: Any) -> dict[bytes, bytes | None]:
    raw = recs[key]
    assert raw is not None
    return {**recs, key: orjson.dumps({**orjson.loads(raw), **change})}


def _chunk(recs: dict[bytes, bytes | None], key: bytes) -> bytes:
    return next(k for k in recs if k != key)


@functools.cache
def hostile_saves() -> dict[str, dict[bytes, bytes | None]]:
    """Records of one save of partition 0 each, by what is wrong with them."""
    good = {"ts": 1.7e9, "detectors": {"farm": {}}}
    key = manifest_key(0)
    recs = _records(0, good, "g")
    chunk = _chunk(recs, key)
    manifest = orjson.loads(recs[key] or b"")
    bomb = _bomb()
    return {
        "garbage manifest": {key: b"not zlib"},
        "manifest not an object": {key: b"[1, 2]"},
        "extra key in the manifest": _with_manifest(recs, key, allowed=True),
        "absurd chunk count": _with_manifest(recs, key, chunks=10**9),
        "garbage chunk": {**recs, chunk: b"x" * len(recs[chunk] or b"")},
        "truncated chunk": _with_manifest({**recs, chunk: (recs[chunk] or b"")[:-4]}, key,
                                          bytes=manifest["bytes"] - 4),
        "zip bomb": {key: orjson.dumps({**manifest, "bytes": len(bomb)}), chunk: bomb},
        "clock at 1e12": _records(0, {"ts": 1e12, "detectors": {}}, "g"),
        "negative clock": _records(0, {"ts": -5.0, "detectors": {}}, "g"),
        "extra key in the state": _records(0, {**good, "allowed": True}, "g"),
        "detectors not an object": _records(0, {"ts": 1.0, "detectors": 7}, "g"),
        "not JSON inside": {key: orjson.dumps({**manifest, "bytes": len(zlib.compress(b"{x"))}),
                            chunk: zlib.compress(b"{x")},
    }


@pytest.mark.parametrize("case", sorted(hostile_saves()))
def test_hostile_save_is_refused(case: str) -> None:
    recs = hostile_saves()[case]
    t0 = time.perf_counter()
    with pytest.raises(StateRefused):
        decode_state(recs, 0)
    assert time.perf_counter() - t0 < 30  # the bomb is refused, not inflated to the end


def test_good_save_still_decodes() -> None:
    state = {"ts": 1.7e9, "saved_at": 1.7e9, "worker": "w", "detectors": {"latency": {"a": [1, 2]}}}
    assert decode_state(_records(0, state, "s"), 0, "s") == state


async def _send_state(bootstrap: str, topic: str, records: list[tuple[int, bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 << 20, acks="all")
    await producer.start()
    try:
        for p, k, v in records:
            await (await producer.send(topic, v, key=k, partition=p))
    finally:
        await producer.stop()


def test_every_item_the_session_stage_writes_passes_the_envelope_check(tmp_path: Path) -> None:
    """The notes allowed on the groups topic are a closed list: a detector that leaves a new
    note must add it there, or its items from another worker would be dead-lettered."""
    spec = recent_world(seed=5, accounts=300)
    engine = Engine(load_config(write_world(tmp_path, spec), env={}))
    items = 0
    for raw in sim_events(spec, 6000):
        enriched, _ = engine.session_stage(parse_event(raw))
        routes = engine.group_routes(enriched)
        if routes:
            wire = b'{"t":%d,"r":%s,"n":%s,"e":%s}' % (
                1, orjson.dumps(routes), orjson.dumps(enriched.notes, default=str), orjson.dumps(raw))
            GroupItemModel.model_validate(orjson.loads(wire))
            items += 1
    assert items > 1000


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_worker_given_poisoned_state_keeps_running(tmp_path: Path, embedded_broker: EmbeddedBroker) -> None:
    spec = recent_world(seed=31, accounts=200)
    config = write_world(tmp_path, spec)
    with worker_process(config, embedded_broker.url, tmp_path / "chdb", loglevel="info") as worker:
        topics = worker.topics
        ensure_topics(worker.bootstrap, topics)
        now = time.time()
        poison: list[tuple[int, bytes, bytes]] = [(0, b"g:0", b"not zlib")]  # the reported record
        for p, kind, state in (
            (1, "g", {"ts": 1e12, "detectors": {}}),  # a clock 31,000 years ahead
            (0, "s", {"saved_at": now, "ts": 1.7e9, "detectors": {}, "allowed": ["cheater"]}),
            (1, "s", {"saved_at": now, "ts": 1.7e9, "detectors": {"no_such_detector": {}}}),
            (0, "l", {"saved_at": now, "ts": 1.7e9, "worker": "x", "detectors": PANIC_LEARNED}),
        ):
            poison += [(p, k, v) for k, v in encode_state(p, state, f"e{time.time_ns()}", kind=kind)]
        asyncio.run(_send_state(worker.bootstrap, topics.state, poison))
        snapshot = tmp_path / "var" / "state" / "worker-1.json"
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        snapshot.write_bytes(b'{"latency": {"baselines": ')  # truncated

        worker.start(timeout=90)
        _expect_refused(worker, snapshot=1, what="every poisoned state refused and counted")

        # forged group-stage envelopes: a note no detector writes, a clock out of range, a
        # route to a detector that does not exist
        login = next(e for e in sim_events(spec, 200) if e["kind"] == "login")
        forged = [
            {"t": 1, "r": [["farm", "k"]], "n": {"allowed": True}, "e": login},
            {"t": 1, "r": [["farm", "k"]], "n": {"login_ts": 1e12}, "e": login},
            {"t": 1, "r": [["shell", "k"]], "n": {}, "e": login},
            {"t": -1, "r": [], "e": login},
        ]
        asyncio.run(_send_state(worker.bootstrap, topics.groups,
                                [(0, b"forged", orjson.dumps([f])) for f in forged]))
        wait_for(lambda: worker.stats()["dead_letter_reasons"].get("bad_envelope") == len(forged), 60,
                 "every forged envelope dead-lettered", on_timeout=lambda: f"{worker.stats()}")

        # and it detects: the events after the poison are all processed
        events = sim_events(spec, 1500)
        produce(worker.bootstrap, route_events(events, topics))
        wait_for(lambda: worker.stats()["events_detected"] >= len(events), 120,
                 "the events after the poisoned state to be processed", on_timeout=worker.log_tail)
        assert worker.alive
        log = worker.log_path.read_text(errors="replace")
        assert log.count("saved state refused") >= 2 and "PanicException" in log
        assert worker.stop(timeout=60) == 0


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_worker_refuses_well_formed_but_hostile_detector_state(tmp_path: Path,
                                                               embedded_broker: EmbeddedBroker) -> None:
    """Saves that have the shape of a save but whose detector parts no detector could have
    written (a session flagged without a login, a joined login at 1e12, a farm clock at
    1e12, a negative login count, a stage clock ten days ahead) are refused by the detectors,
    counted and logged; the worker keeps running and detecting."""
    spec = recent_world(seed=33, accounts=200)
    config = write_world(tmp_path, spec)
    with worker_process(config, embedded_broker.url, tmp_path / "chdb", loglevel="info") as worker:
        topics = worker.topics
        ensure_topics(worker.bootstrap, topics)
        now = time.time()
        poison: list[tuple[int, bytes, bytes]] = []
        for p, kind, state in (
            (0, "g", {"ts": now + 10 * 86_400, "detectors": {}}),
            (1, "g", {"ts": 1.7e9, "detectors": {"farm": {"now": 1e12, "partitions": []}}}),
            (0, "s", {"saved_at": now, "ts": 1.7e9, "detectors": {"latency": {"version": 1, "sessions": [
                {"id": "ghost", "login": None, "score": 0.99, "flagged": True, "probes": []}]}}}),
            (1, "s", {"saved_at": now, "ts": 1.7e9, "detectors": {"route": {"version": 1, "sessions": [
                ["s1", {"account": "a", "route": None, "flag": None, "extra": {"login_ts": 1e12}}]]}}}),
            (0, "l", {"saved_at": now, "ts": 1.7e9, "worker": "x", "detectors": {"takeover": {
                "version": 1, "accounts": [["a", {"logins": -3}]], "devices": []}}}),
        ):
            poison += [(p, k, v) for k, v in encode_state(p, state, f"e{time.time_ns()}", kind=kind)]
        asyncio.run(_send_state(worker.bootstrap, topics.state, poison))

        worker.start(timeout=90)
        _expect_refused(worker, snapshot=0, what="every hostile detector state refused and counted")

        events = sim_events(spec, 1500)
        produce(worker.bootstrap, route_events(events, topics))
        wait_for(lambda: worker.stats()["events_detected"] >= len(events), 120,
                 "the events after the hostile state to be processed", on_timeout=worker.log_tail)
        assert worker.alive
        log = worker.log_path.read_text(errors="replace")
        for why in ("flagged without a login", "login_ts", "farm state", "takeover state",
                    "past the wall clock"):
            assert why in log, why
        assert log.count("StateInvalid") >= 4
        assert worker.stop(timeout=60) == 0


def _expect_refused(worker: WorkerProcess, *, snapshot: int, what: str) -> None:
    """The worker refused and counted two group saves, two session saves, the learned
    state and ``snapshot`` snapshot files (in /stats and /metrics), stays alive, and
    started every partition empty."""
    want = {"group_state_refused": 2, "session_state_refused": 2, "learned_state_refused": 1,
            "snapshot_state_refused": snapshot}

    def refused() -> dict[str, int]:
        st = worker.stats()
        return {k: st.get(k) for k in want}

    def counted() -> bool:
        assert worker.alive, "worker died:\n" + worker.log_tail()
        return refused() == want

    wait_for(counted, 90, what, on_timeout=lambda: f"{refused()}\n{worker.log_tail()}")
    with urllib.request.urlopen(worker.base + "/metrics", timeout=10) as r:
        metrics = r.read().decode()
    for key, n in want.items():
        assert f'pathsentry_{key}_total{{worker="worker-1"}} {float(n)}' in metrics, key
    st = worker.stats()
    assert st["group_state_restored"] == [] and st["session_state_restored"] == []
    assert not st["learned_state_loaded"]
