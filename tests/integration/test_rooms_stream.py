"""The room merger as the stream runs it: a ``pathsentry worker`` process on the embedded
broker and chDB. Group-stage ``farm_group`` alerts on the rooms topic come out as one room
alert on the alerts topic and in ClickHouse (the parts are stored by the group stage that
raised them, not here); a record that is not an alert is
dead-lettered with its origin; the merger's state is saved at shutdown and the restarted
worker re-versions the same room."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from pathsentry.infra.broker import EmbeddedBroker
from tests.detectors.test_farm_rooms import part_alert
from tests.integration.harness import _consume, running_worker

pytestmark = pytest.mark.integration

def _part(aid: str, accounts: list[str]) -> bytes:
    return part_alert(aid, accounts).model_dump_json().encode()


async def _send(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    prod = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await prod.start()
    try:
        for key, value in records:
            await prod.send(topic, value, key=key, partition=0)
        await prod.flush()
    finally:
        await prod.stop()


def _rooms(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in alerts if a["kind"] == "farm_group" and a["subject"].get("key") == "room"]


def test_parts_on_the_rooms_topic_become_one_room_alert_that_survives_a_restart(
        tmp_path: Path, embedded_broker: EmbeddedBroker) -> None:
    m = [f"m{i}" for i in range(12)]
    with running_worker(tmp_path, embedded_broker.url, f"chdb://{tmp_path / 'chdb'}") as worker:
        bootstrap, topics = worker.bootstrap, worker.topics
        asyncio.run(_send(bootstrap, topics.rooms, [
            (b"p1", _part("p1", m[:8])), (b"junk", b"{not an alert"), (b"p2", _part("p2", m[4:]))]))
        rooms = _rooms(asyncio.run(_consume(bootstrap, topics.alerts, 1, 60)))
        assert len(rooms) == 1, rooms
        room = rooms[0]
        assert room["subject"]["parts"] == ["p1", "p2"] and room["accounts"] == sorted(m)
        assert room["evidence"]["room"]["shared_accounts"] == [{"parts": ["p1", "p2"], "accounts": 4}]
        dead = asyncio.run(_consume(bootstrap, topics.dead_letter, 1, 60))
        assert [(d["reason"], d["origin"]["topic"]) for d in dead] == [("bad_envelope", topics.rooms)]
        # stored (the parts are the group stage's own rows: here they came from outside it)
        deadline = time.monotonic() + 60
        while True:
            rows = worker.query("SELECT group_id, is_room, members FROM pathsentry.farm_groups")
            if rows:
                break
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert rows == [[room["alert_id"], 1, 12]]
        assert worker.stop(timeout=60) == 0, worker.log_tail()
        # the merger's parts were saved at shutdown (r:0): a third part that shares accounts
        # with p2 only grows the same room
        worker.start(timeout=90)
        asyncio.run(_send(bootstrap, topics.rooms, [(b"p3", _part("p3", [*m[9:], "n1", "n2"]))]))
        deadline = time.monotonic() + 60
        while True:
            later = [a for a in _rooms(asyncio.run(_consume(bootstrap, topics.alerts, 2, 5)))
                     if a["version"] == 2]
            if later:
                break
            assert time.monotonic() < deadline, worker.log_tail()
        assert later[0]["alert_id"] == room["alert_id"]
        assert later[0]["subject"]["parts"] == ["p1", "p2", "p3"]
        assert len(later[0]["accounts"]) == 14
        assert worker.stats()["rooms_state_refused"] == 0
