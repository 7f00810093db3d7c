"""Saved state and internal envelopes signed with ``PATHSENTRY_STATE_KEY``: through the
real state store on a broker, a signed save loads and an unsigned, wrongly signed or
tampered one is refused; through a running worker given the key, its own signed saves and
envelopes are accepted, unsigned state is refused and counted, unsigned envelopes are
dead-lettered, and the key never appears in its log."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from pathsentry.infra.broker import EmbeddedBroker, create_topics
from pathsentry.schemas import Alert
from pathsentry.streams.signing import HEADER, Signer
from pathsentry.streams.state import StateStore, encode_state
from tests.faults.support import (
    ensure_topics,
    produce,
    recent_world,
    route_events,
    sim_events,
    wait_for,
    worker_process,
    write_world,
)

pytestmark = pytest.mark.integration

KEY = "s3cret-state-key-do-not-log"
STATE = {"ts": 1.7e9, "detectors": {"farm": {"n": 1}}}


#: records to send: (partition, key, value, headers)
Records = list[tuple[int, bytes, bytes | None, Any]]


async def _send(bootstrap: str, topic: str, records: Records) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 << 20, acks="all")
    await producer.start()
    try:
        for p, k, v, h in records:
            await (await producer.send(topic, v, key=k, partition=p, headers=h))
    finally:
        await producer.stop()


def _load(bootstrap: str, topic: str, signer: Signer, partition: int) -> tuple[dict[int, Any], int]:
    from aiokafka import AIOKafkaConsumer

    async def send(*_: Any) -> Any:
        raise AssertionError("a load sends nothing")

    store = StateStore(topic, send, lambda: AIOKafkaConsumer(bootstrap_servers=bootstrap,
                                                             enable_auto_commit=False),
                       "reader", signer=signer)
    got = asyncio.run(store.load([partition]))
    return got, store.refused


def _signed(partition: int, signer: Signer) -> Records:
    recs = encode_state(partition, STATE, f"e{time.time_ns()}")
    return [(partition, k, v, signer.sign(b"state", k, v)) for k, v in recs]


def _tampered_chunk(recs: Records) -> Records:
    (p, k, v, h), *rest = recs
    assert v is not None
    return [(p, k, v[:-1] + bytes([v[-1] ^ 1]), h), *rest]


def _tampered_manifest(recs: Records) -> Records:
    *chunks, (p, k, v, h) = recs
    assert v is not None
    return [*chunks, (p, k, orjson.dumps({**orjson.loads(v), "worker": "mallory"}), h)]


@pytest.mark.parametrize("case", ["signed", "unsigned", "wrong key", "tampered chunk",
                                  "tampered manifest", "signature header twice"])
def test_state_store_refuses_what_is_not_signed_with_the_key(embedded_broker: EmbeddedBroker,
                                                              case: str) -> None:
    topic = f"sig{time.time_ns()}.pathsentry-state"
    asyncio.run(create_topics(embedded_broker.bootstrap, {topic: 1},
                              configs={topic: {"cleanup.policy": "compact"}}))
    signer = Signer(KEY.encode())
    recs = {
        "signed": lambda: _signed(0, signer),
        "unsigned": lambda: [(0, k, v, None) for k, v in encode_state(0, STATE, "e1")],
        "wrong key": lambda: _signed(0, Signer(b"another key")),
        "tampered chunk": lambda: _tampered_chunk(_signed(0, signer)),
        "tampered manifest": lambda: _tampered_manifest(_signed(0, signer)),
        "signature header twice": lambda: [(p, k, v, [*h, (HEADER, h[0][1])])
                                           for p, k, v, h in _signed(0, signer)],
    }[case]()
    asyncio.run(_send(embedded_broker.bootstrap, topic, recs))
    got, refused = _load(embedded_broker.bootstrap, topic, signer, 0)
    if case == "signed":
        assert got == {0: STATE} and refused == 0
    else:
        assert got == {} and refused == 1, case
    # a reader without the key checks nothing: every well-formed save loads
    if case != "tampered chunk":
        assert _load(embedded_broker.bootstrap, topic, Signer(None), 0)[0] != {}


@pytest.mark.timeout(400)
def test_worker_with_a_key_accepts_its_own_and_refuses_the_unsigned(
    tmp_path: Path, embedded_broker: EmbeddedBroker
) -> None:
    spec = recent_world(seed=31, accounts=300)
    config = write_world(tmp_path, spec)
    with worker_process(config, embedded_broker.url, tmp_path / "chdb", loglevel="info",
                        extra_env={"PATHSENTRY_STATE_KEY": KEY}) as worker:
        topics = worker.topics
        ensure_topics(worker.bootstrap, topics)
        unsigned = [(0, k, v, None) for k, v in encode_state(0, STATE, f"e{time.time_ns()}")]
        unsigned += [(0, k, v, None) for k, v in encode_state(
            0, {"saved_at": time.time(), "ts": 1.7e9, "worker": "x", "detectors": {}},
            f"e{time.time_ns()}", kind="l")]
        asyncio.run(_send(worker.bootstrap, topics.state, unsigned))
        worker.start(timeout=90)
        wait_for(lambda: worker.stats()["group_state_refused"] >= 1
                 and worker.stats()["learned_state_refused"] == 1, 90,
                 "the unsigned saves refused and counted", on_timeout=worker.log_tail)

        # a well-formed envelope without a signature is dead-lettered
        login = next(e for e in sim_events(spec, 200) if e["kind"] == "login")
        forged = orjson.dumps([{"t": 1, "r": [["farm", "k"]], "n": {}, "e": login}])
        asyncio.run(_send(worker.bootstrap, topics.groups, [(0, b"forged", forged, None)]))
        wait_for(lambda: worker.stats()["dead_letter_reasons"].get("bad_signature") == 1, 60,
                 "the unsigned envelope dead-lettered", on_timeout=lambda: f"{worker.stats()}")
        # so is an unsigned alert offered to the room merger
        part = Alert(alert_id="forged", ts=datetime.now(UTC), kind="farm_group", severity="high",
                     score=0.9, subject={"key": "net:x"}, accounts=["a", "b", "c"], evidence={},
                     detector="farm", first_seen=datetime.now(UTC), last_seen=datetime.now(UTC))
        asyncio.run(_send(worker.bootstrap, topics.rooms,
                          [(0, b"forged", part.model_dump_json().encode(), None)]))
        wait_for(lambda: worker.stats()["dead_letter_reasons"].get("bad_signature") == 2, 60,
                 "the unsigned room part dead-lettered", on_timeout=lambda: f"{worker.stats()}")

        # its own signed envelopes go through: every event is detected, nothing else refused
        events = sim_events(spec, 3000)
        produce(worker.bootstrap, route_events(events, topics))
        wait_for(lambda: worker.stats()["events_detected"] >= len(events), 120,
                 "the events to be processed", on_timeout=worker.log_tail)
        st = worker.stats()
        assert st["dead_letter_reasons"].get("bad_signature") == 2, st["dead_letter_reasons"]
        assert st["group_partitions"] and st["flagged"] > 0
        assert worker.stop(timeout=60) == 0, worker.log_tail()

        # its own signed saves load: a restart without the snapshot file warm-starts from l:0
        (worker.workdir / "var" / "state" / "worker-1.json").unlink()
        worker.start(timeout=90)
        # the learned state and each group partition load independently, as they are assigned
        wait_for(lambda: worker.stats()["learned_state_loaded"]
                 and worker.stats()["group_state_restored"], 90,
                 "the signed l:0 and group state loaded", on_timeout=worker.log_tail)
        st = worker.stats()
        assert st["learned_state_refused"] == 0 and st["group_state_refused"] == 0, st
        assert st["rooms_state_refused"] == 0, st
        assert st["group_state_restored"], st
        assert worker.stop(timeout=60) == 0
        assert KEY not in worker.log_path.read_text(errors="replace")
